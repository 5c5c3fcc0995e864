"""Guided attention in the EvoFormer: blocks chosen per forward from each module's own pair bias
(per head) or from an external pair signal; exact against the dense oracle; gradients flow."""

from __future__ import annotations

import pytest
import torch

from models.evoformer import EvoformerAttention, EvoformerBlock, EvoformerStack
from models.evoformer.attention import AttentionChoice, attend
from patterns import GuidedConfig, build_layout

SMALL = dict(c_m=32, c_z=16, c_hidden_msa_att=8, no_heads_msa=2, c_hidden_pair_att=8, no_heads_pair=2,
             c_hidden_opm=8, c_hidden_mul=16)
GUIDED = GuidedConfig(16, keep=0.4, pool="logsumexp")
L, S = 40, 2


def _inputs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(S, L, SMALL["c_m"], generator=g, dtype=dtype), torch.randn(L, L, SMALL["c_z"], generator=g, dtype=dtype)


def _block(attention, seed=0):
    torch.manual_seed(seed)
    b = EvoformerBlock(**SMALL).double()
    with torch.no_grad():  # the default init zeroes some output layers; make every path count
        for p in b.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return b.set_attention(attention)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_guided_block_matches_dense_oracle(backend):
    """Sparse guided attention == dense SDPA masked to the same guided layouts (chosen from the same
    biases): the selection and the kernels agree, per head, at a ragged length."""
    m, z = _inputs()
    sparse = _block(EvoformerAttention.sparse(GUIDED, backend=backend))
    oracle = _block(EvoformerAttention.uniform(AttentionChoice("sdpa", GUIDED), include_msa_col=False))
    dense = _block(EvoformerAttention.uniform("sdpa"))
    with torch.no_grad():
        ms, zs = sparse(m, z)
        mo, zo = oracle(m, z)
        md, zd = dense(m, z)
    tol = dict(atol=1e-6, rtol=1e-6) if backend == "reference" else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ms, mo, **tol)
    torch.testing.assert_close(zs, zo, **tol)
    assert (zs - zd).abs().max() > 1e-6  # the pattern is sparse: it really changes the result


def test_each_module_guides_itself_per_head(monkeypatch):
    """Row attention picks from its own projected pair bias, one layout per head."""
    import models.evoformer.attention as attention_module

    m, z = _inputs(1)
    block = _block(EvoformerAttention.sparse(GUIDED, backend="reference"))
    row = block.msa_att_row
    block.set_attention(EvoformerAttention.sparse(GUIDED, backend="reference").replace(
        tri_start="sdpa", tri_end="sdpa"))
    seen = []

    def spy(cfg, seq_len, signal=None):
        lay = build_layout(cfg, seq_len, signal=signal)
        seen.append((signal.shape, lay))
        return lay

    monkeypatch.setattr(attention_module, "build_layout", spy)
    with torch.no_grad():
        block(m, z)
    (shape, lay), = seen
    assert tuple(shape) == (1, SMALL["no_heads_msa"], L, L) and lay.num_heads == SMALL["no_heads_msa"]
    with torch.no_grad():
        b = row.linear_z(row.layer_norm_z(z)).movedim(-1, -3).unsqueeze(0)
    assert torch.equal(lay.block_mask, build_layout(GUIDED, L, signal=b).block_mask)


@pytest.mark.slow
def test_external_pair_signal_guides_every_attention():
    m, z = _inputs(2)
    g = torch.Generator().manual_seed(7)
    signal = torch.randn(L, L, generator=g, dtype=torch.float64)
    block = _block(EvoformerAttention.sparse(GUIDED, backend="reference"))
    oracle_layout = build_layout(GUIDED, L, signal=signal)
    with torch.no_grad():
        m1, z1 = block(m, z, pair_signal=signal)
        m2, z2 = block(m, z)
    assert not torch.allclose(z1, z2)  # another signal, other blocks
    # the external signal gives one shared layout; the ending node sees it transposed
    q = torch.randn(4, 2, L, 8, dtype=torch.float64)
    ch = AttentionChoice("sparse", GUIDED, "reference")
    assert torch.equal(ch.layout_for(L, signal).block_mask, oracle_layout.block_mask)
    out = attend(ch, q, q, q, [], signal)
    ref = attend(AttentionChoice("naive", GUIDED), q, q, q, [], signal)
    torch.testing.assert_close(out, ref)
    stack = EvoformerStack(2, attention=EvoformerAttention.sparse(GUIDED, backend="reference"), **SMALL).double()
    with torch.no_grad():
        stack(m, z, pair_signal=signal)


def test_gradients_flow_through_guided_attention_not_the_selection():
    m, z = _inputs(3)
    m.requires_grad_(True)
    z.requires_grad_(True)
    block = _block(EvoformerAttention.sparse(GUIDED, backend="cpu"))
    mo, zo = block(m, z)
    (mo.square().sum() + zo.square().sum()).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    w = block.msa_att_row.linear_z.weight.grad  # the bias projection still learns through attention
    assert w is not None and torch.isfinite(w).all() and w.abs().sum() > 0
    for mod in (block.pair_stack.tri_att_start, block.pair_stack.tri_att_end):
        assert mod.linear.weight.grad.abs().sum() > 0


def test_guided_errors_are_clear():
    q = torch.randn(2, 2, L, 8)
    ch = AttentionChoice("sparse", GUIDED, "reference")
    with pytest.raises(ValueError, match="pair signal"):
        attend(ch, q, q, q, [])
    with pytest.raises(ValueError, match="one protein per call"):
        attend(ch, q, q, q, [], torch.randn(2, 1, 2, L, L))
    assert EvoformerAttention.coerce(GUIDED).msa_row.kind == "sparse"

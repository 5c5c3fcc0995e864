"""EvoFormer block: attention choices agree, OpenFold parameter compatibility, the benchmark runs."""

from __future__ import annotations

import math

import pytest
import torch

from models.evoformer import (
    AttentionChoice,
    EvoformerAttention,
    EvoformerBlock,
    EvoformerStack,
    TriangleAttention,
    TriangleMultiplicativeUpdate,
    cached_layout,
    load_openfold_state_dict,
    openfold_block_keys,
)
from patterns import PatternConfig

SMALL = dict(c_m=32, c_z=16, c_hidden_msa_att=8, no_heads_msa=2, c_hidden_pair_att=8, no_heads_pair=2,
             c_hidden_opm=8, c_hidden_mul=16)
N_SEQ = 3
FULL = PatternConfig(block_size=16, stride=1)  # every tile: a dense pattern
BAND = PatternConfig(block_size=16, window=8)  # local band: drops far tiles at L >= 48


class Tuned:
    """Stands in for kernels.tuned.TunedPatterns."""

    def __init__(self, cfg):
        self.cfg, self.asked = cfg, []

    def config_for(self, seq_len):
        self.asked.append(seq_len)
        return self.cfg


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.dim() > 1 else 0.1))


def _block(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    block = EvoformerBlock(**SMALL).to(dtype)
    _randomize(block, seed)
    return block


def _inputs(L, dtype=torch.float64, seed=1, batch=()):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(*batch, N_SEQ, L, SMALL["c_m"], generator=g, dtype=dtype)
    z = torch.randn(*batch, L, L, SMALL["c_z"], generator=g, dtype=dtype)
    return m, z


def _run(block, m, z, **masks):
    """Outputs and gradients (inputs and parameters) of a scalar function of both outputs."""
    block.zero_grad(set_to_none=True)
    m = m.clone().requires_grad_(True)
    z = z.clone().requires_grad_(True)
    om, oz = block(m, z, **masks)
    g = torch.Generator().manual_seed(7)
    loss = (om * torch.randn(om.shape, generator=g, dtype=om.dtype)).sum() + (oz * torch.randn(oz.shape, generator=g, dtype=oz.dtype)).sum()
    loss.backward()
    grads = {"m": m.grad, "z": z.grad}
    grads.update({n: p.grad for n, p in block.named_parameters() if p.grad is not None})
    return om.detach(), oz.detach(), grads


def _assert_same(a, b, atol=1e-9, rtol=1e-7):
    om_a, oz_a, g_a = a
    om_b, oz_b, g_b = b
    torch.testing.assert_close(om_a, om_b, atol=atol, rtol=rtol)
    torch.testing.assert_close(oz_a, oz_b, atol=atol, rtol=rtol)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], atol=atol, rtol=rtol, msg=lambda s: f"grad {name}: {s}")


# ---- the attention choice ------------------------------------------------------------------------


def test_choice_coercion_and_validation():
    assert EvoformerAttention().msa_row.kind == "sdpa"
    att = EvoformerAttention.coerce("naive")
    assert {att.msa_row.kind, att.tri_start.kind, att.tri_end.kind, att.msa_col.kind} == {"naive"}
    sp = EvoformerAttention.coerce(BAND)
    assert sp.msa_row.kind == sp.tri_start.kind == sp.tri_end.kind == "sparse"
    assert sp.msa_col.kind == "sdpa"
    with pytest.raises(ValueError, match="kind"):
        AttentionChoice("fast")
    with pytest.raises(ValueError, match="tuned"):
        AttentionChoice("sparse")
    with pytest.raises(ValueError, match="backend"):
        AttentionChoice("sparse", BAND, backend="cuda")
    with pytest.raises(TypeError):
        AttentionChoice("sparse", tuned=42)


def test_set_attention_per_module_and_no_state():
    block = EvoformerBlock(**SMALL)
    keys = set(block.state_dict())
    block.set_attention("naive", tri_end=AttentionChoice("sparse", BAND, "reference"))
    att = block.attention
    assert (att.msa_row.kind, att.tri_start.kind, att.tri_end.kind, att.msa_col.kind) == ("naive", "naive", "sparse", "naive")
    assert set(block.state_dict()) == keys  # the choice is not state
    stack = EvoformerStack(2, attention="naive", **SMALL)
    assert all(b.attention.msa_row.kind == "naive" for b in stack.blocks)
    stack.set_attention(EvoformerAttention.sparse(BAND, backend="reference"))
    assert all(b.pair_stack.tri_att_start.attention.kind == "sparse" for b in stack.blocks)


def test_layouts_cached_per_config_and_length():
    assert cached_layout(BAND, 48) is cached_layout(BAND, 48)
    assert cached_layout(BAND, 48) is not cached_layout(BAND, 64)
    assert cached_layout(BAND, 48).sparsity > 0


# ---- numerics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("L", [20, 33])
def test_sdpa_block_equals_naive_forward_and_backward(L):
    block = _block()
    m, z = _inputs(L)
    naive = _run(block.set_attention("naive"), m, z)
    sdpa = _run(block.set_attention("sdpa"), m, z)
    _assert_same(naive, sdpa)
    assert naive[1].abs().max() > 0.1  # the comparison is not vacuous


def test_dense_pattern_sparse_reference_equals_naive():
    block = _block()
    m, z = _inputs(40)
    naive = _run(block.set_attention("naive"), m, z)
    tuned = Tuned(FULL)
    sparse = _run(block.set_attention(EvoformerAttention.sparse(tuned, backend="reference")), m, z)
    _assert_same(naive, sparse)
    assert 40 in tuned.asked  # config_for(L) was asked for the current length


def test_sparse_pattern_equals_masked_naive_and_differs_from_dense():
    L = 48
    assert cached_layout(BAND, L).sparsity > 0.2
    block = _block()
    m, z = _inputs(L)
    dense = _run(block.set_attention("naive"), m, z)
    masked = _run(block.set_attention(EvoformerAttention.uniform(AttentionChoice("naive", BAND))), m, z)
    for backend in ("reference", "dense"):
        sparse = _run(block.set_attention(EvoformerAttention.sparse(Tuned(BAND), backend=backend)), m, z)
        _assert_same(masked, sparse)
    assert not torch.allclose(dense[1], masked[1], atol=1e-3)  # the pattern does drop something
    # only the three sparse modules see the pattern: column attention stays dense
    assert block.attention.msa_col.kind == "sdpa"


def test_sparse_cpu_backend_matches_masked_naive():
    pytest.importorskip("kernels.cpu")
    L = 48
    block = _block()
    m, z = _inputs(L)
    masked = _run(block.set_attention(EvoformerAttention.uniform(AttentionChoice("naive", BAND))), m, z)
    try:
        sparse = _run(block.set_attention(EvoformerAttention.sparse(BAND, backend="cpu")), m, z)
    except (NotImplementedError, ImportError) as exc:  # backend still being written
        pytest.skip(f"cpu backend not available: {exc}")
    _assert_same(masked, sparse, atol=1e-8, rtol=1e-6)


def test_sparse_none_pattern_falls_back_to_dense():
    block = _block()
    m, z = _inputs(20)
    naive = _run(block.set_attention("naive"), m, z)
    _assert_same(naive, _run(block.set_attention(EvoformerAttention.sparse(Tuned(None), backend="reference")), m, z))


def test_masks_and_batch_dims():
    L = 24
    block = _block()
    m, z = _inputs(L, batch=(2,))
    ones = dict(msa_mask=torch.ones(2, N_SEQ, L, dtype=torch.float64), pair_mask=torch.ones(2, L, L, dtype=torch.float64))
    block.set_attention("naive")
    _assert_same(_run(block, m, z), _run(block, m, z, **ones))
    g = torch.Generator().manual_seed(3)
    masks = dict(msa_mask=(torch.rand(2, N_SEQ, L, generator=g) > 0.2).double(),
                 pair_mask=(torch.rand(2, L, L, generator=g) > 0.2).double())
    naive = _run(block, m, z, **masks)
    _assert_same(naive, _run(block.set_attention("sdpa"), m, z, **masks))
    # a batch of 2 equals two single runs
    om0, oz0 = block(m[0], z[0], masks["msa_mask"][0], masks["pair_mask"][0])
    torch.testing.assert_close(om0, naive[0][0])
    torch.testing.assert_close(oz0, naive[1][0])


def test_triangle_modules_follow_the_algorithms():
    """Alg. 11/12 and 13/14 written out with einsum, independent of the module code."""
    torch.manual_seed(0)
    L, c, H, C = 7, 6, 2, 3
    z = torch.randn(L, L, c, dtype=torch.float64)
    for outgoing in (True, False):
        mod = TriangleMultiplicativeUpdate(c, 5, outgoing=outgoing).double()
        _randomize(mod)
        x = mod.layer_norm_in(z)
        a = torch.sigmoid(mod.linear_a_g(x)) * mod.linear_a_p(x)
        b = torch.sigmoid(mod.linear_b_g(x)) * mod.linear_b_p(x)
        eq = "ikc,jkc->ijc" if outgoing else "kic,kjc->ijc"
        want = torch.sigmoid(mod.linear_g(x)) * mod.linear_z(mod.layer_norm_out(torch.einsum(eq, a, b)))
        torch.testing.assert_close(mod(z), want)
    for starting in (True, False):
        mod = TriangleAttention(c, C, H, starting=starting, attention="naive").double()
        _randomize(mod)
        x = mod.layer_norm(z)
        q, k, v = (lin(x).view(L, L, H, C) for lin in (mod.mha.linear_q, mod.mha.linear_k, mod.mha.linear_v))
        bias = mod.linear(x)  # [L, L, H]
        if starting:  # a_ijk = softmax_k(q_ij . k_ik / sqrt(C) + b_jk), o_ij = sum_k a_ijk v_ik
            logits = torch.einsum("ijhc,ikhc->ijkh", q, k) / math.sqrt(C) + bias.unsqueeze(0)
            o = torch.einsum("ijkh,ikhc->ijhc", torch.softmax(logits, dim=2), v)
        else:  # a_ijk = softmax_k(q_ij . k_kj / sqrt(C) + b_ki), o_ij = sum_k a_ijk v_kj
            logits = torch.einsum("ijhc,kjhc->ijkh", q, k) / math.sqrt(C) + bias.transpose(0, 1).unsqueeze(1)
            o = torch.einsum("ijkh,kjhc->ijhc", torch.softmax(logits, dim=2), v)
        g = torch.sigmoid(mod.mha.linear_g(x)).view(L, L, H, C)
        want = mod.mha.linear_o((g * o).reshape(L, L, H * C))
        torch.testing.assert_close(mod(z), want)


# ---- OpenFold parameters -------------------------------------------------------------------------


def _openfold_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in openfold_block_keys().items()}


def test_default_dims_match_openfold_keys_exactly():
    keys = openfold_block_keys()
    assert len(keys) == 93
    block = EvoformerBlock()
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == keys
    assert sum(p.numel() for p in block.parameters()) == 1829952  # the key file's count


def test_strict_load_of_openfold_state_dict():
    sd = _openfold_state()
    block = EvoformerBlock()
    block.load_state_dict(sd, strict=True)
    own = block.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())


def test_loader_prefixes_and_old_names():
    sd = _openfold_state(1)
    old = {}
    for k, v in sd.items():
        k = k.replace("pair_stack.tri_", "core.tri_")
        old[f"model.evoformer.blocks.3.{k}"] = v
    old["model.evoformer.linear.weight"] = torch.zeros(384, 256)  # other model params are ignored
    block = EvoformerBlock()
    load_openfold_state_dict(block, old)
    own = block.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())

    sd2 = _openfold_state(2)
    full = {f"evoformer.blocks.{i}.{k}": v for i, s in enumerate((sd, sd2)) for k, v in s.items()}
    with pytest.raises(ValueError, match="block_index"):
        load_openfold_state_dict(EvoformerBlock(), full)
    load_openfold_state_dict(block, full, block_index=1)
    assert torch.equal(block.state_dict()["pair_stack.tri_att_end.linear.weight"], sd2["pair_stack.tri_att_end.linear.weight"])

    stack = EvoformerStack(2)
    load_openfold_state_dict(stack, full)
    assert torch.equal(stack.blocks[0].msa_att_row.linear_z.weight, sd["msa_att_row.linear_z.weight"])
    assert torch.equal(stack.blocks[1].msa_att_col._msa_att.mha.linear_g.bias, sd2["msa_att_col._msa_att.mha.linear_g.bias"])


def test_loader_errors_name_the_key():
    sd = _openfold_state()
    sd["pair_stack.tri_att_start.linear.weight"] = torch.zeros(8, 128)
    with pytest.raises(ValueError, match=r"pair_stack\.tri_att_start\.linear\.weight.*\(8, 128\).*\(4, 128\)"):
        load_openfold_state_dict(EvoformerBlock(), sd)
    old = {k.replace("pair_stack.tri_", "core.tri_"): v for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"core\.tri_att_start\.linear\.weight"):
        load_openfold_state_dict(EvoformerBlock(), old)
    sd = _openfold_state()
    del sd["outer_product_mean.linear_out.bias"]
    with pytest.raises(ValueError, match=r"outer_product_mean\.linear_out\.bias"):
        load_openfold_state_dict(EvoformerBlock(), sd)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_openfold_state_dict(EvoformerBlock(**SMALL), _openfold_state())


# ---- benchmark -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_smoke(tmp_path):
    """Every kind (naive, sdpa, static, guided) in both passes: paired times with a speedup interval
    that holds the point, a CSV and its Markdown summary; the max-L search stops at the first length
    over the budget."""
    from autotune.evoformer import bench

    out = tmp_path / "out.csv"
    rows = bench.run_evoformer_bench(
        lengths=[32], depth=2, dims=SMALL, kinds=("naive", "sdpa", "sparse", "guided"), sparsities=[0.5],
        sparse_backend="reference", modes=("fwd", "fwd+bwd"), warmup=1, repeats=2, max_repeats=2,
        dtype=torch.float32, csv_path=out, measure_share=False, find_max_len=True, max_len_steps=[16, 32],
        mem_budget_gib=8.0,
    )
    timed = [r for r in rows if r["status"] != "max_len"]
    assert {(r["variant"], r["mode"]) for r in timed} == {
        (v, m) for v in ("naive", "sdpa", "sparse@0.5", "guided@0.5") for m in ("fwd", "fwd+bwd")}
    for r in timed:
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["rounds"] == 2, r
        assert r["speedup_lo"] <= r["speedup_vs_sdpa"] <= r["speedup_hi"], r
    assert {r["family"] for r in timed} == {"dense", "static", "guided"}
    limits = {(r["variant"], r["mode"]): r["max_len"] for r in rows if r["status"] == "max_len"}
    assert set(limits) == {(v, m) for v in ("sdpa", "sparse@0.5", "guided@0.5") for m in ("fwd", "fwd+bwd")}
    assert all(v == 32 for v in limits.values()), limits  # both steps fit in 8 GiB
    assert out.read_text().startswith("device,")
    assert "Largest L" in out.with_suffix(".md").read_text()
    st = bench._settings([32], 2, "cpu", torch.float32, SMALL, None, ("fwd+bwd",), [16, 32], 1e-6, kinds=("sdpa",),
                         patterns=None, sparsities=(), sparse_backend="reference", block_size=None, warmup=1,
                         repeats=1, max_repeats=1, time_cap_s=1.0, measure_share=False, measure_memory=True,
                         find_max_len=True, naive_max_len=64, seed=0, verbose=False)
    block = EvoformerBlock(**SMALL)
    assert bench.max_len(block, bench._variants(st)[0], "fwd+bwd", st).max_len == 0  # a 1 KiB budget: nothing fits


def test_bench_default_path_never_overwrites(tmp_path):
    from autotune.evoformer.bench import default_csv_path

    first = default_csv_path("cpu", tmp_path)
    assert first.name == "evoformer-cpu.csv"
    first.write_text("committed")
    second = default_csv_path("cpu", tmp_path)
    assert second != first and second.name.startswith("evoformer-cpu-") and first.read_text() == "committed"


# ---- copy-free attention modules -------------------------------------------------------------------


@pytest.mark.parametrize("module", ["msa_row", "tri_start", "tri_end"])
def test_sparse_call_gets_views_of_one_projection_and_the_kernel_bias_layout(monkeypatch, module):
    """The modules hand q, k and v to the kernel as strided views of one fused projection (no copy:
    they share one storage and are not contiguous), and the pair bias as [1, H, L, L] written in
    place by its projection; the output equals the separate-projection computation."""
    import kernels

    calls = []
    real = kernels.sparse_attention

    def spy(q, k, v, layout, bias=None, **kw):
        calls.append((q, k, v, bias))
        return real(q, k, v, layout, bias, **kw)

    monkeypatch.setattr(kernels, "sparse_attention", spy)
    block = _block(torch.float32)
    block.set_attention("sdpa", **{module: AttentionChoice("sparse", BAND, "cpu")})
    m, z = _inputs(48, torch.float32)
    with torch.no_grad():
        block(m, z)
    (q, k, v, bias), = calls
    storage = q.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == storage for t in (k, v)), "q, k, v come from one projection"
    assert not any(t.is_contiguous() for t in (q, k, v)), "q, k, v were copied"
    H = q.shape[1]
    assert bias.shape == (1, H, 48, 48) and bias.is_contiguous()


def test_fused_projection_equals_the_separate_openfold_linears():
    """One GEMM over the concatenated q, k, v, gate weights == the four OpenFold linears, and the
    pair-bias GEMM == linear then movedim; gradients reach every OpenFold parameter."""
    from models.evoformer.modules import GatedAttention, pair_bias

    torch.manual_seed(3)
    mod = GatedAttention(12, 5, 3).double()
    _randomize(mod)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    w, b = mod.fused_projection()
    got = torch.nn.functional.linear(x, w, b).split(15, -1)
    want = (mod.linear_q(x), mod.linear_k(x), mod.linear_v(x), mod.linear_g(x))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)
    out = mod(x, [], AttentionChoice("naive"))
    out.sum().backward()
    assert all(p.grad is not None for p in mod.parameters())
    z = torch.randn(2, 6, 6, 12, dtype=torch.float64)
    lin = torch.nn.Linear(12, 3, bias=False).double()
    torch.testing.assert_close(pair_bias(z, lin), lin(z).movedim(-1, -3).unsqueeze(-4))

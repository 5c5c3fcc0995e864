"""Activation checkpointing of the EvoFormer (OpenFold's ``checkpoint_blocks``, and per residual
update inside a block): the same outputs and gradients as without it, for dense SDPA and for static
and guided sparse patterns on the CPU backend; the guided layout recomputed in the backward pass is
the one the forward chose; fewer bytes are kept for the backward; OpenFold checkpoints load as
before; off by default and outside training."""

from __future__ import annotations

import pytest
import torch

import models.evoformer.attention as attention_mod
from models.evoformer import (EvoformerAttention, EvoformerBlock, EvoformerStack, load_openfold_state_dict,
                              openfold_block_keys)
from patterns import GuidedConfig, PatternConfig

SMALL = dict(c_m=16, c_z=8, c_hidden_msa_att=8, no_heads_msa=2, c_hidden_pair_att=8, no_heads_pair=2,
             c_hidden_opm=4, c_hidden_mul=8)
L, N_SEQ, BLOCKS = 48, 3, 2
BAND = PatternConfig(block_size=16, window=8)  # drops far tiles at L = 48
GUIDED = GuidedConfig(16, keep=0.34, pool="max")  # 1 or 2 of 3 key blocks per row (diagonal kept), from each pair bias

ATTENTIONS = {
    "sdpa": lambda: EvoformerAttention.uniform("sdpa"),
    "static-cpu": lambda: EvoformerAttention.sparse(BAND, backend="cpu"),
    "guided-cpu": lambda: EvoformerAttention.sparse(GUIDED, backend="cpu"),
}


def _stack(attention, seed=0, **kw) -> EvoformerStack:
    torch.manual_seed(seed)
    stack = EvoformerStack(BLOCKS, attention=attention, **kw, **SMALL).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in stack.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.dim() > 1 else 0.1))
    return stack


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N_SEQ, L, SMALL["c_m"], generator=g, dtype=torch.float64),
            torch.randn(L, L, SMALL["c_z"], generator=g, dtype=torch.float64))


def _outputs_and_grads(model, m, z):
    """Outputs and the gradients (inputs and every parameter) of a random linear function of both."""
    model.zero_grad(set_to_none=True)
    m, z = m.clone().requires_grad_(True), z.clone().requires_grad_(True)
    om, oz = model(m, z)
    g = torch.Generator().manual_seed(7)
    loss = (om * torch.randn(om.shape, generator=g, dtype=om.dtype)).sum() + \
        (oz * torch.randn(oz.shape, generator=g, dtype=oz.dtype)).sum()
    loss.backward()
    grads = {"m": m.grad, "z": z.grad, **{n: p.grad for n, p in model.named_parameters()}}
    return om.detach(), oz.detach(), grads


def _assert_equal_runs(a, b):
    for x, y in zip(a[:2], b[:2]):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert a[2][name] is not None, name
        torch.testing.assert_close(a[2][name], b[2][name], rtol=1e-10, atol=1e-12, msg=lambda s: f"grad {name}: {s}")


def _checkpointed(stack: EvoformerStack, how: str) -> EvoformerStack:
    if how == "blocks":
        stack.blocks_per_ckpt = 1
    elif how == "groups":
        stack.blocks_per_ckpt = 2  # one group of both blocks
    else:
        for block in stack.blocks:
            block.checkpoint_modules = True
    return stack


@pytest.fixture
def recorded_layouts(monkeypatch):
    """Every guided layout built in the model, in build order (block masks)."""
    built = []
    real = attention_mod.build_layout

    def record(cfg, seq_len, **kw):
        lay = real(cfg, seq_len, **kw)
        if isinstance(cfg, GuidedConfig):
            built.append(lay.block_mask.clone())
        return lay

    monkeypatch.setattr(attention_mod, "build_layout", record)
    return built


@pytest.mark.parametrize("how", ["blocks", pytest.param("groups", marks=pytest.mark.slow), "modules"])
@pytest.mark.parametrize("kind", list(ATTENTIONS))
def test_checkpointing_gives_the_same_outputs_and_gradients(kind, how, recorded_layouts):
    pytest.importorskip("kernels.cpu")
    m, z = _inputs()
    plain = _outputs_and_grads(_stack(ATTENTIONS[kind]()), m, z)
    n_plain = len(recorded_layouts)
    try:
        ckpt = _outputs_and_grads(_checkpointed(_stack(ATTENTIONS[kind]()), how), m, z)
    except (NotImplementedError, ImportError) as exc:  # pragma: no cover - a backend missing here
        pytest.skip(f"cpu backend not available: {exc}")
    _assert_equal_runs(plain, ckpt)
    if kind == "guided-cpu":
        # 3 guided modules per block; with checkpointing every layout is built twice (forward, recompute)
        assert n_plain == 3 * BLOCKS
        again = recorded_layouts[n_plain:]
        assert len(again) == 2 * n_plain
        first, recomputed = _forward_and_recompute(again, how)
        for a, b in zip(first, recomputed):
            assert torch.equal(a, b)  # the recompute selects the layout the forward selected
        for a, b in zip(recorded_layouts[:n_plain], first):
            assert torch.equal(a, b)
        assert any(not bool(mask.all()) for mask in first)  # the layouts do drop blocks


def _forward_and_recompute(built: list[torch.Tensor], how: str) -> tuple[list, list]:
    """Split the layouts of a checkpointed run into the forward's and the recompute's, matched in the
    forward's order. Forward: 3 layouts per block in order; backward: groups recomputed last to first."""
    n = len(built) // 2
    fwd, bwd = built[:n], built[n:]
    per = {"blocks": [3] * BLOCKS, "groups": [3 * BLOCKS], "modules": [1] * (3 * BLOCKS)}[how]
    chunks, i = [], 0
    for size in reversed(per):  # the backward recomputes the last group first
        chunks.append(bwd[i:i + size])
        i += size
    recomputed = [lay for chunk in reversed(chunks) for lay in chunk]
    return fwd, recomputed


def test_guided_checkpointing_with_an_outside_pair_signal():
    """A pair signal given to the stack (one layout for all heads) that itself requires grad: the
    selection reads it detached, so checkpointing changes nothing and the signal gets no gradient."""
    pytest.importorskip("kernels.cpu")
    m, z = _inputs()
    signal = torch.randn(L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    runs = []
    for bpc in (None, 1):
        stack = _stack(ATTENTIONS["guided-cpu"](), blocks_per_ckpt=bpc)
        om, oz = stack(m, z, pair_signal=signal)
        (om.sum() + oz.square().sum()).backward()
        runs.append((om.detach(), oz.detach(), [p.grad.clone() for p in stack.parameters()]))
    assert signal.grad is None
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    for a, b in zip(runs[0][2], runs[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _saved_bytes(model, m, z) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(m.requires_grad_(True), z.requires_grad_(True))
    return sum(seen.values())


def test_checkpointing_keeps_fewer_bytes_for_the_backward():
    m, z = _inputs()
    state = (m.numel() + z.numel()) * m.element_size()  # one (m, z) pair
    plain = _saved_bytes(_stack("sdpa"), m.clone(), z.clone())
    blocks = _saved_bytes(_stack("sdpa", blocks_per_ckpt=1), m.clone(), z.clone())
    groups = _saved_bytes(_stack("sdpa", blocks_per_ckpt=BLOCKS), m.clone(), z.clone())
    modules = _saved_bytes(_checkpointed(_stack("sdpa"), "modules"), m.clone(), z.clone())
    assert plain > 20 * state  # each block keeps many activations of the size of z
    assert blocks <= BLOCKS * state  # only each block's inputs (m, z)
    assert groups <= state  # one group: only the stack's inputs
    assert modules < plain / 4  # each update's inputs
    assert groups < blocks < modules < plain


def test_checkpointing_is_off_by_default_outside_training_and_without_grad(monkeypatch):
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr("models.evoformer.modules.checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    m, z = _inputs()
    stack = _stack("sdpa")
    assert stack.blocks_per_ckpt is None and not any(b.checkpoint_modules for b in stack.blocks)
    stack(m, z)
    assert calls == []
    stack.blocks_per_ckpt = 1
    with torch.no_grad():
        stack(m, z)
    stack.eval()(m, z)
    assert calls == []  # inference: no checkpointing (OpenFold: only in training)
    stack.train()(m, z)
    assert len(calls) == BLOCKS
    with pytest.raises(ValueError, match="blocks_per_ckpt"):
        EvoformerStack(2, blocks_per_ckpt=3, **SMALL)


def test_openfold_checkpoints_load_unchanged_with_checkpointing():
    """Checkpointing adds no parameters or buffers: the OpenFold keys are still exactly the block's."""
    block = EvoformerBlock(checkpoint_modules=True)
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == openfold_block_keys()
    stack = EvoformerStack(2, blocks_per_ckpt=1, **SMALL)
    src = EvoformerStack(2, **SMALL)
    load_openfold_state_dict(stack, {f"model.evoformer.{k}": v for k, v in src.state_dict().items()})
    for a, b in zip(stack.state_dict().values(), src.state_dict().values()):
        assert torch.equal(a, b)

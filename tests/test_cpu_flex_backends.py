"""The cpu backend (forward + all four gradients) and the flex backend (forward) against the reference."""

from __future__ import annotations

import pytest
import torch

from kernels import reference_attention, sparse_attention
from patterns import BlockLayout, PatternConfig, build_layout
from patterns.sparsity import pattern_for_sparsity

F64 = torch.float64


def _inputs(B, H, L, D, bias_shape, dtype=F64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3))
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=g, dtype=dtype).requires_grad_(grad)
    return q, k, v, bias


def _check_cpu(q, k, v, layout, bias, scale=None):
    out = sparse_attention(q, k, v, layout, bias, scale=scale, backend="cpu")
    ref = reference_attention(q, k, v, layout, bias, scale)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)
    inputs = [t for t in (q, k, v, bias) if t is not None]
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(ref, inputs, g)
    for name, a, b in zip("qkvb", got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=f"grad {name}")


def _layouts(L, bs):
    nb = -(-L // bs)
    yield "full", build_layout(PatternConfig(bs, window=L), L)
    yield "half", build_layout(pattern_for_sparsity(L, 0.5, block_size=bs), L)
    yield "diag", build_layout(PatternConfig(bs, window=0), L)
    yield "strided+global", build_layout(PatternConfig(bs, window=bs, num_global=3, stride=3, global_placement="spread"), L)
    g = torch.Generator().manual_seed(L)
    yield "random", BlockLayout(torch.rand(nb, nb, generator=g) < 0.4, bs, L)


@pytest.mark.parametrize("L", [128, 150])
@pytest.mark.parametrize("bias_kind", ["shared", "batched", "none"])
def test_cpu_matches_reference(L, bias_kind):
    B, H, D, bs = 2, 3, 8, 32
    shape = {"shared": (1, H, L, L), "batched": (B, H, L, L), "none": None}[bias_kind]
    for name, layout in _layouts(L, bs):
        q, k, v, bias = _inputs(B, H, L, D, shape, seed=hash((name, L)) % 1000)
        _check_cpu(q, k, v, layout, bias)


def test_cpu_empty_rows_give_zeros_and_finite_grads():
    L, bs = 100, 16
    nb = -(-L // bs)
    m = torch.rand(nb, nb, generator=torch.Generator().manual_seed(3)) < 0.5
    m[0, :] = False
    m[nb - 1, :] = False  # the ragged last row, empty
    m[2, :] = False
    layout = BlockLayout(m, bs, L)
    q, k, v, bias = _inputs(2, 2, L, 8, (1, 2, L, L), seed=5)
    out = sparse_attention(q, k, v, layout, bias, backend="cpu")
    assert (out[:, :, :bs] == 0).all() and (out[:, :, (nb - 1) * bs :] == 0).all()
    _check_cpu(q, k, v, layout, bias)
    # an entirely empty layout
    _check_cpu(q, k, v, BlockLayout(torch.zeros(nb, nb, dtype=torch.bool), bs, L), bias)


def test_cpu_per_head_layout_and_scale():
    L, bs, H = 96, 32, 3
    layout = build_layout(
        [PatternConfig(bs, window=0), PatternConfig(bs, window=32, num_global=5), PatternConfig(bs, window=L)], L
    )
    for shape in ((1, H, L, L), (2, H, L, L), (1, 1, L, L), (L, L), None):
        q, k, v, bias = _inputs(2, H, L, 8, shape, seed=7)
        _check_cpu(q, k, v, layout, bias, scale=0.3)


def test_cpu_float32_and_bfloat16():
    L = 200
    layout = build_layout(pattern_for_sparsity(L, 0.5, block_size=32), L)
    q, k, v, bias = _inputs(1, 2, L, 16, (1, 2, L, L), dtype=torch.float32, grad=False)
    out = sparse_attention(q, k, v, layout, bias, backend="cpu")
    torch.testing.assert_close(out, reference_attention(q, k, v, layout, bias), atol=2e-5, rtol=1e-4)
    qb, kb, vb, bb = (t.to(torch.bfloat16) for t in (q, k, v, bias))
    outb = sparse_attention(qb, kb, vb, layout, bb, backend="cpu")
    assert outb.dtype == torch.bfloat16
    torch.testing.assert_close(outb.float(), reference_attention(qb, kb, vb, layout, bb).float(), atol=2e-2, rtol=2e-2)


def test_cpu_non_contiguous_bias():
    L, H = 128, 2
    layout = build_layout(pattern_for_sparsity(L, 0.5, block_size=32), L)
    q, k, v, _ = _inputs(1, H, L, 8, None, seed=11)
    bias = torch.randn(1, H, L, L, dtype=F64).transpose(-1, -2).requires_grad_(True)
    _check_cpu(q, k, v, layout, bias)


# ---- flex: forward on CPU (compiled; slow) ------------------------------------------------------------
@pytest.mark.slow
def test_flex_forward_matches_reference():
    L, bs, H = 150, 32, 2
    nb = -(-L // bs)
    m = build_layout(pattern_for_sparsity(L, 0.5, block_size=bs), L).block_mask.clone()
    m[1, :] = False  # an empty row
    layout = BlockLayout(m, bs, L)  # ragged last block
    q, k, v, bias = _inputs(2, H, L, 16, (1, H, L, L), dtype=torch.float32, grad=False)
    with torch.no_grad():
        out = sparse_attention(q, k, v, layout, bias, backend="flex")
        ref = reference_attention(q.double(), k.double(), v.double(), layout, bias.double()).float()
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
        assert (out[:, :, bs : 2 * bs] == 0).all()
        bias_b = torch.randn(2, H, L, L)
        out = sparse_attention(q, k, v, layout, bias_b, backend="flex")
        torch.testing.assert_close(out, reference_attention(q, k, v, layout, bias_b), atol=2e-5, rtol=1e-4)
        out = sparse_attention(q, k, v, layout, None, backend="flex")
        torch.testing.assert_close(out, reference_attention(q, k, v, layout, None), atol=2e-5, rtol=1e-4)
        # inputs that require grad, under no_grad (FlexAttention on CPU refuses them as they are)
        xs = [t.clone().requires_grad_(True) for t in (q, k, v, bias_b)]
        out = sparse_attention(*xs[:3], layout, xs[3], backend="flex")
        torch.testing.assert_close(out, reference_attention(q, k, v, layout, bias_b), atol=2e-5, rtol=1e-4)
    assert nb == 5


def test_flex_cpu_gradients_raise_clearly():
    L = 64
    layout = build_layout(PatternConfig(32, window=0), L)
    q, k, v, bias = _inputs(1, 1, L, 8, (1, 1, L, L), dtype=torch.float32)
    with pytest.raises(RuntimeError, match="forward pass only"):
        sparse_attention(q, k, v, layout, bias, backend="flex")


@pytest.mark.parametrize("L,bs", [(256, 32), (320, 64)])
def test_cpu_inference_matches_reference(L, bs):
    """No-grad calls (the bias read through strided runs, no autograd Function) on whole-block L."""
    for target in (0.5, 0.75, 0.9):
        layout = build_layout(pattern_for_sparsity(L, target, block_size=bs), L)
        for shape in ((1, 3, L, L), (2, 3, L, L), (1, 1, L, L), None):
            q, k, v, bias = _inputs(2, 3, L, 16, shape, seed=int(target * 100), grad=False)
            with torch.no_grad():
                out = sparse_attention(q, k, v, layout, bias, backend="cpu")
            torch.testing.assert_close(out, reference_attention(q, k, v, layout, bias), atol=1e-10, rtol=1e-9)

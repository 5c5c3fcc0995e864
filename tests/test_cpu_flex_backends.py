"""What only the cpu and flex backends do: the cpu backend's float32 and bfloat16 inputs, and flex on a
CPU refusing gradients with a clear error. Exactness of both (every layout kind, bias shape, ragged
L, per-head and guided layouts, forward and gradients) is in tests/test_conformance.py."""

from __future__ import annotations

import pytest
import torch

from kernels import reference_attention, sparse_attention
from patterns import PatternConfig, build_layout
from patterns.sparsity import pattern_for_sparsity

F64 = torch.float64


def _inputs(B, H, L, D, bias_shape, dtype=F64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3))
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=g, dtype=dtype).requires_grad_(grad)
    return q, k, v, bias


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


def test_flex_cpu_gradients_raise_clearly():
    L = 64
    layout = build_layout(PatternConfig(32, window=0), L)
    q, k, v, bias = _inputs(1, 1, L, 8, (1, 1, L, L), dtype=torch.float32)
    with pytest.raises(RuntimeError, match="forward pass only"):
        sparse_attention(q, k, v, layout, bias, backend="flex")

"""The oracle (`reference`) and the dense SDPA backend against the attention formula itself."""

import math

import pytest
import torch

from kernels import sparse_attention
from patterns import BlockLayout, PatternConfig, build_layout


def _naive(q, k, v, allowed, bias):
    """softmax(q k^T / sqrt(d) + bias) v, row by row, in float64, skipping disallowed keys."""
    B, H, L, D = q.shape
    out = torch.zeros_like(q)
    b = torch.zeros(B, H, L, L, dtype=q.dtype) if bias is None else bias.expand(B, H, L, L)
    for bi in range(B):
        for h in range(H):
            for i in range(L):
                keys = allowed[i].nonzero().flatten()
                if len(keys) == 0:
                    continue
                s = q[bi, h, i] @ k[bi, h, keys].T / math.sqrt(D) + b[bi, h, i, keys]
                out[bi, h, i] = torch.softmax(s, -1) @ v[bi, h, keys]
    return out


@pytest.mark.parametrize("backend", ["reference", "dense"])
@pytest.mark.parametrize("L", [48, 37])
def test_backend_matches_formula(backend, L):
    q, k, v = (torch.randn(2, 2, L, 8, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 2, L, L, dtype=torch.float64)
    lay = build_layout(PatternConfig(16, 5, 3, 2), L)
    out = sparse_attention(q, k, v, lay, bias, backend=backend)
    torch.testing.assert_close(out, _naive(q, k, v, lay.token_mask(), bias))


@pytest.mark.parametrize("backend", ["reference", "dense"])
def test_empty_row_gives_zeros_and_finite_grads(backend):
    L = 40
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[1] = False
    lay = BlockLayout(mask, 16, L)
    q, k, v = (torch.randn(1, 2, L, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, L, L, dtype=torch.float64, requires_grad=True)
    out = sparse_attention(q, k, v, lay, bias, backend=backend)
    assert torch.equal(out[:, :, 16:32], torch.zeros_like(out[:, :, 16:32]))
    out.square().sum().backward()
    for t in (q, k, v, bias):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[:, :, 16:32], torch.zeros_like(q.grad[:, :, 16:32]))


def test_reference_half_precision_computes_in_float32():
    L = 32
    q, k, v = (torch.randn(1, 1, L, 16) for _ in range(3))
    lay = build_layout(PatternConfig(16, 16), L)
    ref32 = sparse_attention(q, k, v, lay, backend="reference")
    out16 = sparse_attention(q.half(), k.half(), v.half(), lay, backend="reference")
    assert out16.dtype == torch.float16
    torch.testing.assert_close(out16.float(), ref32, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda q, lay: dict(q=q[..., :-1, :]), "same shape"),
        (lambda q, lay: dict(layout=build_layout(PatternConfig(16), 30)), "seq_len"),
        (lambda q, lay: dict(bias=torch.randn(3, 2, 32, 32)), "does not broadcast"),
        (lambda q, lay: dict(layout=build_layout([PatternConfig(16)] * 3, 32)), "per-head layout"),
        (lambda q, lay: dict(backend="cuda-magic"), "backend must be one of"),
    ],
)
def test_bad_arguments_are_named(make, message):
    q = torch.randn(2, 2, 32, 8)
    lay = build_layout(PatternConfig(16, 8), 32)
    args = dict(q=q, k=q, v=q, layout=lay, bias=None, backend="reference")
    args.update(make(q, lay))
    with pytest.raises(ValueError, match=message):
        sparse_attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("layout"), **args)

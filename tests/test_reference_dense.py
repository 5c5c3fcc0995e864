"""What only the oracle (`reference`) and the entry point do: the reference computes half inputs in
float32, and bad arguments are named. Exactness of `reference` (against the attention formula) and
of `dense` on every case is in tests/test_conformance.py."""

import pytest
import torch

from kernels import sparse_attention
from patterns import PatternConfig, build_layout


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

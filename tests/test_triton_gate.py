"""The gate of AlphaFold2's gated attention (Algorithms 7, 8, 13, 14) in the Triton forward's
epilogue: at eager inference the kernel stores sigmoid(gate) * attention itself, reading the gate
logits through their strides (a slice of the module's fused projection). Checked against
sigmoid(gate) * the float64 reference on fresh random inputs (ragged L, both bias shapes, per-head
layouts with empty rows, coarse and dividing tiles, float32 / float16, NaN / inf in the gate and in
V), under the Triton interpreter on a CPU; with gradients the gate is an ordinary product after the
kernel and its gradient is exact; the other backends multiply after (`kernels.inputs.gate_output`).
Every test prints the seed it drew on failure."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import KernelConfig, sparse_attention
from kernels.reference import reference_attention
from patterns import BlockLayout, PatternConfig, build_layout

from test_triton_coarse_tiles import DEVICE, INTERPRET, TOL, _seed

pytestmark = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                reason="needs CUDA or TRITON_INTERPRET=1")


def _projection(B: int, L: int, H: int, D: int, dtype) -> tuple[torch.Tensor, ...]:
    """q, k, v and the gate logits as a gated module makes them: [B, H, L, D] views of one
    [B, L, 4, H, D] projection."""
    qkvg = torch.randn(B, L, 4, H, D, device=DEVICE, dtype=dtype)
    return tuple(qkvg.select(2, i).transpose(1, 2) for i in range(4))


def _random_layout(L: int, bs: int, heads, density: float = 0.45) -> BlockLayout:
    nb = math.ceil(L / bs)
    mask = torch.rand((heads, nb, nb) if heads else (nb, nb)) < density
    mask[..., 1 % nb, :] = False  # a dead row block: its rows store sigmoid(gate) * 0
    return BlockLayout(mask, bs, L)


def _expected(q, k, v, g, layout, bias) -> torch.Tensor:
    ref = reference_attention(q.double(), k.double(), v.double(), layout, None if bias is None else bias.double())
    return torch.sigmoid(g.double()) * ref


CASES = [  # (L, block, heads of a per-head layout or None, bias shape, config or None, dtype)
    (100, 16, None, "shared", None, torch.float32),
    (96, 16, 2, "full", (64, 64), torch.float32),
    (130, 32, None, "shared", (64, 64), torch.float32),
    (64, 32, 2, None, (32, 32), torch.float16),
    (72, 16, None, "full", (32, 16), torch.float16),
]


@pytest.mark.parametrize("L,bs,heads,bias_kind,cfg,dtype", CASES)
def test_gated_inference_equals_sigmoid_gate_times_the_reference(L, bs, heads, bias_kind, cfg, dtype):
    seed = _seed()
    B, H, D = 2, 2, 32
    q, k, v, g = _projection(B, L, H, D, dtype)
    bias = {None: None, "shared": torch.randn(1, H, L, L), "full": torch.randn(B, H, L, L)}[bias_kind]
    bias = None if bias is None else bias.to(DEVICE, dtype)
    layout = _random_layout(L, bs, H if heads else None)
    kc = None if cfg is None else KernelConfig(block_m=cfg[0], block_n=cfg[1], num_warps=4, num_stages=2)
    with torch.no_grad():
        got = sparse_attention(q, k, v, layout, bias, backend="triton", config=kc, gate=g)
        plain = sparse_attention(q, k, v, layout, bias, backend="triton", config=kc)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.double(), _expected(q, k, v, g, layout, bias), atol=atol, rtol=rtol,
                               msg=lambda m: f"seed={seed}: {m}")
    # the same attention as the ungated call, times sigmoid(gate) (to the output's rounding)
    torch.testing.assert_close(got.float(), (torch.sigmoid(g.float()) * plain.float()), atol=atol, rtol=rtol,
                               msg=lambda m: f"seed={seed}: {m}")
    assert got.transpose(1, 2).is_contiguous()  # q's memory order: a free view back to [B, L, H, D]


def test_non_finite_gate_and_values_follow_the_reference():
    """NaN in the gate gives NaN at that element only; a -inf gate gives 0 (sigmoid 0, finite
    attention), +inf the attention itself; a dead row gives 0 unless its gate is NaN; NaN in V at a
    kept key reaches the rows that keep it, gated or not (the coarse tile's exact path stores the
    gated rows too)."""
    seed = _seed()
    B, H, D, L, bs = 1, 2, 32, 96, 16
    q, k, v, g = _projection(B, L, H, D, torch.float32)
    layout = _random_layout(L, bs, None)
    g = g.clone()
    g[0, 0, 3, 5] = float("nan")
    g[0, 1, 40, :] = float("-inf")
    g[0, 1, 41, :] = float("inf")
    g[0, 0, 20, 7] = float("nan")  # row 20 is in the dead row block 1: NaN * 0 = NaN there
    v = v.clone()
    v[0, 1, 70, 2] = float("nan")
    kc = KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)  # coarse tiles: the exact path
    with torch.no_grad():
        got = sparse_attention(q, k, v, layout, None, backend="triton", config=kc, gate=g)
    want = _expected(q, k, v, g, layout, None)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"seed={seed}"
    ok = ~torch.isnan(want)
    torch.testing.assert_close(got.double()[ok], want[ok], atol=2e-4, rtol=2e-4, msg=lambda m: f"seed={seed}: {m}")
    row40 = ~torch.isnan(want[0, 1, 40])  # a -inf gate: 0 wherever the attention is finite
    assert bool((got[0, 1, 40][row40] == 0).all()) and bool(torch.isnan(got[0, 0, 20, 7]))
    assert bool((got[0, 0, 16:32].nan_to_num(1.0) == torch.where(torch.isnan(g[0, 0, 16:32]), 1.0, 0.0)).all())


def test_with_gradients_the_gate_is_a_product_after_the_kernel_and_its_gradient_is_exact():
    seed = _seed()
    B, H, D, L, bs = 2, 2, 32, 80, 16
    q, k, v, g = (t.detach().clone().requires_grad_(True) for t in _projection(B, L, H, D, torch.float32))
    bias = torch.randn(1, H, L, L, device=DEVICE, requires_grad=True)
    layout = build_layout(PatternConfig(block_size=bs, window=16, num_global=8), L)
    out = sparse_attention(q, k, v, layout, bias, backend="triton", gate=g)
    ref_in = [t.detach().double().requires_grad_(True) for t in (q, k, v, bias, g)]
    ref = torch.sigmoid(ref_in[4]) * reference_attention(*ref_in[:3], layout, ref_in[3])
    torch.testing.assert_close(out.double(), ref.detach(), atol=2e-4, rtol=2e-4, msg=lambda m: f"seed={seed}: {m}")
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, bias, g), dout)
    want = torch.autograd.grad(ref, ref_in, dout.double())
    for name, a, b in zip(("dq", "dk", "dv", "dbias", "dgate"), got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-3, rtol=1e-3, msg=lambda m: f"{name} (seed={seed}): {m}")


@pytest.mark.parametrize("backend", ["reference", "dense", "cpu"])
def test_other_backends_multiply_after(backend):
    from kernels.backends import REGISTRY

    if REGISTRY[backend].unavailable_reason("cpu"):
        pytest.skip(REGISTRY[backend].unavailable_reason("cpu"))
    seed = _seed()
    q, k, v, g = (t.cpu() for t in _projection(1, 48, 2, 32, torch.float32))
    layout = build_layout(PatternConfig(block_size=16, window=16), 48)
    got = sparse_attention(q, k, v, layout, None, backend=backend, gate=g)
    torch.testing.assert_close(got.double(), _expected(q, k, v, g, layout, None), atol=2e-4, rtol=2e-4,
                               msg=lambda m: f"seed={seed}: {m}")


def test_a_gate_of_another_shape_dtype_or_device_is_refused():
    q, k, v, g = (t.cpu() for t in _projection(1, 32, 2, 32, torch.float32))
    layout = build_layout(PatternConfig(block_size=16, window=16), 32)
    for bad in (g[..., :16], g.double(), "gate"):
        with pytest.raises(ValueError, match="gate"):
            sparse_attention(q, k, v, layout, None, backend="reference", gate=bad)

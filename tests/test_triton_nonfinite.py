"""Non-finite inputs through the Triton kernels, forward and all four gradients (tiny shapes, the
Triton interpreter on a CPU).

The semantics (``kernels/reference.py``): a pair is computed iff the layout keeps its tile and
values at pairs that are not computed are never read; at computed pairs plain IEEE arithmetic;
a row with no computed key or whose computed logits are all -inf returns zeros with zero
gradients. The forward is compared with ``reference_attention``. Gradients are compared with a
per-row oracle that evaluates exactly those semantics in float64 autograd (each row's softmax over
its computed keys only): the dense reference's autograd also multiplies the zero gradients of
masked pairs by the values there (0 * NaN), so it would put NaN into gradients of rows and keys
that never compute the non-finite value, which the first rule excludes.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from kernels import KernelConfig, sparse_attention
from kernels.reference import reference_attention
from kernels.triton_op import triton_sparse_attention
from patterns import BlockLayout

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"

B, H, L, D, BS = 2, 2, 40, 8, 16  # 3 blocks, ragged tail of 8
NAN, INF = float("nan"), float("inf")


def _layout() -> BlockLayout:
    mask = torch.tensor(
        [[[1, 0, 1], [0, 1, 0], [1, 1, 1]],
         [[1, 1, 0], [0, 0, 0], [0, 1, 1]]],  # head 1: query block 1 computes nothing
        dtype=torch.bool)
    return BlockLayout(mask, BS, L)


def row_oracle(q, k, v, layout, bias, scale):
    """out[b, h, i] = softmax over the computed keys J_i of (q_i k_J^T * scale + bias_iJ) times v_J,
    zeros if J_i is empty or every computed logit is -inf; float64, differentiable."""
    allowed = layout.token_mask()
    if allowed.dim() == 2:
        allowed = allowed.expand(H, L, L)
    bias_full = bias.expand(B, H, L, L) if bias is not None else None
    rows = []
    for b in range(B):
        for h in range(H):
            for i in range(L):
                J = allowed[h, i].nonzero().flatten()
                if J.numel() == 0:
                    rows.append(torch.zeros(D, dtype=q.dtype))
                    continue
                s = (k[b, h, J] @ q[b, h, i]) * scale
                if bias_full is not None:
                    s = s + bias_full[b, h, i, J]
                if bool((s == -INF).all()):
                    rows.append(torch.zeros(D, dtype=q.dtype))
                    continue
                rows.append(torch.softmax(s, 0) @ v[b, h, J])
    return torch.stack(rows).reshape(B, H, L, D)


def _inputs(bias_shape, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    bias = torch.randn(*bias_shape, generator=g)
    return q, k, v, bias


def _run_triton(q, k, v, bias, scale, grad):
    ins = [t.clone().to(DEVICE).requires_grad_() for t in (q, k, v, bias)]
    out = triton_sparse_attention(*ins[:3], _layout(), ins[3], scale=scale, config=KernelConfig(16, 16),
                                  bwd_config=KernelConfig(16, 16))
    grads = torch.autograd.grad(out, ins, grad.to(DEVICE))
    return out.detach().cpu(), [g.cpu() for g in grads]


def _run_oracle(q, k, v, bias, scale, grad):
    ins = [t.double().requires_grad_() for t in (q, k, v, bias)]
    out = row_oracle(*ins[:3], _layout(), ins[3], scale)
    grads = torch.autograd.grad(out, ins, grad.double(), allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(ins, grads)]
    return out.detach(), grads


def _same(name, got, want):
    torch.testing.assert_close(got.double(), want.double(), atol=2e-4, rtol=2e-4, equal_nan=True,
                               msg=lambda m: f"{name}: {m}")


def check(q, k, v, bias, scale=0.35, seed=0):
    """Triton forward against the reference (equal_nan) and the row oracle; all four gradients
    against the row oracle. Returns the Triton output and gradients."""
    grad = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(seed + 1))
    out, grads = _run_triton(q, k, v, bias, scale, grad)
    ref = reference_attention(q.double(), k.double(), v.double(), _layout(), bias.double(), scale)
    _same("out vs reference", out, ref)
    o_out, o_grads = _run_oracle(q, k, v, bias, scale, grad)
    _same("out vs row oracle", out, o_out)
    for name, g, og in zip(("dq", "dk", "dv", "dbias"), grads, o_grads):
        _same(name, g, og)
    return out, grads


# the batch-shared bias goes through the separate dBias kernel, the per-batch one through dQ
BIAS_SHAPES = [pytest.param((1, H, L, L), id="bias1H"),
               pytest.param((B, H, L, L), id="biasBH", marks=pytest.mark.slow)]


def test_row_oracle_matches_reference_on_finite_inputs():
    """The test's own oracle is the reference where both are defined (finite inputs)."""
    q, k, v, bias = _inputs((1, H, L, L), 3)
    ref = reference_attention(q.double(), k.double(), v.double(), _layout(), bias.double(), 0.35)
    torch.testing.assert_close(row_oracle(q.double(), k.double(), v.double(), _layout(), bias.double(), 0.35), ref)


@pytest.mark.parametrize("bias_shape", BIAS_SHAPES)
def test_nan_in_q_k_v_at_computed_pairs(bias_shape):
    q, k, v, bias = _inputs(bias_shape, 11)
    q[0, 0, 5, 2] = NAN     # row 5 of head 0 (block 0: keys 0-15 and 32-39)
    k[1, 1, 20, 0] = NAN    # key 20 (block 1) of head 1: computed by query blocks 0 and 2
    v[0, 1, 35, 3] = INF    # value 35 (block 2) of head 1: computed by query block 2 (0 * inf where p = 0)
    out, (dq, dk, dv, db) = check(q, k, v, bias)
    assert out[0, 0, 5].isnan().all() and not out[0, 0, :5].isnan().any()
    assert out[1, 1, :16].isnan().all() and out[1, 1, 32:].isnan().all()
    assert not torch.isfinite(out[0, 1, 32:, 3]).any() and torch.isfinite(out[0, 1, :16]).all()
    assert not out[1, 1, 16:32].isnan().any()  # the empty query block: zeros
    assert torch.equal(out[1, 1, 16:32], torch.zeros(16, D))


@pytest.mark.parametrize("bias_shape", BIAS_SHAPES)
def test_nan_in_bias_and_plus_inf(bias_shape):
    q, k, v, bias = _inputs(bias_shape, 12)
    bias[0, 0, 3, 33] = NAN    # computed pair (block 0, 2) of head 0
    bias[0, 1, 36, 20] = INF   # computed pair (block 2, 1) of head 1: inf - inf = NaN
    out, _ = check(q, k, v, bias)
    assert out[0, 0, 3].isnan().all() and out[0, 1, 36].isnan().all()
    assert not out[0, 0, 4].isnan().any()


@pytest.mark.slow
@pytest.mark.parametrize("bias_shape", BIAS_SHAPES)
def test_non_finite_values_outside_the_layout_are_never_read(bias_shape):
    """NaN / inf in k, v and bias at pairs no row computes: outputs and every gradient are
    bit-identical to the run with finite values there."""
    q, k, v, bias = _inputs(bias_shape, 13)
    out0, grads0 = _run_triton(q, k, v, bias, 0.35, torch.ones(B, H, L, D))
    k2, v2, bias2 = k.clone(), v.clone(), bias.clone()
    # head 0: query block 1 computes only key block 1; no query block of head 0 ... keys 16-31 are
    # computed by query blocks 1 and 2, so pick pairs (block 1, block 0) and (block 0, block 1)
    bias2[0, 0, 20, 3] = NAN      # pair (1, 0) of head 0: not kept
    bias2[0, 0, 2, 18] = INF      # pair (0, 1) of head 0: not kept
    bias2[0, 1, 25, 30] = NAN     # head 1, query block 1: no kept pair at all
    out, grads = _run_triton(q, k2, v2, bias2, 0.35, torch.ones(B, H, L, D))
    assert torch.equal(out, out0)
    for g, g0 in zip(grads, grads0):
        # the bias gradient is 0 outside the layout and equal elsewhere
        assert torch.equal(g, g0)
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_nan_in_k_v_at_keys_no_row_computes():
    """A key block that no query block of a head computes: NaN there never reaches anything."""
    q, k, v, bias = _inputs((1, H, L, L), 14)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)  # key block 1 never computed
    lay = BlockLayout(mask, BS, L)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 16:32] = NAN
    v2[:, :, 16:32] = INF
    res = []
    for kk, vv in ((k, v), (k2, v2)):
        ins = [t.clone().to(DEVICE).requires_grad_() for t in (q, kk, vv, bias)]
        out = triton_sparse_attention(*ins[:3], lay, ins[3], config=KernelConfig(16, 16), bwd_config=KernelConfig(16, 16))
        res.append((out,) + torch.autograd.grad(out, ins, torch.ones_like(out)))
    for a, b in zip(*res):
        assert torch.equal(a, b)
    assert torch.equal(res[1][2][:, :, 16:32].cpu(), torch.zeros(B, H, 16, D))  # dk of the unread keys


@pytest.mark.slow
@pytest.mark.parametrize("bias_shape", [(1, H, L, L), (B, H, L, L)], ids=["bias1H", "biasBH"])
def test_all_minus_inf_bias_rows_give_zeros_and_zero_grads(bias_shape):
    """A row whose computed logits are all -inf is dead: zeros whatever v holds (NaN and inf at
    its keys), zero gradients; a row with one finite logit left is an ordinary softmax."""
    q, k, v, bias = _inputs(bias_shape, 15)
    bias[..., 6, :] = -INF            # row 6 of every head: dead
    bias[..., 37, :] = -INF
    bias[..., 37, 38] = 0.5           # row 37: one finite logit (key 38, computed in both heads)
    v[0, :, 0, 1] = NAN               # read by row 6 (head 0 and 1 compute key block 0)
    v[1, :, 33, 0] = INF              # read by row 6 of head 0 and by row 37
    out, (dq, dk, dv, db) = check(q, k, v, bias)
    assert torch.equal(out[:, :, 6], torch.zeros(B, H, D))
    assert torch.equal(dq[:, :, 6], torch.zeros(B, H, D))
    assert torch.equal(db[..., 6, :], torch.zeros_like(db[..., 6, :]))


def test_scale_nan_makes_every_live_row_nan():
    q, k, v, bias = _inputs((1, H, L, L), 16)
    out, _ = check(q, k, v, bias, scale=NAN)
    assert out[:, 0].isnan().all()
    assert out[:, 1, :16].isnan().all() and out[:, 1, 32:].isnan().all()
    assert torch.equal(out[:, 1, 16:32], torch.zeros(B, 16, D))  # no computed key: zeros


def test_nan_propagation_through_the_public_entry_point():
    """``sparse_attention(..., backend="triton")`` gives the reference's NaN pattern."""
    q, k, v, bias = _inputs((1, H, L, L), 17)
    q[1, 0, 30, 0] = NAN
    out = sparse_attention(*(t.to(DEVICE) for t in (q, k, v)), _layout(), bias.to(DEVICE), backend="triton",
                           config=KernelConfig(16, 16)).cpu()
    ref = reference_attention(q, k, v, _layout(), bias)
    assert torch.equal(out.isnan(), ref.isnan())
    assert math.isnan(float(out[1, 0, 30, 0]))


def test_nan_in_the_last_row_of_a_ragged_tile_stays_in_its_row():
    """L = 40 is not a multiple of the block: the last query tile's rows past L read the bias of
    row L - 1 (never stored); a NaN there reaches row L - 1 only."""
    q, k, v, bias = _inputs((1, H, L, L), 18)
    bias[0, 0, L - 1, 5] = NAN  # pair (block 2, block 0) of head 0: computed
    out, _ = check(q, k, v, bias)
    assert out[:, 0, L - 1].isnan().all()
    assert torch.isfinite(out[:, 0, 32:L - 1]).all()

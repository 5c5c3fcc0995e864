"""`torch.library.opcheck` of the Triton custom ops (schema, fake tensors, autograd registration,
AOT dispatch with dynamic shapes), on small shapes. Under the Triton interpreter the ops run on
CPU tensors."""

from __future__ import annotations

import os

import pytest
import torch

import kernels.triton_op  # noqa: F401  (registers the sparse_autotune ops)
from patterns import PatternConfig, build_layout

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"

FWD = torch.ops.sparse_autotune.block_sparse_attention_fwd.default
BWD = torch.ops.sparse_autotune.block_sparse_attention_bwd.default


def _args(bias_shape, requires_grad, L=40, B=2, H=2, D=16, per_head=False):
    cfg = PatternConfig(16, 0, 0, 2)
    lay = build_layout([cfg, PatternConfig(16, 0)] if per_head else cfg, L)
    kv_counts, kv_indices, q_counts, q_indices = lay.index_on(DEVICE)
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE, requires_grad=requires_grad) for _ in range(3))
    bias = None
    if bias_shape is not None:
        bias = torch.randn(*bias_shape, device=DEVICE, requires_grad=requires_grad)
    # block_size, scale, block_m, block_n, num_warps, num_stages, then the backward's bm, bn, warps, stages
    return (q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices, 16, 0.25, 16, 16, 4, 1, 16, 16, 4, 1)


@pytest.mark.parametrize(
    "requires_grad", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["nograd", "grad"]
)
@pytest.mark.parametrize("bias_shape", [None, (1, 2, 40, 40), (2, 1, 40, 40)], ids=str)
def test_opcheck_forward(bias_shape, requires_grad):
    torch.library.opcheck(FWD, _args(bias_shape, requires_grad))


@pytest.mark.slow
def test_opcheck_forward_per_head_layout():
    torch.library.opcheck(FWD, _args((1, 2, 40, 40), True, per_head=True))


@pytest.mark.slow
def test_opcheck_forward_coarse_tiles():
    """A forward tile of 2 x 2 layout blocks (kernels.coarse_index) with the backward at 16 x 16."""
    args = list(_args((1, 2, 40, 40), True, per_head=True))
    args[10:12] = [32, 32]
    torch.library.opcheck(FWD, tuple(args))


@pytest.mark.slow
@pytest.mark.parametrize("compute_dbias", [False, True])
@pytest.mark.parametrize("bias_shape", [None, (1, 2, 40, 40), (2, 2, 40, 40)], ids=str)
def test_opcheck_backward(bias_shape, compute_dbias):
    q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices, *params = _args(bias_shape, False)
    out, lse = FWD(q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices, *params)
    grad_out = torch.randn_like(out)
    args = (grad_out, q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices, *params[:2], *params[6:],
            compute_dbias)
    # the backward op has no autograd formula of its own (no double backward): inputs without grad
    torch.library.opcheck(BWD, args)


def test_backward_op_returns_bias_shaped_dbias():
    q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices, *params = _args((1, 2, 40, 40), False)
    out, lse = FWD(q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices, *params)
    bwd = (*params[:2], *params[6:])
    res = BWD(torch.randn_like(out), q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices, *bwd, True)
    assert [tuple(t.shape) for t in res] == [tuple(q.shape)] * 3 + [tuple(bias.shape)]
    res = BWD(torch.randn_like(out), q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices, *bwd, False)
    assert res[3].numel() == 0

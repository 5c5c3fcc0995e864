"""Attention on a block layout: one entry point, several backends.

``sparse_attention(q, k, v, layout, bias=None, *, scale=None, backend="auto", config=None)``
computes softmax(q k^T * scale + bias) v where the softmax runs over the keys that
``layout.token_mask()`` allows (a row with no allowed key gives zeros). q, k, v are [B, H, L, D];
bias broadcasts to [B, H, L, L] (AlphaFold2 passes [1, H, L, L], shared by all MSA rows).
Non-finite inputs (NaN, inf, ``scale=nan``, rows whose bias is all -inf) follow one set of rules on
every backend, written in the docstring of ``kernels.reference``: pairs outside the layout are
never read, NaN at a computed pair makes its row NaN, an all -inf row gives zeros.

Backends:
  reference  exact dense definition in PyTorch (the oracle), any device and dtype
  triton     the product's block-sparse Triton kernel (forward + backward), CUDA or TRITON_INTERPRET
  flex       FlexAttention with a BlockMask from the same layout (the peer baseline)
  dense      scaled_dot_product_attention with the bias (the dense baseline)
  cpu        the fastest correct CPU path
  auto       triton on CUDA tensors, cpu otherwise

What each backend supports (devices, dtypes, head dims, gradients, launch-config type,
availability) is one record per backend in ``kernels.backends``, which the dispatcher reads.
A layout may live on the CPU or on the device of q (a guided layout is built on its signal's
device); every backend reads its index where it runs. Per-layout plans that backends keep are in
one cache, ``kernels.plans``; ``clear_plan_caches()`` empties it (before a cold measurement).
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from patterns import BlockLayout

from . import backends as _backends
from .config import KernelConfig, candidate_configs
from .dense import dense_attention
from .plans import check_layout_device, clear_plan_caches
from .reference import reference_attention

BACKENDS: tuple[str, ...] = ("auto", *_backends.names())

__all__ = [
    "sparse_attention",
    "reference_attention",
    "dense_attention",
    "KernelConfig",
    "candidate_configs",
    "BACKENDS",
    "check_inputs",
    "clear_plan_caches",
]


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, bias: Optional[torch.Tensor]) -> None:
    """The one input contract of every backend: raise ValueError naming the argument when q, k, v,
    the layout and the bias do not fit together. Checked in full once per (shapes, dtypes, devices,
    layout geometry) and remembered, so a repeated call costs one dictionary lookup.

    q, k, v: tensors of one floating dtype on one device, all [B, H, L, D] with every size >= 1
    (any strides); layout: block_size >= 1, seq_len == L, a block mask of ceil(L / block_size)
    blocks per side with data (not on the meta device), per-head masks with H heads; bias: None or
    a floating tensor on q's device of at most 4 dimensions that broadcasts (right-aligned) to
    [B, H, L, L]."""
    try:
        key = _contract_key(q, k, v, layout, bias)
    except AttributeError:  # not tensors / not a layout: the full check says which argument
        _check_contract(q, k, v, layout, bias)
        raise
    if key in _CHECKED:
        return
    _check_contract(q, k, v, layout, bias)
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[key] = True


_CHECKED: dict = {}
_CHECKED_MAX = 4096


def _contract_key(q, k, v, layout, bias) -> tuple:
    bm = layout.block_mask
    return (
        q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
        layout.block_size, layout.seq_len, bm.shape, bm.dtype, bm.device,
        None if bias is None else (bias.shape, bias.dtype, bias.device),
    )


def _check_contract(q, k, v, layout, bias) -> None:
    """The full checks of ``check_inputs`` (no caching)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if not isinstance(layout, BlockLayout):
        raise ValueError(f"layout must be a patterns.BlockLayout; got {type(layout).__name__}")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must all be [B, H, L, D] with the same shape; got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    B, H, L, D = q.shape
    if min(q.shape) < 1:
        raise ValueError(f"q, k, v must have B, H, L and head dim D all >= 1; got [B, H, L, D] = {list(q.shape)}")
    if not q.dtype.is_floating_point or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v must share one floating dtype (float64, float32, float16, bfloat16); got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    _check_layout(layout, H, L)
    if bias is not None:
        _check_bias(bias, q, B, H, L)


def _check_layout(layout, H: int, L: int) -> None:
    bs = layout.block_size
    if isinstance(bs, bool) or not isinstance(bs, numbers.Integral) or bs < 1:
        raise ValueError(f"layout.block_size must be an integer >= 1; got {bs!r}")
    if layout.seq_len != L:
        raise ValueError(f"layout.seq_len={layout.seq_len} but q has L={L}")
    nb = -(-L // bs)
    bm = layout.block_mask
    if bm.dtype != torch.bool or bm.dim() not in (2, 3) or tuple(bm.shape[-2:]) != (nb, nb):
        raise ValueError(
            f"layout.block_mask must be bool [{nb}, {nb}] or [H, {nb}, {nb}] for L={L}, block_size={bs}; "
            f"got {bm.dtype} {list(bm.shape)}"
        )
    if layout.num_heads is not None and layout.num_heads != H:
        raise ValueError(f"per-head layout has {layout.num_heads} heads but q has H={H}")
    check_layout_device(layout)


def _check_bias(bias, q, B: int, H: int, L: int) -> None:
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"bias must be None or a torch.Tensor; got {type(bias).__name__}")
    if not bias.dtype.is_floating_point:
        raise ValueError(f"bias must be a floating tensor; got {bias.dtype}")
    if bias.device != q.device:
        raise ValueError(f"bias must be on q's device {q.device}; got {bias.device}")
    # right-aligned broadcasting, checked by hand (torch.broadcast_shapes costs ~0.1 ms a call)
    if bias.dim() > 4 or any(b != 1 and b != t for b, t in zip(reversed(bias.shape), (L, L, H, B))):
        raise ValueError(f"bias of shape {list(bias.shape)} does not broadcast to [{B}, {H}, {L}, {L}]")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    bias: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    backend: str = "auto",
    config: Optional[KernelConfig] = None,
) -> torch.Tensor:
    """Block-sparse attention of [B, H, L, D] inputs on ``layout`` (see module docstring). The
    backend is looked up in the registry (``kernels.backends``); ``config`` goes to a backend that
    takes a launch config (triton) and is ignored by the others."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    check_inputs(q, k, v, layout, bias)
    if bias is not None and bias.dim() < 4:
        bias = bias[(None,) * (4 - bias.dim())]  # a view: [L, L] -> [1, 1, L, L] (gradients flow back)
    return _backends.resolve(backend, q.device).run(q, k, v, layout, bias, scale=scale, config=config)


# the deployed tuned-file reader (kernels/tuned.py): what a deployment loads next to sparse_attention
from .tuned import TunedFile, TunedPatterns, load_tuned  # noqa: E402

__all__ += ["TunedFile", "TunedPatterns", "load_tuned"]

"""`check_inputs`: the one input contract every backend shares (q, k, v, the layout, the bias), run
by the dispatcher (`kernels.sparse_attention`) before any backend and by a backend called directly
(`kernels.triton_op`), with the same ValueError for every backend.

A module of its own, below the package's face, so that a backend checks its inputs without
importing ``kernels`` (whose ``__init__`` imports the registry, which imports the backends).
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from patterns import BlockLayout

from .plans import check_layout_device

__all__ = ["check_inputs", "check_gate", "gate_output"]


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
    return (
        q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, layout.geometry,
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
    shape = layout.mask_shape  # a BlockLayout's mask is bool [nb, nb] or [H, nb, nb] by construction
    if len(shape) not in (2, 3) or tuple(shape[-2:]) != (nb, nb):
        raise ValueError(
            f"layout.block_mask must be bool [{nb}, {nb}] or [H, {nb}, {nb}] for L={L}, block_size={bs}; "
            f"got {list(shape)}"
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


def check_gate(q: torch.Tensor, gate: Optional[torch.Tensor]) -> None:
    """The gate of a gated attention call (`gate_output`): None, or a tensor of q's shape, dtype and
    device (ValueError naming ``gate`` otherwise)."""
    if gate is None:
        return
    if not isinstance(gate, torch.Tensor):
        raise ValueError(f"gate must be a tensor or None, got {type(gate).__name__}")
    if gate.shape != q.shape or gate.dtype != q.dtype or gate.device != q.device:
        raise ValueError(f"gate must have q's shape, dtype and device {list(q.shape)} {q.dtype} {q.device}; "
                         f"got {list(gate.shape)} {gate.dtype} {gate.device}")


def gate_output(out: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
    """sigmoid(gate) * out (AlphaFold2's gated attention: the output gate of Algorithms 7, 8, 13
    and 14) for [*, H, L, D] tensors, the product taken in [*, L, H, D] order, which is the memory
    order of a module's projections and of the output a backend lays out in q's order: the result
    transposes back to [*, L, H, D] for free. ``out`` unchanged when ``gate`` is None. The path of
    every backend, call and attention kind that does not apply the gate inside its kernel
    (`kernels.triton_op`: eager calls without gradients; `models.evoformer.attention.attend`)."""
    if gate is None:
        return out
    return (torch.sigmoid(gate.transpose(-2, -3)) * out.transpose(-2, -3)).transpose(-2, -3)


"""`check_inputs`: the shape checks every backend shares (q, k, v, the layout, the bias), run by the
dispatcher (`kernels.sparse_attention`) and by a backend called directly (`kernels.triton_op`).

A module of its own, below the package's face, so that a backend checks its inputs without
importing ``kernels`` (whose ``__init__`` imports the registry, which imports the backends).
"""

from __future__ import annotations

from typing import Optional

import torch

from patterns import BlockLayout

from .plans import check_layout_device

__all__ = ["check_inputs"]


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, bias: Optional[torch.Tensor]) -> None:
    """Raise ValueError naming the argument when shapes do not fit together (or the layout holds no
    data: a layout on the meta device)."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must all be [B, H, L, D] with the same shape; got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    B, H, L, D = q.shape
    if layout.seq_len != L:
        raise ValueError(f"layout.seq_len={layout.seq_len} but q has L={L}")
    if layout.num_heads is not None and layout.num_heads != H:
        raise ValueError(f"per-head layout has {layout.num_heads} heads but q has H={H}")
    check_layout_device(layout)
    if bias is not None:
        if bias.dim() > 4:
            raise ValueError(f"bias must broadcast to [B, H, L, L]; got {list(bias.shape)}")
        # right-aligned broadcasting, checked by hand (torch.broadcast_shapes costs ~0.1 ms a call)
        if any(b != 1 and b != t for b, t in zip(reversed(bias.shape), (L, L, H, B))):
            raise ValueError(f"bias of shape {list(bias.shape)} does not broadcast to [{B}, {H}, {L}, {L}]")

"""Dense baseline: `torch.nn.functional.scaled_dot_product_attention` with the pair bias.

With a full layout this is plain fused SDPA with the bias as ``attn_mask`` (the fair dense
baseline: the bias is made contiguous, otherwise SDPA drops to its unfused path). With a sparse
layout the layout is folded into the float mask (-inf outside it), which computes the same
function as the sparse backends at dense cost.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from patterns import BlockLayout


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Optional[BlockLayout] = None,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """SDPA(q, k, v, attn_mask=bias [+ -inf outside layout]); rows with no allowed key give 0."""
    mask = None if bias is None else bias.to(q.dtype).contiguous()
    row_any = None
    if layout is not None and not layout.is_full:
        allowed = layout.token_mask().to(q.device)
        row_any = allowed.any(-1, keepdim=True)
        neg = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        neg = neg.masked_fill(~row_any, 0.0)
        mask = neg if mask is None else (mask + neg).contiguous()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if row_any is not None:
        out = out * row_any.to(out.dtype)
    return out

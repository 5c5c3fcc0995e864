"""The exact definition of block-sparse attention, in plain PyTorch: the oracle for every test.

    O = softmax(Q K^T * scale + bias, masked to layout.token_mask()) V

computed densely (materialised L x L logits), with -inf outside the layout; a row with no allowed
key returns zeros. Half-precision inputs are computed in float32; float32/float64 in their own
dtype. Differentiable in q, k, v and bias through autograd.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from patterns import BlockLayout


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype attention is computed in: float32 for half inputs, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def resolve_scale(head_dim: int, scale: Optional[float]) -> float:
    """The logit scale: ``scale`` if given, else 1/sqrt(head_dim) (Vaswani et al. 2017)."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Optional[BlockLayout],
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over the pairs of ``layout`` (all pairs if None)."""
    ct = compute_dtype(q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q.to(ct), k.to(ct).transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.to(ct)
    if layout is not None and not layout.is_full:
        allowed = layout.token_mask().to(q.device)  # [L, L] or [H, L, L]: broadcasts over B (and H)
        row_any = allowed.any(-1, keepdim=True)
        # empty rows: finite logits so that neither softmax nor its gradient produces NaN
        s = s.masked_fill(~allowed, float("-inf")).masked_fill(~row_any, 0.0)
        p = torch.softmax(s, dim=-1) * row_any
    else:
        p = torch.softmax(s, dim=-1)
    return torch.matmul(p, v.to(ct)).to(q.dtype)

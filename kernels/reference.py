"""The exact definition of block-sparse attention, in plain PyTorch: the oracle for every test.

    O = softmax(Q K^T * scale + bias, masked to layout.token_mask()) V

computed densely (materialised L x L logits), with -inf outside the layout. Half-precision inputs
are computed in float32; float32/float64 in their own dtype. Differentiable in q, k, v and bias
through autograd.

Non-finite values (the semantics every backend follows):

* A pair (i, j) is computed iff the layout keeps its tile. Values at pairs that are not computed
  are never read: a NaN in k, v or the bias at a key that row i does not compute does not reach
  ``out[i]`` or its gradients.
* At computed pairs, plain IEEE arithmetic: NaN in ``q[i]``, ``k[j]`` or ``bias[i, j]`` gives a NaN
  row; +inf in the bias gives a NaN row (inf - inf in the softmax); NaN or inf in ``v[j]`` gives
  NaN in every row that computes j (0 * inf = NaN even where the weight is 0); ``scale=nan`` makes
  every row with a computed key NaN.
* A row with no computed key, or whose computed logits are all -inf (a bias of -inf means "not
  allowed"), returns zeros with zero gradients, whatever v holds: what SDPA and FlexAttention
  return for fully masked rows.
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
    scale = resolve_scale(q.shape[-1], scale)
    q_compute, k_compute, v_compute = q.to(ct), k.to(ct), v.to(ct)
    zero = torch.zeros((), dtype=ct, device=q.device)
    allowed = None
    if layout is not None and not layout.is_full:
        allowed = layout.token_mask().to(q.device)  # [L, L] or [H, L, L]: broadcasts over B (and H)
    # Non-finite q, k, v or scale with a sparse layout: every product is formed pair by pair over the
    # computed pairs only (materialises [..., L, L, D]; taken only in this rare case), so that
    # neither the output nor autograd ever forms 0 * NaN with a value outside the layout. The
    # dense q k^T and p v below would (their backward multiplies a pair's zero gradient by it).
    pairwise = allowed is not None and (
        not math.isfinite(scale) or not all(bool(torch.isfinite(t).all()) for t in (q_compute, k_compute, v_compute))
    )
    if pairwise:
        a5 = allowed.unsqueeze(-1)
        s = (torch.where(a5, q_compute.unsqueeze(-2), zero) * torch.where(a5, k_compute.unsqueeze(-3), zero)).sum(-1) * scale
    else:
        s = torch.matmul(q_compute, k_compute.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.to(ct)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    # A row is live iff some computed logit is not -inf (NaN counts as live, so it propagates).
    # Dead rows get finite logits so that neither the softmax nor its gradient produces NaN.
    live = (s != float("-inf")).any(-1, keepdim=True)
    p = torch.softmax(s.masked_fill(~live, 0.0), dim=-1)
    if allowed is not None:
        p = torch.where(allowed, p, zero)  # a NaN row's softmax is NaN outside the layout too
    if pairwise:
        out = (p.unsqueeze(-1) * torch.where(a5, v_compute.unsqueeze(-3), zero)).sum(-2)
    else:
        out = torch.matmul(p, v_compute)
    return torch.where(live, out, zero).to(q.dtype)

"""Dense baseline: `torch.nn.functional.scaled_dot_product_attention` with the pair bias.

With ``layout=None`` this is plain fused SDPA with the bias as ``attn_mask`` and nothing else
(the fair dense baseline the autotuner times: the bias is made contiguous, otherwise SDPA drops to
its unfused path). With a full layout, the same. With a sparse layout the layout is folded into
the float mask (the bias inside the layout, -inf outside it), which computes the same function as
the sparse backends at dense cost.

Non-finite values follow ``kernels/reference.py`` whenever a layout is given. SDPA itself does
for a full layout, except in one place: a row whose logits are all -inf gets P = 0, and SDPA then
returns 0 * NaN = NaN where v holds NaN/inf (and NaN gradients), where the semantics want zeros.
With a sparse layout, a dense computation reads every pair, so a non-finite value at a pair the
layout does not compute would leak into rows (forward: 0 * NaN in P V) or gradients (the
backward's 0 * NaN). So whenever q, k, v or the scale is non-finite, or the SDPA output is (a NaN
or +inf bias at a computed pair), the call is answered by the block-sparse SDPA-bucket engine of
``kernels.cpu_bucket`` instead, which only reads the computed pairs and handles those rows. Only
``layout=None`` (the timed baseline, no check added to it) keeps SDPA's own behaviour there.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from patterns import BlockLayout

from .reference import resolve_scale


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Optional[BlockLayout] = None,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """SDPA(q, k, v, attn_mask=bias, -inf outside layout); rows with no finite logit give 0."""
    if layout is None or (layout.is_full and (bias is None or bool(torch.isfinite(v).all()))):
        mask = None if bias is None else bias.to(q.dtype).contiguous()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    s = resolve_scale(q.shape[-1], scale)
    if math.isfinite(s) and all(bool(torch.isfinite(t).all()) for t in (q, k, v)):
        allowed = layout.token_mask().to(q.device)
        ninf = torch.tensor(float("-inf"), dtype=q.dtype, device=q.device)
        # a select, not an add: a NaN or +inf bias outside the layout is never read
        mask = torch.where(allowed, torch.zeros((), dtype=q.dtype, device=q.device) if bias is None else bias.to(q.dtype), ninf)
        live = (mask != ninf).any(-1, keepdim=True)  # some computed logit is not -inf
        mask = mask.masked_fill(~live, 0.0).contiguous()  # finite rows for SDPA; zeroed below
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=s)
        out = torch.where(live, out, torch.zeros((), dtype=out.dtype, device=out.device))
        if bool(torch.isfinite(out).all()):
            return out
    from .cpu_bucket import bucket_sparse_attention  # reads only the computed pairs

    return bucket_sparse_attention(q, k, v, layout, bias, scale=s)

"""The CPU backend: the fastest correct block-sparse attention on a CPU.

    O = softmax(Q K^T * scale + bias, masked to the layout) V      (exactly ``reference_attention``)

``cpu_sparse_attention`` picks one of three engines:

* a full layout: ``scaled_dot_product_attention`` with the bias (the dense baseline itself, so the
  backend is never slower than dense at 0% sparsity);
* float32 (and half, computed in float32) with head dim 8/16/32/64 and block size 16/32/64/128: the
  fused C kernel of ``kernels.cpu_fused`` (one pass over the kept tiles, bias read in place, no
  gathered buffers);
* otherwise (float64, other head dims or block sizes, no C compiler on the machine, inputs on
  another device): the SDPA-bucket engine of ``kernels.cpu_bucket``.

Non-finite values follow ``kernels/reference.py`` on every engine. For a full layout SDPA alone
would differ in one place (a row whose logits are all -inf gets 0 * NaN where v holds NaN/inf), so
when a bias is given a check over v picks ``kernels.cpu_bucket.sdpa``'s exact plain-op path.

Under ``torch.compile`` the fused kernel is a registered op (``kernels.cpu_fused``), the layout's
fullness is a constant of the layout object (``_is_full``), and a full layout with a bias picks SDPA
or the exact path with ``torch.cond`` on the finiteness of v: no graph break. The bucket engine's
data-dependent checks (empty layout, finite v) still break the graph.

A layout may live on another device than q (a guided layout is built on its signal's device): the
engines read its index on the host (one copy per layout, ``kernels.plans.host_index``).
"""

from __future__ import annotations

from typing import Optional

import torch

from patterns import BlockLayout, GuidedConfig

from . import cpu_fused
from .compile_marks import assume_constant_result
from .cpu_bucket import bucket_sparse_attention, sdpa
from .plans import host_index, layout_plans
from .reference import compute_dtype, resolve_scale

__all__ = ["cpu_sparse_attention", "bucket_sparse_attention"]


def cpu_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    bias: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over ``layout``'s pairs; q, k, v [B, H, L, D], bias
    broadcasting to [B, H, L, L]. Differentiable in q, k, v and bias."""
    ct = compute_dtype(q.dtype)
    if not isinstance(layout.config, GuidedConfig) and _is_full(layout):  # guided: chosen per call, data
        out_dtype = q.dtype
        q, k, v = q.to(ct), k.to(ct), v.to(ct)
        mask = None if bias is None else bias.to(ct).contiguous()
        sc = resolve_scale(q.shape[-1], scale)
        if mask is not None and torch.compiler.is_compiling():
            # the finiteness of v is data: torch.compile traces both paths and picks one at run time
            return torch.cond(
                torch.isfinite(v).all(),
                lambda q_, k_, v_, m_: sdpa(q_, k_, v_, m_, sc, False),
                lambda q_, k_, v_, m_: sdpa(q_, k_, v_, m_, sc, True),
                # torch.cond wants operands that alias nothing (q, k, v may be views of one projection)
                tuple(t.clone(memory_format=torch.contiguous_format) for t in (q, k, v)) + (mask,),
            ).to(out_dtype)
        exact = bias is not None and not bool(torch.isfinite(v).all())
        return sdpa(q, k, v, mask, sc, exact).to(out_dtype)
    if ct == torch.float32 and cpu_fused.supports(q, layout):
        return cpu_fused.fused_sparse_attention(q, k, v, layout, bias, scale=scale)
    return bucket_sparse_attention(q, k, v, layout, bias, scale=scale)


@assume_constant_result
def _is_full(layout: BlockLayout) -> bool:
    """Whether every tile is kept, read by torch.compile as a constant of the layout (a
    data-dependent ``bool`` of its mask would break the graph; the compiled code is guarded on the
    layout object). Read from the layout's index on the host (``kernels.plans.host_index``: no
    device sync per call for a layout built on a GPU). A sparse layout's CPU index is thereby built
    here and cached by the layout, so that a compiled call reads it as graph inputs instead of
    tracing its construction (which would compile the function a second time once it is cached).
    Kept with the layout's plans (``kernels.plans``): one lookup per call after the first."""
    kv_counts = host_index(layout)[0]
    plans = layout_plans(kv_counts)
    full = plans.get("cpu-full")
    if full is None:
        full = plans["cpu-full"] = bool((kv_counts == layout.n_blocks).all())
    return full

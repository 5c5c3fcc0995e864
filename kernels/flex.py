"""FlexAttention peer baseline: ``torch.nn.attention.flex_attention`` on the same block layout.

* The ``BlockMask`` is built directly from the layout's compact index (``kv_counts`` /
  ``kv_indices``, the same form FlexAttention uses) with ``BlockMask.from_kv_blocks``, block size =
  the layout's block size, ``seq_lengths=(L, L)``. No mask_mod: every pair inside a kept tile
  attends, and FlexAttention itself masks the pairs past L of a ragged last tile. Query block rows
  with no kept tile give zeros (FlexAttention's convention for fully masked rows, which is also
  the reference's). BlockMasks are kept per (layout, device) with the layout's plans
  (``kernels.plans``).
* The bias enters through ``score_mod``: ``score + bias[b, h, q_idx, kv_idx]`` on the bias
  *expanded* (a stride-0 view, never a copy) to [B, H, L, L], so [1, H, L, L] and [B, H, L, L]
  biases and any other broadcast go through the same code.
* Both variants (with / without bias) are wrapped in one ``torch.compile``d function each, built
  once per process; torch.compile specialises it per shape and caches the compiled code (the
  recompile limits are raised so a new shape never silently falls back to the slow eager path).
* CUDA kernel tiles are set (``kernel_options``) to divide a layout block smaller than 128.
* Non-finite values follow ``kernels/reference.py``: ``score_mod`` turns a NaN logit into +inf
  (FlexAttention would drop a NaN logit; +inf gives the NaN row softmax gives), and a NaN or
  infinite scale is applied to q (Inductor cannot compile a NaN constant). FlexAttention gives a
  row whose logits are all -inf 0 * NaN = NaN where v holds NaN/inf: on CPU, when v is not finite
  (a check over v), such rows are set to zeros (found from dense logits: the rare path only). On
  CUDA that last correction is not made (it would need the LSE, which CPU FlexAttention cannot
  return, or a host sync per call; not tested here). Pairs outside the BlockMask are never read.
* CPU: FlexAttention runs compiled, forward only. Asking for gradients of a CPU call raises a
  ``RuntimeError`` that says so. CUDA: forward and backward.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from patterns import BlockLayout

from .plans import layout_plans
from .reference import resolve_scale

__all__ = ["flex_sparse_attention", "block_mask_for"]

_RECOMPILE_LIMIT = 256
_COMPILED: dict[tuple, object] = {}


def _raise_recompile_limits() -> None:
    cfg = torch._dynamo.config
    for name, limit in (
        ("recompile_limit", _RECOMPILE_LIMIT),
        ("cache_size_limit", _RECOMPILE_LIMIT),  # the older name
        ("accumulated_recompile_limit", 4 * _RECOMPILE_LIMIT),
        ("accumulated_cache_size_limit", 4 * _RECOMPILE_LIMIT),
    ):
        if hasattr(cfg, name):
            try:
                setattr(cfg, name, max(int(getattr(cfg, name)), limit))
            except Exception:  # pragma: no cover - renamed/aliased option
                pass


def block_mask_for(layout: BlockLayout, device: torch.device | str):
    """The FlexAttention BlockMask of ``layout`` on ``device`` (kept with the layout's plans,
    ``kernels.plans``)."""
    from torch.nn.attention.flex_attention import BlockMask

    kv_counts, kv_indices, _, _ = layout.index_on(device)
    plans = layout_plans(kv_counts)
    block_mask = plans.get("flex-block-mask")
    if block_mask is None:
        L = layout.seq_len
        block_mask = plans["flex-block-mask"] = BlockMask.from_kv_blocks(
            kv_counts.unsqueeze(0).to(torch.int32).contiguous(),   # [1, H or 1, nb]
            kv_indices.unsqueeze(0).to(torch.int32).contiguous(),  # [1, H or 1, nb, nb]
            BLOCK_SIZE=layout.block_size,
            seq_lengths=(L, L),
        )
    return block_mask


def _kernel_options(device: torch.device, block_size: int) -> Optional[dict]:
    """GPU kernel tiles that divide the layout's block size (FlexAttention's default tiles are 128
    on some GPUs, which do not divide a 64 (or smaller) sparse block)."""
    if device.type != "cuda" or block_size >= 128:
        return None
    t64, t32 = min(64, block_size), min(32, block_size)
    return {
        "fwd_BLOCK_M": t64, "fwd_BLOCK_N": t64,
        "bwd_BLOCK_M1": t32, "bwd_BLOCK_N1": t64, "bwd_BLOCK_M2": t64, "bwd_BLOCK_N2": t32,
    }


def _nan_to_inf(score):
    """A NaN logit becomes +inf. FlexAttention's online softmax drops a NaN logit (its row comes
    out finite) but turns +inf into a NaN row (inf - inf), which is what softmax does with a NaN:
    so a NaN in q, k, the bias or the scale makes its row NaN, as in ``kernels/reference.py``."""
    return torch.where(score != score, float("inf"), score)


def _dead_rows(q, k, layout: BlockLayout, bias, scale: float) -> torch.Tensor:
    """[B, H, L, 1] bool: rows whose computed logits are all -inf (or that compute no key). Dense
    logits: used only when v holds NaN/inf."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias
    s = s.masked_fill(~layout.token_mask().to(q.device), float("-inf"))
    return (s == float("-inf")).all(-1, keepdim=True)


def _compiled(kind: str, kernel_options: Optional[dict]):
    key = (kind, None if kernel_options is None else tuple(sorted(kernel_options.items())))
    if key not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _raise_recompile_limits()
        opts = None if kernel_options is None else dict(kernel_options)
        if kind == "bias":

            def fn(q, k, v, bias, block_mask, scale):
                def score_mod(score, b, h, q_idx, kv_idx):
                    return _nan_to_inf(score + bias[b, h, q_idx, kv_idx])

                return flex_attention(
                    q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, kernel_options=opts
                )

        else:

            def fn(q, k, v, block_mask, scale):
                def score_mod(score, b, h, q_idx, kv_idx):
                    return _nan_to_inf(score)

                return flex_attention(
                    q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, kernel_options=opts
                )

        _COMPILED[key] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[key]


def flex_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over ``layout``'s pairs with compiled FlexAttention."""
    B, H, L, D = q.shape
    scale = resolve_scale(D, scale)
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, bias)
    ):
        raise RuntimeError(
            "flex backend: FlexAttention on CPU supports the forward pass only; call it under "
            "torch.no_grad() / with inputs that do not require grad, or use backend='cpu' "
            "(differentiable) on CPU"
        )
    if q.device.type == "cpu":
        # no gradient wanted here (checked above), but FlexAttention on CPU refuses any input that
        # requires grad, even under torch.no_grad()
        q, k, v = q.detach(), k.detach(), v.detach()
        bias = None if bias is None else bias.detach()
    if not math.isfinite(scale):
        # Inductor cannot compile a NaN constant: scale q instead (rows without keys stay zeros)
        q, scale = q * scale, 1.0
    block_mask = block_mask_for(layout, q.device)
    opts = _kernel_options(q.device, layout.block_size)
    if bias is None:
        out = _compiled("plain", opts)(q, k, v, block_mask, scale)
    else:
        bias = bias.to(q.dtype)
        while bias.dim() < 4:
            bias = bias.unsqueeze(0)
        out = _compiled("bias", opts)(q, k, v, bias.expand(B, H, L, L), block_mask, scale)
    if q.device.type == "cpu" and not bool(torch.isfinite(v).all()):
        # FlexAttention gives a row whose logits are all -inf P = 0, hence 0 * NaN = NaN where v
        # holds NaN/inf; the semantics want zeros whatever v holds
        out = torch.where(_dead_rows(q, k, layout, bias, scale), torch.zeros((), dtype=out.dtype), out)
    return out

"""The CPU backend: block-sparse attention as one fused SDPA call per chunk of query block rows.

    O = softmax(Q K^T * scale + bias, masked to the layout) V      (exactly ``reference_attention``)

Design (what makes it fast on a CPU):

* Query block rows are cut into chunks of consecutive rows with the same number ``c`` of kept key
  blocks. For a chunk of ``nq`` rows the rows' key/value blocks are gathered ([B, H*nq, c*bs, D],
  cheap at D = 32) and every query block row becomes one "head" of a single
  ``scaled_dot_product_attention`` call (the fused, tiled CPU kernel: scores, bias, softmax and
  P V without materialising the logits), with the chunk's bias as ``attn_mask``.
* The bias of the kept pairs is read without any per-element index arithmetic: the chunk's
  columns are split into runs that are one strided view of the bias ("abs": the same key blocks
  for every row, e.g. global columns or a single row; "rel": key blocks at a fixed offset from the
  row, e.g. the band or a strided diagonal), copied with plain strided copies; columns that fit
  neither are gathered tile by tile. Cost is proportional to the kept pairs; a bias broadcast over
  B (or H) is never expanded (SDPA broadcasts it). No [B, H, L, L] copy is ever made.
* Padded keys of a ragged last block get -inf in the mask (with a ragged L the bias is gathered
  through a flat index instead); rows of the chunks are put back in order with one index_select;
  a row with no kept key block gives zeros (never NaN, forward or backward).
* A full layout calls SDPA directly with the contiguous bias (the dense baseline is the best plan
  there), so it is never slower than dense.
* Per-head layouts run the same plan per head.

Gradients: q, k, v through autograd of the gathers and SDPA; the bias through ``_BiasGather``, a
custom autograd.Function that gathers the bias of all chunks at once and in backward writes every
chunk's gradient into one bias-sized buffer (strided adds, no per-chunk full-size zeros).
The plans (row chunks, runs, index tensors) are cached per (layout, device, B*H) in a weak
dictionary. Half-precision inputs are computed in float32, like the reference.
``torch.set_num_threads`` is left to the caller.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from patterns import BlockLayout

__all__ = ["cpu_sparse_attention"]


# Rows per chunk: about this many logits (B*H*nq*bs*c*bs) per fused call. Larger chunks mean
# fresh multi-MB gather buffers (page faults); smaller ones more calls. Measured best near 2^18.
CHUNK_ELEMENTS = 1 << 18


@dataclass
class _Chunk:
    """Consecutive query block rows r0 .. r0 + nq - 1 that all keep ``c`` key blocks.

    The bias of its kept pairs is read as ``segments``: runs of score columns whose bias tiles form
    one strided view of the bias (no index arithmetic per element), either a fixed key block range
    for every row ("abs": global columns, a single row) or a range at a fixed offset from the row's
    own block ("rel": band, strided diagonals); the remaining columns (``gather_j``) are gathered
    tile by tile. With a ragged L the flat index ``bias_idx`` is used instead."""

    r0: int
    c: int
    rows: torch.Tensor        # [nq] query block indices
    blocks: torch.Tensor      # [nq, c] kept key block indices (ascending per row)
    flat_blocks: torch.Tensor  # [nq * c]
    col_pad: Optional[torch.Tensor]  # bool [nq, 1, c * bs]: key past L (ragged tail), or None
    segments: list = None     # (kind "abs" | "rel", first column j0, columns m, key block or offset)
    gather_j: Optional[torch.Tensor] = None  # [g] columns gathered tile by tile
    gather_blocks: Optional[torch.Tensor] = None  # [nq, g] their key blocks
    bias_idx: Optional[torch.Tensor] = None  # ragged L only: flat row * L + col of the kept pairs

    @property
    def nq(self) -> int:
        return self.rows.numel()


@dataclass
class _Plan:
    chunks: list[_Chunk]
    inverse: torch.Tensor     # [nb] position of each query block in cat(chunk outputs, zero block)


_PLANS: "weakref.WeakKeyDictionary[BlockLayout, dict]" = weakref.WeakKeyDictionary()


def _segments(rows: torch.Tensor, blocks: torch.Tensor):
    """Split the columns of ``blocks`` [nq, c] into strided-view runs and gathered columns."""
    nq, c = blocks.shape
    kinds = []
    for j in range(c):
        col = blocks[:, j]
        if bool((col == col[0]).all()):
            kinds.append(("abs", int(col[0])))
        elif bool((col - rows == col[0] - rows[0]).all()):
            kinds.append(("rel", int(col[0] - rows[0])))
        else:
            kinds.append(None)
    segs, gather = [], []
    j = 0
    while j < c:
        if kinds[j] is None:
            gather.append(j)
            j += 1
            continue
        kind, val = kinds[j]
        m = 1
        while j + m < c and kinds[j + m] == (kind, val + m):
            m += 1
        segs.append((kind, j, m, val))
        j += m
    return segs, gather


def _make_plan(counts: torch.Tensor, indices: torch.Tensor, bs: int, L: int, rows_per_chunk, device) -> _Plan:
    nb = counts.numel()
    ar = torch.arange(bs)
    ragged = L % bs != 0
    chunks: list[_Chunk] = []
    order = []
    start = 0
    while start < nb:  # runs of consecutive rows with the same count, cut to chunk size
        c = int(counts[start])
        stop = start + 1
        while stop < nb and int(counts[stop]) == c and stop - start < rows_per_chunk(c):
            stop += 1
        if c > 0:
            rows = torch.arange(start, stop)
            blocks = indices[rows, :c].long()
            col = (blocks[:, :, None] * bs + ar).reshape(rows.numel(), c * bs)
            pad = col >= L
            ch = _Chunk(
                r0=start,
                c=c,
                rows=rows.to(device),
                blocks=blocks.to(device),
                flat_blocks=blocks.reshape(-1).to(device),
                col_pad=pad.unsqueeze(1).to(device) if bool(pad.any()) else None,
            )
            if ragged:
                row_tok = (rows[:, None] * bs + ar).clamp(max=L - 1)
                ch.bias_idx = (row_tok[:, :, None] * L + col.clamp(max=L - 1)[:, None, :]).reshape(-1).to(device)
            else:
                ch.segments, gather = _segments(rows, blocks)
                if gather:
                    ch.gather_j = torch.tensor(gather, dtype=torch.long, device=device)
                    ch.gather_blocks = blocks[:, gather].to(device)
            chunks.append(ch)
            order.append(rows)
        start = stop
    n_out = sum(int(o.numel()) for o in order)
    inverse = torch.full((nb,), n_out, dtype=torch.long)  # default: the zero block
    if order:
        inverse[torch.cat(order)] = torch.arange(n_out)
    return _Plan(chunks, inverse.to(device))


def _plans(layout: BlockLayout, device: torch.device, bh: int) -> list[_Plan]:
    per_layout = _PLANS.setdefault(layout, {})
    key = (str(device), bh)
    if key not in per_layout:
        bs = layout.block_size
        counts, indices = layout.kv_counts, layout.kv_indices

        def rows_per_chunk(c: int) -> int:
            return max(1, CHUNK_ELEMENTS // (bh * bs * bs * c))

        per_layout[key] = [
            _make_plan(counts[h], indices[h], bs, layout.seq_len, rows_per_chunk, device)
            for h in range(counts.shape[0])
        ]
    return per_layout[key]


def _segment_view(t: torch.Tensor, ch: _Chunk, seg, bs: int) -> torch.Tensor:
    """[Bb, Hb, nq, bs, m*bs] strided view of ``t`` [Bb, Hb, L, L] (last dims contiguous) for one segment."""
    kind, _, m, val = seg
    L = t.shape[-1]
    if kind == "abs":
        step, off = bs * L, ch.r0 * bs * L + val * bs
    else:
        step, off = bs * L + bs, ch.r0 * bs * L + (ch.r0 + val) * bs
    return t.as_strided(
        (t.shape[0], t.shape[1], ch.nq, bs, m * bs), (t.stride(0), t.stride(1), step, L, 1), t.storage_offset() + off
    )


def _gather_bias(bias: torch.Tensor, ch: _Chunk, bs: int) -> torch.Tensor:
    """The bias of the chunk's kept pairs in score order, [Bb, Hb, nq, bs, c*bs] (no autograd)."""
    Bb, Hb, L, _ = bias.shape
    nq, c = ch.nq, ch.c
    if ch.bias_idx is not None:
        return bias.reshape(Bb, Hb, L * L).index_select(2, ch.bias_idx).view(Bb, Hb, nq, bs, c * bs)
    out = bias.new_empty(Bb, Hb, nq, bs, c * bs)
    for seg in ch.segments:
        j0, m = seg[1], seg[2]
        out[..., j0 * bs : (j0 + m) * bs].copy_(_segment_view(bias, ch, seg, bs))
    if ch.gather_j is not None:
        nb = L // bs
        tiles = bias.view(Bb, Hb, nb, bs, nb, bs)
        ar = torch.arange(bs, device=bias.device).view(1, bs, 1)
        g = tiles[:, :, ch.rows.view(-1, 1, 1), ar, ch.gather_blocks.unsqueeze(1)]  # [Bb, Hb, nq, r, g, t]
        out.view(Bb, Hb, nq, bs, c, bs)[:, :, :, :, ch.gather_j] = g
    return out


def _scatter_bias_grad(gbias: torch.Tensor, grad: torch.Tensor, ch: _Chunk, bs: int) -> None:
    """gbias [Bb, Hb, L, L] += the chunk's gradient [Bb, Hb, nq, bs, c*bs] at its pairs."""
    Bb, Hb, L, _ = gbias.shape
    nq, c = ch.nq, ch.c
    if ch.bias_idx is not None:
        gbias.view(Bb, Hb, L * L).index_add_(2, ch.bias_idx, grad.reshape(Bb, Hb, -1))
        return
    for seg in ch.segments:
        j0, m = seg[1], seg[2]
        _segment_view(gbias, ch, seg, bs).add_(grad[..., j0 * bs : (j0 + m) * bs])
    if ch.gather_j is not None:
        nb = L // bs
        tiles = gbias.view(Bb, Hb, nb, bs, nb, bs)
        ar = torch.arange(bs, device=gbias.device).view(1, bs, 1)
        idx = (slice(None), slice(None), ch.rows.view(-1, 1, 1), ar, ch.gather_blocks.unsqueeze(1))
        tiles[idx] += grad.view(Bb, Hb, nq, bs, c, bs)[:, :, :, :, ch.gather_j]  # pairs are distinct


class _BiasGather(torch.autograd.Function):
    """Differentiable gather of the kept-pair bias of every chunk of a plan (one output per chunk);
    the backward writes all chunks' gradients into a single bias-sized buffer."""

    @staticmethod
    def forward(ctx, bias, plan, bs):
        ctx.plan, ctx.bs, ctx.shape = plan, bs, bias.shape
        return tuple(_gather_bias(bias, ch, bs) for ch in plan.chunks)

    @staticmethod
    def backward(ctx, *grads):
        g = grads[0]
        gbias = g.new_zeros(ctx.shape)
        for ch, gc in zip(ctx.plan.chunks, grads):
            if gc is not None:
                _scatter_bias_grad(gbias, gc, ch, ctx.bs)
        return gbias, None, None


def _bias4(bias: torch.Tensor, L: int) -> torch.Tensor:
    """bias as [Bb, Hb, L, L] with contiguous last two dims (Bb, Hb kept at 1 when broadcast)."""
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    if bias.shape[-2:] != (L, L):
        bias = bias.expand(*bias.shape[:2], L, L)
    if bias.stride(-1) != 1 or bias.stride(-2) != L:
        bias = bias.contiguous()
    return bias


def _attend_plan(q, k, v, bias, plan: _Plan, bs: int, L: int) -> torch.Tensor:
    """q, k, v [B, H, nb*bs, D] (q already scaled, zero-padded past L); bias [Bb, Hb, L, L] or None."""
    B, H, Lp, D = q.shape
    nb = Lp // bs
    q5, k5, v5 = q.view(B, H, nb, bs, D), k.view(B, H, nb, bs, D), v.view(B, H, nb, bs, D)
    grad_mode = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    biases = None
    if bias is not None:
        Bb, Hb = bias.shape[:2]
        if grad_mode and bias.requires_grad:
            biases = _BiasGather.apply(bias, plan, bs)
    outs = []
    for i, ch in enumerate(plan.chunks):
        nq, c = ch.nq, ch.c
        # each query block row is one "head" of a fused SDPA call over its c*bs gathered keys
        qg = q5.index_select(2, ch.rows).view(B, H * nq, bs, D)
        kg = k5.index_select(2, ch.flat_blocks).view(B, H * nq, c * bs, D)
        vg = v5.index_select(2, ch.flat_blocks).view(B, H * nq, c * bs, D)
        mask = None
        if bias is not None:
            mask = biases[i] if biases is not None else _gather_bias(bias, ch, bs)  # [Bb, Hb, nq, bs, c*bs]
        if ch.col_pad is not None:  # keys past L
            neg = torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(torch.ones((), dtype=torch.bool), float("-inf"))
            pad = torch.where(ch.col_pad, neg, torch.zeros((), dtype=q.dtype, device=q.device))  # [nq, 1, c*bs]
            mask = pad.expand(1, 1, nq, bs, c * bs) if mask is None else mask + pad
        if mask is not None:
            Bm, Hm = mask.shape[:2]
            if Hm != H:
                mask = mask.expand(Bm, H, nq, bs, c * bs)
            mask = mask.reshape(Bm, H * nq, bs, c * bs)
        o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=1.0)
        outs.append(o.view(B, H, nq, bs, D))
    outs.append(q.new_zeros(B, H, 1, bs, D))
    out = torch.cat(outs, dim=2).index_select(2, plan.inverse)                # [B, H, nb, bs, D]
    return out.view(B, H, Lp, D)


class _Zeros(torch.autograd.Function):
    """Zeros of a given shape that still depend on the inputs (zero gradients), for a layout with
    no kept tile at all: the output stays part of the graph like the reference's."""

    @staticmethod
    def forward(ctx, shape, *inputs):
        ctx.meta = [(t.shape, t.dtype, t.device) if t is not None else None for t in inputs]
        return inputs[0].new_zeros(shape)

    @staticmethod
    def backward(ctx, grad):
        grads = [None if m is None else torch.zeros(m[0], dtype=m[1], device=m[2]) for m in ctx.meta]
        return (None, *grads)


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
    B, H, L, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out_dtype = q.dtype
    ct = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    if bias is not None:
        bias = bias.to(ct)

    if layout.is_full:
        mask = None if bias is None else bias.contiguous()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).to(out_dtype)

    bs = layout.block_size
    if not bool(layout.block_mask.any()):
        return _Zeros.apply((B, H, L, D), q, k, v, bias).to(out_dtype)
    Lp = layout.n_blocks * bs
    plans = _plans(layout, q.device, B * (H if layout.num_heads is None else 1))
    q = q * scale
    if Lp != L:  # zero-pad the ragged tail to whole blocks (cheap: D is small)
        q, k, v = (F.pad(t, (0, 0, 0, Lp - L)) for t in (q, k, v))
    if bias is not None:
        bias = _bias4(bias, L)
    if len(plans) == 1:
        out = _attend_plan(q, k, v, bias, plans[0], bs, L)
    else:
        heads = []
        for h, plan in enumerate(plans):
            bh = None
            if bias is not None:
                bh = bias[:, h : h + 1] if bias.shape[1] > 1 else bias
            sl = slice(h, h + 1)
            heads.append(_attend_plan(q[:, sl], k[:, sl], v[:, sl], bh, plan, bs, L))
        out = torch.cat(heads, dim=1)
    if Lp != L:
        out = out[:, :, :L]
    return out.to(out_dtype)

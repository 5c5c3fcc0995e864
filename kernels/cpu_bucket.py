"""The CPU backend's SDPA-bucket engine: block-sparse attention as a few fused SDPA calls.

    O = softmax(Q K^T * scale + bias, masked to the layout) V      (exactly ``reference_attention``)

The CPU backend (``kernels.cpu``) uses this engine where its fused C kernel cannot run: float64,
head dims other than 8/16/32/64, block sizes other than 16/32/64/128, or no C compiler on the
machine. ``kernels.dense`` also answers non-finite inputs on a sparse layout with it. It runs on any
device ``scaled_dot_product_attention`` runs on (CUDA tensors too).

Design:

* Query block rows are split into a few groups, not into runs of consecutive rows:
  - the full rows (every key block kept, e.g. global tokens) form one dense SDPA call: their query
    blocks against all keys, with their bias rows as ``attn_mask`` (a view when they are
    consecutive, no copy);
  - the other rows are sorted by their number of kept key blocks and cut into a few buckets; each
    row of a bucket is padded to the bucket's largest count ``c`` with dummy key blocks whose bias
    is -inf (exact: they get zero probability and zero gradient). Every query block row becomes one
    "head" of a single ``scaled_dot_product_attention`` call (the fused, tiled CPU kernel: scores,
    bias, softmax and P V without materialising the logits): q [B, H*nq, bs, D], the gathered
    keys/values [B, H*nq, c*bs, D] (cheap at small D), the gathered bias [Bb, H*nq, bs, c*bs].
  With local + global + strided patterns this is 2-4 large calls whatever the row counts do, which
  keeps both threads busy and the per-op overhead negligible.
* The bias of the kept pairs is read with one ``index_select`` over the bias seen as rows of
  ``bs`` contiguous elements ([Bb, Hb, L*nb, bs]): cost proportional to the kept pairs, 256-byte
  runs. A bias broadcast over B is never expanded (SDPA broadcasts it). No [B, H, L, L] copy is made.
* Without autograd the gathered buffers (bias, keys, values) are reused from call to call (per
  thread, grown when needed): a fresh multi-MB buffer costs more in page faults than the copy
  itself. They are kept with the plan, or for guided layouts in the workspace all layouts of one
  config share (``BlockLayout.workspace``), so that a new layout per forward reuses them too.
* With a ragged L the bias is padded once to whole blocks (-inf on the padded keys); without a bias
  a small cached key mask does the same. Rows are put back in order with one index_select; a row
  with no kept key block gives zeros (never NaN, forward or backward).
* Per-head layouts run the same plan per head.

Plans: the buckets are cut on the host from the layout's compact index (``kernels.plans.host_index``:
the layout's own for a CPU layout, one copy per layout for a layout built on a GPU) and their
index tensors are moved once to the device of q; they are kept per (layout, device of q, B*H) in
the one plan cache (``kernels.plans``, cleared by ``kernels.clear_plan_caches()``). So a layout on
another device than q (a guided layout built on the GPU given to CPU tensors, a CPU layout given to
CUDA tensors) gives the same answer, and costs one host transfer of its index per layout, none per
call after the first. A layout on the ``meta`` device is refused with a ValueError.

Non-finite values follow ``kernels/reference.py`` (only the kept tiles are gathered, so values
outside the layout are never read). Where SDPA alone would differ, a check over v (O(L*D)) picks an
exact path: when v holds NaN/inf, a row whose logits are all -inf would get 0 * NaN from SDPA, so
the groups are computed by ``sdpa``'s plain-op path (materialised logits per group), and a padded
slot's bias gradient (0 * inf there) is dropped; a NaN/inf scale keeps rows without keys out of
the scaled q's gradient. Finite inputs take exactly the SDPA path above. The engine's data-dependent
checks (empty layout, finite v) break a ``torch.compile`` graph.

Gradients: q, k, v through autograd of the gathers and SDPA; the bias through ``_BiasGather``, a
custom autograd.Function that gathers the bias of all groups at once and in backward adds every
group's gradient into one bias-sized buffer (one ``index_add_`` per bucket).
Half-precision inputs are computed in float32, like the reference.
``torch.set_num_threads`` is left to the caller.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from patterns import BlockLayout

from .plans import host_index, layout_plans
from .reference import compute_dtype, resolve_scale

__all__ = ["bucket_sparse_attention", "sdpa"]


# A bucket may pad its rows by at most this fraction of its largest count (more rows of a lower
# count start a new bucket), and holds at most this many gathered logits per (batch, head) pair of
# the bias (bounds the size of one call's buffers).
PAD_FRACTION = 0.15
BUCKET_ELEMENTS = 1 << 24


@dataclass
class _Bucket:
    """Query block rows ``rows`` [nq] that each attend to ``c`` key blocks ``blocks`` [nq, c]
    (padded slots repeat a kept block; their bias is -inf)."""

    c: int
    rows: torch.Tensor         # [nq]
    flat_blocks: torch.Tensor  # [nq * c]
    bias_idx: torch.Tensor     # [nq * bs * c]: bias row (of bs elements) for each (row, i, slot)
    pad_idx: Optional[torch.Tensor]  # positions in bias_idx of padded slots, or None
    key_mask: dict = field(default_factory=dict)  # no-bias masks per (H, dtype): -inf on padding

    @property
    def nq(self) -> int:
        return self.rows.numel()


@dataclass
class _Plan:
    full_rows: Optional[torch.Tensor]  # [nf] query blocks that keep every key block, or None
    full_span: Optional[tuple]          # (r0, r1) when those rows are consecutive
    buckets: list
    inverse: torch.Tensor      # [nb] position of each query block in cat(group outputs, zero block)
    work: dict = field(default_factory=dict)  # reusable no-grad buffers, per thread


def _make_plan(counts: torch.Tensor, indices: torch.Tensor, bs: int, nb: int, hb: int, device) -> _Plan:
    counts = counts.long()
    ar = torch.arange(bs)
    full = torch.nonzero(counts == nb).flatten()
    order = []
    full_rows = full_span = None
    if full.numel():
        full_rows = full
        r0, r1 = int(full[0]), int(full[-1]) + 1
        full_span = (r0, r1) if r1 - r0 == full.numel() else None
        order.append(full)
    part = torch.nonzero((counts > 0) & (counts < nb)).flatten()
    part = part[torch.argsort(counts[part], descending=True, stable=True)]
    buckets = []
    i = 0
    while i < part.numel():
        c = int(counts[part[i]])
        max_rows = max(1, BUCKET_ELEMENTS // (hb * bs * bs * c))
        j = i + 1
        while j < part.numel() and j - i < max_rows and int(counts[part[j]]) >= c * (1 - PAD_FRACTION):
            j += 1
        rows = part[i:j]
        nq = rows.numel()
        cnt = counts[rows]
        slot = torch.arange(c)
        padded = slot[None, :] >= cnt[:, None]                                   # [nq, c]
        blocks = indices[rows, :c].long()
        blocks = torch.where(padded, blocks[:, :1], blocks)                      # pad: repeat a kept block
        tok = rows[:, None] * bs + ar[None, :]                                   # [nq, bs] query tokens
        bias_idx = (tok[:, :, None] * nb + blocks[:, None, :]).reshape(-1)       # [nq*bs*c]
        pad = padded[:, None, :].expand(nq, bs, c).reshape(-1)
        buckets.append(
            _Bucket(
                c=c,
                rows=rows.to(device),
                flat_blocks=blocks.reshape(-1).to(device),
                bias_idx=bias_idx.to(device),
                pad_idx=torch.nonzero(pad).flatten().to(device) if bool(pad.any()) else None,
            )
        )
        order.append(rows)
        i = j
    n_out = sum(int(o.numel()) for o in order)
    inverse = torch.full((nb,), n_out, dtype=torch.long)  # default: the zero block
    if order:
        inverse[torch.cat(order)] = torch.arange(n_out)
    return _Plan(
        None if full_rows is None else full_rows.to(device), full_span, buckets, inverse.to(device)
    )


def _plans(layout: BlockLayout, device: torch.device, bh: int) -> list[_Plan]:
    """The layout's bucket plans (one per layout head) for inputs on ``device`` with ``bh``
    (batch x heads) rows of the bias, cut on the host and kept in ``kernels.plans``."""
    counts, indices = host_index(layout)[:2]
    per_layout = layout_plans(counts)
    key = ("bucket", str(device), bh)
    if key not in per_layout:
        bs, nb = layout.block_size, layout.n_blocks
        per_layout[key] = [_make_plan(counts[h], indices[h], bs, nb, bh, device) for h in range(counts.shape[0])]
    return per_layout[key]


def _buffer(store: Optional[dict], name, shape, like: torch.Tensor) -> Optional[torch.Tensor]:
    """A reusable buffer of ``shape`` (no-grad calls only; ``store`` None: allocate fresh). ``store``
    is the layout's shared workspace (guided layouts of one config, so that a new layout per forward
    writes into the buffers of the previous one) or the plan's own dict. One flat buffer per
    (thread, name), grown when a call needs more, viewed as a contiguous prefix."""
    if store is None:
        return None
    key = ("bucket", threading.get_ident(), name)
    n = math.prod(shape)
    flat = store.get(key)
    if flat is None or flat.numel() < n or flat.dtype != like.dtype or flat.device != like.device:
        flat = like.new_empty(n)
        store[key] = flat
    return flat[:n].view(shape)


def _full_rows_bias(bias: torch.Tensor, plan: _Plan, bs: int) -> torch.Tensor:
    if plan.full_span is not None:
        r0, r1 = plan.full_span
        return bias[:, :, r0 * bs : r1 * bs]
    tok = (plan.full_rows[:, None] * bs + torch.arange(bs, device=bias.device)).reshape(-1)
    return bias.index_select(2, tok)


def _gather_bias(bias: torch.Tensor, plan: _Plan, bs: int, store: Optional[dict]) -> list:
    """[full rows' bias [Bb, Hb, nf*bs, Lp] or None] + [bias of each bucket, [Bb, Hb, nq*bs*c, bs]]."""
    Bb, Hb, Lp, _ = bias.shape
    rows = bias.view(Bb, Hb, Lp * (Lp // bs), bs)
    out = [None if plan.full_rows is None else _full_rows_bias(bias, plan, bs)]
    for i, bk in enumerate(plan.buckets):
        buf = _buffer(store, ("bias", i), (Bb, Hb, bk.bias_idx.numel(), bs), bias)
        g = torch.index_select(rows, 2, bk.bias_idx, out=buf) if buf is not None else rows.index_select(2, bk.bias_idx)
        if bk.pad_idx is not None:
            g.index_fill_(2, bk.pad_idx, float("-inf"))
        out.append(g)
    return out


class _BiasGather(torch.autograd.Function):
    """Differentiable gather of the bias of every group of a plan; the backward adds all groups'
    gradients into a single bias-sized buffer."""

    @staticmethod
    def forward(ctx, bias, plan, bs):
        ctx.plan, ctx.bs, ctx.shape = plan, bs, bias.shape
        outs = _gather_bias(bias, plan, bs, None)
        if outs[0] is not None and plan.full_span is not None:
            outs[0] = outs[0].clone()  # not a view of the input (autograd.Function outputs)
        return tuple(o for o in outs if o is not None)

    @staticmethod
    def backward(ctx, *grads):
        plan, bs = ctx.plan, ctx.bs
        gbias = grads[0].new_zeros(ctx.shape)
        Bb, Hb, Lp, _ = gbias.shape
        grads = list(grads)
        if plan.full_rows is not None:
            g = grads.pop(0)
            if g is not None:
                if plan.full_span is not None:
                    r0, r1 = plan.full_span
                    gbias[:, :, r0 * bs : r1 * bs] += g
                else:
                    tok = (plan.full_rows[:, None] * bs + torch.arange(bs, device=g.device)).reshape(-1)
                    gbias.index_add_(2, tok, g)
        rows = gbias.view(Bb, Hb, Lp * (Lp // bs), bs)
        for bk, g in zip(plan.buckets, grads):
            if g is not None:  # padded slots carry a zero gradient (their probability is 0) ...
                if bk.pad_idx is not None and not bool(torch.isfinite(g).all()):
                    g = g.index_fill(2, bk.pad_idx, 0.0)  # ... unless 0 * inf made it NaN: drop it
                rows.index_add_(2, bk.bias_idx, g)
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


def _key_mask(bk: _Bucket, H: int, bs: int, L: int, ref: torch.Tensor) -> torch.Tensor:
    """No-bias mask for a bucket: [1, H*nq, 1, c*bs], -inf on padded slots and keys past L."""
    key = (H, ref.dtype)
    if key not in bk.key_mask:
        nq, c = bk.nq, bk.c
        col = (bk.flat_blocks.view(nq, c, 1) * bs + torch.arange(bs, device=ref.device)).reshape(nq, c * bs)
        bad = col >= L
        if bk.pad_idx is not None:
            padded = torch.zeros(nq * bs * c, dtype=torch.bool, device=ref.device)
            padded[bk.pad_idx] = True
            bad = bad | padded.view(nq, bs, c)[:, 0, :, None].expand(nq, c, bs).reshape(nq, c * bs)
        m = torch.zeros(nq, c * bs, dtype=ref.dtype, device=ref.device).masked_fill(bad, float("-inf"))
        bk.key_mask[key] = m.view(1, 1, nq, 1, c * bs).expand(1, H, nq, 1, c * bs).reshape(1, H * nq, 1, c * bs)
    return bk.key_mask[key]


def _attend_plan(q, k, v, bias, plan: _Plan, bs: int, L: int, exact: bool = False,
                 workspace: Optional[dict] = None) -> torch.Tensor:
    """q, k, v [B, H, Lp, D] (q already scaled, zero-padded past L); bias [Bb, Hb, Lp, Lp] (-inf on
    keys past L) or None; ``exact``: v holds NaN/inf (see ``sdpa``); ``workspace``: the layout's
    shared scratch dict (``BlockLayout.workspace``) or None (the plan's own)."""
    B, H, Lp, D = q.shape
    nb = Lp // bs
    q5, k5, v5 = q.view(B, H, nb, bs, D), k.view(B, H, nb, bs, D), v.view(B, H, nb, bs, D)
    grad_mode = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    # without autograd the gathered buffers are reused from call to call (never saved for backward)
    store = None if grad_mode else (plan.work if workspace is None else workspace)
    masks = None
    if bias is not None:
        if grad_mode and bias.requires_grad:
            masks = list(_BiasGather.apply(bias, plan, bs))
            if plan.full_rows is None:
                masks.insert(0, None)
        else:
            masks = _gather_bias(bias, plan, bs, store)
    outs = []
    if plan.full_rows is not None:
        if plan.full_span is not None:
            r0, r1 = plan.full_span
            qf = q[:, :, r0 * bs : r1 * bs]
        else:
            qf = q5.index_select(2, plan.full_rows).view(B, H, -1, D)
        mask = None
        if masks is not None:
            mask = masks[0]
        elif Lp != L:
            mask = torch.zeros(1, 1, 1, Lp, dtype=q.dtype, device=q.device)
            mask[..., L:] = float("-inf")
        o = sdpa(qf, k, v, mask, 1.0, exact)
        outs.append(o.view(B, H, -1, bs, D))
    for i, bk in enumerate(plan.buckets):
        nq, c = bk.nq, bk.c
        # each query block row is one "head" of a fused SDPA call over its c*bs gathered keys
        qg = q5.index_select(2, bk.rows).view(B, H * nq, bs, D)
        kv = []
        for name, t in (("k", k5), ("v", v5)):
            buf = _buffer(store, (name, i), (B, H, nq * c, bs, D), t)
            g = torch.index_select(t, 2, bk.flat_blocks, out=buf) if buf is not None else t.index_select(2, bk.flat_blocks)
            kv.append(g.view(B, H * nq, c * bs, D))
        if masks is not None:
            mask = masks[i + 1]
            Bm, Hm = mask.shape[:2]
            mask = mask.view(Bm, Hm, nq, bs, c * bs)
            if Hm != H:
                mask = mask.expand(Bm, H, nq, bs, c * bs)
            mask = mask.reshape(Bm, H * nq, bs, c * bs)
        elif bk.pad_idx is not None or Lp != L:
            mask = _key_mask(bk, H, bs, L, q)
        else:
            mask = None
        o = sdpa(qg, kv[0], kv[1], mask, 1.0, exact)
        outs.append(o.view(B, H, nq, bs, D))
    outs.append(q.new_zeros(B, H, 1, bs, D))
    out = torch.cat(outs, dim=2).index_select(2, plan.inverse)                # [B, H, nb, bs, D]
    return out.view(B, H, Lp, D)


def sdpa(q, k, v, mask, scale: float, exact: bool) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v: ``scaled_dot_product_attention``, or with ``exact`` (v holds
    NaN/inf) the same in plain ops. SDPA gives a row whose logits are all -inf P = 0, hence 0 * NaN =
    NaN in P V and in its backward (dP = dO V^T); the semantics of ``kernels/reference.py`` want
    zeros and zero gradients there whatever v holds. Here such a row's probabilities are cut out of
    the graph (the inner ``where`` stops the NaN that ``P V``'s backward forms for it) and its output
    is zero. Materialises the logits: taken only for non-finite v."""
    if not exact:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2))
    if scale != 1.0:
        s = s * scale
    if mask is not None:
        s = s + mask
    live = (s != float("-inf")).any(-1, keepdim=True)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    p = torch.where(live, torch.softmax(s.masked_fill(~live, 0.0), dim=-1), zero)
    return torch.where(live, torch.matmul(p, v), zero)


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


def _rows_with_keys(kv_counts: torch.Tensor, bs: int, L: int, device) -> torch.Tensor:
    """[lh, L, 1] bool: query rows that keep at least one key block (lh = 1 or the layout's heads)."""
    rows = (kv_counts > 0).repeat_interleave(bs, dim=-1)[:, :L]
    return rows.unsqueeze(-1).to(device)


def bucket_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    bias: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """The SDPA-bucket engine (see the module docstring): float32 or float64, any head dim; used
    when the fused kernel cannot run (float64 inputs, other head dims, no C compiler)."""
    B, H, L, D = q.shape
    scale = resolve_scale(D, scale)
    out_dtype = q.dtype
    ct = compute_dtype(q.dtype)
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    if bias is not None:
        bias = bias.to(ct)
    bs = layout.block_size
    kv_counts = host_index(layout)[0]  # on the host: no device sync per call for a GPU layout
    if not bool(kv_counts.any()):
        return _Zeros.apply((B, H, L, D), q, k, v, bias).to(out_dtype)
    Lp = layout.n_blocks * bs
    if math.isfinite(scale):
        q = q * scale
    else:
        # rows with no kept key never read q; keep a NaN/inf scale out of their (zero) gradient
        q = torch.where(_rows_with_keys(kv_counts, bs, L, q.device), q, torch.zeros((), dtype=q.dtype, device=q.device)) * scale
    if Lp != L:  # zero-pad the ragged tail to whole blocks (cheap: D is small)
        q, k, v = (F.pad(t, (0, 0, 0, Lp - L)) for t in (q, k, v))
    if bias is not None:
        bias = _bias4(bias, L)
        if Lp != L:  # whole blocks: padded keys -inf, padded query rows 0 (their output is dropped)
            bias = F.pad(F.pad(bias, (0, Lp - L), value=float("-inf")), (0, 0, 0, Lp - L))
    plans = _plans(layout, q.device, B * (H if layout.num_heads is None else 1))
    exact = not bool(torch.isfinite(v).all())
    if len(plans) == 1:
        out = _attend_plan(q, k, v, bias, plans[0], bs, L, exact, layout.workspace)
    else:
        heads = []
        for h, plan in enumerate(plans):
            bh = None
            if bias is not None:
                bh = bias[:, h : h + 1] if bias.shape[1] > 1 else bias
            sl = slice(h, h + 1)
            heads.append(_attend_plan(q[:, sl], k[:, sl], v[:, sl], bh, plan, bs, L, exact, layout.workspace))
        out = torch.cat(heads, dim=1)
    if Lp != L:
        out = out[:, :, :L]
    return out.to(out_dtype)

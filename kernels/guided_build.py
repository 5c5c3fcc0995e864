"""The guided layout build in one Triton launch: pool, select, mask and compact index.

`patterns.guided` builds a guided `BlockLayout` with torch ops (`pool_signal`, `_select`,
`compact_index`): on a GPU that is dozens of launches. This module does the same in one kernel,
grid (G, nb) (G = signal heads, nb = query-block rows), registered into
`patterns.guided.register_fused_builder` when ``kernels`` is imported; `build_guided_layout`
uses it for CUDA signals (the torch path stays the reference and the CPU path).

Program (g, i):

1. **Pool** query-block row i of the signal into the row's nb tile scores (``max``; ``mean`` as
   the halving sums of `patterns.guided._halving_sum`, rows then columns, then an IEEE division
   by the real pair count; ``logsumexp`` as ``m + log(sum(exp(x - m)))`` with m the tile max,
   +-inf and NaN passed through as the torch path does). Ragged tiles hold only their real pairs.
   The scores go to a [G, nb, nb] float32 scratch; ``nan_rows[g, i]`` records whether row i's
   scores hold NaN (the device-side NaN flag: no host synchronisation).
2. **Select** (``spread="row"``): the row's kept tiles. The row is sorted once (bitonic
   `tl.sort` on int64 keys whose descending order is the torch path's order: forced first by
   position, then score descending with NaN first and -0.0 = +0.0, ties by position - what the
   two stable sorts of `patterns.guided._select` give). ``keep``: the first max(n_keep,
   n_forced) of the order. ``mass``: forced tiles, and those whose weight before them in the order
   is below ``mass`` times the row's total weight (weights ``exp(s - top)``, NaN weight 0; a
   float64 cumulative sum rounded to float32, as the CPU cumsum does). Writes the mask row and
   the row's ``kv_counts`` / ``kv_indices``.
3. **Last program of head g** (an acq_rel atomic counter per head; the counter is left at zero
   for the next launch): for ``spread="layout"`` the same selection over the head's nb * nb
   tiles and every row's kv index; then the transpose index ``q_counts`` / ``q_indices`` of every column.

Exactness against the torch path (tests/test_guided_fused.py): ``max`` and ``mean`` scores are
bit-identical, so are ``keep`` selections made from them (a sort, integer ranks). ``logsumexp`` scores
use the device's exp/log and another association than torch's, equal to a few ulps; ``mass``
sums are float64 against torch's float32 (CUDA) or float64 (CPU) accumulation. Masks therefore
agree except where two tile scores, or a prefix mass and the threshold, are within rounding of
each other (never met on random signals; ties of exactly equal scores are broken identically).

Limits: nb <= `MAX_ROW_BLOCKS` (``spread="row"``) and nb * nb <= `MAX_LAYOUT_TILES`
(``spread="layout"``, selected by one program); beyond them the builder returns None and the
caller uses the torch path.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["fused_guided_build", "MAX_ROW_BLOCKS", "MAX_LAYOUT_TILES"]

MAX_ROW_BLOCKS = 1024
MAX_LAYOUT_TILES = 4096
_POOL_IDS = {"max": 0, "mean": 1, "logsumexp": 2}
_CHUNK = 1024  # mask elements of the index lines held at once (more spill at nb >= 128: sm_90 compile)
_SIGNAL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # pooled in float32, as the torch path does


# ---- pooling ---------------------------------------------------------------------------------------
@triton.jit
def _tree_rows(x, R: tl.constexpr, W: tl.constexpr, LOG_R: tl.constexpr):
    """[R, W] -> [W]: rows [0, R/2) + rows [R/2, R), repeated (the torch path's halving order)."""
    for k in tl.static_range(LOG_R):
        x = tl.sum(tl.reshape(x, (2, R >> (k + 1), W)), axis=0)
    return tl.reshape(x, (W,))


@triton.jit
def _tree_cols(x, CB: tl.constexpr, BS: tl.constexpr, LOG_BS: tl.constexpr):
    """[CB, BS] -> [CB]: columns halved as `_tree_rows` halves rows."""
    for k in tl.static_range(LOG_BS):
        x = tl.sum(tl.reshape(x, (CB, 2, BS >> (k + 1))), axis=1)
    return tl.reshape(x, (CB,))


@triton.jit
def _tile_max(x, CB: tl.constexpr, BS: tl.constexpr, CW: tl.constexpr):
    """(max over each tile's pairs ignoring NaN, whether the tile holds NaN), both [CB]."""
    isn = x != x
    cm = tl.max(tl.where(isn, float("-inf"), x), axis=0)
    cn = tl.max(isn.to(tl.int32), axis=0)
    return tl.max(tl.reshape(cm, (CB, BS)), axis=1), tl.max(tl.reshape(cn, (CB, BS)), axis=1) > 0


@triton.jit
def _pool_chunk(x, n_rows, tiles, L, POOL: tl.constexpr, BS: tl.constexpr, LOG_BS: tl.constexpr,
                CB: tl.constexpr, CW: tl.constexpr):
    """Scores [CB] of the CB tiles in x [BS, CW] (padding: 0 for mean, -inf otherwise)."""
    if POOL == 1:
        t = _tree_cols(tl.reshape(_tree_rows(x, BS, CW, LOG_BS), (CB, BS)), CB, BS, LOG_BS)
        n_cols = tl.minimum(L - tiles * BS, BS)
        return tl.math.div_rn(t, (n_rows * n_cols).to(tl.float32))
    m, has_nan = _tile_max(x, CB, BS, CW)
    if POOL == 0:
        return tl.where(has_nan, float("nan"), m)
    shift = tl.where((m == m) & (tl.abs(m) < float("inf")), m, 0.0)
    shift_c = tl.reshape(tl.broadcast_to(shift[:, None], (CB, BS)), (CW,))
    e = tl.sum(tl.reshape(tl.sum(tl.exp(x - shift_c[None, :]), axis=0), (CB, BS)), axis=1)
    lse = tl.where(tl.abs(m) < float("inf"), m + tl.log(tl.where(e > 0, e, 1.0)), m)
    return tl.where(has_nan, float("nan"), lse)


@triton.jit
def _pool_row(S, stride_sm, stride_sn, Scores_row, i, L, NB, POOL: tl.constexpr, BS: tl.constexpr,
              LOG_BS: tl.constexpr, CW: tl.constexpr):
    """Pools query-block row i of one head's signal into Scores_row[0:NB]."""
    CB: tl.constexpr = CW // BS
    rows = i * BS + tl.arange(0, BS)
    n_rows = tl.minimum(L - i * BS, BS)
    other = 0.0 if POOL == 1 else float("-inf")
    for c0 in range(0, NB * BS, CW):
        cols = c0 + tl.arange(0, CW)
        ptrs = S + rows.to(tl.int64)[:, None] * stride_sm + cols.to(tl.int64)[None, :] * stride_sn
        x = tl.load(ptrs, mask=(rows[:, None] < L) & (cols[None, :] < L), other=other).to(tl.float32)
        tiles = c0 // BS + tl.arange(0, CB)
        tl.store(Scores_row + tiles, _pool_chunk(x, n_rows, tiles, L, POOL, BS, LOG_BS, CB, CW), mask=tiles < NB)


# ---- selection ---------------------------------------------------------------------------------------
@triton.jit
def _weight(s, top):
    """exp(s - top), NaN -> 0 (the torch path's mass weights)."""
    w = tl.exp(s - top)
    return tl.where(w == w, w, 0.0)


# ---- compact index -----------------------------------------------------------------------------------
@triton.jit
def _compact_lines(Mask, line_stride, elem_stride, Counts, Idx, l0, NB, NB_PAD: tl.constexpr, LN: tl.constexpr):
    """Counts[l] and Idx[l, :] (kept elements ascending, padded with the last one or 0) of the
    mask lines l0 .. l0 + LN (`patterns.layout._row_index`)."""
    lines = l0 + tl.arange(0, LN)
    p = tl.arange(0, NB_PAD)
    inside = (lines[:, None] < NB) & (p[None, :] < NB)
    m = tl.load(Mask + lines[:, None] * line_stride + p[None, :] * elem_stride, mask=inside, other=0,
                cache_modifier=".cg") != 0
    mi = m.to(tl.int32)
    cnt = tl.sum(mi, axis=1)
    last = tl.maximum(tl.max(tl.where(m, p[None, :], -1), axis=1), 0)
    row = Idx + lines[:, None] * NB
    pb = tl.broadcast_to(p[None, :], (LN, NB_PAD))
    tl.store(row + tl.cumsum(mi, axis=1) - 1, pb, mask=m)
    tl.store(row + pb, tl.broadcast_to(last[:, None], (LN, NB_PAD)), mask=inside & (pb >= cnt[:, None]))
    tl.store(Counts + lines, cnt, mask=lines < NB)


@triton.jit
def _all_lines(Mask, line_stride, elem_stride, Counts, Idx, NB, NB_PAD: tl.constexpr, LN: tl.constexpr):
    for l0 in range(0, NB, LN):
        _compact_lines(Mask, line_stride, elem_stride, Counts, Idx, l0, NB, NB_PAD, LN)


@triton.jit
def _order_keys(s, f, pos, valid):
    """int64 keys whose descending order is the torch path's order: forced first (by position),
    then score descending (NaN first, -0.0 = +0.0), ties by position; -1 for padding lanes."""
    b = tl.where(s == 0.0, 0.0, s).to(tl.int32, bitcast=True).to(tl.int64)
    m = tl.where(b >= 0, b + 2147483648, -1 - b)  # monotone map of the float onto [0, 2^32)
    m = tl.where(s != s, 4294967296, m)
    tie = 1048575 - pos.to(tl.int64)  # positions below 2^20
    key = tl.where(f, (1 << 53) + tie, (m << 20) + tie)
    return tl.where(valid, key, -1)


@triton.jit
def _select(Sc, Fo, Mask, C, n_keep, mass, KEEP: tl.constexpr, CP: tl.constexpr):
    """The kept tiles of one selection group of C tiles (a row, or a head's nb * nb layout; C <=
    CP, a power of two), written to Mask: the group sorted once (bitonic `tl.sort` on
    `_order_keys`), the budget applied to the sorted prefix (mass: a float64 cumulative sum), the
    flags stored at the tiles' positions."""
    pos = tl.arange(0, CP)
    valid = pos < C
    s = tl.load(Sc + pos, mask=valid, other=0.0, cache_modifier=".cg")
    f = (tl.load(Fo + pos, mask=valid, other=0) != 0) & valid
    ks = tl.sort(_order_keys(s, f, pos, valid), descending=True)
    valid_s = ks >= 0
    pos_s = (1048575 - (ks & 1048575)).to(tl.int32)
    n_forced = tl.sum(f.to(tl.int32), axis=0)
    if KEEP:
        kept = pos < tl.maximum(n_keep, n_forced)
    else:
        top = tl.max(tl.where(s == s, s, float("-inf")), axis=0)
        any_nan = tl.max((s != s).to(tl.int32), axis=0)
        top = tl.where((any_nan == 0) & (tl.abs(top) < float("inf")), top, 0.0)
        w = tl.where(valid_s, _weight(tl.load(Sc + pos_s, mask=valid_s, other=0.0, cache_modifier=".cg"), top), 0.0)
        incl = tl.cumsum(w.to(tl.float64), axis=0)
        total = tl.sum(w.to(tl.float64), axis=0)
        kept = ((incl.to(tl.float32) - w) < mass * total.to(tl.float32)) | (pos < n_forced)
    tl.store(Mask + pos_s, kept.to(tl.int8), mask=valid_s)


@triton.jit
def _guided_build_kernel(S, stride_sg, stride_sm, stride_sn, Forced, Scores, Mask, KVC, KVI, QC, QI, NanRows,
                         Counter, L, NB, n_keep, mass, POOL: tl.constexpr, KEEP: tl.constexpr,
                         LAYOUT: tl.constexpr, BS: tl.constexpr, LOG_BS: tl.constexpr, CW: tl.constexpr,
                         NB_PAD: tl.constexpr, CP: tl.constexpr, LN: tl.constexpr):
    g = tl.program_id(0)
    i = tl.program_id(1)
    hb = g.to(tl.int64) * NB * NB
    row = hb + i * NB
    _pool_row(S + g.to(tl.int64) * stride_sg, stride_sm, stride_sn, Scores + row, i, L, NB, POOL, BS, LOG_BS, CW)
    tl.debug_barrier()
    cols = tl.arange(0, NB_PAD)
    sc = tl.load(Scores + row + cols, mask=cols < NB, other=0.0, cache_modifier=".cg")
    tl.store(NanRows + g * NB + i, tl.max((sc != sc).to(tl.int8), axis=0))
    if not LAYOUT:
        _select(Scores + row, Forced + i * NB, Mask + row, NB, n_keep, mass, KEEP, NB_PAD)
        tl.debug_barrier()
        _compact_lines(Mask + hb, NB, 1, KVC + g * NB, KVI + hb, i, NB, NB_PAD, 1)
    tl.debug_barrier()
    done = tl.atomic_add(Counter + g, 1, sem="acq_rel", scope="gpu")
    if done == NB - 1:  # the last program of head g: every row's scores (and mask) are written
        if LAYOUT:
            _select(Scores + hb, Forced, Mask + hb, NB * NB, n_keep, mass, KEEP, CP)
            tl.debug_barrier()
            _all_lines(Mask + hb, NB, 1, KVC + g * NB, KVI + hb, NB, NB_PAD, LN)
        _all_lines(Mask + hb, 1, NB, QC + g * NB, QI + hb, NB, NB_PAD, LN)
        tl.store(Counter + g, 0)


# ---- host side ---------------------------------------------------------------------------------------
_COUNTERS: dict = {}


def _counter(device: torch.device, size: int) -> torch.Tensor:
    """The zeroed int32 counters of one (device, stream); each launch leaves them at zero again.
    Launches on one stream run one after another, so they can share them; a CUDA graph keeps the
    counters of the stream it was captured on (a replay must not overlap a build on that stream)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    c = _COUNTERS.get(key)
    if c is None or c.numel() < size:
        c = _COUNTERS[key] = torch.zeros(max(size, 64), dtype=torch.int32, device=device)
    return c


@functools.lru_cache(maxsize=256)
def launch_params(config, seq_len: int) -> Optional[dict]:
    """The kernel's constexprs and scalars for ``config`` at ``seq_len``; None beyond the limits."""
    bs = config.block_size
    nb = -(-seq_len // bs)
    layout = config.spread == "layout"
    if nb > MAX_ROW_BLOCKS or (layout and nb * nb > MAX_LAYOUT_TILES):
        return None
    group = nb * nb if layout else nb
    n_keep = min(group, max(1, math.ceil(config.keep * group - 1e-9))) if config.keep is not None else 0
    nb_pad = triton.next_power_of_2(nb)
    cw = max(128, bs)
    return dict(
        nb=nb, n_keep=n_keep, mass=float(config.mass or 0.0), POOL=_POOL_IDS[config.pool],
        KEEP=config.keep is not None, LAYOUT=layout, BS=bs, LOG_BS=int(math.log2(bs)), CW=cw, NB_PAD=nb_pad,
        CP=nb_pad * nb_pad if layout else nb_pad, LN=max(1, min(nb_pad, _CHUNK // nb_pad)),
        num_warps=8 if bs * cw >= 8192 or (layout and nb_pad * nb_pad >= 2048) else 4,
    )


def fused_guided_build(config, seq_len: int, s3: torch.Tensor, forced: torch.Tensor) -> Optional[tuple]:
    """(mask bool [G, nb, nb], kv_counts, kv_indices, q_counts, q_indices, nan_rows bool [G, nb],
    scores float32 [G, nb, nb]) of the guided ``config`` on the signal ``s3`` [G, L, L] with the
    forced tiles ``forced`` bool [nb, nb], in one launch; None if the shape is beyond the limits or
    the signal is float64 (the torch path pools it in float64)."""
    p = launch_params(config, seq_len)  # cached: a dict shared by calls, read only
    if p is None or s3.dtype not in _SIGNAL_DTYPES:  # float64: the torch path pools in float64
        return None
    G, nb = s3.shape[0], p["nb"]
    dev = s3.device
    ints = torch.empty(G * (2 * nb + 3 * nb * nb), dtype=torch.int32, device=dev)
    n2 = G * nb * nb
    kvc, qc = ints[:G * nb].view(G, nb), ints[G * nb:2 * G * nb].view(G, nb)
    kvi = ints[2 * G * nb:2 * G * nb + n2].view(G, nb, nb)
    qi = ints[2 * G * nb + n2:2 * G * nb + 2 * n2].view(G, nb, nb)
    scores = ints[2 * G * nb + 2 * n2:].view(torch.float32).view(G, nb, nb)
    bytes_ = torch.empty(G * nb * (nb + 1), dtype=torch.bool, device=dev)
    mask, nan_rows = bytes_[:n2].view(G, nb, nb), bytes_[n2:].view(G, nb)
    fo = forced.contiguous().view(torch.int8)  # bool and int8 share a size: a view, no launch
    args = (s3, s3.stride(0), s3.stride(1), s3.stride(2), fo, scores, mask.view(torch.int8), kvc, kvi, qc, qi,
            nan_rows.view(torch.int8), _counter(dev, G), seq_len, nb, p["n_keep"], p["mass"])
    consts = dict(POOL=p["POOL"], KEEP=p["KEEP"], LAYOUT=p["LAYOUT"], BS=p["BS"], LOG_BS=p["LOG_BS"], CW=p["CW"],
                  NB_PAD=p["NB_PAD"], CP=p["CP"], LN=p["LN"], num_warps=p["num_warps"])
    if dev.type == "cuda" and dev.index != torch.cuda.current_device():  # Triton launches on the current device
        with torch.cuda.device(dev):
            _guided_build_kernel[(G, nb)](*args, **consts)
    else:
        _guided_build_kernel[(G, nb)](*args, **consts)
    return mask, kvc, kvi, qc, qi, nan_rows, scores

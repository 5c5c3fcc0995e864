"""Triton kernels of the block-sparse attention backward: delta, dQ, dK/dV and the bias gradient.

The walks, conventions and non-finite rules are those of ``kernels.triton_kernels`` (its module
docstring: the dQ program per query tile walking the kept key blocks of its row, the dK/dV program
per key tile walking the kept query blocks of its column, coarse tiles through the union index with
cold exact paths, the dBias program per kept tile looping over the batch); the helpers they share
with the forward (row loads and stores, program coordinates, the coarse keep mask) live there.
This module holds the backward's own kernels.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_kernels import (  # noqa: F401 - jit helpers resolved by name inside the kernels
    _load_bias,
    _load_rows,
    _load_vec,
    _program_coords,
    _select,
    _store_rows,
    _tile_keep,
)

__all__ = ["_attn_bwd_preprocess_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dbias_kernel"]


@triton.jit
def _attn_bwd_preprocess_kernel(
    Out, DO, Delta,
    stride_ob, stride_oh, stride_om, stride_dob, stride_doh, stride_dom,
    H, L, N_TILES,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
    EVEN_L: tl.constexpr, EVEN_D: tl.constexpr,
):
    """delta = rowsum(dO * O) in float32."""
    pid = tl.program_id(0)
    bh = pid // N_TILES
    tile = pid % N_TILES
    b64, h64 = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    o_ptrs = Out + b64 * stride_ob + h64 * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    do_ptrs = DO + b64 * stride_dob + h64 * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :]
    o = _load_rows(o_ptrs, offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D).to(tl.float32)
    do = _load_rows(do_ptrs, offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D).to(tl.float32)
    delta = tl.sum(o * do, 1)
    d_ptrs = Delta + bh.to(tl.int64) * L + offs_m
    if EVEN_L:
        tl.store(d_ptrs, delta)
    else:
        tl.store(d_ptrs, delta, mask=offs_m < L)


@triton.jit
def _nonfinite(x):
    """1 if a [rows, cols] tile holds a NaN or an infinity, else 0."""
    return tl.max(tl.max(((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32), 1), 0)


@triton.jit
def _dq_step(dq, q, do, lse, delta, dead, k_base, v_base, stride_kn, stride_vn, bias_base, stride_bias_n, db_base,
             offs_m, offs_n, offs_d, L, qk_scale, keep,
             HEAD_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_DBIAS: tl.constexpr, EVEN_L: tl.constexpr,
             EVEN_D: tl.constexpr, PREC: tl.constexpr, MASKED: tl.constexpr):
    """One [rows, keys] step of dQ: P recomputed from the LSE, dS = P (dP - delta), dQ += dS K (and
    dS stored as the bias gradient with WRITE_DBIAS). MASKED: dS is 0 at pairs where ``keep`` is
    false (a coarse tile's layout tiles that are not kept; a select, so a NaN there never reaches
    dS)."""
    k = _load_rows(k_base + offs_n[:, None] * stride_kn, offs_n, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    v = _load_rows(v_base + offs_n[:, None] * stride_vn, offs_n, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    if HAS_BIAS:
        s += _load_bias(bias_base + offs_n[None, :] * stride_bias_n, offs_m, offs_n, L, EVEN_L) * 1.4426950408889634
    p = tl.math.exp2(s - lse[:, None])
    if not EVEN_L:
        p = tl.where(offs_n[None, :] < L, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    # dead rows (lse = +inf) have p = 0 but dp may be NaN (NaN/inf in v): their dS is 0
    ds = tl.where(dead[:, None], 0.0, p * (dp - delta[:, None]))
    if MASKED:
        ds = tl.where(keep, ds, 0.0)
    if WRITE_DBIAS:
        db_ptrs = db_base + offs_n[None, :]
        if EVEN_L:
            tl.store(db_ptrs, ds.to(db_ptrs.dtype.element_ty))
        else:
            tl.store(db_ptrs, ds.to(db_ptrs.dtype.element_ty), mask=(offs_m[:, None] < L) & (offs_n[None, :] < L))
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)


@triton.jit
def _owned_rows(start, r, offs_r0, BLOCK_SIZE: tl.constexpr, BLOCK_OWN: tl.constexpr):
    """The rows of layout row block r of a coarse owned tile starting at ``start``; a tile inside one
    layout block (BLOCK_OWN < BLOCK_SIZE) repeats its own rows (same values, stored twice)."""
    if BLOCK_OWN < BLOCK_SIZE:
        offs = start + offs_r0 % BLOCK_OWN
    else:
        offs = start + r * BLOCK_SIZE + offs_r0
    return offs


@triton.jit
def _dq_exact_rows(Q, K, V, Bias, DO, Lse, Delta, DQ, stride_qm, stride_kn, stride_vn, stride_dom, stride_dqm,
                   stride_bias_m, stride_bias_n, start_m, L, qk_scale, sm_scale, count, row_idx, row_bits, offs_nb, row,
                   HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_D: tl.constexpr,
                   PREC: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                   ROW_BLOCKS: tl.constexpr, COL_BLOCKS: tl.constexpr):
    """Recompute and store the dQ rows of a coarse query tile one layout tile at a time (the dQ
    analogue of ``_fwd_exact_rows``): dS K of the coarse tile multiplies a pair's zero dS by K, so a
    NaN / inf in K at a key one row block keeps and another does not would reach both; this cold
    path runs only for a tile whose dQ is not finite and reads only the layout tiles each row block
    keeps. Q, K, V, Bias, DO, DQ point at this (batch, head), Lse / Delta at its row vector."""
    CB_N: tl.constexpr = COL_BLOCKS * BLOCK_SIZE
    offs_r0 = tl.arange(0, BLOCK_SIZE)
    offs_d = tl.arange(0, D_PAD)
    for r in range(0, ROW_BLOCKS):
        offs_m = _owned_rows(start_m, r, offs_r0, BLOCK_SIZE, BLOCK_M)
        q = _load_rows(Q + offs_m[:, None] * stride_qm + offs_d[None, :], offs_m, offs_d, L, HEAD_DIM, False, EVEN_D)
        do = _load_rows(DO + offs_m[:, None] * stride_dom + offs_d[None, :], offs_m, offs_d, L, HEAD_DIM, False, EVEN_D)
        lse = _load_vec(Lse + offs_m, offs_m, L, float("inf"), False)
        delta = _load_vec(Delta + offs_m, offs_m, L, 0.0, False)
        bias_base = Bias
        if HAS_BIAS:
            bias_base = Bias + offs_m[:, None] * stride_bias_m
        dq = tl.zeros([BLOCK_SIZE, D_PAD], dtype=tl.float32)
        rb = offs_m // BLOCK_SIZE - row * ROW_BLOCKS  # this row block (as a vector: one value)
        for t in range(0, count * COL_BLOCKS):
            c = t % COL_BLOCKS
            bit = tl.max((_select(row_bits, offs_nb, t // COL_BLOCKS) >> (rb * COL_BLOCKS + c).to(tl.int64)) & 1, 0)
            if bit != 0:
                offs_n = _select(row_idx, offs_nb, t // COL_BLOCKS) * CB_N + c * BLOCK_SIZE + offs_r0
                dq = _dq_step(dq, q, do, lse, delta, lse == float("inf"), K + offs_d[None, :], V + offs_d[None, :],
                              stride_kn, stride_vn, bias_base, stride_bias_n, DQ, offs_m, offs_n, offs_d, L, qk_scale,
                              offs_n, HEAD_DIM, HAS_BIAS, False, False, EVEN_D, PREC, False)
        dq = tl.where(dq == 0.0, 0.0, dq * sm_scale)
        _store_rows(DQ + offs_m[:, None] * stride_dqm + offs_d[None, :], dq.to(DQ.dtype.element_ty), offs_m, offs_d,
                    L, HEAD_DIM, False, EVEN_D)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, Bias, DO, Lse, Delta, DQ, DBias,
    KVCounts, KVIndices, KVBits,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_dqb, stride_dqh, stride_dqm,
    stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n,
    stride_db_b, stride_db_h,
    TileOrder,
    B, H, L, NB, N_TILES, LAYOUT_HEAD_STRIDE, NB_ROWS,
    qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NB_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, WRITE_DBIAS: tl.constexpr,
    EVEN_L: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
    ROW_BLOCKS: tl.constexpr = 1, COL_BLOCKS: tl.constexpr = 1,
):
    """dQ = scale * dS K over the kept key blocks of the row; optionally writes dS (the bias
    gradient of this (b, h) slice) into DBias, a contiguous [*, *, L, L] buffer addressed with
    strides stride_db_b / stride_db_h (0 on a dimension the buffer does not have).

    Coarse tiles (``ROW_BLOCKS`` x ``COL_BLOCKS`` > 1): the forward's walk (``_attn_fwd_kernel``)
    over the union index ``KVCounts`` / ``KVIndices`` / ``KVBits`` of NB_ROWS coarse rows and NB
    coarse columns; dS is 0 at the pairs of layout tiles a coarse tile does not keep, and a tile
    whose dQ is not finite is stored again by ``_dq_exact_rows``."""
    COARSE: tl.constexpr = ROW_BLOCKS * COL_BLOCKS > 1
    CB_M: tl.constexpr = ROW_BLOCKS * BLOCK_SIZE
    CB_N: tl.constexpr = COL_BLOCKS * BLOCK_SIZE
    SUB_N: tl.constexpr = CB_N // BLOCK_N
    b, h, tile = _program_coords(TileOrder, B, H, N_TILES, LAYOUT_HEAD_STRIDE)
    bh = b * H + h
    start_m = tile * BLOCK_M
    row = start_m // CB_M
    hl = h * LAYOUT_HEAD_STRIDE

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    b64, h64 = b.to(tl.int64), h.to(tl.int64)
    q = _load_rows(Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                   offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    do = _load_rows(DO + b64 * stride_dob + h64 * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                    offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    # rows past L get lse = +inf, hence p = 0
    lse = _load_vec(Lse + bh.to(tl.int64) * L + offs_m, offs_m, L, float("inf"), EVEN_L)
    delta = _load_vec(Delta + bh.to(tl.int64) * L + offs_m, offs_m, L, 0.0, EVEN_L)
    dead = lse == float("inf")
    k_base = K + b64 * stride_kb + h64 * stride_kh + offs_d[None, :]
    v_base = V + b64 * stride_vb + h64 * stride_vh + offs_d[None, :]
    bias_base = Bias
    if HAS_BIAS:
        bias_base = Bias + b64 * stride_bias_b + h64 * stride_bias_h + offs_m[:, None] * stride_bias_m
    db_base = DBias
    if WRITE_DBIAS:
        db_base = DBias + b64 * stride_db_b + h64 * stride_db_h + offs_m[:, None] * L

    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    lay_row = hl * NB_ROWS + row
    count = tl.load(KVCounts + lay_row)
    offs_nb = tl.arange(0, NB_PAD)
    row_idx = tl.load(KVIndices + lay_row * NB + offs_nb, mask=offs_nb < count, other=0)
    row_bits = row_idx  # not read unless COARSE
    if COARSE:
        row_bits = tl.load(KVBits + lay_row * NB + offs_nb, mask=offs_nb < count, other=0)
    for it in range(0, count * SUB_N):
        offs_n = _select(row_idx, offs_nb, it // SUB_N) * CB_N + (it % SUB_N) * BLOCK_N + offs_n0
        keep = offs_n  # not read unless COARSE
        if COARSE:
            keep = _tile_keep(_select(row_bits, offs_nb, it // SUB_N), offs_m, (it % SUB_N) * BLOCK_N + offs_n0, row,
                              BLOCK_SIZE, ROW_BLOCKS, COL_BLOCKS)
        dq = _dq_step(dq, q, do, lse, delta, dead, k_base, v_base, stride_kn, stride_vn, bias_base, stride_bias_n,
                      db_base, offs_m, offs_n, offs_d, L, qk_scale, keep, HEAD_DIM, HAS_BIAS, WRITE_DBIAS, EVEN_L,
                      EVEN_D, PREC, COARSE)

    bad = 0
    if COARSE:
        bad = _nonfinite(dq)
    # a row that accumulated nothing (dead, or no kept key) keeps dq = 0 even for scale = NaN / inf
    dq = tl.where(dq == 0.0, 0.0, dq * sm_scale)
    _store_rows(DQ + b64 * stride_dqb + h64 * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :],
                dq.to(DQ.dtype.element_ty), offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    if COARSE:
        if bad != 0:  # a NaN / inf in dS K: stored again without the tiles a row does not keep
            _dq_exact_rows(Q + b64 * stride_qb + h64 * stride_qh, K + b64 * stride_kb + h64 * stride_kh,
                           V + b64 * stride_vb + h64 * stride_vh, Bias + b64 * stride_bias_b + h64 * stride_bias_h,
                           DO + b64 * stride_dob + h64 * stride_doh, Lse + bh.to(tl.int64) * L,
                           Delta + bh.to(tl.int64) * L, DQ + b64 * stride_dqb + h64 * stride_dqh,
                           stride_qm, stride_kn, stride_vn, stride_dom, stride_dqm, stride_bias_m, stride_bias_n,
                           start_m, L, qk_scale, sm_scale, count, row_idx, row_bits, offs_nb, row,
                           HEAD_DIM, D_PAD, HAS_BIAS, EVEN_D, PREC, BLOCK_SIZE, BLOCK_M, ROW_BLOCKS, COL_BLOCKS)


@triton.jit
def _dkdv_step(dk, dv, k, v, q_base, do_base, stride_qm, stride_dom, lse_base, delta_base, bias_base, stride_bias_m,
               offs_n, offs_m, offs_d, L, qk_scale, keep,
               HEAD_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_L: tl.constexpr, EVEN_D: tl.constexpr,
               PREC: tl.constexpr, MASKED: tl.constexpr):
    """One [keys, queries] step of dK / dV, transposed: P^T from the LSE, dV += P^T dO,
    dS^T = P^T (dP^T - delta), dK += dS^T Q. MASKED: P^T and dS^T are 0 where ``keep`` is false."""
    q = _load_rows(q_base + offs_m[:, None] * stride_qm, offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    do = _load_rows(do_base + offs_m[:, None] * stride_dom, offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    lse = _load_vec(lse_base + offs_m, offs_m, L, float("inf"), EVEN_L)
    delta = _load_vec(delta_base + offs_m, offs_m, L, 0.0, EVEN_L)
    sT = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
    if HAS_BIAS:
        sT += _load_bias(bias_base + offs_m[None, :] * stride_bias_m, offs_n, offs_m, L, EVEN_L) * 1.4426950408889634
    # query columns past L have lse = +inf -> 0; key rows past L are never stored
    pT = tl.math.exp2(sT - lse[None, :])
    if MASKED:
        pT = tl.where(keep, pT, 0.0)
    dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PREC)
    dpT = tl.dot(v, tl.trans(do), input_precision=PREC)
    dsT = tl.where(lse[None, :] == float("inf"), 0.0, pT * (dpT - delta[None, :]))  # dead rows: 0
    if MASKED:
        dsT = tl.where(keep, dsT, 0.0)
    dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PREC)
    return dk, dv


@triton.jit
def _dkdv_store(DK, DV, dk, dv, stride_dkn, stride_dvn, offs_n, offs_d, L, sm_scale,
                HEAD_DIM: tl.constexpr, EVEN_L: tl.constexpr, EVEN_D: tl.constexpr):
    dk = tl.where(dk == 0.0, 0.0, dk * sm_scale)  # keys no live row computes: 0 even for scale = NaN
    _store_rows(DK + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(DK.dtype.element_ty), offs_n, offs_d, L,
                HEAD_DIM, EVEN_L, EVEN_D)
    _store_rows(DV + offs_n[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty), offs_n, offs_d, L,
                HEAD_DIM, EVEN_L, EVEN_D)


@triton.jit
def _dkdv_exact_cols(Q, K, V, Bias, DO, Lse, Delta, DK, DV, stride_qm, stride_kn, stride_vn, stride_dom, stride_dkn,
                     stride_dvn, stride_bias_m, stride_bias_n, start_n, L, qk_scale, sm_scale, count, col_idx, col_bits,
                     offs_nb, col,
                     HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_D: tl.constexpr,
                     PREC: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                     ROW_BLOCKS: tl.constexpr, COL_BLOCKS: tl.constexpr):
    """Recompute and store dK / dV of a coarse key tile one layout tile at a time: P^T dO and
    dS^T Q of the coarse tile multiply a pair's zero weight by dO / Q, so a NaN / inf there at a
    query one key block keeps and another does not would reach both; this cold path runs only for
    a tile whose dK or dV is not finite. Pointers at this (batch, head)."""
    CB_M: tl.constexpr = COL_BLOCKS * BLOCK_SIZE
    offs_r0 = tl.arange(0, BLOCK_SIZE)
    offs_d = tl.arange(0, D_PAD)
    for r in range(0, ROW_BLOCKS):
        offs_n = _owned_rows(start_n, r, offs_r0, BLOCK_SIZE, BLOCK_N)
        k = _load_rows(K + offs_n[:, None] * stride_kn + offs_d[None, :], offs_n, offs_d, L, HEAD_DIM, False, EVEN_D)
        v = _load_rows(V + offs_n[:, None] * stride_vn + offs_d[None, :], offs_n, offs_d, L, HEAD_DIM, False, EVEN_D)
        bias_base = Bias
        if HAS_BIAS:
            bias_base = Bias + offs_n[:, None] * stride_bias_n
        dk = tl.zeros([BLOCK_SIZE, D_PAD], dtype=tl.float32)
        dv = tl.zeros([BLOCK_SIZE, D_PAD], dtype=tl.float32)
        rb = offs_n // BLOCK_SIZE - col * ROW_BLOCKS  # this key block (as a vector: one value)
        for t in range(0, count * COL_BLOCKS):
            c = t % COL_BLOCKS
            bit = tl.max((_select(col_bits, offs_nb, t // COL_BLOCKS) >> (rb * COL_BLOCKS + c).to(tl.int64)) & 1, 0)
            if bit != 0:
                offs_m = _select(col_idx, offs_nb, t // COL_BLOCKS) * CB_M + c * BLOCK_SIZE + offs_r0
                dk, dv = _dkdv_step(dk, dv, k, v, Q + offs_d[None, :], DO + offs_d[None, :], stride_qm, stride_dom,
                                    Lse, Delta, bias_base, stride_bias_m, offs_n, offs_m, offs_d, L, qk_scale, offs_m,
                                    HEAD_DIM, HAS_BIAS, False, EVEN_D, PREC, False)
        _dkdv_store(DK, DV, dk, dv, stride_dkn, stride_dvn, offs_n, offs_d, L, sm_scale, HEAD_DIM, False, EVEN_D)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, Bias, DO, Lse, Delta, DK, DV,
    QCounts, QIndices, QBits,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n,
    TileOrder,
    B, H, L, NB, N_TILES, LAYOUT_HEAD_STRIDE, NB_ROWS,
    qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NB_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_L: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
    ROW_BLOCKS: tl.constexpr = 1, COL_BLOCKS: tl.constexpr = 1,
):
    """dV = P^T dO and dK = scale * dS^T Q for one key tile of BLOCK_N keys, over the kept query
    blocks of its layout column in sub-tiles of BLOCK_M queries (computed transposed: rows are keys).

    Coarse tiles (``ROW_BLOCKS`` key blocks x ``COL_BLOCKS`` query blocks > 1): ``QCounts`` /
    ``QIndices`` / ``QBits`` are the union index of the transposed layout (``kernels.coarse_index``
    of the column index: NB_ROWS coarse key columns, NB coarse query blocks; bit ``r * COL_BLOCKS +
    c`` for key block r and query block c of a coarse tile); P^T and dS^T are 0 at the pairs of
    layout tiles it does not keep, and a tile whose dK or dV is not finite is stored again by
    ``_dkdv_exact_cols``."""
    COARSE: tl.constexpr = ROW_BLOCKS * COL_BLOCKS > 1
    CB_N: tl.constexpr = ROW_BLOCKS * BLOCK_SIZE  # a coarse key column
    CB_M: tl.constexpr = COL_BLOCKS * BLOCK_SIZE  # a coarse query block
    SUB_M: tl.constexpr = CB_M // BLOCK_M
    b, h, tile = _program_coords(TileOrder, B, H, N_TILES, LAYOUT_HEAD_STRIDE)
    bh = b * H + h
    start_n = tile * BLOCK_N
    col = start_n // CB_N
    hl = h * LAYOUT_HEAD_STRIDE

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    b64, h64 = b.to(tl.int64), h.to(tl.int64)
    k = _load_rows(K + b64 * stride_kb + h64 * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                   offs_n, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    v = _load_rows(V + b64 * stride_vb + h64 * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                   offs_n, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    q_base = Q + b64 * stride_qb + h64 * stride_qh + offs_d[None, :]
    do_base = DO + b64 * stride_dob + h64 * stride_doh + offs_d[None, :]
    lse_base = Lse + bh.to(tl.int64) * L
    delta_base = Delta + bh.to(tl.int64) * L
    bias_base = Bias
    if HAS_BIAS:
        bias_base = Bias + b64 * stride_bias_b + h64 * stride_bias_h + offs_n[:, None] * stride_bias_n

    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    lay_col = hl * NB_ROWS + col
    count = tl.load(QCounts + lay_col)
    offs_nb = tl.arange(0, NB_PAD)
    col_idx = tl.load(QIndices + lay_col * NB + offs_nb, mask=offs_nb < count, other=0)
    col_bits = col_idx  # not read unless COARSE
    if COARSE:
        col_bits = tl.load(QBits + lay_col * NB + offs_nb, mask=offs_nb < count, other=0)
    for it in range(0, count * SUB_M):
        offs_m = _select(col_idx, offs_nb, it // SUB_M) * CB_M + (it % SUB_M) * BLOCK_M + offs_m0
        keep = offs_m  # not read unless COARSE
        if COARSE:
            keep = _tile_keep(_select(col_bits, offs_nb, it // SUB_M), offs_n, (it % SUB_M) * BLOCK_M + offs_m0, col,
                              BLOCK_SIZE, ROW_BLOCKS, COL_BLOCKS)
        dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, stride_qm, stride_dom, lse_base, delta_base, bias_base,
                            stride_bias_m, offs_n, offs_m, offs_d, L, qk_scale, keep, HEAD_DIM, HAS_BIAS, EVEN_L,
                            EVEN_D, PREC, COARSE)

    bad = 0
    if COARSE:
        bad = tl.maximum(_nonfinite(dk), _nonfinite(dv))
    _dkdv_store(DK + b64 * stride_dkb + h64 * stride_dkh, DV + b64 * stride_dvb + h64 * stride_dvh, dk, dv,
                stride_dkn, stride_dvn, offs_n, offs_d, L, sm_scale, HEAD_DIM, EVEN_L, EVEN_D)
    if COARSE:
        if bad != 0:  # a NaN / inf in P^T dO or dS^T Q: stored again without the tiles a key does not keep
            _dkdv_exact_cols(Q + b64 * stride_qb + h64 * stride_qh, K + b64 * stride_kb + h64 * stride_kh,
                             V + b64 * stride_vb + h64 * stride_vh, Bias + b64 * stride_bias_b + h64 * stride_bias_h,
                             DO + b64 * stride_dob + h64 * stride_doh, lse_base, delta_base,
                             DK + b64 * stride_dkb + h64 * stride_dkh, DV + b64 * stride_dvb + h64 * stride_dvh,
                             stride_qm, stride_kn, stride_vn, stride_dom, stride_dkn, stride_dvn, stride_bias_m,
                             stride_bias_n, start_n, L, qk_scale, sm_scale, count, col_idx, col_bits, offs_nb, col,
                             HEAD_DIM, D_PAD, HAS_BIAS, EVEN_D, PREC, BLOCK_SIZE, BLOCK_N, ROW_BLOCKS, COL_BLOCKS)


@triton.jit
def _attn_bwd_dbias_kernel(
    Q, K, V, Bias, DO, Lse, Delta, DBias,
    KVCounts, KVIndices,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_bias_h, stride_bias_m, stride_bias_n,
    stride_db_h,
    B, H, L, NB, LAYOUT_HEAD_STRIDE,
    qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_L: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
):
    """dBias of a bias shared by the whole batch: sum over b of dS[b, h] for one kept
    [BLOCK_M, BLOCK_N] tile, grid (query tile, kept key sub-tile slot, head); slots past the row's
    kept count do nothing. DBias is a contiguous [1, *, L, L] buffer (head stride stride_db_h)."""
    SUB_N: tl.constexpr = BLOCK_SIZE // BLOCK_N
    tile = tl.program_id(0)
    slot = tl.program_id(1)
    h = tl.program_id(2)
    start_m = tile * BLOCK_M
    row = start_m // BLOCK_SIZE
    hl = h * LAYOUT_HEAD_STRIDE
    lay_row = hl * NB + row
    count = tl.load(KVCounts + lay_row)
    j = slot // SUB_N
    if j >= count:  # a dead slot (past the row's kept count) reads and writes nothing
        return
    kb = tl.load(KVIndices + lay_row * NB + j)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = kb * BLOCK_SIZE + (slot % SUB_N) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    bias = _load_bias(Bias + h.to(tl.int64) * stride_bias_h + offs_m[:, None] * stride_bias_m + offs_n[None, :] * stride_bias_n,
                      offs_m, offs_n, L, EVEN_L) * 1.4426950408889634
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    h64 = h.to(tl.int64)
    for b in range(0, B):
        bh = b * H + h
        b64 = (bh.to(tl.int64) - h64) // H  # b as int64 (b itself is a plain loop counter)
        q = _load_rows(Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                       offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
        do = _load_rows(DO + b64 * stride_dob + h64 * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                        offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
        k = _load_rows(K + b64 * stride_kb + h64 * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                       offs_n, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
        v = _load_rows(V + b64 * stride_vb + h64 * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                       offs_n, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
        lse = _load_vec(Lse + bh.to(tl.int64) * L + offs_m, offs_m, L, float("inf"), EVEN_L)
        delta = _load_vec(Delta + bh.to(tl.int64) * L + offs_m, offs_m, L, 0.0, EVEN_L)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale + bias
        p = tl.math.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        acc += tl.where(lse[:, None] == float("inf"), 0.0, p * (dp - delta[:, None]))  # dead rows: 0
    db_ptrs = DBias + h.to(tl.int64) * stride_db_h + offs_m[:, None] * L + offs_n[None, :]
    if EVEN_L:
        tl.store(db_ptrs, acc.to(DBias.dtype.element_ty))
    else:
        tl.store(db_ptrs, acc.to(DBias.dtype.element_ty), mask=(offs_m[:, None] < L) & (offs_n[None, :] < L))

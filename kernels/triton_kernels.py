"""Triton kernels of block-sparse attention: forward, backward (dQ, dK/dV) and the bias gradient.

All kernels walk the compact layout index (see ``patterns.layout.BlockLayout``):

* forward and dQ: one program per (query tile of ``BLOCK_M`` rows, batch*head); it loads the
  kept key blocks of its layout row from ``kv_counts`` / ``kv_indices`` once into registers and
  walks each kept ``BLOCK_SIZE``-wide key block in sub-tiles of ``BLOCK_N`` keys (FlashAttention-2
  online softmax, Dao 2023). Programs are ordered batch fastest, then head, then tile rank with the
  heaviest tiles first (``_program_coords``);
* forward with tiles that are multiples of the layout block ("coarse" tiles, so that a small
  block still runs 64-row wgmma tiles on sm_90): the same walk over the union index of
  ``BLOCK_M / BLOCK_SIZE`` layout rows grouped by ``BLOCK_N / BLOCK_SIZE`` layout columns
  (``kernels.coarse_index``), the layout tiles a coarse tile does not keep masked to -inf inside it;
* dK/dV: one program per (key tile of ``BLOCK_N`` keys, batch*head) walking the kept query blocks
  of its layout column (``q_counts`` / ``q_indices``) in sub-tiles of ``BLOCK_M`` rows, so every
  dK/dV row is owned by one program (no atomics);
* dQ and dK/dV with coarse tiles: the same walks over the union index of the rows (dQ) or of the
  columns (dK/dV); dS and P are 0 at pairs of layout tiles a coarse tile does not keep, and a tile
  whose accumulated gradient is not finite is recomputed one layout tile at a time (its dots
  multiply such a pair's 0 by a q / k / dO value a block does not keep, 0 * NaN = NaN);
* dBias for a bias broadcast over the batch: one program per (kept tile, head) that loops over the
  batch, recomputing P and dP, and writes the summed tile once (no atomics).

Conventions: q, k, v, o, do and the gradients are [B, H, L, D] tensors read and written through
their batch, head and row strides (``stride_*b``, ``stride_*h``, ``stride_*m``; the head dimension
has stride 1), so permuted views ([B, L, H, D] memory) and the q/k/v slices of one fused projection
are read in place; lse and delta are contiguous float32 [B, H, L]; the bias is read through its strides (stride 0 on broadcast
dimensions), one [BLOCK_M, BLOCK_N] tile at a time. Scores live in the log2 domain: ``qk_scale``
is ``scale * log2(e)`` and the bias is multiplied by log2(e) on load, so ``lse`` is
``log2(sum(exp2(s)))`` of the log2-domain scores. The head dimension is padded to ``D_PAD``
(a power of two, at least 16, as ``tl.dot`` needs K >= 16) with masked loads.

``EVEN_L`` (L a multiple of the layout block) removes every row/column mask; otherwise the
forward masks keys only in the last layout block (a second loop) and reads, for query rows past L,
the bias of row L - 1 (never stored). ``EVEN_D`` (HEAD_DIM == D_PAD) removes the head-dimension
masks.

Non-finite values follow ``kernels/reference.py``: only kept tiles are read; a row with no kept key
block, or whose computed logits are all -inf, is dead: out = 0 and lse = +inf, and every gradient
term of a dead row is forced to 0 (its dP may be NaN where v holds NaN); NaN / inf elsewhere
propagate by IEEE arithmetic.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _load_rows(ptrs, offs_r, offs_d, L, HEAD_DIM: tl.constexpr, EVEN_L: tl.constexpr, EVEN_D: tl.constexpr):
    """Load a [rows, D_PAD] tile of a [.., L, HEAD_DIM] tensor, zero outside (rows >= L, d >= HEAD_DIM)."""
    if EVEN_L:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs, mask=offs_r[:, None] < L, other=0.0)
        else:
            x = tl.load(ptrs, mask=(offs_r[:, None] < L) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    return x


@triton.jit
def _store_rows(ptrs, x, offs_r, offs_d, L, HEAD_DIM: tl.constexpr, EVEN_L: tl.constexpr, EVEN_D: tl.constexpr):
    if EVEN_L:
        if EVEN_D:
            tl.store(ptrs, x)
        else:
            tl.store(ptrs, x, mask=offs_d[None, :] < HEAD_DIM)
    else:
        if EVEN_D:
            tl.store(ptrs, x, mask=offs_r[:, None] < L)
        else:
            tl.store(ptrs, x, mask=(offs_r[:, None] < L) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _load_vec(ptrs, offs, L, other: tl.constexpr, EVEN_L: tl.constexpr):
    if EVEN_L:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=offs < L, other=other)
    return x


@triton.jit
def _load_bias(ptrs, offs_a, offs_b, L, EVEN_L: tl.constexpr):
    """Load a bias tile as float32 (rows offs_a, cols offs_b, both token indices), 0 outside L."""
    if EVEN_L:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=(offs_a[:, None] < L) & (offs_b[None, :] < L), other=0.0)
    return x.to(tl.float32)


@triton.jit
def _program_coords(TileOrder, B, H, N_TILES, LAYOUT_HEAD_STRIDE):
    """(b, h, tile) of this program. The batch varies fastest, so the B programs that read the same
    tile of a bias shared over the batch run together (the tile is fetched from HBM once, then hit
    in L2); then the head; slowest the tile rank: ``TileOrder[layout head, rank]`` lists the tiles
    of a layout head heaviest first (most kept blocks), so the longest programs start first
    (longest-processing-time-first scheduling, Graham 1969)."""
    pid = tl.program_id(0)
    b = pid % B
    rest = pid // B
    h = rest % H
    rank = rest // H
    tile = tl.load(TileOrder + h * LAYOUT_HEAD_STRIDE * N_TILES + rank)
    return b, h, tile


@triton.jit
def _select(vec, offs, j):
    """vec[j] for a register-resident index vector: the block index of the next iteration does not
    depend on a memory load, so the software pipeliner can prefetch K/V ``num_stages - 1``
    iterations ahead (a load inside the loop makes it wait on every copy, ``async_wait num=0``)."""
    return tl.sum(tl.where(offs == j, vec, 0), 0)


@triton.jit
def _tile_keep(bits, offs_m, offs_nt, row, BLOCK_SIZE: tl.constexpr, ROW_BLOCKS: tl.constexpr,
               COL_BLOCKS: tl.constexpr):
    """bool [rows, keys]: which pairs of a coarse tile the layout keeps. ``bits`` (int64) holds bit
    ``r * COL_BLOCKS + c`` for layout tile (row block r, column block c) of the coarse tile;
    ``offs_m`` are the query rows, ``offs_nt`` the keys' offsets inside the coarse column."""
    rb = (offs_m // BLOCK_SIZE - row * ROW_BLOCKS).to(tl.int64)
    row_bits = ((bits >> (rb * COL_BLOCKS)) & ((1 << COL_BLOCKS) - 1)).to(tl.int32)
    cb = offs_nt // BLOCK_SIZE
    return ((row_bits[:, None] >> cb[None, :]) & 1) != 0


@triton.jit
def _fwd_step(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, bias_base, stride_bias_n, offs_m, offs_n, offs_d,
              L, qk_scale, keep,
              HEAD_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, FULL: tl.constexpr, EVEN_D: tl.constexpr,
              PREC: tl.constexpr, MASKED: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] step of the online softmax (FlashAttention-2, Dao 2023) in the log2
    domain. FULL: every key of the tile is < L (no key masks); otherwise keys past L are masked to
    -inf and their loads skipped. MASKED: pairs where ``keep`` is false (layout tiles of a coarse
    tile that the layout does not keep) are -inf, as a token-level mask."""
    k = _load_rows(k_base + offs_n[:, None] * stride_kn, offs_n, offs_d, L, HEAD_DIM, FULL, EVEN_D)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    if HAS_BIAS:
        s += _load_bias(bias_base + offs_n[None, :] * stride_bias_n, offs_m, offs_n, L, FULL) * 1.4426950408889634
    if not FULL:
        s = tl.where(offs_n[None, :] < L, s, float("-inf"))
    if MASKED:
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row whose scores are all -inf so far (only possible with a -inf bias) must not give NaN
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(v_base + offs_n[:, None] * stride_vn, offs_n, offs_d, L, HEAD_DIM, FULL, EVEN_D)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def _kept_row(KVCounts, KVIndices, lay_row, NB, NB_PAD: tl.constexpr, EVEN_L: tl.constexpr):
    """(count, index vector [NB_PAD], its arange, blocks walked without key masks) of one layout
    row: the kept key blocks, held in registers (``_select``)."""
    count = tl.load(KVCounts + lay_row)
    offs_nb = tl.arange(0, NB_PAD)
    row_idx = tl.load(KVIndices + lay_row * NB + offs_nb, mask=offs_nb < count, other=0)
    if EVEN_L:
        n_full = count
    else:
        # only the last layout block holds keys past L: the kept blocks are ascending, so it can only
        # be the row's last one; every other block runs without masks
        last = _select(row_idx, offs_nb, count - 1)
        n_full = count - tl.where((count > 0) & (last == NB - 1), 1, 0)
    return count, row_idx, offs_nb, n_full


@triton.jit
def _fwd_epilogue(acc, l_i, m_i, out_ptrs, lse_ptrs, offs_m, offs_d, L,
                  HEAD_DIM: tl.constexpr, EVEN_L: tl.constexpr, EVEN_D: tl.constexpr, STORE_LSE: tl.constexpr):
    """Normalise and store one query tile's output (and its LSE). A row with no computed key, or
    whose computed logits are all -inf, is "dead": zeros (even where v holds NaN/inf, which reached
    acc through 0 * v) and lse = +inf; a NaN anywhere in a live row's logits makes l_i NaN, hence a
    NaN row (IEEE, as the reference)."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    acc = tl.where(empty[:, None], 0.0, acc / l_safe[:, None])
    _store_rows(out_ptrs, acc.to(out_ptrs.dtype.element_ty), offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
    if STORE_LSE:  # the backward needs it; eager inference does not (no buffer, no writes)
        lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
        if EVEN_L:
            tl.store(lse_ptrs, lse)
        else:
            tl.store(lse_ptrs, lse, mask=offs_m < L)


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------
@triton.jit
def _fwd_exact_rows(Q, K, V, Bias, Out, stride_qm, stride_kn, stride_vn, stride_om, stride_bias_m, stride_bias_n,
                    start_m, L, qk_scale, count, row_idx, row_bits, offs_nb, row,
                    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_D: tl.constexpr,
                    PREC: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                    ROW_BLOCKS: tl.constexpr, COL_BLOCKS: tl.constexpr):
    """Recompute and store the output rows of a coarse query tile one layout tile at a time: for
    each layout row block r of the tile, the online softmax over exactly the layout tiles (r, c)
    that the layout keeps, [BLOCK_SIZE, BLOCK_SIZE] steps as the block-dividing kernel takes them
    (so no value of a tile a row does not keep is read). The coarse tile's single P V dot
    multiplies a pair's zero weight by V, so a NaN / inf in V at a key one row block keeps and
    another does not would reach both; this cold path runs only for a tile whose P V is not
    finite. Q, K, V, Bias, Out point at this (batch, head); runtime loops keep the code small."""
    CB_N: tl.constexpr = COL_BLOCKS * BLOCK_SIZE
    offs_r0 = tl.arange(0, BLOCK_SIZE)
    offs_d = tl.arange(0, D_PAD)
    for r in range(0, ROW_BLOCKS):
        offs_m = start_m + r * BLOCK_SIZE + offs_r0
        if BLOCK_M < BLOCK_SIZE:  # a query tile inside one layout row: its own rows only
            offs_m = start_m + offs_r0 % BLOCK_M
        q = _load_rows(Q + offs_m[:, None] * stride_qm + offs_d[None, :], offs_m, offs_d, L, HEAD_DIM, False, EVEN_D)
        bias_base = Bias
        if HAS_BIAS:
            bias_base = Bias + tl.minimum(offs_m, L - 1)[:, None] * stride_bias_m
        m_i = tl.full([BLOCK_SIZE], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        acc = tl.zeros([BLOCK_SIZE, D_PAD], dtype=tl.float32)
        rb = offs_m // BLOCK_SIZE - row * ROW_BLOCKS  # this row block (as a vector: one value)
        for t in range(0, count * COL_BLOCKS):
            kb = _select(row_idx, offs_nb, t // COL_BLOCKS)
            c = t % COL_BLOCKS
            bit = tl.max((_select(row_bits, offs_nb, t // COL_BLOCKS) >> (rb * COL_BLOCKS + c).to(tl.int64)) & 1, 0)
            if bit != 0:
                offs_n = kb * CB_N + c * BLOCK_SIZE + offs_r0
                acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, K + offs_d[None, :], V + offs_d[None, :], stride_kn,
                                          stride_vn, bias_base, stride_bias_n, offs_m, offs_n, offs_d, L, qk_scale,
                                          offs_n, HEAD_DIM, HAS_BIAS, False, EVEN_D, PREC, False)
        _fwd_epilogue(acc, l_i, m_i, Out + offs_m[:, None] * stride_om + offs_d[None, :], Out, offs_m, offs_d, L,
                      HEAD_DIM, False, EVEN_D, False)


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Bias, Out, Lse,
    KVCounts, KVIndices, KVBits,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n,
    TileOrder,
    B, H, L, NB, N_TILES, LAYOUT_HEAD_STRIDE, NB_ROWS,
    qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NB_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_L: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
    STORE_LSE: tl.constexpr = True, ROWS_PER_CTA: tl.constexpr = 1,
    ROW_BLOCKS: tl.constexpr = 1, COL_BLOCKS: tl.constexpr = 1,
):
    """Forward of one query tile for ``ROWS_PER_CTA`` consecutive batch elements (MSA rows or
    triangle rows) of one head: the tile order, the kept-block count and the block index are loaded
    once per program and reused for every batch element, and a bias shared by the batch is read
    for the same tile by consecutive iterations of one program (hit in L1/L2). B must be a
    multiple of ``ROWS_PER_CTA``; the grid has N_TILES * H * B / ROWS_PER_CTA programs.

    Coarse tiles (``ROW_BLOCKS`` x ``COL_BLOCKS`` > 1, tiles that are multiples of the layout
    block): ``KVCounts`` / ``KVIndices`` are the union index of coarse rows of ROW_BLOCKS layout
    rows and coarse columns of COL_BLOCKS layout columns (``kernels.coarse_index``; NB_ROWS coarse
    rows, NB coarse columns), ``KVBits`` the int64 bitmask of the layout tiles each kept coarse
    tile keeps; pairs of tiles it does not keep are -inf (``_tile_keep``), and a tile whose P V is
    not finite is stored again without reading them (``_fwd_exact_rows``). Otherwise the layout's
    own index (NB_ROWS = NB) and KVBits is not read."""
    COARSE: tl.constexpr = ROW_BLOCKS * COL_BLOCKS > 1
    CB_M: tl.constexpr = ROW_BLOCKS * BLOCK_SIZE  # a coarse row: BLOCK_M rows, or one layout row of BLOCK_SIZE
    CB_N: tl.constexpr = COL_BLOCKS * BLOCK_SIZE
    SUB_N: tl.constexpr = CB_N // BLOCK_N
    bg, h, tile = _program_coords(TileOrder, B // ROWS_PER_CTA, H, N_TILES, LAYOUT_HEAD_STRIDE)
    h64 = h.to(tl.int64)
    start_m = tile * BLOCK_M
    row = start_m // CB_M
    hl = h * LAYOUT_HEAD_STRIDE

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    if EVEN_L:
        rows_b = offs_m
    else:
        # rows past L (last query tile of a ragged L) read the bias of row L - 1 instead of masking
        # every load: their results are never stored
        rows_b = tl.minimum(offs_m, L - 1)

    lay_row = hl * NB_ROWS + row
    count, row_idx, offs_nb, n_full = _kept_row(KVCounts, KVIndices, lay_row, NB, NB_PAD, EVEN_L)
    if COARSE:
        row_bits = tl.load(KVBits + lay_row * NB + offs_nb, mask=offs_nb < count, other=0)
    else:
        row_bits = row_idx

    for r in tl.static_range(ROWS_PER_CTA):
        b = bg * ROWS_PER_CTA + r
        b64 = b.to(tl.int64)
        q = _load_rows(Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                       offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D)
        k_base = K + b64 * stride_kb + h64 * stride_kh + offs_d[None, :]
        v_base = V + b64 * stride_vb + h64 * stride_vh + offs_d[None, :]
        if HAS_BIAS:
            bias_base = Bias + b64 * stride_bias_b + h64 * stride_bias_h + rows_b[:, None] * stride_bias_m
        else:
            bias_base = Bias

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
        for it in range(0, n_full * SUB_N):
            kb = _select(row_idx, offs_nb, it // SUB_N)
            offs_nt = (it % SUB_N) * BLOCK_N + offs_n0
            offs_n = kb * CB_N + offs_nt
            keep = offs_nt  # not read unless COARSE
            if COARSE:
                keep = _tile_keep(_select(row_bits, offs_nb, it // SUB_N), offs_m, offs_nt, row, BLOCK_SIZE,
                                  ROW_BLOCKS, COL_BLOCKS)
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, bias_base, stride_bias_n,
                                      offs_m, offs_n, offs_d, L, qk_scale, keep, HEAD_DIM, HAS_BIAS, True, EVEN_D,
                                      PREC, COARSE)
        for it in range(n_full * SUB_N, count * SUB_N):  # the ragged last block (not EVEN_L only)
            kb = _select(row_idx, offs_nb, it // SUB_N)
            offs_nt = (it % SUB_N) * BLOCK_N + offs_n0
            offs_n = kb * CB_N + offs_nt
            keep = offs_nt
            if COARSE:
                keep = _tile_keep(_select(row_bits, offs_nb, it // SUB_N), offs_m, offs_nt, row, BLOCK_SIZE,
                                  ROW_BLOCKS, COL_BLOCKS)
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, bias_base, stride_bias_n,
                                      offs_m, offs_n, offs_d, L, qk_scale, keep, HEAD_DIM, HAS_BIAS, False, EVEN_D,
                                      PREC, COARSE)
        out_ptrs = Out + b64 * stride_ob + h64 * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
        bad = tl.max(((acc != acc) | (tl.abs(acc) == float("inf"))).to(tl.int32), 1)  # not read unless COARSE
        _fwd_epilogue(acc, l_i, m_i, out_ptrs, Lse + (b64 * H + h64) * L + offs_m, offs_m, offs_d, L,
                      HEAD_DIM, EVEN_L, EVEN_D, STORE_LSE)
        if COARSE:
            if tl.max(bad, 0) != 0:  # a NaN / inf in P V: stored again without the tiles a row does not keep
                if HAS_BIAS:
                    bias_bh = Bias + b64 * stride_bias_b + h64 * stride_bias_h
                else:
                    bias_bh = Bias
                _fwd_exact_rows(Q + b64 * stride_qb + h64 * stride_qh, K + b64 * stride_kb + h64 * stride_kh,
                                V + b64 * stride_vb + h64 * stride_vh, bias_bh, Out + b64 * stride_ob + h64 * stride_oh,
                                stride_qm, stride_kn, stride_vn, stride_om, stride_bias_m, stride_bias_n,
                                start_m, L, qk_scale, count, row_idx, row_bits, offs_nb, row,
                                HEAD_DIM, D_PAD, HAS_BIAS, EVEN_D, PREC, BLOCK_SIZE, BLOCK_M, ROW_BLOCKS, COL_BLOCKS)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------
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

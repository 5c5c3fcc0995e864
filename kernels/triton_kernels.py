"""Triton kernels of block-sparse attention: the forward, and the helpers the backward kernels
(``kernels.triton_bwd_kernels``: dQ, dK/dV and the bias gradient) share with it.

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
def _fwd_epilogue(acc, l_i, m_i, out_ptrs, lse_ptrs, gate_ptrs, offs_m, offs_d, L,
                  HEAD_DIM: tl.constexpr, EVEN_L: tl.constexpr, EVEN_D: tl.constexpr, STORE_LSE: tl.constexpr,
                  HAS_GATE: tl.constexpr):
    """Normalise and store one query tile's output (and its LSE). A row with no computed key, or
    whose computed logits are all -inf, is "dead": zeros (even where v holds NaN/inf, which reached
    acc through 0 * v) and lse = +inf; a NaN anywhere in a live row's logits makes l_i NaN, hence a
    NaN row (IEEE, as the reference). ``HAS_GATE``: the stored output is sigmoid(gate) * out, the
    gate logits read at ``gate_ptrs`` in float32 (AlphaFold2's gated attention; the LSE is the
    ungated attention's, and a dead row stores sigmoid(gate) * 0, NaN where the gate is NaN)."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    acc = tl.where(empty[:, None], 0.0, acc / l_safe[:, None])
    if HAS_GATE:
        g = _load_rows(gate_ptrs, offs_m, offs_d, L, HEAD_DIM, EVEN_L, EVEN_D).to(tl.float32)
        acc = acc * tl.sigmoid(g)
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
def _fwd_exact_rows(Q, K, V, Bias, Out, Gate, stride_qm, stride_kn, stride_vn, stride_om, stride_gm, stride_bias_m,
                    stride_bias_n, start_m, L, qk_scale, count, row_idx, row_bits, offs_nb, row,
                    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_D: tl.constexpr,
                    PREC: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                    ROW_BLOCKS: tl.constexpr, COL_BLOCKS: tl.constexpr, HAS_GATE: tl.constexpr):
    """Recompute and store the output rows of a coarse query tile one layout tile at a time: for
    each layout row block r of the tile, the online softmax over exactly the layout tiles (r, c)
    that the layout keeps, [BLOCK_SIZE, BLOCK_SIZE] steps as the block-dividing kernel takes them
    (so no value of a tile a row does not keep is read). The coarse tile's single P V dot
    multiplies a pair's zero weight by V, so a NaN / inf in V at a key one row block keeps and
    another does not would reach both; this cold path runs only for a tile whose P V is not
    finite. Q, K, V, Bias, Out, Gate point at this (batch, head); runtime loops keep the code small."""
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
        _fwd_epilogue(acc, l_i, m_i, Out + offs_m[:, None] * stride_om + offs_d[None, :], Out,
                      Gate + offs_m[:, None] * stride_gm + offs_d[None, :], offs_m, offs_d, L,
                      HEAD_DIM, False, EVEN_D, False, HAS_GATE)


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Bias, Out, Lse, Gate,
    KVCounts, KVIndices, KVBits,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, stride_gb, stride_gh, stride_gm,
    stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n,
    TileOrder,
    B, H, L, NB, N_TILES, LAYOUT_HEAD_STRIDE, NB_ROWS,
    qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NB_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_L: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
    STORE_LSE: tl.constexpr = True, ROWS_PER_CTA: tl.constexpr = 1,
    ROW_BLOCKS: tl.constexpr = 1, COL_BLOCKS: tl.constexpr = 1, HAS_GATE: tl.constexpr = False,
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
    own index (NB_ROWS = NB) and KVBits is not read.

    ``HAS_GATE``: the output stored is sigmoid(Gate) * attention (``_fwd_epilogue``), Gate a
    [B, H, L, D] tensor of gate logits read through its strides like q (the eager inference path of
    a gated module; Gate is not read otherwise)."""
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
        gate_ptrs = Gate + b64 * stride_gb + h64 * stride_gh + offs_m[:, None] * stride_gm + offs_d[None, :]
        _fwd_epilogue(acc, l_i, m_i, out_ptrs, Lse + (b64 * H + h64) * L + offs_m, gate_ptrs, offs_m, offs_d, L,
                      HEAD_DIM, EVEN_L, EVEN_D, STORE_LSE, HAS_GATE)
        if COARSE:
            if tl.max(bad, 0) != 0:  # a NaN / inf in P V: stored again without the tiles a row does not keep
                if HAS_BIAS:
                    bias_bh = Bias + b64 * stride_bias_b + h64 * stride_bias_h
                else:
                    bias_bh = Bias
                _fwd_exact_rows(Q + b64 * stride_qb + h64 * stride_qh, K + b64 * stride_kb + h64 * stride_kh,
                                V + b64 * stride_vb + h64 * stride_vh, bias_bh, Out + b64 * stride_ob + h64 * stride_oh,
                                Gate + b64 * stride_gb + h64 * stride_gh,
                                stride_qm, stride_kn, stride_vn, stride_om, stride_gm, stride_bias_m, stride_bias_n,
                                start_m, L, qk_scale, count, row_idx, row_bits, offs_nb, row,
                                HEAD_DIM, D_PAD, HAS_BIAS, EVEN_D, PREC, BLOCK_SIZE, BLOCK_M, ROW_BLOCKS, COL_BLOCKS,
                                HAS_GATE)

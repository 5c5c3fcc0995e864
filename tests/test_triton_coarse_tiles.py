"""Forward tiles larger than the layout block ("coarse" tiles, ``kernels.coarse_index``): a query
tile of r layout row blocks walks the union of their kept key blocks and masks, inside the tile,
the layout tiles that are not kept. Checked against the float64 reference on fresh random inputs
(ragged L, pair bias, per-head layouts with empty rows, float32 / float16, NaN / inf), with the
gradients; and the backward's own coarse tiles (dQ owning several layout row blocks, dK/dV several
key blocks, over the union index of the rows / of the columns), under the Triton interpreter on a
CPU. Every test prints the seed it drew on failure.
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from kernels import KernelConfig, sparse_attention
from kernels.coarse_index import block_mask_of, coarse_index
from kernels.config import (
    candidate_backward_configs,
    candidate_configs,
    dbias_tiles,
    default_backward_config,
    default_forward_config,
)
from kernels.reference import reference_attention
from kernels.triton_op import _call_plan, triton_sparse_attention
from patterns import BlockLayout
from test_triton_nonfinite import row_oracle

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
TOL = {torch.float32: (2e-4, 2e-4), torch.float16: (1.5e-2, 1.5e-2)}


def _seed() -> int:
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    return seed


def _random_layout(L: int, bs: int, heads: int | None, density: float = 0.4) -> BlockLayout:
    """A random layout ([H, nb, nb] per head when ``heads``) with an empty row block in every head
    (and an empty column block when nb > 3) and, per head, one row block that keeps a single tile (so a coarse tile mixes kept and dropped
    tiles)."""
    nb = math.ceil(L / bs)
    mask = torch.rand((heads, nb, nb) if heads else (nb, nb)) < density
    mask[..., 1 % nb, :] = False
    if nb > 3:
        mask[..., nb - 1] = False  # an empty column block: keys no row computes
    if nb > 2:
        mask[..., 2, :] = False
        mask[..., 2, 0] = True
    return BlockLayout(mask, bs, L)


def _check(q, k, v, layout, bias, cfg, seed, grads=True, bwd=None):
    dtype = q.dtype
    atol, rtol = TOL[dtype]
    leaves = [t for t in (q, k, v, bias) if t is not None]
    for t in leaves:
        t.requires_grad_(grads)
    if bwd is None:
        out = sparse_attention(q, k, v, layout, bias, backend="triton", config=cfg)
    else:
        out = triton_sparse_attention(q, k, v, layout, bias, config=cfg, bwd_config=bwd)
    ref_in = [None if t is None else t.detach().double().requires_grad_(grads) for t in (q, k, v, bias)]
    ref = reference_attention(*ref_in[:3], layout, ref_in[3])
    msg = lambda m: f"{cfg} / bwd {bwd} (seed={seed}): {m}"  # noqa: E731
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol, msg=msg)
    if not grads:
        return
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, g)
    want = torch.autograd.grad(ref, [t for t in ref_in if t is not None], g.double())
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), got, want):
        torch.testing.assert_close(a.double(), b, atol=atol * 5, rtol=rtol * 5, msg=lambda m: f"{name}: {msg(m)}")


# ------------------------------------------------------------------------------------------------
# the coarse index (plain torch, no kernel)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,cols", [(1, 2), (2, 1), (2, 2), (4, 2), (8, 8), (1, 4)])
def test_coarse_index_describes_the_layout_exactly(rows, cols):
    seed = _seed()
    lay = _random_layout(7 * 16 + 5, 16, 3)  # nb = 8: a multiple of no ratio above 8, 7 of none
    mask = lay.mask3
    counts, indices, bits = coarse_index(lay.kv_counts, lay.kv_indices, rows, cols)
    assert torch.equal(block_mask_of(lay.kv_counts, lay.kv_indices), mask), seed
    lh, nb, _ = mask.shape
    nr, nc = -(-nb // rows), -(-nb // cols)
    assert counts.shape == (lh, nr) and indices.shape == (lh, nr, nc) and bits.shape == (lh, nr, nc)
    rebuilt = torch.zeros((lh, nr * rows, nc * cols), dtype=torch.bool)
    for h in range(lh):
        for i in range(nr):
            cols_kept = indices[h, i, : counts[h, i]].tolist()
            assert cols_kept == sorted(set(cols_kept)), seed  # ascending, no repeats
            for t, j in enumerate(cols_kept):
                word = int(bits[h, i, t])
                assert word != 0, seed  # only coarse tiles with a kept layout tile are walked
                for r in range(rows):
                    for c in range(cols):
                        rebuilt[h, i * rows + r, j * cols + c] = bool((word >> (r * cols + c)) & 1)
    assert torch.equal(rebuilt[:, :nb, :nb], mask), seed
    assert not rebuilt[:, nb:].any() and not rebuilt[:, :, nb:].any(), seed


def test_coarse_index_is_built_once_per_layout_and_ratio():
    lay = _random_layout(64, 16, None)
    counts, indices = lay.index_on("cpu")[:2]
    first = coarse_index(counts, indices, 2, 2)
    assert coarse_index(counts, indices, 2, 2) is first
    assert coarse_index(counts, indices, 4, 2) is not first


def test_kernel_config_tiles_may_be_multiples_of_the_block():
    cfg = KernelConfig(64, 64, 4, 3)
    assert cfg.fits(32) and cfg.fits(16) and not cfg.divides(32) and cfg.divides(64)
    assert cfg.for_block(32) == cfg  # the forward runs it as is (a coarse tile)
    assert cfg.clipped_to(32) == KernelConfig(32, 32, 4, 3)  # the backward's tiles divide the block
    assert KernelConfig(64, 64, 4, 3).clipped_to(128) == KernelConfig(64, 64, 4, 3)


def test_small_blocks_default_to_wgmma_sized_tiles_and_large_blocks_are_unchanged():
    """Blocks 16 and 32 default to a 64-row tile (a Hopper wgmma needs M >= 64; the compile report
    shows the block-dividing 32 x 32 tile on mma.sync); blocks 64 and 128 offer dividing tiles only."""
    for bs in (16, 32):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            cfg = default_forward_config(bs, 32, dtype)
            assert cfg.block_m >= 64 and cfg.num_stages == 3, (bs, dtype, cfg)
    for bs in (64, 128):
        assert all(c.divides(bs) for c in candidate_configs(bs, 32, torch.bfloat16))
    assert any(not c.divides(32) for c in candidate_configs(32, 32, torch.bfloat16))


def test_backward_tiles_are_coarse_under_block_64_and_clipped_from_64_on():
    """A backward config whose tiles are multiples of a block under 64 runs as is (coarse dQ and
    dK/dV tiles); from block 64 on, a tile larger than the block is clipped to it, as before. The
    dBias kernel (a bias shared by the batch) keeps block-dividing tiles."""
    q = torch.zeros(1, 2, 64, 16, device=DEVICE)
    cfg, bcfg, plan, _ = _call_plan(q, q, q, None, _random_layout(64, 32, None).index_on(DEVICE)[0], 32,
                                    KernelConfig(64, 64, 4, 3), KernelConfig(64, 64, 4, 3))
    assert (cfg.block_m, cfg.block_n) == (64, 64) and (plan.row_blocks, plan.col_blocks) == (2, 2)
    assert (bcfg.block_m, bcfg.block_n) == (64, 64)
    assert KernelConfig(128, 64, 8, 3).for_backward(64) == KernelConfig(64, 64, 8, 3)
    assert KernelConfig(64, 32, 4, 3).for_backward(16) == KernelConfig(64, 32, 4, 3)
    assert dbias_tiles(64, 32, 16) == (16, 16) and dbias_tiles(64, 16, 32) == (32, 16)


# ------------------------------------------------------------------------------------------------
# the kernel against the reference
# ------------------------------------------------------------------------------------------------
CASES = [
    # L, block, (block_m, block_n), bias, per-head, dtype
    (70, 32, (64, 64), "1H", True, torch.float32),   # 2x2 layout tiles per coarse tile, ragged L
    (75, 16, (64, 32), "BH", True, torch.float32),   # 4x2, ragged
    (64, 16, (32, 64), None, False, torch.float32),  # 2x4
    pytest.param(100, 16, (64, 64), "1H", True, torch.float32, marks=pytest.mark.slow),   # 4x4
    pytest.param(96, 32, (16, 64), "1H", True, torch.float32, marks=pytest.mark.slow),    # a sub-row tile, 1x2
    pytest.param(130, 32, (128, 64), "BH", True, torch.float16, marks=pytest.mark.slow),  # 4x2, float16
    pytest.param(70, 32, (64, 16), "1H", False, torch.float16, marks=pytest.mark.slow),   # 2x1, key sub-tiles
]


@pytest.mark.parametrize("L,bs,tiles,bias,per_head,dtype", CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_coarse_tiles_match_the_reference_with_gradients(L, bs, tiles, bias, per_head, dtype):
    seed = _seed()
    B, H, D = 2, 2, 16
    lay = _random_layout(L, bs, H if per_head else None)
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE, dtype=dtype) for _ in range(3))
    b = None if bias is None else torch.randn(1 if bias == "1H" else B, H, L, L, device=DEVICE, dtype=dtype)
    _check(q, k, v, lay, b, KernelConfig(*tiles, 4, 3), seed)


def test_the_default_config_at_block_32_is_coarse_and_exact():
    seed = _seed()
    L, H = 90, 2
    lay = _random_layout(L, 32, H)
    q, k, v = (torch.randn(1, H, L, 16, device=DEVICE) for _ in range(3))
    assert not default_forward_config(32, 16, q.dtype).divides(32)
    _check(q, k, v, lay, torch.randn(1, H, L, L, device=DEVICE), None, seed)


def test_rows_no_layout_tile_keeps_give_zeros_and_rows_of_an_empty_layout_too():
    seed = _seed()
    L = 64
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 3] = True  # coarse row 0 (layout rows 0, 1 at 2x2): row block 1 keeps nothing
    for m in (mask, torch.zeros(4, 4, dtype=torch.bool)):
        lay = BlockLayout(m, 16, L)
        q, k, v = (torch.randn(1, 2, L, 8, device=DEVICE) for _ in range(3))
        out = triton_sparse_attention(q, k, v, lay, config=KernelConfig(32, 32, 4, 3))
        ref = reference_attention(q.double(), k.double(), v.double(), lay)
        torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4, msg=lambda s: f"seed={seed}: {s}")
        assert torch.equal(out[:, :, 16:48], torch.zeros_like(out[:, :, 16:48]))


# ------------------------------------------------------------------------------------------------
# non-finite values: a value in a layout tile that a row does not keep never reaches it
# ------------------------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
NF_B, NF_H, NF_L, NF_D, NF_BS = 2, 2, 40, 8, 16  # the shapes of tests/test_triton_nonfinite.py


def _nf_layout() -> BlockLayout:
    mask = torch.tensor([[[1, 0, 1], [0, 1, 0], [1, 1, 1]],
                         [[1, 1, 0], [0, 0, 0], [0, 1, 1]]], dtype=torch.bool)
    return BlockLayout(mask, NF_BS, NF_L)


def _poison(q, k, v, bias, what):
    if what == "v_nan_in_a_tile_one_row_block_keeps":  # key block 1 of head 0: kept by row block 1 only
        v[0, 0, 20, 3] = NAN
    elif what == "v_inf_in_a_tile_one_row_block_keeps":
        v[1, 1, 36, 2] = INF  # head 1, key block 2: kept by row block 2 only
        v[0, 0, 21, 1] = -INF
    elif what == "k_nan_in_a_dropped_tile":
        k[0, 0, 17, 1] = NAN
    elif what == "q_nan":
        q[0, 1, 5, 0] = NAN
    elif what == "bias_nan_in_and_outside_the_layout":
        bias[0, 0, 3, 20] = NAN  # row block 0, key block 1: not kept in head 0
        bias[0, 1, 34, 30] = NAN  # row block 2, key block 1: kept in head 1
    elif what == "bias_plus_inf":
        bias[0, 1, 34, 30] = INF


FWD_POISONS = ["v_nan_in_a_tile_one_row_block_keeps", "v_inf_in_a_tile_one_row_block_keeps",
               "k_nan_in_a_dropped_tile", "q_nan", "bias_nan_in_and_outside_the_layout", "bias_plus_inf"]
FWD_POISON_TILES = [(32, 32), (64, 16), (16, 32)]


@pytest.mark.parametrize("what,tiles", [
    # quick: every poison once, the tiles taken in turn; the other pairs in the full suite
    pytest.param(w, t, marks=() if j == i % len(FWD_POISON_TILES) else pytest.mark.slow, id=f"{t}-{w}")
    for i, w in enumerate(FWD_POISONS) for j, t in enumerate(FWD_POISON_TILES)])
def test_non_finite_values_follow_the_reference(what, tiles):
    seed = _seed()
    lay = _nf_layout()
    q, k, v = (torch.randn(NF_B, NF_H, NF_L, NF_D, device=DEVICE) for _ in range(3))
    bias = torch.randn(1, NF_H, NF_L, NF_L, device=DEVICE)
    _poison(q, k, v, bias, what)
    out = triton_sparse_attention(q, k, v, lay, bias, config=KernelConfig(*tiles, 4, 3))
    ref = reference_attention(q.double(), k.double(), v.double(), lay, bias.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4, equal_nan=True,
                               msg=lambda m: f"{what} {tiles} (seed={seed}): {m}")


@pytest.mark.slow
def test_non_finite_gradients_under_a_coarse_forward_match_the_row_oracle():
    """The gradients (block-dividing backward tiles, the coarse forward's LSE) against the per-row
    oracle of tests/test_triton_nonfinite.py, with NaN in V at a tile one row block keeps."""
    seed = _seed()
    lay = _nf_layout()
    q, k, v = (torch.randn(NF_B, NF_H, NF_L, NF_D, device=DEVICE) for _ in range(3))
    bias = torch.randn(1, NF_H, NF_L, NF_L, device=DEVICE)
    _poison(q, k, v, bias, "v_nan_in_a_tile_one_row_block_keeps")
    leaves = [t.requires_grad_() for t in (q, k, v, bias)]
    out = triton_sparse_attention(q, k, v, lay, bias, config=KernelConfig(64, 32, 4, 3))
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, g)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    ref = row_oracle(*ref_in[:3], lay, ref_in[3], 1.0 / math.sqrt(NF_D))
    want = torch.autograd.grad(ref, ref_in, g.double())
    torch.testing.assert_close(out.double(), ref.detach(), atol=2e-4, rtol=2e-4, equal_nan=True,
                               msg=lambda m: f"out (seed={seed}): {m}")
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-3, rtol=1e-3, equal_nan=True,
                                   msg=lambda m: f"{name} (seed={seed}): {m}")


@pytest.mark.parametrize("poison", [False, True])
def test_rows_per_cta_with_coarse_tiles(poison):
    """The inference forward walking 2 batch elements per program with a 32 x 32 tile on a block-16
    layout: exact, and a NaN in V at a tile one row block keeps reaches only that element's rows
    that keep it (the cold path runs per batch element)."""
    seed = _seed()
    B, H, L, D = 4, 2, 40, 8
    lay = _nf_layout()
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE) for _ in range(3))
    bias = torch.randn(1, H, L, L, device=DEVICE)
    if poison:
        v[1, 0, 20, 3] = NAN
    with torch.no_grad():
        out = sparse_attention(q, k, v, lay, bias, backend="triton", config=KernelConfig(32, 32, 4, 3, rows_per_cta=2))
    ref = reference_attention(q.double(), k.double(), v.double(), lay, bias.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4, equal_nan=True,
                               msg=lambda m: f"seed={seed}: {m}")


def test_a_coarse_forward_under_inference_mode():
    """The coarse index built on a first call under ``torch.inference_mode`` is made of ordinary
    tensors (the tile order keys on their version counters) and the result is exact."""
    seed = _seed()
    lay = _random_layout(40, 16, 2)
    q, k, v = (torch.randn(1, 2, 40, 8, device=DEVICE) for _ in range(3))
    with torch.inference_mode():
        out = sparse_attention(q, k, v, lay, backend="triton", config=KernelConfig(32, 32, 4, 3))
    ref = reference_attention(q.double(), k.double(), v.double(), lay)
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4, msg=lambda m: f"seed={seed}: {m}")


@pytest.mark.parametrize("tiles", [pytest.param((16, 64), marks=pytest.mark.slow), (64, 64),
                                   pytest.param((128, 128), marks=pytest.mark.slow)])
def test_nan_in_v_reaches_only_rows_that_keep_its_tile_block_32(tiles):
    """Block 32: a query tile inside one layout row (16 rows), 2 x 2 and 4 x 4 coarse tiles (the
    last one past the layout's 4 blocks); key block 1 holds a NaN that row block 0 does not keep
    although its coarse column does (the cold path, ``_fwd_exact_rows``)."""
    seed = _seed()
    L = 100
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 1], [0, 0, 0, 1]], dtype=torch.bool)
    lay = BlockLayout(mask, 32, L)
    q, k, v = (torch.randn(2, 2, L, 8, device=DEVICE) for _ in range(3))
    v[0, 1, 40, 2] = NAN
    bias = torch.randn(1, 2, L, L, device=DEVICE)
    out = triton_sparse_attention(q, k, v, lay, bias, config=KernelConfig(*tiles, 4, 3))
    ref = reference_attention(q.double(), k.double(), v.double(), lay, bias.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4, equal_nan=True,
                               msg=lambda m: f"{tiles} (seed={seed}): {m}")
    assert int(torch.isnan(out).sum()) == 64  # rows 32..95 (row blocks 1 and 2) of (b 0, h 1), column 2


@pytest.mark.slow
def test_an_8x8_coarse_tile_uses_every_bit_float16():
    """128 x 128 tiles on a block-16 layout: 64 layout tiles per coarse tile, bit 63 (row block 7,
    column block 7) included; float16, a NaN in V at a tile row block 7 keeps."""
    seed = _seed()
    L, nb = 200, 13
    mask = torch.rand(2, nb, nb) < 0.5
    mask[:, 7, 7] = True
    lay = BlockLayout(mask, 16, L)
    q, k, v = (torch.randn(1, 2, L, 16, device=DEVICE, dtype=torch.float16) for _ in range(3))
    bias = torch.randn(1, 2, L, L, device=DEVICE, dtype=torch.float16)
    v[0, 0, 7 * 16 + 3, 0] = NAN
    out = triton_sparse_attention(q, k, v, lay, bias, config=KernelConfig(128, 128, 8, 3))
    ref = reference_attention(q.double(), k.double(), v.double(), lay, bias.double())
    torch.testing.assert_close(out.double(), ref, atol=1.5e-2, rtol=1.5e-2, equal_nan=True,
                               msg=lambda m: f"seed={seed}: {m}")


@pytest.mark.slow
def test_block_32_default_forward_compiles_to_pipelined_wgmma(tmp_path):
    """Offline sm_90 compile of the block-32 default forward (bf16, head dims 32 and 64, L = 4096
    and the ragged 4000): wgmma, 3 K/V buffers, loads in flight across iterations, no spill."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "fwd32.csv"
    res = subprocess.run(
        [sys.executable, "-m", "kernels.compile_report", "--configs", "defaults", "--kernels", "fwd", "--dtypes",
         "bfloat16", "--head-dims", "32,64", "--block-size", "32", "--ragged", "--out", str(out)],
        cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for r in rows:
        assert not r["error"] and (r["block_m"], r["block_n"]) == ("64", "64"), r
        assert int(r["wgmma"]) > 0 and int(r["kv_buffers"]) == 3 and int(r["async_wait_max"]) > 0, r
        assert int(r["spill_stores"]) == 0 and int(r["shared_estimate"]) >= int(r["shared_bytes"]), r


# ------------------------------------------------------------------------------------------------
# coarse backward tiles: dQ owns r layout row blocks, dK/dV r layout column blocks
# ------------------------------------------------------------------------------------------------
BWD_CASES = [
    # L, block, backward (owned, walked) tiles, bias, per-head, dtype
    (70, 32, (64, 32), "1H", True, torch.float32),   # 2x1, ragged, the batch-shared dBias kernel
    (75, 16, (32, 32), "BH", True, torch.float32),   # 2x2, ragged, dBias written by dQ
    pytest.param(100, 16, (64, 16), "1H", True, torch.float32, marks=pytest.mark.slow),    # 4x1, walked sub-tiles
    pytest.param(64, 16, (64, 64), None, False, torch.float32, marks=pytest.mark.slow),    # 4x4, even L
    pytest.param(90, 32, (16, 64), "1H", True, torch.float32, marks=pytest.mark.slow),     # owned inside a block, 1x2
    pytest.param(130, 32, (128, 64), "BH", True, torch.float16, marks=pytest.mark.slow),   # 4x2, float16
    pytest.param(70, 32, (64, 16), "1H", False, torch.float16, marks=pytest.mark.slow),    # 2x1, float16
    pytest.param(200, 16, (128, 128), "1H", True, torch.float32, marks=pytest.mark.slow),  # 8x8: bit 63
]


@pytest.mark.parametrize("L,bs,tiles,bias,per_head,dtype", BWD_CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_coarse_backward_tiles_match_the_reference(L, bs, tiles, bias, per_head, dtype):
    """dQ, dK, dV and dBias of coarse backward tiles against the float64 reference (the forward at
    its block-dividing tiles, so that the backward alone is under test)."""
    seed = _seed()
    B, H, D = 2, 2, 16
    lay = _random_layout(L, bs, H if per_head else None)
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE, dtype=dtype) for _ in range(3))
    b = None if bias is None else torch.randn(1 if bias == "1H" else B, H, L, L, device=DEVICE, dtype=dtype)
    _check(q, k, v, lay, b, KernelConfig(16, 16, 4, 3), seed, bwd=KernelConfig(*tiles, 4, 3))


def _bwd_poison(q, k, v, bias, g, what):
    """A non-finite value that a coarse backward tile of the _nf_layout (block 16) sees at pairs
    that a row (or key) block of the tile does not keep, besides those that keep it."""
    if what == "k_nan_in_a_tile_one_row_block_keeps":  # head 0, key block 1: row blocks 1, 2 keep it, 0 not
        k[0, 0, 17, 1] = NAN
    elif what == "q_nan_in_a_row_one_key_block_does_not_keep":  # head 0, row block 0: key blocks 0, 2, not 1
        q[0, 0, 5, 0] = NAN
    elif what == "grad_nan_in_a_row_one_key_block_does_not_keep":
        g[0, 0, 5, 1] = NAN
    else:
        _poison(q, k, v, bias, what)


BWD_POISONS = [
    "k_nan_in_a_tile_one_row_block_keeps", "q_nan_in_a_row_one_key_block_does_not_keep",
    "grad_nan_in_a_row_one_key_block_does_not_keep", "v_inf_in_a_tile_one_row_block_keeps",
    "v_nan_in_a_tile_one_row_block_keeps",
    "bias_nan_in_and_outside_the_layout", "bias_plus_inf",
]
QUICK_POISONS = {("k_nan_in_a_tile_one_row_block_keeps", (32, 32), 1),
                 ("grad_nan_in_a_row_one_key_block_does_not_keep", (64, 16), NF_B)}


@pytest.mark.parametrize("what,tiles,bias_batch", [
    pytest.param(w, t, bb, marks=() if (w, t, bb) in QUICK_POISONS else pytest.mark.slow)
    for w in BWD_POISONS for t in ((32, 32), (64, 16)) for bb in (1, NF_B)])
def test_non_finite_values_in_coarse_backward_tiles_match_the_row_oracle(what, tiles, bias_batch):
    """A NaN / inf in q, k, v, the output gradient or the bias reaches the gradients of exactly the
    rows and keys that compute it (the per-row oracle of tests/test_triton_nonfinite.py, which
    evaluates the reference's semantics; the dense reference's own autograd would spread a NaN of
    the output gradient to every key through 0 * NaN). Coarse backward tiles of 2x2 and 4x1 layout
    tiles, whose walk reads such a value beside pairs a block does not keep: dS and P are 0 there
    and a tile whose gradient is not finite is recomputed one layout tile at a time. Both bias
    layouts: batch-shared (the dBias kernel) and per batch (dBias written by dQ)."""
    seed = _seed()
    lay = _nf_layout()
    q, k, v = (torch.randn(NF_B, NF_H, NF_L, NF_D, device=DEVICE) for _ in range(3))
    bias = torch.randn(bias_batch, NF_H, NF_L, NF_L, device=DEVICE)
    g = torch.randn(NF_B, NF_H, NF_L, NF_D, device=DEVICE)
    _bwd_poison(q, k, v, bias, g, what)
    leaves = [t.requires_grad_() for t in (q, k, v, bias)]
    out = triton_sparse_attention(q, k, v, lay, bias, config=KernelConfig(*tiles, 4, 3),
                                  bwd_config=KernelConfig(*tiles, 4, 3))
    got = torch.autograd.grad(out, leaves, g)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    ref = row_oracle(*ref_in[:3], lay, ref_in[3], 1.0 / math.sqrt(NF_D))
    want = torch.autograd.grad(ref, ref_in, g.double())
    for name, a, b in zip(("out", "dq", "dk", "dv", "dbias"), (out, *got), (ref, *want)):
        torch.testing.assert_close(a.double(), b.detach(), atol=1e-3, rtol=1e-3, equal_nan=True,
                                   msg=lambda m: f"{name} {what} {tiles} bias batch {bias_batch} (seed={seed}): {m}")


def test_rows_and_keys_no_layout_tile_keeps_get_zero_gradients_under_coarse_tiles():
    """Block 16 with 2x2 backward tiles: row block 1 keeps nothing beside a row block that does, key
    block 2 is kept by no row; every gradient there is exactly 0, even with NaN in v and k."""
    seed = _seed()
    L = 64
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 3] = True
    mask[0, 1] = True
    mask[3, 0] = True
    lay = BlockLayout(mask, 16, L)
    q, k, v = (torch.randn(1, 2, L, 8, device=DEVICE) for _ in range(3))
    k[0, 0, 40, 0] = NAN  # key block 2: no row computes it
    v[0, 1, 41, 1] = NAN
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = triton_sparse_attention(q, k, v, lay, config=KernelConfig(32, 32, 4, 3), bwd_config=KernelConfig(32, 32, 4, 3))
    dq, dk, dv = torch.autograd.grad(out, leaves, torch.randn_like(out))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all(), seed
    assert torch.equal(dq[:, :, 16:48], torch.zeros_like(dq[:, :, 16:48])), seed
    assert torch.equal(dk[:, :, 32:48], torch.zeros_like(dk[:, :, 32:48])), seed
    assert torch.equal(dv[:, :, 32:48], torch.zeros_like(dv[:, :, 32:48])), seed


def test_small_blocks_default_to_coarse_backward_tiles_and_large_blocks_are_unchanged():
    """Blocks 16 and 32 train bf16 / fp16 on a 64-row owned tile (wgmma-sized; the sm_90 compile
    report benchmarks/results/compile-sm90-triton3.8.0-coarse-backward.csv), float32 (no tensor-core
    MMA) on block-dividing tiles; blocks 64 and 128 offer block-dividing backward tiles only."""
    for bs in (16, 32):
        for d in (32, 64):
            for dtype in (torch.bfloat16, torch.float16):
                cfg = default_backward_config(bs, d, dtype)
                assert cfg.block_m == 64 and not cfg.divides(bs) and cfg.fits(bs), (bs, d, dtype, cfg)
            assert default_backward_config(bs, d, torch.float32).divides(bs)
    for bs in (64, 128):
        assert all(c.divides(bs) for c in candidate_backward_configs(bs, 32, torch.bfloat16))
    assert any(not c.divides(16) for c in candidate_backward_configs(16, 32, torch.bfloat16))


def test_the_default_backward_at_block_32_is_exact_float16():
    """The default configs at block 32 (coarse forward and backward tiles for float16), through
    sparse_attention, against the reference."""
    seed = _seed()
    L, H = 90, 2
    lay = _random_layout(L, 32, H)
    q, k, v = (torch.randn(2, H, L, 16, device=DEVICE, dtype=torch.float16) for _ in range(3))
    assert not default_backward_config(32, 16, q.dtype).divides(32)
    _check(q, k, v, lay, torch.randn(1, H, L, L, device=DEVICE, dtype=torch.float16), None, seed)


@pytest.mark.slow
def test_block_32_default_backward_compiles_to_pipelined_wgmma(tmp_path):
    """Offline sm_90 compile of the block-32 default backward (bf16, head dims 32 and 64, L = 4096
    and the ragged 4000): dQ and dK/dV on coarse 64-row tiles with wgmma, loads in flight across
    iterations, no spill; dBias at its block-dividing tiles, no spill."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "bwd32.csv"
    res = subprocess.run(
        [sys.executable, "-m", "kernels.compile_report", "--configs", "defaults", "--kernels", "dq,dkdv,dbias",
         "--dtypes", "bfloat16", "--head-dims", "32,64", "--block-size", "32", "--ragged", "--out", str(out)],
        cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for r in rows:
        assert not r["error"] and (r["block_m"], r["block_n"]) == ("64", "32"), r
        assert int(r["spill_stores"]) == 0 and int(r["shared_estimate"]) >= int(r["shared_bytes"]), r
        assert int(r["async_wait_max"]) > 0, r
        if r["kernel"] != "dbias":
            assert int(r["wgmma"]) > 0 and int(r["kv_buffers"]) == 3, r


@pytest.mark.slow
@pytest.mark.parametrize("what", ["k", "q", "grad"])
def test_non_finite_values_under_owned_tiles_inside_one_block(what):
    """Block 32, backward tiles of 16 owned rows / keys inside one layout block walking 64 (two
    layout blocks): a NaN in k (key block 1, which row block 0 does not keep), in q or in the output
    gradient (row 5 of row block 0, which key block 1 does not keep) reaches only the gradients the
    row oracle gives (the cold paths recompute half a layout block at a time)."""
    seed = _seed()
    lay = BlockLayout(torch.tensor([[[1, 0], [1, 1]], [[1, 1], [0, 1]]], dtype=torch.bool), 32, NF_L)
    q, k, v = (torch.randn(NF_B, NF_H, NF_L, NF_D, device=DEVICE) for _ in range(3))
    bias = torch.randn(1, NF_H, NF_L, NF_L, device=DEVICE)
    g = torch.randn(NF_B, NF_H, NF_L, NF_D, device=DEVICE)
    {"k": k, "q": q, "grad": g}[what][0, 0, 35 if what == "k" else 5, 1] = NAN
    leaves = [t.requires_grad_() for t in (q, k, v, bias)]
    out = triton_sparse_attention(q, k, v, lay, bias, config=KernelConfig(16, 16, 4, 3),
                                  bwd_config=KernelConfig(16, 64, 4, 3))
    got = torch.autograd.grad(out, leaves, g)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    ref = row_oracle(*ref_in[:3], lay, ref_in[3], 1.0 / math.sqrt(NF_D))
    want = torch.autograd.grad(ref, ref_in, g.double())
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-3, rtol=1e-3, equal_nan=True,
                                   msg=lambda m: f"{name} {what} (seed={seed}): {m}")
        assert not torch.isnan(a).all(), (name, what, seed)  # the NaN stays where it is computed

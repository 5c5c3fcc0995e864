"""`KernelConfig`: launch parameters of the Triton block-sparse kernels, as plain data.

The layout's ``block_size`` is the sparsity granularity. A forward tile (``block_m`` queries x
``block_n`` keys) either divides it, so a program walks the kept layout tiles in sub-tiles, or is a
multiple of it, so a program walks the union of the kept tiles of block_m / block_size layout rows
and masks, inside each coarse tile, the layout tiles that are not kept (``kernels.coarse_index``):
a short protein's small layout block still runs 64 x 64 tiles. The backward's tiles do the same
for blocks under 64 (dQ over the row union index, dK/dV over the column union index,
``for_backward``); from block 64 on they are clipped to the block (``clipped_to``). The autotuner enumerates ``candidate_configs`` and every config offered
there is checked correct by the test suite.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Union

KERNEL_TILES: tuple[int, ...] = (16, 32, 64, 128)
KERNEL_WARPS: tuple[int, ...] = (2, 4, 8)
KERNEL_STAGES: tuple[int, ...] = (1, 2, 3, 4)
KERNEL_ROWS_PER_CTA: tuple[int, ...] = (1, 2, 4, 8)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes, warps and pipeline stages of one kernel launch.

    rows_per_cta: batch elements (MSA rows, triangle rows) one forward program walks for its query
    tile, loading the tile's block index once (``kernels.triton_kernels._attn_fwd_kernel``); the
    greatest power of two dividing both it and the batch is launched. Used by the eager inference
    launch; the registered op (autograd, torch.compile) launches one batch element per program.
    Default 1: the configuration every GPU measurement so far used (larger values are unmeasured on
    a GPU)."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    rows_per_cta: int = 1

    def __post_init__(self) -> None:
        for name, allowed in (
            ("block_m", KERNEL_TILES),
            ("block_n", KERNEL_TILES),
            ("num_warps", KERNEL_WARPS),
            ("num_stages", KERNEL_STAGES),
            ("rows_per_cta", KERNEL_ROWS_PER_CTA),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:  # 64.0, True: no
                raise ValueError(f"KernelConfig.{name} must be one of {list(allowed)}, got {value!r}")

    def divides(self, block_size: int) -> bool:
        """True if both tiles divide the layout's block size (what the backward kernels need)."""
        return block_size % self.block_m == 0 and block_size % self.block_n == 0

    def fits(self, block_size: int) -> bool:
        """True if the forward kernel runs these tiles on a layout of ``block_size``: each tile
        divides the block or is a multiple of it (a coarse tile, ``kernels.coarse_index``)."""
        return all(block_size % t == 0 or t % block_size == 0 for t in (self.block_m, self.block_n))

    def for_block(self, block_size: int) -> "KernelConfig":
        """This forward config for a layout of ``block_size``: unchanged (tiles dividing the block,
        or multiples of it); a tile that is neither is refused, never silently mis-sized."""
        if not self.fits(block_size):
            raise ValueError(f"KernelConfig tiles {self.block_m}x{self.block_n} neither divide nor are multiples of "
                             f"block_size={block_size}")
        return self

    def clipped_to(self, block_size: int) -> "KernelConfig":
        """This config with tiles clipped to ``block_size``: the backward kernels walk layout tiles
        in sub-tiles, so their tiles must divide the block."""
        bm, bn = min(self.block_m, block_size), min(self.block_n, block_size)
        cfg = KernelConfig(bm, bn, self.num_warps, self.num_stages, self.rows_per_cta)
        if not cfg.divides(block_size):
            raise ValueError(f"KernelConfig tiles {bm}x{bn} do not divide block_size={block_size}")
        return cfg

    def for_backward(self, block_size: int) -> "KernelConfig":
        """This backward config for a layout of ``block_size``: for a block under ``COARSE_BELOW``
        with each tile dividing the block or a multiple of it, unchanged (dQ and dK/dV walk the
        coarse index, ``kernels.coarse_index``); otherwise ``clipped_to`` the block, as before."""
        if block_size < COARSE_BELOW and self.fits(block_size):
            return self
        return self.clipped_to(block_size)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; ``rows_per_cta`` only when it is not 1 (so the configs written
        before it existed read and write unchanged)."""
        d = asdict(self)
        if d["rows_per_cta"] == 1:
            del d["rows_per_cta"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KernelConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown KernelConfig key(s) {unknown}")
        return cls(**data)



# ------------------------------------------------------------------------------------------------
# what fits a Hopper GPU (H100 / H200, sm_90), measured by compiling for it (python -m kernels.compile_report)
# ------------------------------------------------------------------------------------------------
SHARED_MEMORY_LIMIT = 232_448  # bytes of shared memory one block may use on sm_90 (227 KiB)
FORWARD_KERNELS = ("fwd",)
BACKWARD_KERNELS = ("dq", "dkdv", "dbias")

DtypeLike = Union[str, "torch.dtype", int, None]  # noqa: F821


def _elem_bytes(dtype: DtypeLike) -> int:
    """Bytes per element of q/k/v: 4 for float32 (and for None: the worst case), 2 otherwise; an int
    is taken as the byte count."""
    if dtype is None:
        return 4
    if isinstance(dtype, int):
        return dtype
    name = str(dtype).replace("torch.", "")
    return 4 if name == "float32" else 2


def _d_pad(head_dim: int) -> int:
    return max(16, 1 << (head_dim - 1).bit_length())


# Upper bound of Triton's shared-memory allocation per kernel and element size (2: bf16/fp16,
# 4: float32), linear in the features
#   (bm*dp*e, S*bn*dp*e, bm*bn*4, S*bm*bn*4, S*bm*dp*e, bn*dp*e, 1)
# (bm x bn the tile, dp the padded head dim, e the element size, S the stages), fitted as the
# tightest bound over every compilation in benchmarks/results/compile-sm90-triton*.csv (Triton 3.8
# and 3.6, the GPU machine's version; a linear
# programme: minimise the summed ratio bound/actual subject to bound >= actual), then widened by
# SHARED_MEMORY_MARGIN for Triton versions and shapes that were not compiled.
SHARED_MEMORY_MODEL: dict[tuple[str, int], tuple[float, ...]] = {
    # refit (linear program: the tightest bound over every row) on 1,203 compilations, every forward
    # candidate at blocks 16-128, bf16 / fp16, head dims 32 / 64 (compile-sm90-triton3.8.0-gated.csv and
    # the earlier reports); the 186-row fit it replaces was up to 6.8% under at block 128 with 128-key tiles
    ("fwd", 2): (0.333, 1.875, 0.157, 0.262, 0.267, 0.0, 500.0),  # bound/actual 1.00..3.24
    ("fwd", 4): (1.011, 1.331, 0.0, 1.008, 0.001, 0.0, 40.4),  # 132 compilations, bound/actual 1.00..1.25
    ("dq", 2): (1.999, 1.999, 0.25, 0.25, 0.001, 0.001, 9.0),  # 126 compilations, bound/actual 1.00..2.00
    ("dq", 4): (2.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0),  # 78 compilations, bound/actual 1.00..1.22
    ("dkdv", 2): (2.0, 1.619, 0.707, 0.15, 0.0, 0.952, 25.4),  # 126 compilations, bound/actual 1.00..4.06
    ("dkdv", 4): (2.0, 1.188, 1.5, 0.5, 0.0, 0.812, 1.0),  # 42 compilations, bound/actual 1.00..1.43
    ("dbias", 2): (0.0, 1.826, 0.261, 0.0, 2.0, 0.0, 1.0),  # 126 compilations, bound/actual 1.00..2.17
    ("dbias", 4): (0.962, 0.96, 0.0, 0.004, 1.032, 1.021, 62.4),  # 42 compilations, bound/actual 1.00..1.51
}
SHARED_MEMORY_MARGIN = 1.05


def shared_memory_bytes(kernel: str, elem_bytes: int, block_m: int, block_n: int, d_pad: int, num_stages: int) -> int:
    """An upper bound of the shared memory (bytes) Triton allocates for ``kernel`` at this launch
    config on sm_90 (``SHARED_MEMORY_MODEL`` times ``SHARED_MEMORY_MARGIN``). ``block_m`` x
    ``block_n`` is the (query, key) tile of "fwd", the (owned, walked) tile of the backward kernels
    ("dq", "dkdv", "dbias"); ``elem_bytes`` 2 for bf16/fp16, 4 for float32. Checked against every
    compilation of the committed compile report (never below it)."""
    key = (kernel, 4 if elem_bytes >= 4 else 2)
    if key not in SHARED_MEMORY_MODEL:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {list(FORWARD_KERNELS + BACKWARD_KERNELS)}")
    e, bm, bn, dp, st = key[1], block_m, block_n, d_pad, max(1, num_stages)
    feats = (bm * dp * e, st * bn * dp * e, bm * bn * 4, st * bm * bn * 4, st * bm * dp * e, bn * dp * e, 1)
    return int(math.ceil(SHARED_MEMORY_MARGIN * sum(c * f for c, f in zip(SHARED_MEMORY_MODEL[key], feats))))


def fit_stages(kernel: str, elem_bytes: int, block_m: int, block_n: int, d_pad: int, num_stages: int,
               limit: int = SHARED_MEMORY_LIMIT) -> int:
    """``num_stages`` lowered until ``shared_memory_bytes`` fits ``limit`` (at least 1): the stages a
    launch actually uses, so that no launch config raises OutOfResources on an H100 / H200."""
    s = num_stages
    while s > 1 and shared_memory_bytes(kernel, elem_bytes, block_m, block_n, d_pad, s) > limit:
        s -= 1
    return s


def dbias_tiles(block_m: int, block_n: int, block_size: int) -> tuple[int, int]:
    """The tiles of the dBias kernel (a bias shared by the batch) under a backward config of
    (block_m, block_n): clipped to the layout block. Its sum over the batch is elementwise per pair
    (no contraction across pairs), so it walks only kept layout tiles and needs no coarse index."""
    return min(block_m, block_size), min(block_n, block_size)


def _fits(kernels: tuple[str, ...], cfg: KernelConfig, elem_bytes: int, d_pad: int) -> bool:
    return all(shared_memory_bytes(k, elem_bytes, cfg.block_m, cfg.block_n, d_pad, cfg.num_stages) <= SHARED_MEMORY_LIMIT
               for k in kernels)


# Launch configs that spill registers on sm_90 (ptxas: bytes spill stores > 0) in some kernel of
# the group ("fwd"; "bwd": dQ, dK/dV or dBias), per dtype group ("16": bf16/fp16, "32": float32)
# and padded head dim, as (block_m, block_n, num_warps, num_stages). Taken from the compile report
# (sm_90: benchmarks/results/compile-sm90-triton*.csv; Triton 3.8, every tile / warps /
# stages combination at block sizes 64 (bf16, head dims 32, 64) and 128 (bf16 head dim 8; float32
# head dims 8 and 64, the float32 head-dim-64 backward only partly compiled); Triton 3.6 at block
# 64, bf16, head dims 32 and 64: no spill; Triton 3.8, the block-64 float32 candidates at head dim
# 32); combinations that
# were not compiled are not flagged. Left out of the candidate lists (``exclude_spilling=True``)
# and never chosen as a default.
SPILLING: dict[tuple[str, str, int], frozenset[tuple[int, int, int, int]]] = {
    ("bwd", "16", 16): frozenset([(16, 16, 4, 1), (128, 64, 4, 1), (128, 64, 4, 2), (128, 64, 4, 3),
                                  (128, 128, 4, 1), (128, 128, 4, 2), (128, 128, 4, 3), (128, 128, 8, 1),
                                  (128, 128, 8, 2), (128, 128, 8, 3)]),
    ("bwd", "16", 32): frozenset([(32, 16, 4, 3)]),
    ("bwd", "32", 16): frozenset([(16, 16, 4, 1), (32, 16, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3), (128, 16, 4, 1),
                                  (128, 32, 4, 2), (128, 32, 4, 3), (128, 64, 4, 1), (128, 64, 4, 2), (128, 64, 4, 3),
                                  (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 4, 1), (128, 128, 4, 2),
                                  (128, 128, 4, 3), (128, 128, 8, 1), (128, 128, 8, 2), (128, 128, 8, 3)]),
    ("bwd", "32", 32): frozenset([(64, 16, 4, 3), (64, 64, 4, 1), (64, 64, 8, 1), (64, 64, 8, 3)]),
    ("bwd", "32", 64): frozenset([(64, 32, 4, 1), (64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 1), (64, 64, 4, 2),
                                  (64, 64, 4, 3), (64, 64, 8, 1), (64, 64, 8, 2), (64, 64, 8, 3), (128, 16, 4, 1),
                                  (128, 16, 4, 2), (128, 16, 4, 3), (128, 32, 4, 1), (128, 32, 4, 2), (128, 32, 4, 3),
                                  (128, 32, 8, 1), (128, 32, 8, 2), (128, 32, 8, 3), (128, 64, 4, 1), (128, 64, 4, 2),
                                  (128, 64, 4, 3), (128, 64, 8, 1), (128, 64, 8, 2), (128, 64, 8, 3)]),
    ("fwd", "16", 16): frozenset([(128, 128, 4, 1), (128, 128, 4, 2), (128, 128, 4, 3)]),
    # block 128, bf16 / fp16 (compile-sm90-triton3.8.0-gated.csv, the plain forward's rows)
    ("fwd", "16", 32): frozenset([(32, 32, 4, 2), (32, 128, 4, 3), (128, 128, 4, 1), (128, 128, 4, 2), (128, 128, 4, 3)]),
    ("fwd", "16", 64): frozenset([(128, 64, 4, 1), (128, 128, 4, 1)]),
    ("fwd", "32", 16): frozenset([(16, 128, 4, 3), (128, 32, 4, 1), (128, 128, 4, 1), (128, 128, 4, 2),
                                  (128, 128, 4, 3)]),
    ("fwd", "32", 32): frozenset([(64, 64, 4, 1)]),
    ("fwd", "32", 64): frozenset([(16, 64, 4, 1), (16, 128, 4, 1), (32, 64, 4, 1), (32, 128, 8, 1), (64, 32, 4, 1),
                                  (64, 64, 4, 1), (64, 64, 4, 3), (64, 64, 8, 1), (64, 128, 4, 1), (64, 128, 4, 2),
                                  (64, 128, 4, 3), (128, 16, 4, 1), (128, 16, 4, 2), (128, 16, 4, 3), (128, 32, 4, 1),
                                  (128, 32, 8, 1), (128, 64, 4, 1), (128, 64, 4, 2), (128, 64, 4, 3), (128, 64, 8, 1),
                                  (128, 128, 4, 1), (128, 128, 4, 2), (128, 128, 4, 3), (128, 128, 8, 1),
                                  (128, 128, 8, 2), (128, 128, 8, 3)]),
}


# Forward configs that spill on sm_90 at layout blocks under COARSE_BELOW besides those of SPILLING
# (mostly the coarse-tile kernel of a tile larger than the block): the compile report of every
# forward candidate at blocks 16 and 32 (bf16 and float32, head dims 32 and 64, L = 4096; Triton
# 3.8: benchmarks/results/compile-sm90-triton3.8.0-coarse-tiles.csv). Kept apart so that the
# candidates of blocks >= 64 stay those of SPILLING.
# The "bwd" entries: the compile report of every backward candidate at blocks 16 and 32 (dQ and
# dK/dV on coarse tiles where block_m exceeds the block, dBias at its dividing tiles; bf16 and
# float32, head dims 32 and 64, L = 4096, block 32 also the ragged 4000; Triton 3.8:
# benchmarks/results/compile-sm90-triton3.8.0-coarse-backward.csv), the configs not already in SPILLING.
SPILLING_SMALL_BLOCK: dict[tuple[str, str, int], frozenset[tuple[int, int, int, int]]] = {
    ("bwd", "16", 32): frozenset([(16, 16, 4, 3), (128, 64, 4, 2), (128, 64, 4, 3)]),
    ("bwd", "16", 64): frozenset([(128, 32, 4, 1), (128, 32, 4, 3), (128, 64, 4, 1), (128, 64, 4, 2), (128, 64, 4, 3)]),
    ("bwd", "32", 32): frozenset([(32, 16, 4, 3), (64, 32, 4, 1), (64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2),
                                  (64, 64, 4, 3), (64, 64, 8, 2), (128, 32, 4, 1), (128, 32, 4, 2), (128, 32, 4, 3),
                                  (128, 32, 8, 1), (128, 32, 8, 2), (128, 32, 8, 3), (128, 64, 4, 1), (128, 64, 4, 2),
                                  (128, 64, 4, 3), (128, 64, 8, 1), (128, 64, 8, 2), (128, 64, 8, 3)]),
    ("bwd", "32", 64): frozenset([(32, 16, 4, 3), (32, 32, 4, 1), (32, 32, 4, 2), (64, 16, 4, 1), (64, 16, 4, 2),
                                  (64, 16, 4, 3)]),
    ("fwd", "16", 64): frozenset([(128, 64, 4, 1)]),
    ("fwd", "32", 32): frozenset([(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 4, 1), (128, 64, 8, 1), (128, 64, 8, 2),
                                  (128, 64, 8, 3)]),
    ("fwd", "32", 64): frozenset([(32, 32, 4, 1), (64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2)]),
}


def spills(group: str, cfg: KernelConfig, dtype: DtypeLike, head_dim: int, block_size: int | None = None) -> bool:
    """True if ``cfg`` spills registers in some kernel of ``group`` ("fwd" or "bwd") on sm_90; with
    a ``block_size`` under ``COARSE_BELOW``, ``SPILLING_SMALL_BLOCK`` is checked too."""
    key = (group, "32" if _elem_bytes(dtype) == 4 else "16", _d_pad(head_dim))
    tiles = (cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages)
    if tiles in SPILLING.get(key, frozenset()):
        return True
    small = block_size is not None and block_size < COARSE_BELOW
    return small and tiles in SPILLING_SMALL_BLOCK.get(key, frozenset())


# Forward tiles offered beyond those dividing the block, for layout blocks under 64: coarse tiles
# (multiples of the block, ``kernels.coarse_index``) of at least 64 query rows, the smallest M of a
# Hopper warp-group MMA (wgmma): tiles dividing a block of 16 or 32 compile to mma.sync with one K/V
# buffer fewer (sm_90 compile report, benchmarks/results/compile-sm90-triton3.8.0-coarse-tiles.csv).
COARSE_FORWARD_TILES: tuple[tuple[int, int], ...] = ((64, 32), (64, 64), (128, 64))
COARSE_BELOW = 64  # blocks smaller than this get COARSE_FORWARD_TILES; larger blocks: dividing tiles only
# Backward (owned, walked) tiles offered beyond those dividing the block, for layout blocks under 64:
# dQ owns block_m query rows, dK/dV block_m keys (a multiple of the block: wgmma-sized), each walking
# block_n of the other side over the coarse index (``KernelConfig.for_backward``)
COARSE_BACKWARD_TILES: tuple[tuple[int, int], ...] = ((64, 16), (64, 32), (64, 64), (128, 32), (128, 64))


def _tiles(block_size: int, coarse: tuple[tuple[int, int], ...] = ()):
    for bm in KERNEL_TILES:
        for bn in KERNEL_TILES:
            if block_size % bm == 0 and block_size % bn == 0:
                yield bm, bn
    if block_size < COARSE_BELOW:
        yield from (t for t in coarse if KernelConfig(*t).fits(block_size) and not KernelConfig(*t).divides(block_size))


def _candidates(group: str, kernels: tuple[str, ...], block_size: int, head_dim: int | None, dtype: DtypeLike,
                exclude_spilling: bool, owned_at_least_walked: bool) -> list[KernelConfig]:
    """Launch configs of one kernel group ("fwd" or "bwd", whose kernels are ``kernels``): tiles
    dividing ``block_size`` (with ``owned_at_least_walked``, block_m >= block_n), for a block under
    ``COARSE_BELOW`` also ``COARSE_FORWARD_TILES`` ("fwd") or ``COARSE_BACKWARD_TILES`` ("bwd"), 4 or 8 warps (8
    only for tiles of at least 64 x 64), 1 to 3 stages, fitting an sm_90 block's shared memory in
    every kernel of the group and, with ``exclude_spilling``, spilling in none of them."""
    d_pad = _d_pad(head_dim if head_dim is not None else 64)
    eb = _elem_bytes(dtype)
    out = []
    for bm, bn in _tiles(block_size, COARSE_FORWARD_TILES if group == "fwd" else COARSE_BACKWARD_TILES):
        if owned_at_least_walked and bm < bn:
            continue
        for w in (4, 8):
            if bm * bn < 64 * 64 and w == 8:
                continue
            for s in (1, 2, 3):
                cfg = KernelConfig(bm, bn, w, s)
                if not _fits(kernels, cfg, eb, d_pad):
                    continue
                if exclude_spilling and spills(group, cfg, dtype, d_pad, block_size):
                    continue
                out.append(cfg)
    return out


def candidate_configs(block_size: int, head_dim: int | None = None, dtype: DtypeLike = None, *,
                      exclude_spilling: bool = True) -> list[KernelConfig]:
    """Every forward launch config the autotuner may try for a layout of ``block_size``: tiles
    dividing it (at least 16) and, for a block under 64, the coarse tiles ``COARSE_FORWARD_TILES``
    (multiples of it, wgmma-sized), 4 or 8 warps (8 only for tiles of at least 64 x 64), 1 to 3
    stages;
    only configs whose shared memory fits an sm_90 block (``shared_memory_bytes``; head_dim None
    and dtype None take the worst case, 64 and float32) and, with ``exclude_spilling``, that do not
    spill registers (``SPILLING``, and ``SPILLING_SMALL_BLOCK`` for blocks under 64)."""
    return _candidates("fwd", FORWARD_KERNELS, block_size, head_dim, dtype, exclude_spilling, False)


def candidate_backward_configs(block_size: int, head_dim: int | None = None, dtype: DtypeLike = None, *,
                               exclude_spilling: bool = True) -> list[KernelConfig]:
    """The backward's own launch configs: (block_m, block_n) is the (owned, walked) tile, so dQ owns
    block_m query rows and walks block_n keys and dK/dV owns block_m keys and walks block_n query
    rows (FlashAttention-2, Dao 2023: the Triton tutorial uses 128 x 32 for dQ and 32 x 128 for dK/dV,
    i.e. a large owned tile and a small walked one). Tiles dividing ``block_size`` with
    block_m >= block_n and, for a block under 64, ``COARSE_BACKWARD_TILES`` (multiples of it,
    wgmma-sized; ``kernels.coarse_index``), 4 or 8 warps, 1 to 3 stages, fitting shared memory in every backward kernel,
    and with ``exclude_spilling`` not spilling in any of them."""
    return _candidates("bwd", BACKWARD_KERNELS, block_size, head_dim, dtype, exclude_spilling, True)


# ------------------------------------------------------------------------------------------------
# default launch configs: measured winners first, then a pipelined preference
# ------------------------------------------------------------------------------------------------
# The fastest forward config measured on a GPU per (layout block size, padded head dim, dtype
# group "16" = bf16/fp16 or "32" = float32): the committed H200 kernel benchmark
# (benchmarks/results/NVIDIA-H200.csv, Triton 3.6, bf16, head dim 32, block 64: the fastest of the
# four configs tried in every one of its 16 Triton rows, MSA row L = 4096 and triangle L = 2048 at
# 0-91% sparsity, forward and forward+backward).
MEASURED_FORWARD: dict[tuple[int, int, str], "KernelConfig"] = {
    (64, 32, "16"): KernelConfig(64, 64, 4, 3),
}

# preference order of the default forward config where nothing was measured: 3 stages first (on
# sm_90 the K/V loop is software-pipelined only from 3 stages on: TTGIR ``async_wait`` > 0 and
# ``num_stages - 1`` K/V buffers in the compile report; 2 stages give one buffer and wait 0), the
# first that fits the layout block, shared memory and does not spill is used
FORWARD_PREFERENCE: tuple[KernelConfig, ...] = (
    KernelConfig(64, 64, 4, 3),
    KernelConfig(64, 64, 8, 3),
    KernelConfig(64, 32, 4, 3),
    KernelConfig(32, 32, 4, 3),
    KernelConfig(32, 16, 4, 3),
    KernelConfig(16, 16, 4, 3),
    KernelConfig(64, 64, 4, 2),
    KernelConfig(32, 32, 4, 2),
)


@functools.lru_cache(maxsize=512)  # called on every Triton call without config: a pure function
def default_forward_config(block_size: int, head_dim: int | None = None, dtype: DtypeLike = None) -> KernelConfig:
    """The forward launch config used when none is given (and no tuned file names one): the measured
    winner of ``MEASURED_FORWARD`` for (block size, padded head dim, dtype group) when there is
    one, else the first of ``FORWARD_PREFERENCE`` that ``candidate_configs`` offers for this block
    size, head dim and dtype, else the first config it offers."""
    group = "32" if _elem_bytes(dtype) == 4 else "16"
    measured = MEASURED_FORWARD.get((block_size, _d_pad(head_dim if head_dim is not None else 64), group))
    if measured is not None:
        return measured
    offered = candidate_configs(block_size, head_dim, dtype)
    for cfg in FORWARD_PREFERENCE:
        if cfg in offered:
            return cfg
    if offered:
        return offered[0]
    return KernelConfig(16, 16, 4, 1)  # nothing offered (cannot happen for supported shapes): smallest


# preference order of the default backward config (the first that fits the block and neither
# overflows shared memory nor spills is used): 3 stages first, which the sm_90 compile report shows
# software-pipelined in dQ, dK/dV and dBias (async_wait 3-4, 3 buffers; 2 stages: wait 0) at the
# same registers (64x32/w4, bf16, head dims 32 and 64, block 64), then the 2-stage configs
BACKWARD_PREFERENCE: tuple[KernelConfig, ...] = (
    KernelConfig(64, 32, 4, 3),
    KernelConfig(64, 16, 4, 3),
    KernelConfig(32, 32, 4, 3),
    KernelConfig(32, 16, 4, 3),
    KernelConfig(16, 16, 4, 3),
    KernelConfig(64, 32, 4, 2),
    KernelConfig(64, 16, 4, 2),
    KernelConfig(32, 32, 4, 2),
    KernelConfig(32, 16, 4, 2),
    KernelConfig(16, 16, 4, 2),
)


@functools.lru_cache(maxsize=512)  # called on every Triton call: a pure function of hashable arguments
def default_backward_config(block_size: int, head_dim: int | None = None, dtype: DtypeLike = None) -> KernelConfig:
    """The backward launch config used when none is given: the first of ``BACKWARD_PREFERENCE``
    that ``candidate_backward_configs`` offers for this block size, head dim and dtype, else the
    first config it offers. On a block under 64 that is a coarse 64-row owned tile for bf16 / fp16
    (64 x 32: dQ and dK/dV on wgmma, pipelined, no spill in the sm_90 compile report
    benchmarks/results/compile-sm90-triton3.8.0-coarse-backward.csv); float32, whose dots run in
    full precision (no tensor-core MMA at any tile, and most coarse float32 tiles spill in dK/dV),
    keeps block-dividing tiles."""
    offered = candidate_backward_configs(block_size, head_dim, dtype)
    if _elem_bytes(dtype) == 4:
        offered = [c for c in offered if c.divides(block_size)] or offered
    for cfg in BACKWARD_PREFERENCE:
        if cfg in offered:
            return cfg
    if offered:
        return offered[0]
    return KernelConfig(16, 16, 4, 1)  # nothing offered (cannot happen for supported shapes): smallest

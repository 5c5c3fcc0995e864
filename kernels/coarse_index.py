"""The union ("coarse") index that lets a Triton forward tile be a multiple of the layout block.

A query tile of ``rows`` layout row blocks and a key step of ``cols`` layout column blocks cover a
coarse tile of ``rows`` x ``cols`` layout tiles. For coarse row i (layout rows i*rows ..
i*rows+rows-1) the forward walks the coarse columns j where the layout keeps at least one of those
tiles, and masks, inside the coarse tile, the layout tiles it does not keep (a token-level mask at
block granularity; ``kernels.triton_kernels._tile_keep``). Per coarse row:

* ``counts[h, i]``: the kept coarse columns (int32 [lh, nr]);
* ``indices[h, i, :counts[h, i]]``: those columns, ascending, padded with the last one (int32
  [lh, nr, nc]), the layout's own index format (``patterns.layout.compact_index``);
* ``bits[h, i, t]``: int64 bitmask of the coarse tile ``indices[h, i, t]``: bit ``r * cols + c``
  is set iff the layout keeps tile (i*rows + r, j*cols + c); layout tiles past the last block
  (when ``rows`` or ``cols`` does not divide nb) are never kept.

It is computed from the layout's compact index (``kv_counts``, ``kv_indices``: what the custom ops
receive) once per (index, rows, cols) and kept with the layout's plans (``kernels.plans``, keyed
by the ``kv_counts`` tensor and its version counter), so a call after the first pays one lookup.
"""

from __future__ import annotations

import torch

from patterns.layout import compact_index

from .plans import layout_plans

__all__ = ["coarse_index", "block_mask_of"]


def block_mask_of(kv_counts: torch.Tensor, kv_indices: torch.Tensor) -> torch.Tensor:
    """bool [lh, nb, nb]: the block mask that a compact row index (counts, padded indices)
    describes (padding entries, which repeat the last kept column, are not counted)."""
    lh, nb = kv_counts.shape
    pos = torch.arange(nb, device=kv_counts.device)
    valid = (pos.view(1, 1, nb) < kv_counts.unsqueeze(-1)).to(torch.int32)
    hits = torch.zeros((lh, nb, nb), dtype=torch.int32, device=kv_counts.device)
    return hits.scatter_add_(-1, kv_indices.long(), valid) > 0


def _build(kv_counts: torch.Tensor, kv_indices: torch.Tensor, rows: int, cols: int):
    if torch.is_inference_mode_enabled():  # ordinary tensors, with version counters (the tile order keys on them)
        with torch.inference_mode(False):
            return _build(kv_counts, kv_indices, rows, cols)
    mask = block_mask_of(kv_counts, kv_indices)
    lh, nb, _ = mask.shape
    nr, nc = -(-nb // rows), -(-nb // cols)
    padded = torch.zeros((lh, nr * rows, nc * cols), dtype=torch.int64, device=mask.device)
    padded[:, :nb, :nb] = mask.to(torch.int64)
    # [lh, nr, rows, nc, cols] -> [lh, nr, nc, rows * cols]: bit r * cols + c of each coarse tile
    tiles = padded.view(lh, nr, rows, nc, cols).permute(0, 1, 3, 2, 4).reshape(lh, nr, nc, rows * cols)
    weights = torch.ones(rows * cols, dtype=torch.int64, device=mask.device) << torch.arange(
        rows * cols, dtype=torch.int64, device=mask.device)
    bits = (tiles * weights).sum(-1)  # distinct powers of two: the sum is their OR (bit 63 included)
    counts, indices = compact_index(bits != 0)[:2]
    kept_bits = torch.gather(bits, -1, indices.long())
    return counts, indices, kept_bits.contiguous()


def coarse_index(kv_counts: torch.Tensor, kv_indices: torch.Tensor, rows: int,
                 cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts, indices, bits) of the coarse tiles of ``rows`` x ``cols`` layout tiles (see the
    module docstring), on the index's device; cached per index tensor, version, rows and cols."""
    plans = layout_plans(kv_counts)
    key = ("triton-coarse-index", kv_counts._version, kv_indices._version, rows, cols)
    index = plans.get(key)
    if index is None:
        index = plans[key] = _build(kv_counts, kv_indices, rows, cols)
    return index

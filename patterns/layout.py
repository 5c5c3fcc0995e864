"""`BlockLayout`: which block_size x block_size tiles of the L x L attention matrix are computed.

The layout is what every kernel consumes. Besides the bool ``block_mask`` it carries the compact
per-row index that block-sparse kernels iterate over (the same "kv_num_blocks / kv_indices" form
as FlexAttention's BlockMask):

* ``kv_counts[h, i]``: number of key blocks kept in query block row i;
* ``kv_indices[h, i, :kv_counts[h, i]]``: those key blocks, ascending (rest is padding);
* ``q_counts`` / ``q_indices``: the transpose (query blocks per key block column), which the
  backward pass uses to accumulate dK and dV without atomics.

A layout is either shared by all heads (``block_mask`` [nb, nb]) or per head ([H, nb, nb]);
the index tensors always have a leading head dimension (1 when shared).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


__all__ = ["BlockLayout", "compact_index"]


def _row_index(mask3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[H, R, C] bool -> (counts [H, R] int32, indices [H, R, C] int32, kept columns first,
    ascending, padded with the last kept column (or 0) so that a padded read stays in range)."""
    counts = mask3.sum(-1).to(torch.int32)
    order = torch.argsort((~mask3).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    # pad with the last valid index so that accidental reads of padding stay in bounds and local
    last = torch.gather(order, -1, (counts.long() - 1).clamp(min=0).unsqueeze(-1))
    pos = torch.arange(mask3.shape[-1], device=mask3.device).view(1, 1, -1)
    order = torch.where(pos < counts.unsqueeze(-1), order, last)
    return counts.contiguous(), order.contiguous()


def compact_index(mask3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kv_counts, kv_indices, q_counts, q_indices) of a [H, nb, nb] block mask (see the module
    docstring): the rows' index and the columns' (the transpose's)."""
    return (*_row_index(mask3), *_row_index(mask3.transpose(-1, -2)))


@dataclass(eq=False)
class BlockLayout:
    """A block-sparse attention layout for one sequence length.

    Attributes:
        block_mask: bool [nb, nb] (all heads) or [H, nb, nb] (per head); nb = ceil(seq_len / block_size).
        block_size: tile edge in tokens.
        seq_len: L; the last tile row/column is ragged when L % block_size != 0.
        config: the PatternConfig or GuidedConfig it was built from, if any.
        workspace: scratch buffers a backend may reuse between no-grad calls on every layout that
            shares this dict (the CPU backend's K^T tiles). None: the backend keeps them with this
            layout object. Guided layouts, built afresh on every forward, share one per config, so
            a new layout does not pay a new buffer's first-touch page faults.
    """

    block_mask: torch.Tensor
    block_size: int
    seq_len: int
    config: Optional[Any] = None  # a PatternConfig or a patterns.guided.GuidedConfig
    _cache: dict = field(default_factory=dict, repr=False)
    workspace: Optional[dict] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        bm = self.block_mask
        if bm.dtype != torch.bool or bm.dim() not in (2, 3):
            raise ValueError("BlockLayout.block_mask must be a bool tensor [nb, nb] or [H, nb, nb]")
        nb = math.ceil(self.seq_len / self.block_size)
        if bm.shape[-1] != nb or bm.shape[-2] != nb:
            raise ValueError(
                f"BlockLayout.block_mask must be [{nb}, {nb}] for seq_len={self.seq_len}, "
                f"block_size={self.block_size}; got {list(bm.shape)}"
            )
        # a layout lives where its mask was built (a guided layout: on its signal's device)
        self.block_mask = bm.detach().contiguous()

    @property
    def device(self) -> torch.device:
        """Where ``block_mask`` and the compact index live (CPU for static layouts)."""
        return self.block_mask.device

    # ---- shape -------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return self.block_mask.shape[-1]

    @property
    def num_heads(self) -> Optional[int]:
        """H for a per-head layout, None for one shared by all heads."""
        return self.block_mask.shape[0] if self.block_mask.dim() == 3 else None

    @property
    def mask3(self) -> torch.Tensor:
        """block_mask with a leading head dimension (size 1 when shared)."""
        return self.block_mask if self.block_mask.dim() == 3 else self.block_mask.unsqueeze(0)

    # ---- token level ------------------------------------------------------------------------
    def token_mask(self) -> torch.Tensor:
        """bool [L, L] (or [H, L, L]): the exact pairs that attend; padding of the ragged tail excluded."""
        bs, L = self.block_size, self.seq_len
        tok = self.block_mask.repeat_interleave(bs, dim=-1).repeat_interleave(bs, dim=-2)
        return tok[..., :L, :L].contiguous()

    def tile_pairs(self) -> torch.Tensor:
        """Number of real (unpadded) token pairs in each tile, int64 [nb, nb] (on the layout's device)."""
        bs, L, nb = self.block_size, self.seq_len, self.n_blocks
        sizes = torch.full((nb,), bs, dtype=torch.int64, device=self.block_mask.device)
        sizes[-1] = L - (nb - 1) * bs
        return sizes[:, None] * sizes[None, :]

    @property
    def computed_pairs(self) -> int:
        """Token pairs computed (summed over heads for a per-head layout)."""
        return int((self.mask3.to(torch.int64) * self.tile_pairs()).sum())

    @property
    def density(self) -> float:
        """Fraction of the L x L pairs that are computed (mean over heads for a per-head layout)."""
        heads = self.mask3.shape[0]
        return self.computed_pairs / float(heads * self.seq_len * self.seq_len)

    @property
    def sparsity(self) -> float:
        """Fraction of the L x L pairs that are not computed: 1 - density."""
        return 1.0 - self.density

    @property
    def is_full(self) -> bool:
        return bool(self.block_mask.all())

    # ---- compact index for kernels -----------------------------------------------------------
    def _index(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if "index" not in self._cache:
            self._cache["index"] = compact_index(self.mask3)
        return self._cache["index"]

    @property
    def kv_counts(self) -> torch.Tensor:
        return self._index()[0]

    @property
    def kv_indices(self) -> torch.Tensor:
        return self._index()[1]

    @property
    def q_counts(self) -> torch.Tensor:
        return self._index()[2]

    @property
    def q_indices(self) -> torch.Tensor:
        return self._index()[3]

    def index_on(self, device: torch.device | str) -> tuple[torch.Tensor, ...]:
        """(kv_counts, kv_indices, q_counts, q_indices) on ``device``, cached per device."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = ("index", str(device))
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device) for t in self._index())
        return self._cache[key]

    def fresh(self) -> "BlockLayout":
        """The same layout as a new object, without the index or any backend's cached plans and
        workspaces: a call on it is a cold call (what a first call on a new layout allocates)."""
        return BlockLayout(self.block_mask, self.block_size, self.seq_len, self.config)

    # ---- composition -------------------------------------------------------------------------
    def per_head(self, num_heads: int) -> "BlockLayout":
        """The same layout repeated for ``num_heads`` heads (a [H, nb, nb] mask)."""
        if self.num_heads is not None:
            if self.num_heads != num_heads:
                raise ValueError(f"layout has {self.num_heads} heads, asked for {num_heads}")
            return self
        return BlockLayout(self.block_mask.expand(num_heads, -1, -1).clone(), self.block_size, self.seq_len, self.config)

    def __or__(self, other: "BlockLayout") -> "BlockLayout":
        """Union of two layouts with the same geometry."""
        if (self.block_size, self.seq_len) != (other.block_size, other.seq_len):
            raise ValueError("can only unite layouts with the same block_size and seq_len")
        return BlockLayout(self.block_mask | other.block_mask, self.block_size, self.seq_len)

    def __repr__(self) -> str:
        heads = "" if self.num_heads is None else f", heads={self.num_heads}"
        return (
            f"BlockLayout(seq_len={self.seq_len}, block_size={self.block_size}, n_blocks={self.n_blocks}"
            f"{heads}, sparsity={self.sparsity:.3f})"
        )

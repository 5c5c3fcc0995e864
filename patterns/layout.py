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

import contextlib
import math
from typing import Any, Optional

import torch


__all__ = ["BlockLayout", "compact_index"]

_HOME = "home"  # the key of a layout's index on its mask's own device


def _ordinary_tensors():
    """A context in which new tensors are ordinary ones (with a version counter), also inside
    ``torch.inference_mode``, whose tensors have none; a no-op outside it and while compiling."""
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        return torch.inference_mode(False)
    return contextlib.nullcontext()


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


class BlockLayout:
    """A block-sparse attention layout for one sequence length.

    Attributes (read-only):
        block_mask: bool [nb, nb] (all heads) or [H, nb, nb] (per head); nb = ceil(seq_len / block_size).
        block_size: tile edge in tokens.
        seq_len: L; the last tile row/column is ragged when L % block_size != 0.
        config: the PatternConfig or GuidedConfig it was built from, if any.
        workspace: scratch buffers a backend may reuse between no-grad calls on every layout that
            shares this dict (the CPU backend's K^T tiles). None: the backend keeps them with this
            layout object. Guided layouts, built afresh on every forward, share one per config, so
            a new layout does not pay a new buffer's first-touch page faults.

    A layout is a value: it cannot change after it is built, so its compact index and every
    backend's plan cached for it (``kernels.plans``) always describe the same tiles. The
    constructor copies the mask it is given (a later in-place change of the caller's tensor does
    not reach the layout), and ``block_mask``, ``mask3`` and the index properties hand out copies
    (writing into one changes nothing the layout holds); ``block_size``, ``seq_len``, ``config``
    and ``workspace`` cannot be reassigned. To change a layout, build a new one from the changed
    mask: ``BlockLayout(mask, layout.block_size, layout.seq_len)``. The index tensors the backends
    read (``index_on``) are the layout's own; if one of them is written in place all the same, the
    next ``index_on`` (in eager mode) notices it by the tensor's version counter and rebuilds the
    index from the mask, so that every backend still computes the layout's tiles. A layout's own
    tensors are ordinary tensors even when it is built or first used under ``torch.inference_mode``
    (the CPU backend keys its plans on their version counters).
    """

    def __init__(
        self,
        block_mask: torch.Tensor,
        block_size: int,
        seq_len: int,
        config: Optional[Any] = None,  # a PatternConfig or a patterns.guided.GuidedConfig
        workspace: Optional[dict] = None,
    ) -> None:
        if not isinstance(block_mask, torch.Tensor):
            raise ValueError(f"BlockLayout.block_mask must be a bool tensor, got {type(block_mask).__name__}")
        with _ordinary_tensors():
            # a layout lives where its mask was built (a guided layout: on its signal's device)
            mask = block_mask.detach().clone(memory_format=torch.contiguous_format)
        self._init(mask, block_size, seq_len, config, workspace)

    @classmethod
    def _take(cls, mask: torch.Tensor, block_size: int, seq_len: int, config=None, workspace: Optional[dict] = None,
              index: Optional[tuple[torch.Tensor, ...]] = None) -> "BlockLayout":
        """A layout that takes ``mask`` (and, if given, its compact ``index``) without copying: for
        builders whose tensors are fresh and referenced nowhere else (``patterns.guided``)."""
        layout = cls.__new__(cls)
        layout._init(mask.detach().contiguous(), block_size, seq_len, config, workspace)
        if index is not None:
            layout._store(_HOME, tuple(index))
        return layout

    def _init(self, mask: torch.Tensor, block_size: int, seq_len: int, config, workspace: Optional[dict]) -> None:
        for name, value in (("block_size", block_size), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockLayout.{name} must be a positive integer, got {value!r}")
        if mask.dtype != torch.bool or mask.dim() not in (2, 3):
            raise ValueError("BlockLayout.block_mask must be a bool tensor [nb, nb] or [H, nb, nb]")
        nb = math.ceil(seq_len / block_size)
        if mask.shape[-1] != nb or mask.shape[-2] != nb:
            raise ValueError(
                f"BlockLayout.block_mask must be [{nb}, {nb}] for seq_len={seq_len}, "
                f"block_size={block_size}; got {list(mask.shape)}"
            )
        self._mask = mask
        self._block_size, self._seq_len, self._config, self._workspace = block_size, seq_len, config, workspace
        self._cache: dict = {}  # per device: (compact index, the version of each of its tensors)
        self._signal_nan: Optional[torch.Tensor] = None  # guided layouts: bool [G, nb], rows whose scores held NaN

    # ---- the value (read-only) ----------------------------------------------------------------
    @property
    def block_mask(self) -> torch.Tensor:
        """A copy of the layout's bool mask [nb, nb] or [H, nb, nb] (see the class docstring)."""
        return self._mask.clone()

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def config(self) -> Optional[Any]:  # a PatternConfig or a patterns.guided.GuidedConfig
        return self._config

    @property
    def workspace(self) -> Optional[dict]:
        return self._workspace

    @property
    def device(self) -> torch.device:
        """Where ``block_mask`` and the compact index live (CPU for static layouts)."""
        return self._mask.device

    @property
    def signal_nan(self) -> Optional[torch.Tensor]:
        """For a guided layout, a bool scalar tensor on its device: whether the signal's pooled tile
        scores held NaN (the layout was then chosen from NaN scores, NaN ranked first; see
        `patterns.guided.build_guided_layout`, which on CUDA leaves this check to the caller
        because reading it is a host synchronisation). None for other layouts."""
        return None if self._signal_nan is None else self._signal_nan.any()

    # ---- shape -------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return self._mask.shape[-1]

    @property
    def mask_shape(self) -> torch.Size:
        """The shape of ``block_mask`` ([nb, nb] or [H, nb, nb]) without copying the mask."""
        return self._mask.shape

    @property
    def geometry(self) -> tuple[int, int, torch.Size, torch.device]:
        """(block_size, seq_len, mask shape, device) as one hashable tuple: what the kernels' checks
        and launch choices depend on besides the mask's values (a key for their per-call caches)."""
        mask = self._mask
        return self._block_size, self._seq_len, mask.shape, mask.device

    @property
    def num_heads(self) -> Optional[int]:
        """H for a per-head layout, None for one shared by all heads."""
        return self._mask.shape[0] if self._mask.dim() == 3 else None

    @property
    def mask3(self) -> torch.Tensor:
        """A copy of block_mask with a leading head dimension (size 1 when shared)."""
        return self._mask3().clone()

    def _mask3(self) -> torch.Tensor:
        return self._mask if self._mask.dim() == 3 else self._mask.unsqueeze(0)

    # ---- token level ------------------------------------------------------------------------
    def token_mask(self) -> torch.Tensor:
        """bool [L, L] (or [H, L, L]): the exact pairs that attend; padding of the ragged tail excluded."""
        bs, L = self.block_size, self.seq_len
        tok = self._mask.repeat_interleave(bs, dim=-1).repeat_interleave(bs, dim=-2)
        return tok[..., :L, :L].contiguous()

    def tile_pairs(self) -> torch.Tensor:
        """Number of real (unpadded) token pairs in each tile, int64 [nb, nb] (on the layout's device)."""
        bs, L, nb = self.block_size, self.seq_len, self.n_blocks
        sizes = torch.full((nb,), bs, dtype=torch.int64, device=self._mask.device)
        sizes[-1] = L - (nb - 1) * bs
        return sizes[:, None] * sizes[None, :]

    @property
    def computed_pairs(self) -> int:
        """Token pairs computed (summed over heads for a per-head layout)."""
        return int((self._mask3().to(torch.int64) * self.tile_pairs()).sum())

    @property
    def density(self) -> float:
        """Fraction of the L x L pairs that are computed (mean over heads for a per-head layout)."""
        heads = self._mask3().shape[0]
        return self.computed_pairs / float(heads * self.seq_len * self.seq_len)

    @property
    def sparsity(self) -> float:
        """Fraction of the L x L pairs that are not computed: 1 - density."""
        return 1.0 - self.density

    @property
    def is_full(self) -> bool:
        return bool(self._mask.all())

    # ---- compact index for kernels -----------------------------------------------------------
    def _store(self, key: str, index: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Keep ``index`` as the layout's index on device ``key``, as ordinary tensors, with the
        version of each (so that an in-place write into one is noticed: ``_fresh``)."""
        if not torch.compiler.is_compiling():
            with _ordinary_tensors():
                index = tuple(t.clone() if t.is_inference() else t for t in index)
            self._cache[key] = (index, tuple(t._version for t in index))
        else:
            self._cache[key] = (index, None)
        return index

    def _fresh(self, key: str) -> Optional[tuple[torch.Tensor, ...]]:
        """The index kept for device ``key`` if it is still as it was built; None if there is none
        or one of its tensors was written in place since (eager mode only: under torch.compile the
        kept index is used as it is, the version counter cannot be read in a graph)."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        index, stamp = entry
        if stamp is not None and not torch.compiler.is_compiling():
            a, b, c, d = index  # an index is always four tensors; read without a generator (per call)
            if (a._version, b._version, c._version, d._version) != stamp:
                return None
        return index

    def _index(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The compact index on the mask's device (built once, from the layout's own mask)."""
        index = self._fresh(_HOME)
        if index is None:
            with _ordinary_tensors():
                index = self._store(_HOME, compact_index(self._mask3()))
        return index

    @property
    def kv_counts(self) -> torch.Tensor:
        """A copy of the kept key blocks per query block row, int32 [H or 1, nb]."""
        return self._index()[0].clone()

    @property
    def kv_indices(self) -> torch.Tensor:
        """A copy of the kept key blocks of each row, int32 [H or 1, nb, nb] (padded)."""
        return self._index()[1].clone()

    @property
    def q_counts(self) -> torch.Tensor:
        """A copy of the kept query blocks per key block column, int32 [H or 1, nb]."""
        return self._index()[2].clone()

    @property
    def q_indices(self) -> torch.Tensor:
        """A copy of the kept query blocks of each column, int32 [H or 1, nb, nb] (padded)."""
        return self._index()[3].clone()

    def index_on(self, device: torch.device | str) -> tuple[torch.Tensor, ...]:
        """(kv_counts, kv_indices, q_counts, q_indices) on ``device``, cached per device: the
        layout's own tensors, which the backends read and key their plans on (do not write them;
        a write is undone at the next call, see the class docstring)."""
        if device == self._mask.device:  # the common case first (a torch.device or a string)
            return self._index()
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device == self._mask.device:
            return self._index()
        key = str(device)
        index = self._fresh(key)
        if index is None:
            index = self._store(key, tuple(t.to(device) for t in self._index()))
        return index

    def fresh(self) -> "BlockLayout":
        """The same layout as a new object, without the index or any backend's cached plans and
        workspaces: a call on it is a cold call (what a first call on a new layout allocates)."""
        return BlockLayout._take(self._mask, self.block_size, self.seq_len, self.config)

    # ---- composition -------------------------------------------------------------------------
    def per_head(self, num_heads: int) -> "BlockLayout":
        """The same layout repeated for ``num_heads`` heads (a [H, nb, nb] mask)."""
        if self.num_heads is not None:
            if self.num_heads != num_heads:
                raise ValueError(f"layout has {self.num_heads} heads, asked for {num_heads}")
            return self
        mask = self._mask.expand(num_heads, -1, -1).clone()
        return BlockLayout._take(mask, self.block_size, self.seq_len, self.config)

    def __or__(self, other: "BlockLayout") -> "BlockLayout":
        """Union of two layouts with the same geometry."""
        if (self.block_size, self.seq_len) != (other.block_size, other.seq_len):
            raise ValueError("can only unite layouts with the same block_size and seq_len")
        return BlockLayout._take(self._mask | other._mask, self.block_size, self.seq_len)

    def __repr__(self) -> str:
        heads = "" if self.num_heads is None else f", heads={self.num_heads}"
        return (
            f"BlockLayout(seq_len={self.seq_len}, block_size={self.block_size}, n_blocks={self.n_blocks}"
            f"{heads}, sparsity={self.sparsity:.3f})"
        )

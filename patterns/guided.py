"""Guided patterns: key blocks chosen per protein (and per head) from a pair signal.

A static pattern (`PatternConfig`) fixes the computed tiles from the length alone. A guided pattern
fixes only a few *forced* tiles (the diagonal always; optionally a local window and global
residues, in residues as in `PatternConfig`) and spends a budget of further key blocks per
query-block row on the tiles where a pair signal is highest. The signal is

* a pair bias ``[H, L, L]`` or ``[1, H, L, L]`` (e.g. EvoFormer's projected pair bias): one layout
  per head, or
* a pair score map ``[L, L]`` (log contact probabilities, negative predicted distances, ...): one
  layout shared by all heads.

Higher signal means "more wanted". The signal is read as attention logits: the mass budget weighs
a tile by ``exp(pooled score)`` (see below), so a probability map should be passed as its log.

Algorithm (all vectorised torch ops on the signal's device; no Python loop over blocks and no
host synchronisation apart from the NaN check on CPU). On CUDA, ``kernels`` registers a fused
builder (`register_fused_builder`, `kernels.guided_build`) that does steps 1-3 and the compact
index in one launch with the same result; the torch ops below stay the reference and the CPU path.

1. **Pooling.** The signal is cut into ``block_size`` x ``block_size`` tiles (the ragged tail
   tiles hold only their real pairs) and each tile gets one score: ``max``, ``mean`` or
   ``logsumexp`` of its pairs (``mean``: the sum in a fixed pairwise order, rows then columns
   halved repeatedly, so that every device and the fused build get the same bits, divided by the
   real pair count). ``logsumexp`` is the log of the tile's unnormalised softmax mass
   under the signal; ``max`` favours a single strong pair; ``mean`` a uniformly strong tile.
   ``logsumexp`` is computed in two levels (`pool_signal`): per query row and tile, the fused
   ``log_softmax`` kernel gives ``max + log(sum(exp(x - max)))`` over the row's bs keys in one
   pass with one exp per pair; then ``logsumexp`` over the tile's bs rows on the bs-times smaller
   result.
2. **Order.** Within a selection group (a query-block row with ``spread="row"``; the whole
   layout of a head with ``spread="layout"``) the tiles are ordered: forced tiles first, then by
   score descending, ties by position ascending (column within a row; row-major within a layout).
   Two stable sorts make the order deterministic.
3. **Budget** (exactly one of):

   * ``keep``: a fraction of the group's tiles: the first ``max(ceil(keep * n), forced)`` tiles
     of the order are kept, n = tiles in the group (nb per row, nb * nb per layout).
   * ``mass``: a share of the group's pooled mass, weights ``w = exp(score - max score)`` of the
     group: a tile is kept iff it is forced or the weight of the tiles before it in the order is
     below ``mass`` times the group's total weight (the smallest prefix reaching the share; the
     number kept then varies per row).

``spread="layout"`` gives rows rich in signal more blocks than poor rows (the budget is the same
total, spread by score over the whole layout); ``spread="row"`` gives every row the same count.

The selection is not differentiable (it is an index choice); the signal is read under
``torch.no_grad``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Optional

import torch

from .config import GLOBAL_PLACEMENTS, MAX_RESIDUES, SUPPORTED_BLOCK_SIZES

__all__ = [
    "GuidedConfig", "GUIDED_POOLS", "GUIDED_SPREADS", "PATTERN_FAMILIES", "build_guided_layout", "guided_block_mask",
    "pool_signal", "pattern_from_dict", "register_fused_builder",
]

GUIDED_POOLS: tuple[str, ...] = ("max", "mean", "logsumexp")
GUIDED_SPREADS: tuple[str, ...] = ("row", "layout")
PATTERN_FAMILIES: tuple[str, ...] = ("static", "guided")
_LSE_CHUNK = 1 << 18  # signal values per chunk of the logsumexp row pass (1 MiB of float32 in, 1 MiB out: L2-sized)
# on a GPU each chunk costs a few kernel launches: chunks of 2**25 values (128 MiB of float32) keep
# the pass to one or a few launches while bounding the temporary
_LSE_CHUNK_CUDA = 1 << 25


@dataclass(frozen=True)
class GuidedConfig:
    """A guided block-sparse pattern (see the module docstring for the algorithm).

    Attributes:
        block_size: tile edge in residues, one of ``SUPPORTED_BLOCK_SIZES``.
        keep: fraction in (0, 1] of the group's tiles kept (forced ones included), or None.
        mass: share in (0, 1] of the group's pooled mass kept, or None. Exactly one of keep/mass.
        pool: ``"max"``, ``"mean"`` or ``"logsumexp"``: how a tile's pairs become one score.
        window: forced local window in residues (pair (i, j) forced iff |i - j| <= window).
        num_global: forced global residues (full row and column), 0 = none.
        global_placement: ``"first"`` or ``"spread"``, as in `PatternConfig`.
        spread: ``"row"`` (budget per query-block row) or ``"layout"`` (one budget per head,
            spread over the rows by score).
    """

    block_size: int = 64
    keep: Optional[float] = None
    mass: Optional[float] = None
    pool: Literal["max", "mean", "logsumexp"] = "max"
    window: int = 0
    num_global: int = 0
    global_placement: Literal["first", "spread"] = "first"
    spread: Literal["row", "layout"] = "row"

    def __post_init__(self) -> None:
        bs = self.block_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"GuidedConfig.block_size must be one of {list(SUPPORTED_BLOCK_SIZES)}, got {bs!r}")
        if (self.keep is None) == (self.mass is None):
            raise ValueError(
                f"GuidedConfig needs exactly one budget, keep or mass; got keep={self.keep!r}, mass={self.mass!r}"
            )
        for name in ("keep", "mass"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 < v <= 1.0:
                raise ValueError(f"GuidedConfig.{name} must be a fraction in (0, 1], got {v!r}")
        if self.pool not in GUIDED_POOLS:
            raise ValueError(f"GuidedConfig.pool must be one of {list(GUIDED_POOLS)}, got {self.pool!r}")
        for name in ("window", "num_global"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_RESIDUES:
                raise ValueError(f"GuidedConfig.{name} must be an integer in [0, {MAX_RESIDUES}], got {v!r}")
        if self.global_placement not in GLOBAL_PLACEMENTS:
            raise ValueError(
                f"GuidedConfig.global_placement must be one of {list(GLOBAL_PLACEMENTS)}, got {self.global_placement!r}"
            )
        if self.spread not in GUIDED_SPREADS:
            raise ValueError(f"GuidedConfig.spread must be one of {list(GUIDED_SPREADS)}, got {self.spread!r}")

    family = "guided"

    def to_dict(self) -> dict[str, Any]:
        """The fields plus ``family: guided`` (how tuned files tell guided from static configs)."""
        return {"family": "guided", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "GuidedConfig") -> "GuidedConfig":
        """Build from a mapping (an optional ``family: guided`` key is accepted), rejecting unknown
        keys with a message naming ``source``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a guided pattern must be a mapping, got {type(data).__name__}")
        data = dict(data)
        fam = data.pop("family", "guided")
        if fam != "guided":
            raise ValueError(f"{source}: family must be 'guided' for a guided pattern, got {fam!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown guided pattern key(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    def forced_blocks(self, seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """bool [nb, nb] on ``device``: the diagonal tiles, the local window's tiles (as `Local`)
        and the global residues' rows and columns (as `Global`), built there (no host copy)."""
        bs = self.block_size
        nb = -(-seq_len // bs)
        idx = torch.arange(nb, device=device)
        gap = (idx[:, None] - idx[None, :]).abs()
        forced = (gap == 0) | ((gap - 1) * bs + 1 <= self.window)
        g = min(self.num_global, seq_len)
        if g:
            k = torch.arange(g, device=device)
            pos = k if self.global_placement == "first" else (k * seq_len) // g
            gb = torch.zeros(nb, dtype=torch.bool, device=device)
            gb[pos // bs] = True
            forced = forced | gb[:, None] | gb[None, :]
        return forced


# ---- signal checks and pooling ---------------------------------------------------------------------
def _capturing() -> bool:
    try:
        if torch.compiler.is_compiling():
            return True
    except AttributeError:  # pragma: no cover - older torch
        pass
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class _single_thread:
    """Run the construction's torch ops on one intra-op thread (CPU signals, outside compilation).

    The construction is a few short reductions (milliseconds); split over several OpenMP threads,
    each one waits for its slowest thread, and on a machine shared with other jobs a descheduled
    thread stalls it for a scheduler time slice (measured: 1-4 ms builds becoming 10-200 ms at 2
    threads). On one thread its time is its own work. The previous thread count is restored on exit
    (also when the build raises). The count is process-wide: torch work that other Python threads
    run during the build (milliseconds) also runs on one thread."""

    def __init__(self, device: torch.device):
        self.prev = None
        self.active = device.type == "cpu" and not _capturing()

    def __enter__(self):
        if self.active:
            n = torch.get_num_threads()
            if n > 1:
                self.prev = n
                torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            torch.set_num_threads(self.prev)
        return False


def check_signal(signal: Any, seq_len: int) -> torch.Tensor:
    """The signal as [G, L, L] (G = H for a per-head bias, 1 for a shared score map).

    Raises ValueError for a missing signal, a non-tensor, a non-floating dtype or a wrong shape
    (NaN is checked on the pooled tile scores, see `guided_block_mask`).
    """
    if signal is None:
        raise ValueError("a guided pattern needs a signal: build_layout(config, L, signal=...) with a pair bias "
                         "[H, L, L] / [1, H, L, L] or a pair score map [L, L]")
    if not isinstance(signal, torch.Tensor):
        raise ValueError(f"signal must be a torch.Tensor, got {type(signal).__name__}")
    if not signal.is_floating_point():
        raise ValueError(f"signal must be a floating-point tensor, got dtype {signal.dtype}")
    shape = tuple(signal.shape)
    L = seq_len
    if signal.dim() == 2 and shape == (L, L):
        s3 = signal.unsqueeze(0)
    elif signal.dim() == 3 and shape[1:] == (L, L) and shape[0] >= 1:
        s3 = signal
    elif signal.dim() == 4 and shape[0] == 1 and shape[2:] == (L, L) and shape[1] >= 1:
        s3 = signal[0]
    else:
        raise ValueError(
            f"signal shape {list(shape)} does not fit seq_len={L}: expected a pair bias [H, {L}, {L}] or "
            f"[1, H, {L}, {L}], or a pair score map [{L}, {L}]"
        )
    return s3


def _halving_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over ``dim`` (a power of two long) as ``first half + second half``, repeated: a pairwise
    summation whose order, and so whose rounding, is fixed. The dimension is removed."""
    while x.shape[dim] > 1:
        h = x.shape[dim] // 2
        x = x.narrow(dim, 0, h) + x.narrow(dim, h, h)
    return x.squeeze(dim)


def pool_signal(signal3: torch.Tensor, block_size: int, pool: str) -> torch.Tensor:
    """Tile scores [G, nb, nb] of a signal [G, L, L]: ``pool`` over each tile's real pairs.

    Computed in the signal's dtype (float32 for half precision inputs) on its device; the ragged
    tail tiles pool over their real pairs only (padding is -inf for max/logsumexp and excluded
    from the mean's count).
    """
    if pool not in GUIDED_POOLS:
        raise ValueError(f"pool must be one of {list(GUIDED_POOLS)}, got {pool!r}")
    s = signal3.detach()
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    G, L, _ = s.shape
    bs = block_size
    nb = -(-L // bs)
    pad = nb * bs - L
    Lp = nb * bs
    # first over the bs rows of each query block (elementwise over contiguous rows of length Lp,
    # which vectorises well), then over the bs columns of each tile on the bs-times smaller result
    if pool == "mean":
        if pad:
            s = torch.nn.functional.pad(s, (0, pad, 0, pad), value=0.0)
        # halving sums (rows, then columns) in a fixed order: elementwise adds give the same bits on
        # every device and in the fused CUDA build (`kernels.guided_build`), unlike torch.sum
        t = _halving_sum(_halving_sum(s.reshape(G, nb, bs, Lp), 2).reshape(G, nb, nb, bs), 3)
        # rows/columns per block: bs, the last one L - (nb - 1) * bs (arithmetic: an indexed write
        # of a Python number would be a host-to-device copy, a synchronisation on CUDA)
        sizes = torch.clamp(L - torch.arange(nb, device=t.device, dtype=t.dtype) * bs, max=bs)
        return t / (sizes[:, None] * sizes[None, :])
    if pad:
        s = torch.nn.functional.pad(s, (0, pad, 0, pad), value=float("-inf"))
    # max: over the bs rows of each query block (a reduction across rows: contiguous, vectorised),
    # then over the bs columns of each tile on the bs-times smaller result
    if pool == "max":
        return s.reshape(G, nb, bs, Lp).amax(2).reshape(G, nb, nb, bs).amax(-1)
    # logsumexp in two levels, exact up to rounding (logsumexp is associative):
    # 1. per row segment (one query row's bs keys of a tile, contiguous), the fused log_softmax
    #    kernel computes c = max + log(sum(exp(x - max))) in one pass with one exp per pair and
    #    writes o = x - c; at the segment's argmax x = max and o = -log(sum) exactly, so
    #    c = max(x) - max(o). Rows go in chunks of at most _LSE_CHUNK values (bounded, cache-resident
    #    temporaries). A segment whose max is +-inf has c = its max (log_softmax gives NaN there);
    #    NaN propagates through max(x).
    # 2. per tile, torch.logsumexp over its bs row segments, on the bs-times smaller [G, nb, bs, nb].
    seg_in = s.reshape(G * Lp, nb, bs)
    seg = torch.empty(G * Lp, nb, dtype=s.dtype, device=s.device)
    step = max(1, (_LSE_CHUNK_CUDA if s.is_cuda else _LSE_CHUNK) // Lp)
    for i in range(0, G * Lp, step):
        x = seg_in[i:i + step]
        mx = torch.amax(x, -1)
        seg[i:i + step] = torch.where(torch.isinf(mx), mx, mx - torch.log_softmax(x, -1).amax(-1))
    return torch.logsumexp(seg.reshape(G, nb, bs, nb), 2)


# ---- selection ---------------------------------------------------------------------------------------
def _select(scores: torch.Tensor, forced: torch.Tensor, keep: Optional[float], mass: Optional[float]) -> torch.Tensor:
    """bool [G, R, C]: the tiles kept in each group row (see module docstring, steps 2-3).

    scores: [G, R, C] floating; forced: bool [G or 1, R, C]."""
    G, R, C = scores.shape
    forced = forced.expand(G, R, C)
    # order: forced first, then score descending, ties by position ascending (two stable sorts)
    key = torch.where(forced, torch.full_like(scores, float("inf")), scores)
    o1 = torch.argsort(key, dim=-1, descending=True, stable=True)
    f1 = torch.gather(forced, -1, o1)
    o2 = torch.argsort(f1.to(torch.int8), dim=-1, descending=True, stable=True)
    order = torch.gather(o1, -1, o2)
    n_forced = forced.sum(-1, keepdim=True)
    pos = torch.arange(C, device=scores.device).view(1, 1, C)
    if keep is not None:
        n_keep = min(C, max(1, math.ceil(keep * C - 1e-9)))
        kept_sorted = pos < torch.clamp(n_forced, min=n_keep)
    else:
        s_sorted = torch.gather(scores, -1, order)
        top = s_sorted.amax(-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w = torch.exp(s_sorted - top)
        w = torch.where(torch.isnan(w), torch.zeros_like(w), w)
        before = torch.cumsum(w, dim=-1) - w
        kept_sorted = (before < mass * w.sum(-1, keepdim=True)) | (pos < n_forced)
    out = torch.zeros_like(forced)
    return out.scatter(-1, order, kept_sorted)


_FORCED: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_MAX_FORCED = 64


def _forced(config: GuidedConfig, seq_len: int, device: torch.device) -> torch.Tensor:
    """`GuidedConfig.forced_blocks`, cached per (config, L, device) for the most recent 64 keys:
    it depends on nothing else, and a layout built on every forward should not rebuild it."""
    key = (config.block_size, config.window, config.num_global, config.global_placement, seq_len, str(device))
    f = _FORCED.get(key)
    if f is None:
        f = _FORCED[key] = config.forced_blocks(seq_len, device)
        while len(_FORCED) > _MAX_FORCED:
            _FORCED.popitem(last=False)
    else:
        _FORCED.move_to_end(key)
    return f


def guided_block_mask(config: GuidedConfig, seq_len: int, signal: torch.Tensor, *, check_nan: bool = True) -> torch.Tensor:
    """bool [nb, nb] (score map) or [H, nb, nb] (per-head bias) on the signal's device.

    NaN in the signal is a ValueError. It is detected on the pooled tile scores (max, sum and
    logsumexp all propagate NaN; with ``mean`` pooling, +inf and -inf in one tile also give NaN and
    are refused the same way), which costs one read of a [G, nb, nb] flag instead of a second pass
    over the signal. That read is the only host synchronisation; it is skipped under
    torch.compile, CUDA graph capture and with ``check_nan=False``."""
    s3 = check_signal(signal, seq_len)
    with torch.no_grad(), _single_thread(s3.device):
        scores = pool_signal(s3, config.block_size, config.pool)
        if check_nan:  # the one host synchronisation of a build (skipped while compiling or capturing)
            _nan_check(torch.isnan(scores).any(-1), config, True)
        mask = _select_mask(config, seq_len, scores)
    return mask[0] if signal.dim() == 2 else mask


def _select_mask(config: GuidedConfig, seq_len: int, scores: torch.Tensor) -> torch.Tensor:
    """bool [G, nb, nb]: steps 2-3 of the module docstring on pooled scores [G, nb, nb]."""
    G, nb, _ = scores.shape
    forced = _forced(config, seq_len, scores.device).unsqueeze(0)
    if config.spread == "row":
        return _select(scores, forced, config.keep, config.mass)
    mask = _select(scores.reshape(G, 1, nb * nb), forced.reshape(1, 1, nb * nb), config.keep, config.mass)
    return mask.reshape(G, nb, nb)


def _select_and_index(config: GuidedConfig, seq_len: int, scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mask [G, nb, nb], kv_counts, kv_indices, q_counts, q_indices) from pooled scores."""
    from .layout import compact_index

    mask = _select_mask(config, seq_len, scores)
    return (mask, *compact_index(mask))


# ---- CUDA: selection and index replayed from a captured graph ----------------------------------------
# Selection and index are ~150 small tensor ops; on a GPU their launches (a few microseconds of
# host time each) cost far more than the arithmetic (measured on an H200: ~1.2 ms a build, more
# than the sparse attention it feeds at L <= 2048). Their inputs are the pooled scores [G, nb, nb]
# (small), so they are captured once per (config, L, scores shape, dtype, device) in a CUDA graph
# fed from a static copy of the scores, and replayed: one copy, one replay, five small clones
# (a layout must own its tensors: the next replay overwrites the graph's outputs).
_GRAPHS: "OrderedDict[tuple, Optional[tuple]]" = OrderedDict()
_MAX_GRAPHS = 32
GRAPH_REPLAY = True  # set False to build every guided layout eagerly on CUDA too


def _graphed_select_and_index(config: GuidedConfig, seq_len: int, scores: torch.Tensor) -> Optional[tuple[torch.Tensor, ...]]:
    """`_select_and_index` by CUDA graph replay; None when the graph cannot be captured (the
    caller then runs it eagerly, and this key is not tried again)."""
    key = (config, seq_len, tuple(scores.shape), scores.dtype, str(scores.device))
    if key in _GRAPHS:
        entry = _GRAPHS[key]
        _GRAPHS.move_to_end(key)
    else:
        entry = None
        try:
            static = scores.clone()
            current = torch.cuda.current_stream(scores.device)
            side = torch.cuda.Stream(scores.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                _select_and_index(config, seq_len, static)  # warm-up: forced-block cache, allocator
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outs = _select_and_index(config, seq_len, static)
            entry = (graph, static, outs)
        except RuntimeError:
            entry = None
        _GRAPHS[key] = entry
        while len(_GRAPHS) > _MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    if entry is None:
        return None
    graph, static, outs = entry
    static.copy_(scores)
    graph.replay()
    return tuple(o.clone() for o in outs)


# ---- CUDA: the fused build ---------------------------------------------------------------------------
# ``kernels`` (above this package) registers a builder doing pooling, selection and compact index in
# one launch (`kernels.guided_build`); `build_guided_layout` uses it for CUDA signals outside
# torch.compile. Signature: (config, seq_len, signal3 [G, L, L], forced bool [nb, nb]) ->
# (mask [G, nb, nb], kv_counts, kv_indices, q_counts, q_indices, nan_rows bool [G, nb], ...) or None
# (a shape the builder does not take; the torch path then builds the layout).
_FUSED_BUILDER: Optional[Callable[..., Optional[tuple]]] = None
FUSED_BUILD = True  # set False to build CUDA layouts with the torch path (graph replay) instead


def register_fused_builder(builder: Optional[Callable[..., Optional[tuple]]]) -> None:
    """Install (or, with None, remove) the fused CUDA builder described above."""
    global _FUSED_BUILDER
    _FUSED_BUILDER = builder


def _nan_message(config: GuidedConfig) -> str:
    return ("signal contains NaN" + (" (or +inf and -inf in one tile, whose mean is undefined)"
                                     if config.pool == "mean" else "") + "; a guided layout cannot be chosen from it")


def _nan_check(nan_rows: torch.Tensor, config: GuidedConfig, check_nan: Optional[bool]) -> None:
    """ValueError if ``nan_rows`` (bool [G, nb]: rows whose pooled scores hold NaN) has a True.
    ``check_nan`` None: checked on CPU only (on CUDA the read would be a host synchronisation: the
    flag stays on the layout, `BlockLayout.signal_nan`); never while compiling or capturing."""
    now = check_nan if check_nan is not None else nan_rows.device.type != "cuda"
    if now and not _capturing() and bool(nan_rows.any()):
        raise ValueError(_nan_message(config))


_WORKSPACES: "OrderedDict[GuidedConfig, dict]" = OrderedDict()
_MAX_WORKSPACES = 4  # configs whose workspaces are kept (the most recently used); older ones are freed


def _workspace(config: GuidedConfig, workspace: Optional[dict]) -> dict:
    """The given workspace, else the one shared by ``config``'s layouts (the few most recent configs)."""
    if workspace is not None:
        return workspace
    workspace = _WORKSPACES.get(config)
    if workspace is None:
        workspace = _WORKSPACES[config] = {}
        while len(_WORKSPACES) > _MAX_WORKSPACES:
            _WORKSPACES.popitem(last=False)
    else:
        _WORKSPACES.move_to_end(config)
    return workspace


def _cuda_built(config: GuidedConfig, seq_len: int, s3: torch.Tensor) -> Optional[tuple[torch.Tensor, ...]]:
    """(mask, kv_counts, kv_indices, q_counts, q_indices, nan_rows) of a CUDA signal by the fused
    builder, else by graph replay of the selection; None when neither applies (eager torch path)."""
    compiling = torch.compiler.is_compiling()
    with torch.no_grad():
        if FUSED_BUILD and _FUSED_BUILDER is not None and not compiling:
            built = _FUSED_BUILDER(config, seq_len, s3, _forced(config, seq_len, s3.device))
            if built is not None:
                return tuple(built[:6])
        if GRAPH_REPLAY and not _capturing():
            scores = pool_signal(s3, config.block_size, config.pool)
            built = _graphed_select_and_index(config, seq_len, scores)
            if built is not None:
                return (*built, torch.isnan(scores).any(-1))
    return None


def build_guided_layout(config: GuidedConfig, seq_len: int, signal: torch.Tensor, *, check_nan: Optional[bool] = None,
                        workspace: Optional[dict] = None):
    """The `BlockLayout` of ``config`` chosen from ``signal``, living on the signal's device.

    On CUDA (outside torch.compile) the fused one-launch builder registered by ``kernels`` builds
    it (`register_fused_builder`), else a graph replay of the torch selection; on CPU, and as the
    reference, the torch ops of this module. NaN in the pooled scores: ``check_nan=None`` (default)
    raises ValueError on CPU and, on CUDA, makes no host synchronisation: the layout's
    ``signal_nan`` (a device flag) says it, read when the caller chooses; ``True`` raises on any
    device (on CUDA: one synchronisation); ``False`` never raises.

    ``workspace``: the scratch dict backends may reuse across layouts (see `BlockLayout`); default
    one dict per config, shared by every layout built from it in this process (kept for the
    ``_MAX_WORKSPACES`` most recently used configs, so a search over many configs does not pile
    up buffers); pass ``{}`` for a cold layout that owns its buffers."""
    from .layout import BlockLayout

    workspace = _workspace(config, workspace)
    if isinstance(signal, torch.Tensor) and signal.is_cuda:
        s3 = check_signal(signal, seq_len)
        built = _cuda_built(config, seq_len, s3)
        if built is not None:
            mask, kv_counts, kv_indices, q_counts, q_indices, nan_rows = built
            _nan_check(nan_rows, config, check_nan)
            layout = BlockLayout._take(mask[0] if signal.dim() == 2 else mask, config.block_size, seq_len, config,
                                       workspace=workspace, index=(kv_counts, kv_indices, q_counts, q_indices))
            layout._signal_nan = nan_rows
            return layout
    s3 = check_signal(signal, seq_len)
    with torch.no_grad(), _single_thread(s3.device):
        scores = pool_signal(s3, config.block_size, config.pool)
        nan_rows = torch.isnan(scores).any(-1)
        _nan_check(nan_rows, config, check_nan)
        mask = _select_mask(config, seq_len, scores)
    layout = BlockLayout._take(mask[0] if signal.dim() == 2 else mask, config.block_size, seq_len, config,
                               workspace=workspace)
    layout._signal_nan = nan_rows
    with torch.no_grad(), _single_thread(mask.device):
        layout.index_on(mask.device)  # the compact index, built now (every backend reads it), on one thread too
    return layout


def pattern_from_dict(data: Any, *, source: str = "pattern"):
    """A PatternConfig or a GuidedConfig from a mapping, by its ``family`` key (``static``, the
    default, or ``guided``); keys of the other family are refused by the chosen class, naming
    ``source``. This is how tuned files and trial parameters store either family."""
    from .config import PatternConfig

    if not isinstance(data, dict):
        raise ValueError(f"{source}: a pattern must be a mapping, got {type(data).__name__}")
    family = data.get("family", "static")
    if family not in PATTERN_FAMILIES:
        raise ValueError(f"{source}: family must be one of {list(PATTERN_FAMILIES)}, got {family!r}")
    if family == "guided":
        return GuidedConfig.from_dict(data, source=source)
    return PatternConfig.from_dict({k: v for k, v in data.items() if k != "family"}, source=source)

"""Accuracy objective of the search, measured on real protein chains.

A sparse pattern is only worth its speed if it keeps the residue pairs the model needs. This
package scores a `PatternConfig` on real structures:

* `load_proteins(path=None)`: chains read with biotite (PDB / mmCIF / BinaryCIF, gzip or not);
  default: the 127 chains packaged in ``autotune/data/proteins`` (see its README). Residue i is the
  i-th *resolved* residue of the chain (gaps are absent, not contacts); see `structures`.
* `evaluate_pattern(config, bucket)`: the metrics of `ACCURACY_METRICS` over the chains of a length
  bucket, each chain evaluated with the layout built at its own length. A `patterns.GuidedConfig`
  is evaluated with each chain's layout chosen from its structure degraded by ``noise`` Angstrom
  of Gaussian noise (default 4; `autotune.accuracy.guided`), scored against the true structure.
* `autotune.accuracy.guided.evaluate_guided`: guided patterns at several noise levels against the
  best static pattern and a random mask, at matched measured sparsity (``--guided`` on the CLI).

Metrics (all pooled over the chains of the bucket, so longer chains and contact-rich chains weigh
more than in a per-chain mean):

* ``contact_recall_short|medium|long``: kept contacts / contacts of that range (C-beta < 8 A,
  separation 6-11, 12-23, >= 24, see `contacts`). A range with no contact in the bucket is ``None``
  ("no data": 0/0 is never a perfect score; JSON null, "-" in the CLI).
* ``attention_mass_recall``: the share of dense softmax probability that falls on computed pairs,
  averaged over all (chain, head, query row), under the structure-derived probe of `metrics`
  (pair bias ``log sigmoid((8 A - d_ij) / tau_h)``, tau = 1, 2, 4, 8 A; random q, k, v, seed 0).
* ``output_rel_error``: sqrt(sum ||O_sparse - O_dense||^2 / sum ||O_dense||^2) over the chains,
  both outputs from `kernels.reference_attention` in float32.

Bucket rule: with the ladder ``sorted(set(buckets or DEFAULT_BUCKETS) | {bucket})``, the bucket
holds the chains with ``previous rung < length <= bucket`` (previous rung 0 for the first).
When no chain of the set reaches the bucket's length (the packaged data stops at 1181 residues),
the figure is ``extrapolated``: it is measured on the chains of the bucket's interval if any, else
on the longest chains available (the highest non-empty interval below), still at their own
lengths; ``note`` says which. ``note`` also gives the layout's sparsity at the chains' lengths and
at the bucket length: they differ (short chains have few tiles; "spread" global residues are
placed relative to the length, so at 1181 residues 16 spread globals touch nearly every 64-block
while at 4096 they touch a quarter), and the recall belongs to the former. No data is invented: a layout is never evaluated at a length no real
chain has. (An empty interval with longer chains present also falls back, to the nearest non-empty
interval below, else above, and is flagged the same way.)

Cost: about 0.1 s per call for the 115 chains of bucket 256 once the chains' probes are cached
(about 0.5 s on the first call), torch running single-threaded during the call. Contact maps, probe tensors and layouts are cached per chain / length; results are cached
per (config, bucket interval, chain set, max_chains). With ``max_chains`` set, a bucket with more
chains is subsampled deterministically: chains sorted by (length, name), ``max_chains`` of them
taken at evenly spaced ranks (shortest and longest always included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from patterns import GuidedConfig, PatternConfig, build_layout
from patterns.errors import InputError
from search_spaces.objectives import ACCURACY_METRIC_DIRECTIONS

from .contacts import CONTACT_CUTOFF, RANGES, contact_map, contact_pairs
from .metrics import ChainStats, aggregate, chain_stats, layout_and_token_mask, pair_bias
from .structures import Chain, read_chains, read_structure_file, structure_files

__all__ = [
    "AccuracyResult",
    "ACCURACY_METRICS",
    "DEFAULT_BUCKETS",
    "DEFAULT_NOISE",
    "DATA_DIR",
    "Chain",
    "ProteinLoadError",
    "load_proteins",
    "load_proteins_report",
    "evaluate_pattern",
    "select_chains",
    "chain_stats",
    "layout_and_token_mask",
    "read_structure_file",
    "contact_pairs",
    "contact_map",
    "pair_bias",
    "RANGES",
    "CONTACT_CUTOFF",
]

DATA_DIR: Path = Path(__file__).resolve().parent.parent / "data" / "proteins"
DEFAULT_BUCKETS: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
#: noise (Angstrom) of the degraded structure a guided pattern is evaluated with by default
DEFAULT_NOISE: float = 4.0

#: metric name -> "max" (higher is better) or "min" (lower is better): the space's table of the
#: metrics (`search_spaces.objectives.ACCURACY_METRIC_TABLE`), the one list of them
ACCURACY_METRICS: dict[str, str] = ACCURACY_METRIC_DIRECTIONS


@dataclass(frozen=True)
class AccuracyResult:
    metrics: dict[str, Optional[float]]  # the keys of ACCURACY_METRICS; None = no data (no contact of that range)
    n_chains: int
    lengths: tuple[int, ...]  # chain lengths evaluated
    extrapolated: bool  # True when no chain reached the bucket and the longest were used
    note: str
    sparsity: Optional[float] = None  # layout sparsity at the chains' lengths (mean over chains)


class ProteinLoadError(InputError):
    """No usable chain could be loaded (missing folder, nothing readable)."""


# ---- loading ---------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _load(path: str) -> tuple[tuple[Chain, ...], tuple[tuple[str, str], ...]]:
    p = Path(path)
    if not p.exists():
        raise ProteinLoadError(f"protein path does not exist: {path}")
    if p.is_dir():
        files = structure_files(p)
        if not files:
            raise ProteinLoadError(f"no structure files (.pdb/.ent/.cif/.mmcif/.bcif, optionally .gz) in {path}")
    else:
        files = [p]
    chains, skipped = read_chains(files)
    if not chains:
        raise ProteinLoadError(f"no readable protein structure in {path} ({len(skipped)} file(s) skipped)")
    return tuple(chains), tuple(skipped)


def load_proteins_report(path: Union[str, Path, None] = None) -> tuple[list[Chain], list[tuple[str, str]]]:
    """(chains, skipped files as (name, reason)) of a folder or file; cached per resolved path."""
    p = DATA_DIR if path is None else Path(path)
    chains, skipped = _load(str(p.resolve()) if p.exists() else str(p))
    return list(chains), list(skipped)


def load_proteins(path: Union[str, Path, None] = None) -> list[Chain]:
    """Protein chains of a folder (every structure file directly in it) or of one file.

    Default: the packaged set. Cached per path (the Chain objects are shared between calls; they
    cache their contact maps). Files that cannot be used are logged and skipped; raises
    ProteinLoadError when the path is missing or yields no chain at all.
    """
    return load_proteins_report(path)[0]


# ---- bucket selection --------------------------------------------------------------------------
def _subsample(chains: list[Chain], max_chains: Optional[int]) -> list[Chain]:
    chains = sorted(chains, key=lambda c: (c.length, c.name))
    if max_chains is None or len(chains) <= max_chains:
        return chains
    if max_chains < 1:
        raise ValueError(f"max_chains must be >= 1, got {max_chains}")
    if max_chains == 1:
        return [chains[-1]]
    n = len(chains)
    idx = sorted({round(k * (n - 1) / (max_chains - 1)) for k in range(max_chains)})
    return [chains[i] for i in idx]


def select_chains(
    chains: Sequence[Chain], bucket: int, buckets: Optional[Sequence[int]] = None
) -> tuple[list[Chain], bool, str, tuple[int, int]]:
    """(chains of the bucket, extrapolated, note, (lo, hi) interval) by the module's bucket rule."""
    if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
        raise ValueError(f"bucket must be a positive integer, got {bucket!r}")
    if not chains:
        raise ValueError("no chains to evaluate")
    ladder = sorted(set(int(b) for b in (buckets or DEFAULT_BUCKETS)) | {bucket})
    pos = ladder.index(bucket)
    lo = ladder[pos - 1] if pos else 0
    intervals = [((ladder[k - 1] if k else 0), ladder[k]) for k in range(len(ladder))]

    def within(a: int, b: int) -> list[Chain]:
        return [c for c in chains if a < c.length <= b]

    sel = within(lo, bucket)
    longest = max(c.length for c in chains)
    reached = longest >= bucket
    if sel and reached:
        return sel, False, f"{len(sel)} chain(s) with length in ({lo}, {bucket}]", (lo, bucket)
    if sel:
        return sel, True, (
            f"no chain reaches {bucket} (longest {longest}); evaluated on the {len(sel)} longest chain(s) "
            f"with length in ({lo}, {bucket}], each at its own length"
        ), (lo, bucket)
    # empty interval: nearest non-empty interval below, else above
    below = [iv for iv in intervals[:pos] if within(*iv)]
    above = [iv for iv in intervals[pos + 1 :] if within(*iv)]
    if not below and not above:  # chains longer than the whole ladder only
        a, b = ladder[-1], longest
    else:
        a, b = below[-1] if below else above[0]
    sel = within(a, b)
    what = "longest" if not reached else ("nearest shorter" if below else "nearest longer")
    return sel, True, (
        f"no chain with length in ({lo}, {bucket}]" + ("" if reached else f" (longest {longest})")
        + f"; evaluated on the {len(sel)} {what} chain(s), length in ({a}, {b}], each at its own length"
    ), (a, b)


# ---- evaluation --------------------------------------------------------------------------------
_RESULTS: dict = {}
_STATS: dict = {}
_CACHE_LIMIT = 200_000


def _stats(config: PatternConfig | GuidedConfig, chain: Chain, noise: float = 0.0) -> ChainStats:
    key = (config, chain.key) if isinstance(config, PatternConfig) else (config, chain.key, noise)
    hit = _STATS.get(key)
    if hit is None:
        if len(_STATS) > _CACHE_LIMIT:
            _STATS.clear()
        if isinstance(config, GuidedConfig):  # chosen from the chain's degraded structure
            from .guided import contact_signal
            from .metrics import layout_stats

            hit = layout_stats(build_layout(config, chain.length, signal=contact_signal(chain, noise)), chain)
        else:
            hit = chain_stats(config, chain)
        _STATS[key] = hit
    return hit


@lru_cache(maxsize=4096)
def _bucket_sparsity(config: PatternConfig, bucket: int) -> float:
    return build_layout(config, bucket).sparsity


def _stats_single_threaded(config: PatternConfig | GuidedConfig, chains: Sequence[Chain], noise: float = 0.0) -> list[ChainStats]:
    """Per-chain stats with torch single-threaded for the duration (restored afterwards): the
    per-chain tensors are small, and on shared cores intra-op threads cost 10-100x (spinning)."""
    if isinstance(config, PatternConfig) and all((config, c.key) in _STATS for c in chains):
        return [_STATS[(config, c.key)] for c in chains]
    threads = torch.get_num_threads()
    try:
        if threads != 1:
            torch.set_num_threads(1)
        return [_stats(config, c, noise) for c in chains]
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def evaluate_pattern(
    config: PatternConfig | GuidedConfig,
    bucket: int,
    *,
    buckets: Optional[Sequence[int]] = None,
    chains: Optional[Sequence[Chain]] = None,
    max_chains: Optional[int] = None,
    noise: float = DEFAULT_NOISE,
) -> AccuracyResult:
    """Accuracy of ``config`` on the chains of length bucket ``bucket`` (module docstring rules).

    ``chains``: default the packaged set. ``buckets``: the search space's bucket ladder (default
    DEFAULT_BUCKETS), which fixes the bucket's lower edge. ``max_chains``: deterministic cap on the
    chains evaluated per bucket. A GuidedConfig is evaluated with each chain's layout chosen from
    its degraded structure (`autotune.accuracy.guided.contact_signal` at ``noise`` Angstrom,
    default 4; the contacts are scored against the true structure); ``noise`` is ignored for a
    static PatternConfig.
    """
    if not isinstance(config, (PatternConfig, GuidedConfig)):
        raise TypeError(f"config must be a PatternConfig or a GuidedConfig, got {type(config).__name__}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0 (Angstrom), got {noise!r}")
    guided = isinstance(config, GuidedConfig)
    pool = load_proteins() if chains is None else list(chains)
    sel, extrapolated, note, interval = select_chains(pool, bucket, buckets)
    n_all = len(sel)
    sel = _subsample(sel, max_chains)
    if len(sel) < n_all:
        note += f"; subsampled to {len(sel)} of {n_all} chain(s) at evenly spaced length ranks"
    key = (config, interval, bucket, tuple(c.key for c in sel), float(noise) if guided else None)
    hit = _RESULTS.get(key)
    if hit is not None:  # a fresh metrics dict, so that a caller's edits never reach the cache
        return AccuracyResult(dict(hit.metrics), hit.n_chains, hit.lengths, hit.extrapolated, hit.note, hit.sparsity)
    stats = _stats_single_threaded(config, sel, float(noise))
    sp_chains = 1.0 - sum(st.density for st in stats) / len(stats)
    if guided:
        note += f"; guided layouts chosen from each chain's structure with {noise:g} A noise, sparsity {sp_chains:.1%}"
    else:
        note += f"; layout sparsity {sp_chains:.1%} at the chains' lengths, {_bucket_sparsity(config, bucket):.1%} at {bucket}"
    result = AccuracyResult(aggregate(stats), len(sel), tuple(c.length for c in sel), extrapolated, note, sp_chains)
    if len(_RESULTS) > _CACHE_LIMIT:
        _RESULTS.clear()
    _RESULTS[key] = result
    return AccuracyResult(dict(result.metrics), result.n_chains, result.lengths, extrapolated, result.note, result.sparsity)

"""Accuracy of guided patterns, measured without letting the selection see the answer.

The guided layout of a chain is chosen from a *degraded* structure; its contacts are scored
against the true one.

* **Degraded structure.** Each representative point (C-beta, C-alpha for glycine) is moved by
  Gaussian noise of standard deviation ``sigma`` Angstrom per coordinate, from a generator seeded
  by (``seed``, the chain's name, sigma), so a figure is reproducible and each sigma has its own
  noise. sigma = 0 is the exact structure: the ceiling a selection reaches with a perfect signal.
* **Signal.** Contact probabilities of the noisy map, for pairs at least ``MIN_SEPARATION`` = 12
  apart in sequence (medium and long range, the ranges contact prediction is usually judged on;
  closer pairs get none), passed to the selection as ``log p`` (a guided signal is read as logits;
  logsumexp pooling of ``log p`` ranks a tile by its summed contact probability, the expected
  number of medium- and long-range contacts in it). Short-range pairs (separation 6-11) are left
  out because they sit in or beside the forced diagonal tiles (at 90% sparsity those keep about
  half of them: 0.51 short-range recall for a random mask with the diagonal forced); counting
  them spent the free budget on the first off-diagonal tiles. On the packaged chains of >= 128
  residues at 90% sparsity and sigma = 4 A, separation >= 6 gave 0.228 long-range recall and
  >= 12 gives 0.257, for short-range recall 0.59 -> 0.53 and medium-range 0.24 -> 0.15; >= 24
  gives 0.266 but a medium-range recall below the random floor's at 75% (0.18 against 0.23).
  The selection is given the nominal noise level sigma as a model parameter (a recycled
  distogram's uncertainty is known to a model the same way). ``p_ij`` is noise-aware: the
  probability that the *true* distance is under 8 A given the noisy one and sigma. The noisy
  difference vector of two points is the true one plus N(0, s^2 I_3), s = sqrt(2) sigma; under a
  flat prior on the true vector its posterior is N(x~, s^2 I_3), and the chance that its length
  is under c = 8 A is the noncentral chi (3 degrees of freedom) distribution function at c,
  with m = d~_ij:

      P(d < c | d~ = m) = Phi((c - m) / s) - Phi((-c - m) / s)
                          - (s / m) [phi((c - m) / s) - phi((c + m) / s)]

  (Phi, phi: the standard normal distribution and density). sigma = 0 gives the exact contact
  map (p = 1 or 0). Probabilities are floored at ``PROB_FLOOR`` = 1e-12 so that ``log p`` stays
  finite. (The first version used a fixed-shape ``sigmoid((8 A - d~) / sqrt(1 + 2 sigma^2))``,
  whose heavy tail gave every far pair a few percent of a contact: summed over a 256-pair tile,
  that tail outweighed the few real contacts of a neighbouring tile.)
* **Guided layout.** `patterns.GuidedConfig` over that signal, its ``keep`` chosen per chain so
  that the measured sparsity is closest to the target (`matched_layout`); default ``spread="layout"`` (one budget per chain, spread by score,
  so rows rich in contacts get more blocks), ``pool="logsumexp"``, 16-residue blocks.
* **Floor: random.** A mask with the guided layout's per-row block counts (at ``random_sigma``,
  default 4 A), the diagonal forced and the other blocks drawn uniformly at random (seeded).
* **Best static.** Per chain length, `patterns.sparsity.pattern_for_sparsity` in four families
  (local window; local + global; local + global + strided; strided), with the same block size; the
  family with the highest long-range recall whose pooled measured sparsity is within 0.05 of the
  target is reported (static patterns get to re-pick per length: generous to them).

Every figure is pooled over the chains as in `autotune.accuracy` (contact recall per range,
attention-mass recall and output error under the *true* structure's probe bias), and each row
carries its own measured sparsity (pooled over the chains' L x L pairs), so the comparison is at
matched measured sparsity, not matched targets.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

import numpy as np
import torch

from patterns import BlockLayout, GuidedConfig, build_layout
from patterns.sparsity import pattern_for_sparsity

from .contacts import CONTACT_CUTOFF, RANGES
from .metrics import ChainStats, layout_stats
from .structures import Chain

__all__ = [
    "DEFAULT_SIGMAS",
    "DEFAULT_SPARSITIES",
    "NOISE_SEED",
    "GuidedRow",
    "noisy_coords",
    "contact_probability",
    "contact_signal",
    "random_layout",
    "matched_layout",
    "evaluate_guided",
    "STATIC_FAMILIES",
]

DEFAULT_SIGMAS: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0)
DEFAULT_SPARSITIES: tuple[float, ...] = (0.5, 0.75, 0.9)
NOISE_SEED: int = 0
MIN_SEPARATION: int = 12  # medium and long range (module docstring)
PROB_FLOOR: float = 1e-12
#: static family name -> pattern_for_sparsity keyword arguments (block size filled in)
STATIC_FAMILIES: dict[str, dict] = {
    "local": {"num_global": 0, "strides": 0},
    "local+global": {"num_global": None, "strides": 0},
    "local+global+strided": {},
    "strided": {"num_global": 0, "strides": (2, 3, 4, 6, 8)},
}


@dataclass(frozen=True)
class GuidedRow:
    """One method at one target sparsity, pooled over the chains."""

    method: str  # "guided", "static", "random"
    target: float  # target sparsity (fraction)
    sigma: Optional[float]  # noise of the guiding structure (guided, random), None for static
    sparsity: float  # measured, pooled over the chains' L x L pairs
    metrics: dict  # the keys of ACCURACY_METRICS; None = no data
    n_chains: int
    detail: str  # the static family chosen, the guided config, ...
    #: per-chain long-range contact recall over the chains with long-range contacts: min, median,
    #: max, and the chains at the min and max (the pooled figure weighs contact-rich chains more)
    per_chain_long: Optional[dict] = None

    def to_dict(self) -> dict:
        return asdict(self)


def noisy_coords(chain: Chain, sigma: float, seed: int = NOISE_SEED) -> np.ndarray:
    """float64 [L, 3]: the chain's points plus N(0, sigma^2) noise per coordinate (seeded)."""
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"noise sigma must be a finite number >= 0, got {sigma!r}")
    if sigma == 0:
        return chain.coords
    rng = np.random.default_rng([seed, zlib.crc32(chain.name.encode()), int(round(sigma * 1000))])
    return chain.coords + rng.normal(0.0, sigma, size=chain.coords.shape)


def contact_probability(distance: torch.Tensor, sigma: float, cutoff: float = CONTACT_CUTOFF) -> torch.Tensor:
    """P(true distance < cutoff | noisy distance, sigma) (float64, same shape; module docstring):
    the noncentral chi (3 dof) distribution function of the posterior, s = sqrt(2) sigma;
    sigma = 0: the indicator ``distance < cutoff``."""
    d = distance.double()
    if sigma == 0:
        return (d < cutoff).double()
    s = math.sqrt(2.0) * float(sigma)
    m = d.clamp(min=1e-9)  # at m -> 0 the formula tends to the Maxwell distribution function
    a, b = (cutoff - m) / s, (cutoff + m) / s
    ndtr = torch.special.ndtr
    pdf = lambda x: torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)  # noqa: E731
    p = ndtr(a) - ndtr(-b) - (s / m) * (pdf(a) - pdf(b))
    return p.clamp(0.0, 1.0)


def contact_signal(chain: Chain, sigma: float, seed: int = NOISE_SEED, min_separation: int = MIN_SEPARATION) -> torch.Tensor:
    """float32 [L, L]: log of the noise-aware contact probability of the degraded structure
    (`contact_probability`, floored at ``PROB_FLOOR``; module docstring).

    Pairs closer than ``min_separation`` (default ``MIN_SEPARATION`` = 12: medium and long range)
    along the chain get no probability: -1e4 (finite, so that pooling and the mass budget stay
    well defined). The forced diagonal tiles hold most of them anyway."""
    xyz = torch.from_numpy(noisy_coords(chain, sigma, seed))
    p = contact_probability(torch.cdist(xyz, xyz), sigma)
    s = torch.log(p.clamp(min=PROB_FLOOR))
    if min_separation > 0:
        idx = torch.arange(chain.length)
        s = s.masked_fill((idx[:, None] - idx[None, :]).abs() < min_separation, -1e4)
    return s.to(torch.float32)


def random_layout(counts: torch.Tensor, block_size: int, seq_len: int, seed: int) -> BlockLayout:
    """A shared layout with ``counts[i]`` key blocks in query-block row i: the diagonal plus
    ``counts[i] - 1`` other blocks drawn uniformly at random (seeded)."""
    nb = counts.shape[-1]
    g = torch.Generator().manual_seed(seed)
    key = torch.rand(nb, nb, generator=g)
    key.fill_diagonal_(2.0)  # the diagonal first
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(nb).expand(nb, nb).contiguous())
    return BlockLayout(rank < counts.view(nb, 1).to(rank.dtype), block_size, seq_len)


def matched_layout(config: GuidedConfig, chain_length: int, signal: torch.Tensor, target: float) -> BlockLayout:
    """The layout of ``config`` with its ``keep`` re-chosen so that the *measured* sparsity (pairs,
    ragged tiles counted at their real size) is closest to ``target``: ``keep = n / C`` for the
    number n of tiles per group (C tiles) found by bisection; the selections of n and n + 1 tiles
    are nested (one fixed order), so the density grows with n. Ties go to the sparser layout."""
    bs = config.block_size
    nb = -(-chain_length // bs)
    C = nb * nb if config.spread == "layout" else nb
    want = 1.0 - float(target)

    def build(n: int) -> BlockLayout:
        return build_layout(replace(config, keep=n / C, mass=None), chain_length, signal=signal)

    lo, hi = 1, C  # smallest n whose density reaches ``want``
    while lo < hi:
        mid = (lo + hi) // 2
        if build(mid).density >= want:
            hi = mid
        else:
            lo = mid + 1
    best = build(lo)
    if lo > 1:
        below = build(lo - 1)
        if abs(below.density - want) <= abs(best.density - want):
            best = below
    return best


def _pool(stats: Sequence[ChainStats]) -> tuple[float, dict]:
    from .metrics import aggregate

    pairs = sum(s.length * s.length for s in stats)
    density = sum(s.density * s.length * s.length for s in stats) / pairs
    return 1.0 - density, aggregate(stats)


def _per_chain_long(stats: Sequence[ChainStats], chains: Sequence[Chain]) -> Optional[dict]:
    """Min / median / max of the per-chain long-range contact recall (chains without long-range
    contacts left out), with the chains at the extremes; None when no chain has one."""
    k = list(RANGES).index("long")
    rec = sorted((s.kept[k] / s.total[k], c.name) for s, c in zip(stats, chains) if s.total[k])
    if not rec:
        return None
    return {"min": rec[0][0], "median": float(np.median([r for r, _ in rec])), "max": rec[-1][0],
            "min_chain": rec[0][1], "max_chain": rec[-1][1], "n_chains": len(rec)}


def evaluate_guided(
    chains: Sequence[Chain],
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    block_size: int = 16,
    pool: str = "logsumexp",
    spread: str = "layout",
    window: int = 0,
    num_global: int = 0,
    random_sigma: float = 4.0,
    seed: int = NOISE_SEED,
    min_separation: int = MIN_SEPARATION,
) -> list[GuidedRow]:
    """Guided (each sigma), best static and random rows at each target sparsity (module docstring).
    ``min_separation``: pairs closer along the chain get no contact probability in the signal
    (default ``MIN_SEPARATION`` = 12, medium and long range; 6 is where the contact ranges start)."""
    if not chains:
        raise ValueError("no chains to evaluate")
    for t in sparsities:
        if not 0.0 < t < 1.0:
            raise ValueError(f"target sparsity must be in (0, 1), got {t!r}")
    sigmas = [float(s) for s in sigmas]
    for s in sigmas:
        noisy_coords(chains[0], s)  # validates sigma
    signals = {}  # (chain name, sigma) -> signal, reused across targets
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-chain tensors: intra-op threads only spin on shared cores
    try:
        rows: list[GuidedRow] = []
        for target in sparsities:
            keep = 1.0 - float(target)
            cfg = GuidedConfig(block_size, keep=keep, pool=pool, window=window, num_global=num_global, spread=spread)
            per_sigma_layouts = {}
            for sigma in sorted(set(sigmas) | {float(random_sigma)}):
                lays = []
                for c in chains:
                    key = (c.name, c.length, sigma)
                    if key not in signals:
                        signals[key] = contact_signal(c, sigma, seed, min_separation)
                    lays.append(matched_layout(cfg, c.length, signals[key], target))
                per_sigma_layouts[sigma] = lays
            for sigma in sigmas:
                stats = [layout_stats(lay, c) for lay, c in zip(per_sigma_layouts[sigma], chains)]
                sp, m = _pool(stats)
                rows.append(GuidedRow("guided", float(target), sigma, sp, m, len(chains),
                                      f"block {block_size}, keep matched per chain, pool {pool}, spread {spread}"
                                      + (f", signal from separation {min_separation}" if min_separation != MIN_SEPARATION else ""),
                                      _per_chain_long(stats, chains)))
            # random floor: the guided per-row budget at random_sigma
            stats = []
            for n, (lay, c) in enumerate(zip(per_sigma_layouts[float(random_sigma)], chains)):
                rl = random_layout(lay.kv_counts[0].cpu(), block_size, c.length, seed + 1000003 * n + zlib.crc32(c.name.encode()))
                stats.append(layout_stats(rl, c))
            sp, m = _pool(stats)
            rows.append(GuidedRow("random", float(target), float(random_sigma), sp, m, len(chains),
                                  f"per-row budget of guided at sigma {random_sigma:g}", _per_chain_long(stats, chains)))
            # best static family
            best = None
            for fam, kw in STATIC_FAMILIES.items():
                stats = []
                for c in chains:
                    pc = pattern_for_sparsity(c.length, float(target), block_size=block_size, **kw)
                    stats.append(layout_stats(build_layout(pc, c.length), c))
                sp, m = _pool(stats)
                if abs(sp - target) > 0.05:
                    continue
                score = m["contact_recall_long"] if m["contact_recall_long"] is not None else -1.0
                if best is None or score > best[0]:
                    best = (score, fam, sp, m, _per_chain_long(stats, chains))
            if best is not None:
                rows.append(GuidedRow("static", float(target), None, best[2], best[3], len(chains),
                                      f"family {best[1]} (pattern_for_sparsity per chain length)", best[4]))
        return rows
    finally:
        torch.set_num_threads(threads)

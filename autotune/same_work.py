"""`work_key`: what a trial of a static pattern computes, so that the search measures each
computation once.

A trial of a static pattern measures (`autotune.trial`) its layout's kernel time, memory and
sparsity at every bucket length, and its accuracy on each bucket's chains, every chain at its own
length (`autotune.accuracy.evaluate_pattern`); all of it is fixed by the launch config and the
block layouts (`patterns.build_layout`: block size and kept tiles) at those lengths. Different
parameters often build the same layouts: at L=256 a 128-residue block gives 2 x 2 tiles, so any
stride of 2 blocks or more, and globals inside the first block, change nothing, and on the
replay grid of ``benchmarks/search_efficiency.py`` 108 configurations make 46 distinct
computations. Measuring such a twin again spends the budget on timing noise: its speedup differs
from the first measurement only by noise (up to 1.45x apart on that grid), and a study can then
crown the luckier twin.

The search (`autotune.driver.loop`) therefore treats a proposal whose `work_key` equals a measured
or running trial's as a duplicate of it, like a repeated parameter set: pruned unmeasured, its
user attribute ``not_run`` naming the trial, no budget spent (``--allow-repeats`` measures it).
Guided patterns build their layouts from each input's signal, so two guided configurations are
never assumed to compute the same thing (`work_key` returns None).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Sequence

__all__ = ["work_key", "WorkKeys"]


def _layout_digest(pattern: Any, length: int, cache: dict) -> bytes:
    key = (pattern, length)
    hit = cache.get(key)
    if hit is None:
        from patterns import build_layout

        lay = build_layout(pattern, length)
        mask = lay.block_mask.cpu().contiguous()
        hit = hashlib.sha256(f"{lay.block_size}:{tuple(mask.shape)}:".encode() + mask.numpy().tobytes()).digest()
        cache[key] = hit
    return hit


def accuracy_lengths(space: Any, chains: Optional[Sequence[Any]] = None) -> tuple[int, ...]:
    """The chain lengths the accuracy of a trial of ``space`` is measured at: every bucket's chains
    as `autotune.accuracy.evaluate_pattern` selects them (its bucket rule, ``max_chains``
    subsampling); ``chains`` default the packaged set."""
    from autotune.accuracy import _subsample, load_proteins, select_chains

    pool = load_proteins() if chains is None else list(chains)
    lengths: set[int] = set()
    for L in space.buckets:
        sel = select_chains(pool, int(L), space.buckets)[0]
        lengths.update(int(c.length) for c in _subsample(sel, space.accuracy_max_chains))
    return tuple(sorted(lengths))


def work_key(space: Any, pattern: dict[str, Any], kernel: Optional[dict[str, Any]], *,
             lengths: Optional[Sequence[int]] = None, cache: Optional[dict] = None) -> Optional[str]:
    """A digest of what a trial of (``pattern``, ``kernel``) in ``space`` computes (module
    docstring): the launch config and the block layouts at every bucket length and every accuracy
    chain length (``lengths``, default `accuracy_lengths`). Equal digests: the same kernels on the
    same layouts everywhere the trial looks. None for a guided pattern (layouts chosen per input)."""
    from patterns import PatternConfig, pattern_from_dict

    cfg = pattern_from_dict(pattern)
    if not isinstance(cfg, PatternConfig):
        return None
    cache = {} if cache is None else cache
    at = sorted(set(int(L) for L in space.buckets) | set(accuracy_lengths(space) if lengths is None else lengths))
    h = hashlib.sha256(json.dumps(kernel, sort_keys=True, default=str).encode())
    for L in at:
        h.update(str(L).encode() + _layout_digest(cfg, L, cache))
    return h.hexdigest()


class WorkKeys:
    """The work keys of one study's trials, for the driver: ``twin(pattern, kernel, rows)`` is the
    number of a measured or running trial among ``rows`` (at_trials rows of the study) that computes
    what (``pattern``, ``kernel``) would, or None. Keys are computed once per distinct (pattern,
    kernel) and the accuracy chain lengths once per space."""

    def __init__(self, space: Any) -> None:
        self.space = space
        self._lengths: Optional[tuple[int, ...]] = None
        self._keys: dict[str, Optional[str]] = {}
        self._layouts: dict = {}
        self.disabled: Optional[str] = None  # why no key can be told (the chain set unreadable): every key None

    def key(self, pattern: Optional[dict[str, Any]], kernel: Optional[dict[str, Any]]) -> Optional[str]:
        if not pattern or self.disabled:
            return None
        memo = json.dumps([pattern, kernel], sort_keys=True, default=str)
        if memo not in self._keys:
            if self._lengths is None:
                try:
                    self._lengths = accuracy_lengths(self.space)
                except Exception as e:  # noqa: BLE001 - the trials report the chain set's fault; no twin is assumed
                    self.disabled = f"{type(e).__name__}: {e}"
                    return None
            try:
                self._keys[memo] = work_key(self.space, pattern, kernel, lengths=self._lengths, cache=self._layouts)
            except (TypeError, ValueError):  # a row the pattern classes reject: never anyone's twin
                self._keys[memo] = None
        return self._keys[memo]

    def twin(self, pattern: dict[str, Any], kernel: Optional[dict[str, Any]], rows: Sequence[Any]) -> Optional[int]:
        mine = self.key(pattern, kernel)
        if mine is None:
            return None
        for r in rows:
            if self.key(r.pattern, r.kernel) == mine:
                return int(r.number)
        return None

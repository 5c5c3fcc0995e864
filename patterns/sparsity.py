"""`pattern_for_sparsity`: the local + global + strided pattern whose layout hits a target sparsity.

Benchmarks compare backends (and EvoFormer blocks) at fixed sparsity levels (0 / 50 / 75 / 90 %).
This module picks, for a sequence length and a target, a concrete `PatternConfig` from a family of
local windows (multiples of the block size), global residues and strided block diagonals: it builds
the layout of every candidate at ``seq_len`` and compares its sparsity with the target. Two rules,
each the one its callers have always used (their results are held by tests):

``rule="richest"`` (the kernel benchmark, the accuracy evaluation's static families, the tests)
    Candidates: window in {0, bs, 2 bs, ..., nb * bs} residues, num_global in ``num_global``
    (default {block_size, 0}), stride in ``strides`` (default {0, 8, 16}; blocks). Let ``best`` be
    the smallest distance |sparsity - target|. Among the candidates within ``tolerance`` of
    ``best`` (default 0.02), prefer, in order: the richest pattern (global tokens on, then strided
    diagonals on: the realistic AlphaFold-style shape), then the smaller distance, then the smaller
    window, then the smaller stride. A target of exactly 0 gives the plain full layout
    PatternConfig(block_size, window=nb * bs).

``rule="band"`` (the EvoFormer block benchmark)
    Candidates: window in {0, bs, ..., max(1, nb // 2) * bs} residues, num_global in ``num_global``
    (default {block_size, 0}), stride in ``strides`` (default {0, 2, 3, ..., nb - 1}). The distance
    is counted in steps of ``tolerance`` (default 0.02: round(|sparsity - target| / 0.02)); the
    smallest wins, ties going to: global block on, then the wider band, then no strides, then the
    smaller exact distance (then the first candidate in the order above).

nb = ceil(seq_len / block_size). Deterministic: the same arguments give the same config.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal, Optional, Union as _U

from .config import PatternConfig
from .build import build_layout

__all__ = ["pattern_for_sparsity", "SPARSITY_RULES"]

SPARSITY_RULES: tuple[str, ...] = ("richest", "band")


def _as_tuple(value: _U[int, Iterable[int]]) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def pattern_for_sparsity(
    seq_len: int,
    target: float,
    block_size: int = 64,
    num_global: Optional[_U[int, Iterable[int]]] = None,
    strides: Optional[_U[int, Iterable[int]]] = None,
    tolerance: float = 0.02,
    global_placement: str = "first",
    *,
    rule: Literal["richest", "band"] = "richest",
) -> PatternConfig:
    """The PatternConfig (see module docstring for the two rules) whose layout sparsity at
    ``seq_len`` is closest to ``target`` (a fraction in [0, 1], e.g. 0.9 for 90 %)."""
    if not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"target sparsity must be a fraction in [0, 1], got {target!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if rule not in SPARSITY_RULES:
        raise ValueError(f"rule must be one of {list(SPARSITY_RULES)}, got {rule!r}")
    globals_ = (block_size, 0) if num_global is None else _as_tuple(num_global)
    nb = math.ceil(seq_len / block_size)
    if rule == "band":
        strides_ = tuple([0] + list(range(2, nb))) if strides is None else _as_tuple(strides)
        return _nearest_band(seq_len, float(target), block_size, nb, globals_, strides_, tolerance, global_placement)
    strides_ = _as_tuple((0, 8, 16) if strides is None else strides)
    if float(target) == 0.0:  # the dense layout, spelled plainly
        return PatternConfig(block_size, nb * block_size, 0, 0, global_placement)  # type: ignore[arg-type]
    return _richest(seq_len, float(target), block_size, nb, globals_, strides_, tolerance, global_placement)


def _richest(seq_len: int, target: float, block_size: int, nb: int, globals_: tuple[int, ...],
             strides_: tuple[int, ...], tolerance: float, placement: str) -> PatternConfig:
    """``rule="richest"``: the richest candidate within ``tolerance`` of the nearest sparsity."""
    cands = []
    for g in globals_:
        for s in strides_:
            for wb in range(nb + 1):
                cfg = PatternConfig(block_size, wb * block_size, g, s, placement)  # type: ignore[arg-type]
                sp = build_layout(cfg, seq_len).sparsity
                cands.append((abs(sp - target), cfg))
                if sp <= 0.0:  # wider windows only repeat the full layout
                    break
    best = min(d for d, _ in cands)
    near = [(d, c) for d, c in cands if d <= best + tolerance]

    def key(item):
        d, c = item
        return (c.num_global == 0, c.stride == 0, round(d, 9), c.window, c.stride, c.num_global)

    return min(near, key=key)[1]


def _nearest_band(seq_len: int, target: float, block_size: int, nb: int, globals_: tuple[int, ...],
                  strides_: tuple[int, ...], step: float, placement: str) -> PatternConfig:
    """``rule="band"``: nearest in steps of ``step``; ties: global on, wider band, no strides."""
    best, best_key = None, None
    for k in range(0, max(1, nb // 2) + 1):
        for g in globals_:
            for stride in strides_:
                cfg = PatternConfig(block_size, k * block_size, g, stride, placement)  # type: ignore[arg-type]
                s = build_layout(cfg, seq_len).sparsity
                key = (round(abs(s - target) / step), g == 0, -k, stride != 0, abs(s - target))
                if best_key is None or key < best_key:
                    best, best_key = cfg, key
    return best  # type: ignore[return-value]

"""`pattern_for_sparsity`: the local + global + strided pattern whose layout hits a target sparsity.

Benchmarks compare backends at fixed sparsity levels (0 / 50 / 75 / 90 %). This module picks, for a
sequence length and a target, a concrete `PatternConfig` from the family

    window   in {0, bs, 2 bs, ..., nb * bs}        (multiples of the block size, residues)
    num_global in ``num_global``                   (default {block_size, 0})
    stride   in ``strides``                        (default {0, 8, 16}; blocks)

Rule (deterministic): compute the layout sparsity of every candidate at ``seq_len``; let ``best``
be the smallest distance |sparsity - target|. Among the candidates within ``tolerance`` of ``best``
(default 0.02), prefer, in order: the richest pattern (global tokens on, then strided diagonals
on: that is the realistic AlphaFold-style shape), then the smaller distance, then the smaller
window, then the smaller stride. A target of exactly 0 gives the plain full layout PatternConfig(block_size, window=nb * bs).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Union as _U

from .config import PatternConfig
from .layout import build_layout

__all__ = ["pattern_for_sparsity"]


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
) -> PatternConfig:
    """The PatternConfig (see module docstring for the rule) whose layout sparsity at ``seq_len``
    is closest to ``target`` (a fraction in [0, 1], e.g. 0.9 for 90 %)."""
    if not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"target sparsity must be a fraction in [0, 1], got {target!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    globals_ = _as_tuple(block_size if num_global is None else num_global)
    if num_global is None:
        globals_ = (block_size, 0)
    strides_ = _as_tuple((0, 8, 16) if strides is None else strides)
    nb = math.ceil(seq_len / block_size)
    if float(target) == 0.0:  # the dense layout, spelled plainly
        return PatternConfig(block_size, nb * block_size, 0, 0, global_placement)  # type: ignore[arg-type]

    cands = []
    for g in globals_:
        for s in strides_:
            for wb in range(nb + 1):
                cfg = PatternConfig(block_size, wb * block_size, g, s, global_placement)  # type: ignore[arg-type]
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

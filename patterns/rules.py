"""Composable sparsity rules: local window, global tokens, strided block diagonals.

A rule says which (query, key) token pairs it wants, in two equivalent forms:

* ``tokens(L)``: a bool [L, L] mask of the exact token pairs the rule reaches (the rule's own
  definition, before tiling), and
* ``blocks(L, block_size)``: a bool [nb, nb] mask, nb = ceil(L / block_size), of the tiles that
  contain at least one such pair. ``blocks`` is computed analytically (cheap at any L) and the test
  suite checks it against tiling ``tokens``.

Rules compose with ``|`` (union) and ``&`` (intersection), in the spirit of attention-gym's
mask functions, so "local band + global rows + strided diagonals" is ``Local(w) | Global(g) |
Strided(s)``, and a union of patterns is again a pattern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["Rule", "Local", "Global", "Strided", "Union", "Intersection", "Full", "tile_tokens"]


def tile_tokens(tokens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Reduce a token mask [..., L, L] to its block mask [..., nb, nb]: a tile is kept iff any of its
    pairs is set. The ragged tail is padded with False."""
    L = tokens.shape[-1]
    nb = math.ceil(L / block_size)
    pad = nb * block_size - L
    if pad:
        tokens = torch.nn.functional.pad(tokens, (0, pad, 0, pad), value=False)
    shaped = tokens.reshape(*tokens.shape[:-2], nb, block_size, nb, block_size)
    return shaped.any(dim=-1).any(dim=-2)


class Rule:
    """Base class of a sparsity rule. Subclasses implement ``tokens``; ``blocks`` defaults to
    tiling ``tokens`` and is overridden by an exact closed form where one exists."""

    def tokens(self, seq_len: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def blocks(self, seq_len: int, block_size: int) -> torch.Tensor:
        return tile_tokens(self.tokens(seq_len), block_size)

    def __or__(self, other: "Rule") -> "Rule":
        return Union((self, other))

    def __and__(self, other: "Rule") -> "Rule":
        return Intersection((self, other))


def _index(seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(seq_len)
    return idx[:, None], idx[None, :]


@dataclass(frozen=True)
class Full(Rule):
    """Every pair: dense attention."""

    def tokens(self, seq_len: int) -> torch.Tensor:
        return torch.ones(seq_len, seq_len, dtype=torch.bool)

    def blocks(self, seq_len: int, block_size: int) -> torch.Tensor:
        nb = math.ceil(seq_len / block_size)
        return torch.ones(nb, nb, dtype=torch.bool)


@dataclass(frozen=True)
class Local(Rule):
    """Sliding window: pair (i, j) iff |i - j| <= window (window in residues; 0 keeps i == j).

    Tiles I != J are at least (|I - J| - 1) * block_size + 1 residues apart, so the tile (I, J) is
    kept iff I == J or (|I - J| - 1) * block_size + 1 <= window.
    """

    window: int

    def tokens(self, seq_len: int) -> torch.Tensor:
        q, k = _index(seq_len)
        return (q - k).abs() <= self.window

    def blocks(self, seq_len: int, block_size: int) -> torch.Tensor:
        nb = math.ceil(seq_len / block_size)
        qb, kb = _index(nb)
        gap = (qb - kb).abs()
        return (gap == 0) | ((gap - 1) * block_size + 1 <= self.window)


@dataclass(frozen=True)
class Global(Rule):
    """Global tokens: each global token attends to every key and every query attends to it
    (a full row and a full column), as in BigBird/Longformer.

    ``placement="first"`` makes residues 0..num_global-1 global; ``"spread"`` spaces them evenly
    along the chain at positions floor(k * L / num_global), k = 0..num_global-1.
    """

    num_global: int
    placement: Literal["first", "spread"] = "first"

    def positions(self, seq_len: int) -> torch.Tensor:
        g = min(self.num_global, seq_len)
        if g == 0:
            return torch.zeros(0, dtype=torch.long)
        if self.placement == "first":
            return torch.arange(g)
        return torch.unique((torch.arange(g) * seq_len) // g)

    def tokens(self, seq_len: int) -> torch.Tensor:
        is_global = torch.zeros(seq_len, dtype=torch.bool)
        is_global[self.positions(seq_len)] = True
        return is_global[:, None] | is_global[None, :]

    def blocks(self, seq_len: int, block_size: int) -> torch.Tensor:
        nb = math.ceil(seq_len / block_size)
        gb = torch.zeros(nb, dtype=torch.bool)
        gb[self.positions(seq_len) // block_size] = True
        return gb[:, None] | gb[None, :]


@dataclass(frozen=True)
class Strided(Rule):
    """Strided block diagonals: the tile (I, J) is kept iff (I - J) is a multiple of ``stride``
    (stride in blocks, both sides of the main diagonal; stride 1 keeps every tile).

    This rule is defined on tiles, so its token form is the union of the kept tiles, cropped to L.
    """

    stride: int
    block_size: int

    def blocks(self, seq_len: int, block_size: int) -> torch.Tensor:
        if block_size != self.block_size:
            raise ValueError(
                f"Strided rule was built for block_size={self.block_size}, asked for {block_size}"
            )
        nb = math.ceil(seq_len / block_size)
        qb, kb = _index(nb)
        return (qb - kb) % self.stride == 0

    def tokens(self, seq_len: int) -> torch.Tensor:
        q, k = _index(seq_len)
        return (q // self.block_size - k // self.block_size) % self.stride == 0


@dataclass(frozen=True)
class Union(Rule):
    """Pairs reached by any of ``rules``."""

    rules: tuple[Rule, ...]

    def tokens(self, seq_len: int) -> torch.Tensor:
        out = torch.zeros(seq_len, seq_len, dtype=torch.bool)
        for r in self.rules:
            out |= r.tokens(seq_len)
        return out

    def blocks(self, seq_len: int, block_size: int) -> torch.Tensor:
        nb = math.ceil(seq_len / block_size)
        out = torch.zeros(nb, nb, dtype=torch.bool)
        for r in self.rules:
            out |= r.blocks(seq_len, block_size)
        return out


@dataclass(frozen=True)
class Intersection(Rule):
    """Pairs reached by every one of ``rules`` (tiled after intersecting the token sets, which is
    exact; intersecting block masks would over-approximate)."""

    rules: tuple[Rule, ...]

    def tokens(self, seq_len: int) -> torch.Tensor:
        out = torch.ones(seq_len, seq_len, dtype=torch.bool)
        for r in self.rules:
            out &= r.tokens(seq_len)
        return out

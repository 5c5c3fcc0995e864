"""Residue contacts of a chain and their sequence-separation ranges.

A contact is a residue pair (i, j), i < j, whose representative points (C-beta; C-alpha for glycine
and for residues without C-beta, see `structures`) are closer than ``CONTACT_CUTOFF`` = 8 A.
Indices are positions in the chain's resolved residue list, so |i - j| counts resolved residues.
Ranges by sequence separation s = |i - j| (the usual CASP/PSICOV convention):

* short:  6 <= s <= 11
* medium: 12 <= s <= 23
* long:   s >= 24

Pairs with s < 6 are trivially close along the chain and belong to no range.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .structures import Chain

__all__ = ["CONTACT_CUTOFF", "RANGES", "contact_pairs", "contact_map", "range_of"]

CONTACT_CUTOFF: float = 8.0
#: range name -> (min separation, max separation or None for unbounded)
RANGES: dict[str, tuple[int, Optional[int]]] = {"short": (6, 11), "medium": (12, 23), "long": (24, None)}


def range_of(separation: int) -> Optional[str]:
    """The range name of a sequence separation, or None (s < 6)."""
    for name, (lo, hi) in RANGES.items():
        if separation >= lo and (hi is None or separation <= hi):
            return name
    return None


def contact_map(chain: Chain, cutoff: float = CONTACT_CUTOFF) -> np.ndarray:
    """bool [L, L]: d_ij < cutoff (symmetric; the diagonal is True)."""
    return chain.distances() < cutoff


def contact_pairs(chain: Chain) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """range name -> (i, j) int64 index arrays of that range's contacts, i < j (cached per chain)."""
    if "contacts" not in chain._cache:
        i, j = np.nonzero(np.triu(contact_map(chain), k=RANGES["short"][0]))
        sep = j - i
        out = {}
        for name, (lo, hi) in RANGES.items():
            sel = (sep >= lo) if hi is None else ((sep >= lo) & (sep <= hi))
            out[name] = (i[sel].astype(np.int64), j[sel].astype(np.int64))
        chain._cache["contacts"] = out
    return chain._cache["contacts"]

"""Sparse attention patterns: what is computed, as composable rules and block layouts.

The public names below are loaded on first use (PEP 562), so that ``import patterns.errors`` - the
error base class every command line maps to exit status 2 - does not load torch: command lines
such as ``python -m autotune.ingest`` never need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError
from .lazy import lazy_exports
from .render import render

#: public name -> the submodule that defines it
_LAZY = {
    "PatternConfig": "config", "SUPPORTED_BLOCK_SIZES": "config", "GLOBAL_PLACEMENTS": "config",
    "GuidedConfig": "guided", "GUIDED_POOLS": "guided", "GUIDED_SPREADS": "guided", "PATTERN_FAMILIES": "guided",
    "pattern_from_dict": "guided",
    "BlockLayout": "layout", "build_layout": "build",
    "Rule": "rules", "Local": "rules", "Global": "rules", "Strided": "rules", "Union": "rules",
    "Intersection": "rules", "Full": "rules", "tile_tokens": "rules",
    "pattern_for_sparsity": "sparsity", "pattern_label": "render",
}

if TYPE_CHECKING:
    from .config import GLOBAL_PLACEMENTS, SUPPORTED_BLOCK_SIZES, PatternConfig
    from .guided import GUIDED_POOLS, GUIDED_SPREADS, PATTERN_FAMILIES, GuidedConfig, pattern_from_dict
    from .build import build_layout
    from .layout import BlockLayout
    from .render import pattern_label
    from .rules import Full, Global, Intersection, Local, Rule, Strided, Union, tile_tokens
    from .sparsity import pattern_for_sparsity

__all__ = [
    "PatternConfig",
    "GuidedConfig",
    "GUIDED_POOLS",
    "GUIDED_SPREADS",
    "PATTERN_FAMILIES",
    "pattern_from_dict",
    "SUPPORTED_BLOCK_SIZES",
    "GLOBAL_PLACEMENTS",
    "BlockLayout",
    "build_layout",
    "render",
    "pattern_label",
    "pattern_for_sparsity",
    "Rule",
    "Local",
    "Global",
    "Strided",
    "Union",
    "Intersection",
    "Full",
    "tile_tokens",
    "InputError",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

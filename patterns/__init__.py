"""Sparse attention patterns: what is computed, as composable rules and block layouts."""

from .config import GLOBAL_PLACEMENTS, SUPPORTED_BLOCK_SIZES, PatternConfig
from .guided import GUIDED_POOLS, GUIDED_SPREADS, PATTERN_FAMILIES, GuidedConfig, pattern_from_dict
from .layout import BlockLayout, build_layout
from .render import render
from .rules import Full, Global, Intersection, Local, Rule, Strided, Union, tile_tokens
from .errors import InputError

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


def __getattr__(name: str):
    """Kept for compatibility only: ``from patterns import load_tuned`` / ``TunedPatterns`` (the
    reader moved to `kernels.tuned`; tests/test_postgres.py and tests/test_guided_search.py still use
    this path). Remove once they import from ``kernels``: ``patterns`` imports nothing of the project."""
    if name in ("load_tuned", "TunedPatterns"):
        import kernels.tuned

        return getattr(kernels.tuned, name)
    raise AttributeError(f"module 'patterns' has no attribute {name!r}")

"""Sparse attention patterns: what is computed, as composable rules and block layouts."""

from .config import GLOBAL_PLACEMENTS, SUPPORTED_BLOCK_SIZES, PatternConfig
from .guided import GUIDED_POOLS, GUIDED_SPREADS, PATTERN_FAMILIES, GuidedConfig, pattern_from_dict
from .layout import BlockLayout, build_layout
from .render import render
from .rules import Full, Global, Intersection, Local, Rule, Strided, Union, tile_tokens
from .tuned import TunedPatterns, load_tuned

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
    "TunedPatterns",
    "load_tuned",
]

"""`build_layout`: the `BlockLayout` of any pattern - a static `PatternConfig`, a `GuidedConfig`
with its signal, a `Rule`, or a per-head list of them.

It dispatches to each kind's own builder: a static config or rule marks the tiles its token rule
reaches (`patterns.rules`), a guided config selects tiles from a signal
(`patterns.guided.build_guided_layout`). It lives apart from `patterns.layout` (the layout
itself, which the guided builder constructs), so that neither of the two imports the other.
"""

from __future__ import annotations

from typing import Optional

import torch

from .config import PatternConfig
from .guided import GuidedConfig, build_guided_layout
from .layout import BlockLayout
from .rules import Rule

__all__ = ["build_layout"]


def build_layout(
    pattern: PatternConfig | GuidedConfig | Rule | list | tuple,
    seq_len: int,
    block_size: Optional[int] = None,
    *,
    signal: Optional[torch.Tensor] = None,
    workspace: Optional[dict] = None,
) -> BlockLayout:
    """Build the block layout of ``pattern`` for a sequence of ``seq_len`` residues.

    ``pattern`` is a PatternConfig (its own block_size is used), a GuidedConfig (its own
    block_size; ``signal`` required: a pair bias [H, L, L] / [1, H, L, L] for a per-head layout or
    a pair score map [L, L] for a shared one, see `patterns.guided`), a Rule (``block_size``
    required), or a list of per-head PatternConfigs/Rules (giving a per-head [H, nb, nb] layout).
    A static tile is computed iff the pattern reaches any token pair in it; static patterns need no
    signal and ignore one if given. A guided layout lives on the signal's device; ``workspace``
    (guided only): see `patterns.guided.build_guided_layout`.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if isinstance(pattern, GuidedConfig):
        if block_size is not None and block_size != pattern.block_size:
            raise ValueError(f"block_size={block_size} contradicts GuidedConfig.block_size={pattern.block_size}")
        return build_guided_layout(pattern, seq_len, signal, workspace=workspace)
    if isinstance(pattern, (list, tuple)):
        if not pattern:
            raise ValueError("a per-head pattern list must not be empty")
        layouts = [build_layout(p, seq_len, block_size) for p in pattern]
        sizes = {lay.block_size for lay in layouts}
        if len(sizes) != 1:
            raise ValueError(f"per-head patterns must share one block_size, got {sorted(sizes)}")
        return BlockLayout._take(torch.stack([lay._mask for lay in layouts]), layouts[0].block_size, seq_len)
    if isinstance(pattern, PatternConfig):
        if block_size is not None and block_size != pattern.block_size:
            raise ValueError(f"block_size={block_size} contradicts PatternConfig.block_size={pattern.block_size}")
        bs = pattern.block_size
        return BlockLayout(pattern.rule().blocks(seq_len, bs), bs, seq_len, pattern)
    if isinstance(pattern, Rule):
        if block_size is None:
            raise ValueError("build_layout(rule, seq_len, block_size): block_size is required for a Rule")
        return BlockLayout(pattern.blocks(seq_len, block_size), block_size, seq_len)
    raise TypeError(f"build_layout: expected PatternConfig, GuidedConfig, Rule or list of them, got {type(pattern).__name__}")

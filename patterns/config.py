"""`PatternConfig`: the four numbers (plus one placement choice) that define a sparse pattern.

Units, exactly:

* ``block_size``: tile edge in residues; the layout keeps or drops whole block_size x block_size
  tiles. One of ``SUPPORTED_BLOCK_SIZES``.
* ``window``: local window in residues. Pair (i, j) is reached iff |i - j| <= window. 0 keeps only
  the diagonal tiles (each residue still sees its own tile).
* ``num_global``: number of global residues (full attention row and column each). 0 turns it off.
  ``global_placement`` puts them at the start of the chain ("first") or evenly along it ("spread").
* ``stride``: in blocks. Tile (I, J) is kept iff (I - J) mod stride == 0, i.e. every stride-th block
  diagonal on both sides of the main one. 0 turns it off; 1 keeps every tile (dense).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from .rules import Global, Local, Rule, Strided, Union

SUPPORTED_BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128)
GLOBAL_PLACEMENTS: tuple[str, ...] = ("first", "spread")
MAX_RESIDUES = 1 << 20


@dataclass(frozen=True)
class PatternConfig:
    """A local + global + strided block-sparse pattern (see module docstring for units)."""

    block_size: int = 64
    window: int = 0
    num_global: int = 0
    stride: int = 0
    global_placement: Literal["first", "spread"] = "first"

    def __post_init__(self) -> None:
        def _int(name: str) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"PatternConfig.{name} must be an integer, got {value!r}")
            return value

        if _int("block_size") not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(
                f"PatternConfig.block_size must be one of {list(SUPPORTED_BLOCK_SIZES)}, "
                f"got {self.block_size}"
            )
        for name in ("window", "num_global", "stride"):
            v = _int(name)
            if not 0 <= v <= MAX_RESIDUES:
                raise ValueError(
                    f"PatternConfig.{name} must be in [0, {MAX_RESIDUES}] (0 turns it off), got {v}"
                )
        if self.global_placement not in GLOBAL_PLACEMENTS:
            raise ValueError(
                f"PatternConfig.global_placement must be one of {list(GLOBAL_PLACEMENTS)}, "
                f"got {self.global_placement!r}"
            )

    def rule(self) -> Rule:
        """The pattern as a composable rule: Local(window) | Global(num_global) | Strided(stride)."""
        parts: list[Rule] = [Local(self.window)]
        if self.num_global:
            parts.append(Global(self.num_global, self.global_placement))
        if self.stride:
            parts.append(Strided(self.stride, self.block_size))
        return Union(tuple(parts))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "PatternConfig") -> "PatternConfig":
        """Build from a mapping, rejecting unknown keys with a message naming ``source``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a pattern must be a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown pattern key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

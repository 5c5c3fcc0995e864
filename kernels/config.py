"""`KernelConfig`: launch parameters of the Triton block-sparse kernels, as plain data.

The layout's ``block_size`` is the sparsity granularity; a kernel tile (``block_m`` queries x
``block_n`` keys) must divide it, so a program walks the kept layout tiles in sub-tiles. The
autotuner enumerates ``candidate_configs`` and every config offered there is checked correct by the
test suite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KERNEL_TILES: tuple[int, ...] = (16, 32, 64, 128)
KERNEL_WARPS: tuple[int, ...] = (2, 4, 8)
KERNEL_STAGES: tuple[int, ...] = (1, 2, 3, 4)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes, warps and pipeline stages of one kernel launch."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name, allowed in (
            ("block_m", KERNEL_TILES),
            ("block_n", KERNEL_TILES),
            ("num_warps", KERNEL_WARPS),
            ("num_stages", KERNEL_STAGES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"KernelConfig.{name} must be one of {list(allowed)}, got {value!r}")

    def fits(self, block_size: int) -> bool:
        """True if both tiles divide the layout's block size."""
        return block_size % self.block_m == 0 and block_size % self.block_n == 0

    def for_block(self, block_size: int) -> "KernelConfig":
        """This config with tiles clipped to ``block_size`` (tiles larger than a layout tile are
        clipped, never silently mis-sized)."""
        bm, bn = min(self.block_m, block_size), min(self.block_n, block_size)
        cfg = KernelConfig(bm, bn, self.num_warps, self.num_stages)
        if not cfg.fits(block_size):
            raise ValueError(f"KernelConfig tiles {bm}x{bn} do not divide block_size={block_size}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KernelConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown KernelConfig key(s) {unknown}")
        return cls(**data)


def candidate_configs(block_size: int, head_dim: int | None = None) -> list[KernelConfig]:
    """Every launch config the autotuner may try for a layout of ``block_size``: tiles dividing it
    (at least 16), 4 or 8 warps, 1 to 3 stages."""
    out = []
    for bm in KERNEL_TILES:
        for bn in KERNEL_TILES:
            if block_size % bm or block_size % bn:
                continue
            for w in (4, 8):
                if bm * bn < 64 * 64 and w == 8:
                    continue
                for s in (1, 2, 3):
                    out.append(KernelConfig(bm, bn, w, s))
    return out

"""Draw a layout as a PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .layout import BlockLayout


def render(layout: BlockLayout, path: str | Path, *, head: int = 0, title: Optional[str] = None) -> Path:
    """Write the block mask of ``layout`` (head ``head`` of a per-head layout) to ``path`` as PNG.

    Kept tiles are dark; axes are in residues so the ragged tail shows at its true size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = layout.mask3[head].float().cpu().numpy()
    L = layout.seq_len
    extent = (0, layout.n_blocks * layout.block_size, layout.n_blocks * layout.block_size, 0)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.imshow(mask, cmap="Greys", vmin=0, vmax=1, extent=extent, interpolation="nearest")
    ax.set_xlim(0, L)
    ax.set_ylim(L, 0)
    ax.set_xlabel("key residue")
    ax.set_ylabel("query residue")
    ax.set_title(title or f"L={L}, block={layout.block_size}, sparsity={layout.sparsity:.1%}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

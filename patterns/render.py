"""How a pattern is shown: `render` draws a layout as a PNG (matplotlib, headless); `pattern_label`
writes a pattern as one short line (tables, CSV columns, logs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:  # imported lazily: `patterns` loads torch only when a layout is built
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


def pattern_label(pattern: Any, missing: str = "\u2014") -> str:
    """One short line for a pattern: a `PatternConfig`, a `GuidedConfig` or its dict (as trials and
    tuned files store it, ``family: guided`` for a guided one); ``missing`` for None or an empty dict.

    * static: ``bs{block_size}/w{window}/g{num_global}/s{stride}``, plus ``/{global_placement}``
      when there are global residues placed other than ``first`` (e.g. ``bs64/w128/g16/s0/spread``);
    * guided: ``guided bs{block_size}/keep{keep}`` (or ``mass{mass}``) ``/{pool}/{spread}/w{window}/g{num_global}``.

    A dict is shown as stored (missing keys print ``None``, guided ones their defaults); it is not
    validated, so a report can still show a hand-edited row."""
    if pattern is None:
        return missing
    p = pattern.to_dict() if callable(getattr(pattern, "to_dict", None)) else pattern
    if not isinstance(p, Mapping):
        raise TypeError(f"pattern_label: expected a PatternConfig, GuidedConfig or dict, got {type(pattern).__name__}")
    if not p:
        return missing
    if p.get("family") == "guided":  # blocks chosen per input from the pair bias
        budget = f"keep{p.get('keep')}" if p.get("keep") is not None else f"mass{p.get('mass')}"
        return (f"guided bs{p.get('block_size')}/{budget}/{p.get('pool', 'max')}/{p.get('spread', 'row')}"
                f"/w{p.get('window', 0)}/g{p.get('num_global', 0)}")
    s = f"bs{p.get('block_size')}/w{p.get('window')}/g{p.get('num_global')}/s{p.get('stride')}"
    if p.get("num_global") and p.get("global_placement") not in (None, "first"):
        s += f"/{p['global_placement']}"
    return s

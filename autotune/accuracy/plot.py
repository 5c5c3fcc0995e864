"""Draw one chain's contact map with a layout over it (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from patterns.output import save_figure

from .contacts import RANGES, contact_pairs
from .metrics import layout_and_token_mask
from .structures import Chain

_COLORS = {"short": "tab:green", "medium": "tab:orange", "long": "tab:red"}


def draw_contacts(chain: Chain, config, path: str | Path, *, title: Optional[str] = None, layout=None) -> Path:
    """PNG of ``chain``'s contacts (points, coloured by range, both triangles) over the tiles the
    layout of ``config`` keeps at the chain's length (shaded); kept/dropped counts in the legend.
    ``layout``: the layout to draw (required for a guided config, whose layout depends on its
    signal); default the static config's layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = chain.length
    if layout is None:
        layout, tm = layout_and_token_mask(config, L)
    else:
        tm = layout.token_mask().cpu()
        tm = tm.any(0) if tm.dim() == 3 else tm
    mask = layout.mask3.any(0).float().cpu().numpy()
    span = layout.n_blocks * layout.block_size
    fig, ax = plt.subplots(figsize=(6.5, 6.5), dpi=110)
    ax.imshow(mask, cmap="Blues", vmin=0, vmax=2.5, extent=(0, span, span, 0), interpolation="nearest")
    tm_np = tm.numpy()
    size = max(0.5, min(6.0, 3000.0 / L))
    for name in RANGES:
        i, j = contact_pairs(chain)[name]
        if not len(i):
            continue
        kept = tm_np[i, j]
        ax.scatter(j + 0.5, i + 0.5, s=size, c=_COLORS[name], marker="o", linewidths=0,
                   label=f"{name}: {int(kept.sum())}/{len(i)} kept")
        ax.scatter(i + 0.5, j + 0.5, s=size, c=_COLORS[name], marker="o", linewidths=0)
        if (~kept).any():
            ax.scatter(j[~kept] + 0.5, i[~kept] + 0.5, s=size * 4, facecolors="none", edgecolors="black",
                       linewidths=0.4)
    ax.set_xlim(0, L)
    ax.set_ylim(L, 0)
    ax.set_xlabel("residue j (index in the resolved chain)")
    ax.set_ylabel("residue i")
    ax.legend(loc="lower left", fontsize=7, markerscale=2, framealpha=0.85)
    ax.set_title(
        title
        or (
            f"{chain.name} (L={L}): block={config.block_size} window={config.window} "
            f"global={config.num_global}/{config.global_placement} "
            + (f"stride={config.stride}\n" if hasattr(config, "stride") else
               f"guided keep={config.keep} mass={config.mass} pool={config.pool} spread={config.spread}\n")
            + f"kept tiles shaded, sparsity {layout.sparsity:.1%}; dropped contacts circled"
        ),
        fontsize=8,
    )
    return _save(fig, plt, path)


def draw_recall_vs_sparsity(rows, path: str | Path, *, title: Optional[str] = None) -> Path:
    """PNG of contact recall (one panel per range) against measured sparsity for the rows of
    `autotune.accuracy.guided.evaluate_guided`: one line per guided noise level, static, random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list] = {}
    for r in rows:
        name = r.method if r.method != "guided" else f"guided, sigma {r.sigma:g} A"
        if r.method == "random":
            name = "random (same per-row budget)"
        if r.method == "static":
            name = "best static"
        series.setdefault(name, []).append(r)
    fig, axes = plt.subplots(1, len(RANGES), figsize=(4.2 * len(RANGES), 4), dpi=110, sharey=True)
    for ax, rng in zip(axes, RANGES):
        for name, rs in series.items():
            pts = sorted((r.sparsity, r.metrics[f"contact_recall_{rng}"]) for r in rs
                         if r.metrics[f"contact_recall_{rng}"] is not None)
            if not pts:
                continue
            style = "--" if name.startswith("random") else (":" if name == "best static" else "-")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=name)
        ax.set_title(f"{rng}-range contacts")
        ax.set_xlabel("measured sparsity")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("contact recall")
    axes[-1].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    """Lay out, write the PNG (creating its folder) and close ``fig``; returns the path."""
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)  # only a regular file is replaced, atomically (patterns.output)
    plt.close(fig)
    return path

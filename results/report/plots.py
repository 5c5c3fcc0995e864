"""The report's figures (PNG, matplotlib without a display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from patterns.output import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def speedup_vs_length(series: dict[tuple[str, str], dict[float, list[tuple[int, float, Optional[float]]]]],
                      path: Path, title: str) -> Path:
    """One panel per (workload, pass); one line per target sparsity: our kernel's speedup over SDPA
    against L (solid) and FlexAttention's (dashed, same colour) where measured.

    ``series[(workload, pass)][sparsity] = [(L, ours_vs_sdpa, flex_vs_sdpa or None), ...]``.
    """
    plt = _plt()
    keys = sorted(series)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (s, pts) in enumerate(sorted(series[key].items())):
            pts = sorted(pts)
            color = f"C{i}"
            xs = [p[0] for p in pts if p[1] is not None]
            ax.plot(xs, [p[1] for p in pts if p[1] is not None], "o-", color=color, label=f"ours, {s:.0%}")
            fl = [(p[0], p[2]) for p in pts if p[2] is not None]
            if fl:
                ax.plot([p[0] for p in fl], [p[1] for p in fl], "s--", color=color, alpha=0.6, label=f"flex, {s:.0%}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("speedup over dense SDPA")
        ax.set_title(f"{key[0]} {key[1]}")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)  # only a regular file is replaced, atomically (patterns.output)
    plt.close(fig)
    return path


def pareto(points: Sequence[dict[str, Any]], path: Path, *, xlabel: str, ylabel: str, title: str) -> Path:
    """Scatter of the study's trials (``x`` accuracy, ``y`` speedup; ``feasible``, ``front``,
    ``tuned`` flags, ``number``), the Pareto front joined by a step line, tuned trials labelled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for flag, style, label in ((True, dict(c="C0", marker="o"), "feasible"), (False, dict(c="C3", marker="x"), "infeasible")):
        pts = [p for p in points if bool(p["feasible"]) == flag and not p["front"]]
        if pts:
            ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], s=20, alpha=0.6, label=label, **style)
    front = sorted((p for p in points if p["front"]), key=lambda p: p["x"])
    if front:
        ax.plot([p["x"] for p in front], [p["y"] for p in front], "-", color="C2", drawstyle="steps-post", lw=1)
        ax.scatter([p["x"] for p in front], [p["y"] for p in front], s=40, color="C2", zorder=3, label="Pareto front")
    for p in points:
        if p["tuned"] or p["front"]:
            ax.annotate(f"t{p['number']}" + (" (chosen)" if p["tuned"] else ""), (p["x"], p["y"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)  # only a regular file is replaced, atomically (patterns.output)
    plt.close(fig)
    return path


def layout(pattern: dict[str, Any], seq_len: int, path: Path, title: str) -> Path:
    """The tuned pattern's block layout at ``seq_len``: one cell per (query block, key block) tile,
    filled where the layout computes it, with a legend and the sparsity. A guided pattern chooses its
    blocks per input: it is drawn for a constant signal (its per-row budget, not its positions)."""
    import torch
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from patterns import build_layout, pattern_from_dict

    plt = _plt()
    cfg = pattern_from_dict(pattern)
    guided = getattr(cfg, "family", "static") == "guided"
    lay = build_layout(cfg, seq_len, signal=torch.zeros(seq_len, seq_len)) if guided else build_layout(cfg, seq_len)
    if guided:
        title += "\n(guided: blocks chosen per input; shown for a constant signal)"
    mask = lay.block_mask
    if mask.dim() == 3:
        mask = mask.any(0)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.imshow(mask.int().cpu().numpy(), cmap=ListedColormap(["#f2f2f2", "#1f4e79"]), vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xlabel(f"key block ({cfg.block_size} residues)")
    ax.set_ylabel(f"query block ({cfg.block_size} residues)")
    ax.set_title(f"{title}\nsparsity {lay.sparsity:.1%} at L={seq_len}", fontsize=9)
    ax.legend(handles=[Patch(color="#1f4e79", label="computed tile"), Patch(color="#f2f2f2", label="skipped tile")],
              loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)  # only a regular file is replaced, atomically (patterns.output)
    plt.close(fig)
    return path

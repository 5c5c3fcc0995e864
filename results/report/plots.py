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


def pareto_front(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both ``x`` and ``y`` (higher is better on both)."""
    return [p for p in points if not any(q["x"] >= p["x"] and q["y"] >= p["y"] and (q["x"] > p["x"] or q["y"] > p["y"])
                                         for q in points)]


def pareto_by_bucket(points: dict[int, Sequence[dict[str, Any]]], path: Path, *, xlabel: str, title: str) -> Path:
    """One panel per bucket L: every complete trial at that L (``x`` its accuracy there, ``y`` its
    speedup over SDPA there; not its worst or mean over buckets), marked "meets every target" only
    when ``feasible`` (every target at L, faster than SDPA included), the bucket's Pareto front
    (`pareto_front`) joined by a step line, the trial chosen for L (``chosen``) labelled.

    ``points[L] = [{"number", "x", "y", "feasible", "chosen"}, ...]``."""
    plt = _plt()
    buckets = sorted(L for L in points if points[L])
    fig, axes = plt.subplots(1, max(1, len(buckets)), figsize=(5 * max(1, len(buckets)), 4.5), dpi=100, squeeze=False)
    for ax, L in zip(axes[0], buckets):
        pts = list(points[L])
        for flag, style, label in ((True, dict(c="C0", marker="o"), "meets every target (incl. faster than SDPA)"),
                                   (False, dict(c="C3", marker="x"), "misses a target")):
            sel = [p for p in pts if bool(p["feasible"]) == flag]
            if sel:
                ax.scatter([p["x"] for p in sel], [p["y"] for p in sel], s=22, alpha=0.7, label=label, **style)
        front = sorted(pareto_front(pts), key=lambda p: p["x"])
        ax.plot([p["x"] for p in front], [p["y"] for p in front], "-", color="C2", drawstyle="steps-post", lw=1,
                label="Pareto front at this L")
        for p in pts:
            if p["chosen"]:
                ax.scatter([p["x"]], [p["y"]], s=90, facecolors="none", edgecolors="k", zorder=3)
                ax.annotate(f"t{p['number']} (chosen)", (p["x"], p["y"]), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"speedup over SDPA at L={L}")
        ax.set_title(f"L={L}: {len(pts)} trials", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
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

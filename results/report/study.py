"""The study's sections: the recommendation per bucket with its rule, the targets with pass / fail
per bucket, the accuracy of the tuned patterns, the speed / accuracy trade-off (the Pareto front
over the complete trials, static against guided, the per-bucket figure) and the tuned layouts."""

from __future__ import annotations

import math
from typing import Any

from kernels.baselines import NAIVE, SDPA
from patterns import pattern_label
from results.states import TrialState

from . import plots
from .context import Page, ReportContext
from .decision import reduction
from .formatting import NOT_MEASURED, accuracy_metrics, cite, f_num, f_pct, f_x, geomean, table
from .targets import describe


def recommendations(ctx: ReportContext, page: Page) -> None:
    """The verdict per bucket (`ReportContext.decisions`) with its rule: pattern, sparsity, confirmed
    speedups with their intervals, memory against naive attention and SDPA, accuracy, why, sources."""
    page.w("## Recommendation per length bucket", "")
    if not ctx.decisions:
        page.not_measured("recommendation", "No trial measurements in the database (run `python -m autotune.search`).")
        return
    page.w("Rule (`results.verdict`, shared with the search's verdict and the export): the bucket's leaders by the "
           "search's paired timing are re-measured together with SDPA (`at_confirmations`); deploy the confirmed "
           "leader with the highest geometric-mean speedup whose confirmed interval clears the speedup target and "
           "that meets every other target at every workload; the chosen config is then re-measured alone "
           "against SDPA (hold-out, `at_confirmations.stage`), whose figures - free of the selection's upward "
           "bias - must clear the speedup target too and are the ones shown. Speedups are medians of per-round "
           "ratios with their intervals.", "")
    rows = []
    for x in ctx.decisions:
        acc = accuracy_metrics(x.cells[0].accuracy) if x.cells else {}
        conf = [c.confirmation_id for c in x.cells if getattr(c, "confirmation_id", None)]
        rows.append([
            str(x.bucket), "**deploy**" if x.deploy else "do not deploy",
            f"t#{x.trial.number}" if x.trial else "—",
            pattern_label(x.trial.pattern) if x.trial else "—",
            f"{x.cells[0].sparsity:.3f}" if x.cells else "—",
            ", ".join(f"{c.workload} {f_x(c.speedup)} [{f_x(c.speedup_lo)}, {f_x(c.speedup_hi)}]"
                      for c in x.cells) or "—",
            ", ".join(f"{c.workload} {f_pct(reduction(c, NAIVE, ctx.floor))}"
                      if (c.naive_peak_mib or 0.0) >= ctx.floor else f"{c.workload} < {ctx.floor:g} MiB resolution"
                      for c in x.cells) or "—",
            ", ".join(f"{c.workload} {f_x(1 - r) if (r := reduction(c, SDPA, ctx.floor)) is not None else '—'}"
                      for c in x.cells) or "—",
            f_num(acc.get("contact_recall_long")),
            f"{acc['output_rel_error']:.3g}" if "output_rel_error" in acc else "—",
            x.why + ("; note: " + "; ".join(x.notes) if x.notes else ""),
            (cite("tu", [x.tuned.id]) + " " if x.tuned else "") + cite("m", [c.id for c in x.cells])
            + (" " + cite("c", conf) if conf else ""),
        ])
    page.w(*table(["L", "decision", "trial", "pattern", "sparsity", "speedup vs sdpa [interval]",
                   "memory reduction vs naive", "memory vs SDPA (ratio)", "contact recall (long)",
                   "output rel. error", "why", "source"], rows), "")
    if ctx.data.tuned:
        exported = max(x.exported_at for x in ctx.data.tuned)
        page.w(f"Latest export: {cite('tu', [x.id for x in ctx.data.tuned])}, {exported:%Y-%m-%d %H:%M} UTC.", "")
    sd = ctx.data.study_data
    if sd is not None and sd.confirmations is None:
        page.w("**No current confirmation**: " + ("a trial finished after the latest one" if sd.latest_confirmation
                                                 else "the study was never confirmed")
               + "; `python -m autotune.export` confirms the leaders on the measuring machine and decides.", "")


def targets_section(ctx: ReportContext, page: Page) -> None:
    """Each target of the study (threshold, baseline, where the number comes from) with PASS / FAIL
    per bucket from the decision's `Check` (FAIL (not measured) where a workload lacks the value)."""
    t = ctx.targets
    page.w("## Targets", "")
    if t is None or not ctx.decisions or not any(x.checks for x in ctx.decisions):
        page.not_measured("targets", "No tuned pattern with measurements to check the targets against.")
    if t is None:
        return
    hdr = ["target", "threshold", "measured against", "where"] + [f"L={x.bucket}" for x in ctx.decisions]
    rows = []
    for b in t.bounds:
        base, where = describe(b.name, t)
        thr = " and ".join(([f">= {b.min:g}"] if b.min is not None else []) + ([f"<= {b.max:g}"] if b.max is not None else []))
        row = [b.name, thr, base, where]
        for x in ctx.decisions:
            ch = next((c for c in x.checks if c.name == b.text()), None)
            row.append(NOT_MEASURED if ch is None or not x.cells else
                       ("PASS" if ch.passed else ("FAIL" if ch.measured else f"FAIL ({NOT_MEASURED})")))
        rows.append(row)
    page.w(*table(hdr, rows), "")


def accuracy(ctx: ReportContext, page: Page) -> None:
    """Per decided bucket, the first workload's accuracy record (``at_measurements.accuracy``): contact
    recall by range, attention mass recall, output error, the chains, and the command reproducing it."""
    page.w("## Accuracy of the tuned patterns", "")
    xs = [x for x in ctx.decisions if x.cells]
    if not xs:
        page.not_measured("accuracy of tuned patterns", "No tuned pattern with measurements.")
        return
    from results.verdict import NEAR, extrapolated

    page.w("Static patterns against real contacts of the protein set (C-beta < 8 Å; short 6-11, medium 12-23, "
           "long >= 24 residues apart): the share of contacts whose residue pair the pattern computes, the "
           "attention mass it keeps and the relative error of its output under the structure-derived bias, "
           "measured on the chains of the bucket, each at its own length - so the sparsity beside the recall is "
           "the layout's sparsity at those lengths (the bucket's own is shown apart). `extrapolated`: no chain "
           f"reaches {NEAR:.0%} of the bucket's length. The accuracy command in the last column reproduces the row "
           "on the same chains.", "")
    space = (ctx.data.space or {})
    buckets = ",".join(map(str, space.get("buckets") or []))
    rows = []
    for x in xs:
        c0 = x.cells[0]
        m = accuracy_metrics(c0.accuracy)
        acc = c0.accuracy if isinstance(c0.accuracy, dict) else {}
        lengths = acc.get("lengths") or []
        p = x.trial.pattern or {}
        chains = acc.get("max_chains")
        cmd = (f"`python -m autotune.accuracy --block-size {p.get('block_size')} --window {p.get('window')} "
               f"--num-global {p.get('num_global')} --stride {p.get('stride')}"
               + (f" --global-placement {p['global_placement']}" if p.get("global_placement", "first") != "first" else "")
               + f" --buckets {buckets or x.bucket}" + (f" --max-chains {chains}" if chains else "") + "`")
        rows.append([str(x.bucket), f"t#{x.trial.number}",
                     f_num(acc.get("chain_sparsity")) if acc.get("chain_sparsity") is not None else "—",
                     f"{c0.sparsity:.3f}",
                     f_num(m.get("contact_recall_short")), f_num(m.get("contact_recall_medium")),
                     f_num(m.get("contact_recall_long")), f_num(m.get("attention_mass_recall")),
                     f"{m['output_rel_error']:.3g}" if "output_rel_error" in m else "—",
                     str(acc.get("n_chains", "—")), f"{min(lengths)}-{max(lengths)}" if lengths else "—",
                     "yes" if extrapolated(c0, x.bucket) else "no",
                     ", ".join(f"{c.workload} {f_x(c.speedup)}" for c in x.cells),
                     cite("m", [c.id for c in x.cells]), cmd])
    page.w(*table(["L", "trial", "sparsity at the chains' lengths", "sparsity at L", "recall short", "recall medium",
                   "recall long", "attention mass recall", "output rel. error", "chains", "chain lengths",
                   "extrapolated", "speedup vs SDPA", "source", "accuracy command"], rows), "")


def pareto_points(ctx: ReportContext) -> list[dict[str, Any]]:
    """Each complete trial once: ``y`` its speedup objective (else the geometric mean of its cells'
    speedups), ``x`` its accuracy objective (else its worst cell's), ``front`` when no other trial is at
    least as good on both and better on one (Pareto dominance), ``feasible`` / ``tuned`` flags."""
    d = ctx.data
    tuned = {x.verdict.trial for x in ctx.decisions if x.deploy}
    feasible_somewhere = {x.trial for v in ctx.decisions if v.verdict is not None for x in v.verdict.leaders}
    pts = []
    for tr in d.trials:
        if tr.state != TrialState.COMPLETE:
            continue
        names, objs = tr.objective_names or [], tr.objectives or []
        obj = dict(zip(names, objs))
        cells = d.cells(tr.id)
        y = obj.get("speedup", geomean(c.speedup for c in cells))
        accs = [c.accuracy_value for c in cells if c.accuracy_value is not None]
        x = obj.get("accuracy", min(accs) if accs else None)
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        pts.append(dict(number=tr.number, x=float(x), y=float(y), feasible=tr.number in feasible_somewhere or bool(tr.feasible),
                        tuned=tr.number in tuned,
                        front=False, sparsity=sum(c.sparsity for c in cells) / len(cells) if cells else None,
                        pattern=pattern_label(tr.pattern),
                        family=(tr.pattern or {}).get("family", "static"),
                        memory=geomean(c.memory_vs_sdpa for c in cells)))
    for p in pts:
        p["front"] = not any(q["x"] >= p["x"] and q["y"] >= p["y"] and (q["x"] > p["x"] or q["y"] > p["y"])
                             for q in pts)
    return pts


def pareto_section(ctx: ReportContext, page: Page) -> None:
    """The Pareto front of `pareto_points`, the fastest and the most accurate trial of each pattern
    family when there are several, and the per-bucket figure (`plots.pareto_by_bucket`)."""
    page.w("## Speed / accuracy trade-off of the study", "")
    pts = pareto_points(ctx)
    if not pts:
        page.not_measured("speed/accuracy Pareto front", "No complete trial with speedup and accuracy.")
        return
    metric = (ctx.data.space or {}).get("accuracy_metric") or "accuracy"
    page.w(f"Each complete trial: speedup over SDPA (geometric mean over workloads and buckets, the search "
           f"objective) against {metric} (worst bucket). The Pareto front (no other trial is both faster and "
           f"more accurate):", "")
    rows = [[f"t#{p['number']}", p["pattern"], f_x(p["y"]), f_num(p["x"]), f_num(p["sparsity"]),
             "yes" if p["feasible"] else "no", "yes" if p["tuned"] else ""] for p in
            sorted((p for p in pts if p["front"]), key=lambda p: -p["y"])]
    page.w(*table(["trial", "pattern", "speedup (geomean)", metric, "mean sparsity", "feasible (at some bucket)", "chosen"], rows), "")
    fams = sorted({p["family"] for p in pts})
    if len(fams) > 1:  # static and guided side by side: each family's fastest and most accurate trial
        page.w("Static and guided patterns side by side (guided speedups include building the layout from "
               "the bias in every call; guided accuracy: layouts chosen from degraded structures):", "")
        frows = []
        for fam in fams:
            fp = [p for p in pts if p["family"] == fam]
            for what, best in (("fastest", max(fp, key=lambda p: p["y"])), ("most accurate", max(fp, key=lambda p: p["x"]))):
                frows.append([fam, what, f"t#{best['number']}", best["pattern"], f_x(best["y"]),
                              f_num(best["memory"], 2), f_num(best["x"]), f_num(best["sparsity"])])
        page.w(*table(["family", "best by", "trial", "pattern", "speedup (geomean)", "peak memory / SDPA (geomean)",
                       metric, "mean sparsity"], frows), "")
    p = plots.pareto_by_bucket(bucket_points(ctx), ctx.plots_dir / "pareto.png", xlabel=f"{metric} at L",
                               title=f"study {ctx.data.study}: each complete trial at each bucket (at_measurements)")
    page.fig(p, "speed/accuracy Pareto front per bucket")


def bucket_points(ctx: ReportContext) -> dict[int, list[dict[str, Any]]]:
    """Each complete trial at each bucket L (the figure's points): its speedup over SDPA there
    (geometric mean over the workloads), its accuracy there (the worse over the workloads),
    ``feasible`` when every target is met at every workload of L and it is faster than SDPA
    there, ``chosen`` when the verdict deploys it for L."""
    d = ctx.data
    chosen = {x.bucket: x.verdict.trial for x in ctx.decisions if x.deploy and x.verdict is not None}
    out: dict[int, list[dict[str, Any]]] = {}
    for tr in d.trials:
        if tr.state != TrialState.COMPLETE:
            continue
        by_L: dict[int, list[Any]] = {}
        for c in d.cells(tr.id):
            by_L.setdefault(int(c.bucket), []).append(c)
        for L, cells in sorted(by_L.items()):
            y = geomean(c.speedup for c in cells)
            accs = [c.accuracy_value for c in cells if c.accuracy_value is not None]
            if y is None or not accs or not math.isfinite(y):
                continue
            meets = all(v <= 0 for c in cells for v in (c.violations or {}).values())
            out.setdefault(L, []).append(dict(number=tr.number, x=float(min(accs)), y=float(y),
                                              feasible=meets and all((c.speedup or 0) > 1 for c in cells),
                                              chosen=chosen.get(L) == tr.number))
    return out


def layouts(ctx: ReportContext, page: Page) -> None:
    """The block layout of each exported pattern at its bucket (`plots.layout`), or why it is not drawn."""
    page.w("## Layouts of the tuned patterns", "")
    if not ctx.data.tuned:
        page.not_measured("tuned pattern layouts", "No export in the database (`python -m autotune.export`).")
        return
    for tu in ctx.data.tuned:
        try:
            p = plots.layout(tu.pattern, tu.bucket, ctx.plots_dir / f"layout_L{tu.bucket}.png",
                             f"L={tu.bucket}, t#{tu.trial_number}: {pattern_label(tu.pattern)}")
        except Exception as e:  # noqa: BLE001 - a pattern this checkout can no longer build
            page.w(f"L={tu.bucket} ({cite('tu', [tu.id])}): layout not drawn ({type(e).__name__}: {e}).", "")
            continue
        page.w(f"L={tu.bucket}, trial t#{tu.trial_number}, pattern `{tu.pattern}` ({cite('tu', [tu.id])}):", "")
        page.fig(p, f"layout L={tu.bucket}")

"""The report's head: the title with the command and the database it was built from, and the
executive summary (the recommendation per bucket and whether the tuned file deploys it, the
targets and noise, the search's trials, the headline of each ingested benchmark, and what was not
measured)."""

from __future__ import annotations

import datetime as dt
import shlex
from typing import Any

from kernels.baselines import NAIVE, SDPA
from patterns import pattern_label
from results.states import TrialState
from results.storage import mask_url

from .benchmarks import evoformer_cells
from .context import Page, ReportContext
from .decision import reduction
from .formatting import MIB_FLOOR, NOT_MEASURED, cite, f_ms, f_pct, f_x, mask_command
from .kernel_cases import kernel_cases


def header(ctx: ReportContext, page: Page) -> None:
    """The title, the (masked) command and database the report was built from, the other studies."""
    d = ctx.data
    title = f"study `{d.study}`" if d.study else "benchmarks only (no study in the database)"
    cmd = mask_command("python -m autotune.report" + ((" " + shlex.join(ctx.argv)) if ctx.argv is not None else ""))
    page.w(f"# Sparse attention report: {title}", "",
           f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `{cmd}` from the results database "
           f"`{mask_url(d.storage)}` alone. Every number cites its rows (`m#` at_measurements, `t#` trial number, "
           f"`kb#` at_kernel_bench, `eb#` at_evoformer_bench, ...; see [Sources](#sources)).", "")
    if d.other_studies:
        page.w(f"Other studies in this database (not reported here; use `--study`): {', '.join(d.other_studies)}.", "")


def summary(ctx: ReportContext, page: Page) -> None:
    """The executive summary: the recommendation per bucket, the targets, noise, the search, and
    the headline of each ingested benchmark (each step below writes its own bullet points)."""
    page.w("## Executive summary", "")
    summary_recommendation(ctx, page)
    summary_targets(ctx, page)
    summary_search(ctx, page)
    for br in [b for b in ctx.data.bench_runs if b.kind == "kernel"]:
        summary_kernel_bench(ctx, page, br)
    summary_evoformer(ctx, page)
    if page.absent:
        page.w(f"- {NOT_MEASURED.capitalize()}: {'; '.join(page.absent)}.")
    page.w("")


def summary_recommendation(ctx: ReportContext, page: Page) -> None:
    """Where to deploy and where not, with each chosen pattern's confirmed speedup and memory."""
    dep = [x.bucket for x in ctx.decisions if x.deploy]
    nodep = [x for x in ctx.decisions if not x.deploy]
    if not ctx.decisions:
        page.w(f"- **Recommendation: {NOT_MEASURED}** — the database holds no trial measurements to decide on.")
        return
    if dep:
        page.w(f"- **Deploy the tuned pattern at L = {', '.join(map(str, dep))}**"
               + (f"; **do not deploy at L = {', '.join(str(x.bucket) for x in nodep)}**." if nodep else "."))
    else:
        page.w(f"- **Do not deploy at any bucket** (L = {', '.join(str(x.bucket) for x in nodep)}): "
               f"no tuned pattern meets every target on confirmed figures.")
    summary_tuned_file(ctx, page)
    for x in ctx.decisions:
        if not x.deploy:
            page.w(f"  - L={x.bucket}: {x.why}" + (f"; {'; '.join(x.notes)}" if x.notes else "") + ".")
            continue
        v = x.verdict
        red = [(c.workload, reduction(c, NAIVE, ctx.floor), c.naive_peak_mib) for c in x.cells]
        page.w(f"  - L={x.bucket}: t#{v.trial} ({pattern_label(x.trial.pattern if x.trial else None)}, "
               f"sparsity {x.cells[0].sparsity:.2f}) {f_x(v.speedup)} over SDPA, "
               f"{'hold-out' if v.holdout else 'confirmed'} interval "
               f"[{f_x(v.lo)}, {f_x(v.hi)}]; memory "
               + ", ".join(f"{w} {f_pct(r)} less than naive attention" if nv is not None and nv >= ctx.floor
                           else f"{w} naive peak under the {ctx.floor:g} MiB resolution"
                           for w, r, nv in red)
               + f" ({cite('m', [c.id for c in x.cells])})"
               + (f"; {'; '.join(x.notes)}" if x.notes else "") + ".")


def summary_tuned_file(ctx: ReportContext, page: Page) -> None:
    """Whether the tuned file on disk deploys this verdict (`deployed_file`), and which buckets
    are provisional (decided while the noise check fired)."""
    prov = [x.bucket for x in ctx.decisions if x.verdict is not None and x.verdict.provisional]
    if prov:
        page.w(f"- **Provisional at L = {', '.join(map(str, prov))}**: decided while the SDPA baseline varied more "
               f"than 2x across trials (a noisy machine); re-run the search on a quiet machine before relying on it.")
    if ctx.tuned_file is None:
        return
    if ctx.stale:
        page.w(f"- **The tuned file `{ctx.tuned_file}` is out of date** (export again: `python -m autotune.export "
               f"--study {shlex.quote(ctx.data.study)} --out {shlex.quote(ctx.tuned_file)}`, with this report's "
               f"storage):")
        page.w(*(f"  - {line.split(' is out of date: ', 1)[-1]}" for line in ctx.stale))
    else:
        page.w(f"- The tuned file `{ctx.tuned_file}` deploys exactly this verdict.")


def summary_targets(ctx: ReportContext, page: Page) -> None:
    """The study's targets, and a warning where the SDPA baseline was noisy."""
    t = ctx.targets
    if t is not None:
        page.w(f"- Targets (from the study's space, {t.source}; read alike by the search, the export and this "
               f"report): " + "; ".join(b.text() for b in t.bounds)
               + f"; speedup = lower end of the paired {t.confidence:.0%} interval against dense SDPA; memory "
               f"ratios on readings floored at {t.memory_floor_mib:g} MiB; at every workload.")
    if ctx.noisy:
        page.w("- **Noisy machine**: the SDPA baseline's median spread more than 2x across trials at "
               + ", ".join(f"{w} L={L} ({f_ms(lo)}-{f_ms(hi)} ms, {n} trials)" for w, L, lo, hi, n in ctx.noisy)
               + "; single-trial speedups are unreliable there, the choices rest on the confirmation's interleaved "
               "re-measurement.")


def summary_search(ctx: ReportContext, page: Page) -> None:
    """How many trials ran, completed, met the targets and failed (by reason), where."""
    d, t = ctx.data, ctx.targets
    if not d.study:
        return
    from results.verdict import cell_ok

    comp = sum(1 for x in d.trials if x.state == TrialState.COMPLETE)
    fail = sum(1 for x in d.trials if x.state == TrialState.FAIL)
    feas = sum(1 for x in d.trials if x.state == TrialState.COMPLETE and t is not None and any(
        (cs := d.cells(x.id, L)) and all(cell_ok(t, c) for c in cs) for L in d.buckets))
    devs = sorted({(r.hardware or {}).get("device_name") or r.device for r in d.runs})
    page.w(f"- Search: {len(d.trials)} trial(s) ({comp} complete, {feas} meeting every target at some bucket "
           f"on their own timing, {fail} failed) in "
           f"{len(d.runs)} run(s) on {', '.join(map(str, devs)) or '?'}; buckets "
           f"{', '.join(map(str, d.buckets)) or NOT_MEASURED}.")
    reasons: dict[str, list[int]] = {}
    for x in d.trials:
        if x.state == TrialState.FAIL:
            reasons.setdefault((x.reason or "no reason recorded").split(":")[0][:60], []).append(x.number)
    if reasons:
        page.w("  - Failed trials by reason: " + "; ".join(
            f"{r}: {len(n)} ({cite('t', n[:6])}{'...' if len(n) > 6 else ''})"
            for r, n in sorted(reasons.items(), key=lambda kv: -len(kv[1]))) + ".")


def summary_kernel_bench(ctx: ReportContext, page: Page, br: Any) -> None:
    """One kernel benchmark run: our kernel's speedup over SDPA at the largest L per target
    sparsity, and what its memory saves against naive attention and SDPA."""
    d = ctx.data
    cases = [case for case in kernel_cases([r for r in d.kernel_rows if r.bench_run_id == br.id]) if case.target > 0]
    parts = []
    for s in sorted({case.target for case in cases}):
        # per workload and pass: the largest L measured (the regime sparsity is for), not the best cell
        at = [case for case in cases if case.target == s and case.ours and case.ratio(SDPA, case.ours)]
        top = {}
        for case in at:
            k = (case.workload, case.pass_)
            if k not in top or case.L > top[k].L:
                top[k] = case
        cells = []
        for case in sorted(top.values(), key=lambda case: (case.workload, case.pass_)):
            vs_flex = case.ratio("flex", case.ours)
            cells.append(f"{case.workload} {case.pass_} L={case.L} {f_x(case.ratio(SDPA, case.ours))}"
                         + (f" ({f_x(vs_flex)} vs flex)" if vs_flex else "")
                         + f" at s={case.actual:.2f} (ideal {f_x(1 / (1 - case.actual)) if case.actual < 1 else '—'}; "
                         f"{cite('kb', [r.id for r in case.rows.values()])})")
        if cells:
            parts.append(f"target {s:.0%}: " + ", ".join(cells))
    if parts:
        page.w(f"- Kernel benchmark bench#{br.id} ({br.device}, {br.dtype}), our kernel's speedup over dense "
               f"SDPA at the largest L measured: " + "; ".join(parts) + ".")
    mem = [(case, case.mib(case.ours), case.mib(SDPA), case.mib(NAIVE)) for case in cases if case.ours]
    mem = [m for m in mem if None not in m[1:]]
    if mem:
        ours_naive = max(1 - m[1] / max(m[3], MIB_FLOOR) for m in mem)
        sdpa_naive = max(1 - m[2] / max(m[3], MIB_FLOOR) for m in mem)
        ours_sdpa = max(1 - m[1] / max(m[2], MIB_FLOOR) for m in mem)
        page.w(f"  - Memory: our kernel saves up to {f_pct(ours_naive)} against naive attention, but dense SDPA "
               f"alone saves up to {f_pct(sdpa_naive)} against it (a reduction against naive attention comes "
               f"from fusion, not sparsity); against SDPA at best {f_pct(ours_sdpa)}.")


def summary_evoformer(ctx: ReportContext, page: Page) -> None:
    """The EvoFormer block: in the search (kind ``evoformer``) and in each ingested block benchmark,
    the sparse block against the dense SDPA block."""
    d = ctx.data
    evo = evoformer_cells(ctx)
    if evo:
        page.w("- EvoFormer block in the search (kind `evoformer`), sparse block vs dense SDPA block: " + "; ".join(
            f"{c.workload} L={c.bucket} {c.mode} {f_x(c.speedup)} at sparsity {c.sparsity:.2f}, "
            f"t#{next((t.number for t in d.trials if t.id == c.trial_id), '?')} {label.split(' (')[0]} "
            f"({cite('m', [c.id])})" for label, c in evo) + ".")
    for br in [b for b in d.bench_runs if b.kind == "evoformer"]:
        rows = [r for r in d.evoformer_rows if r.bench_run_id == br.id and r.status == "ok"]
        parts = []
        for (L, mode, ck) in sorted({(r.seq_len, r.mode, r.checkpoint or "none") for r in rows}):
            grp = [r for r in rows if (r.seq_len, r.mode, r.checkpoint or "none") == (L, mode, ck)]
            sd = next((r for r in grp if r.variant == SDPA), None)
            sp = [r for r in grp if r.variant.startswith("sparse") and r.median_ms]
            if sd is None or not sp:
                continue
            best = max(sp, key=lambda r: sd.median_ms / r.median_ms)
            bound = (f", attention cores {f_pct(sd.core_share)} of the dense block: bound "
                     f"{f_x(1 / (1 - sd.core_share))}" if sd.core_share is not None and 0 <= sd.core_share < 1 else "")
            parts.append(f"L={L} {mode}{'' if ck == 'none' else f' ckpt={ck}'} {f_x(sd.median_ms / best.median_ms)} at sparsity {best.sparsity:.2f}{bound} "
                         f"({cite('eb', [sd.id, best.id])})")
        if parts:
            page.w(f"- EvoFormer block bench#{br.id} ({br.device}, {br.dtype}), best sparse block vs dense SDPA "
                   f"block: " + "; ".join(parts) + ".")

"""The benchmark sections: the attention kernels (``at_kernel_bench``: each configuration's time per
backend, speedups over SDPA and FlexAttention against the ideal 1/(1-s), a speedup-against-L figure),
the memory (the tuned patterns' search measurements and the kernel benchmark's peaks, reductions
against naive attention and SDPA), and the EvoFormer block (the study's ``evoformer`` measurements
and ``at_evoformer_bench``, with the Amdahl bound 1 / (1 - attention share))."""

from __future__ import annotations

from typing import Any

from kernels.baselines import NAIVE, SDPA
from patterns import pattern_label
from results.states import TrialState

from . import plots
from .context import Page, ReportContext
from .decision import reduction
from .formatting import cite, f_ms, f_pct, f_x, table
from .kernel_cases import above_ideal, kernel_cases, mem_reduction


def attention(ctx: ReportContext, page: Page) -> None:
    """Per ingested kernel benchmark run: each configuration's median ms per backend, our kernel's
    speedup over SDPA and flex (‡ above the ideal 1/(1-s)), and the speedup-against-L figure."""
    d = ctx.data
    page.w("## Attention kernels", "")
    runs = [b for b in d.bench_runs if b.kind == "kernel"]
    if not runs:
        page.not_measured("attention kernel benchmark", "No `python -m kernels.bench` CSV has been ingested "
                          "(`python -m autotune.ingest --kernel-csv FILE`).")
        return
    page.w("Median time per configuration of `kernels.bench` (`ours` = this project's kernel: Triton on CUDA, the "
           "CPU kernel on CPU). Speedup = ms of the baseline / ms of the candidate, same configuration and "
           "process. Ideal speedup at sparsity s: 1/(1-s); ‡ marks a speedup over SDPA more than 10% above it "
           "(impossible for the same work: a timing outlier, e.g. a loaded machine; rerun before quoting it).", "")
    for br in runs:
        cases = kernel_cases([r for r in d.kernel_rows if r.bench_run_id == br.id])
        page.w(f"### bench#{br.id}: {br.device}, {br.dtype}, {br.threads} thread(s)", "")
        rows = [[case.workload, case.pass_, str(case.L), str(case.batch), f"{case.target:.2f} / {case.actual:.3f}",
                 case.cell(NAIVE), case.cell(SDPA), case.cell("flex"), case.cell(case.ours),
                 f_x(case.ratio(SDPA, case.ours) if case.ours else None) + above_ideal(case, case.ours),
                 f_x(case.ratio("flex", case.ours) if case.ours else None),
                 f_x(case.ratio(SDPA, "flex")) + above_ideal(case, "flex"),
                 cite("kb", [r.id for r in case.rows.values()])] for case in cases]
        page.w(*table(["workload", "pass", "L", "batch", "sparsity (target / actual)", "naive ms", "SDPA ms",
                       "flex ms", "ours ms", "ours vs SDPA", "ours vs flex", "flex vs SDPA", "source"], rows), "")
        series: dict = {}
        for case in cases:
            if case.ours and case.ratio(SDPA, case.ours):
                series.setdefault((case.workload, case.pass_), {}).setdefault(case.target, []).append(
                    (case.L, case.ratio(SDPA, case.ours), case.ratio(SDPA, "flex")))
        if series:
            p = plots.speedup_vs_length(series, ctx.plots_dir / f"speedup_vs_L_bench{br.id}.png",
                                        f"bench#{br.id}: {br.device}, {br.dtype}")
            page.fig(p, f"speedup against L per sparsity, bench#{br.id}")


def memory(ctx: ReportContext, page: Page) -> None:
    """The tuned patterns' peaks (search measurements) against naive attention and SDPA on the
    targets' floor, then each kernel benchmark run's peaks with reductions on a 1 MiB floor."""
    d, t = ctx.data, ctx.targets
    fl = ctx.floor
    page.w("## Memory", "",
           f"Peak memory above the inputs. The headline is the reduction against naive attention (materialised "
           f"logits, what OpenFold's default attention computes): 1 - max(peak, F) / max(naive peak, F). Against "
           f"dense SDPA, already flash-style, the target is no regression: max(peak, F) / max(SDPA peak, F) within "
           f"the bound, where F = {fl:g} MiB is the resolution floor of the readings (targets' memory_floor_mib; "
           f"† marks a baseline peak under it). A reduction against naive attention is what any fused kernel "
           f"gives (see the SDPA vs naive column); only the one against SDPA is due to sparsity. Kernel benchmark "
           f"tables below use a 1 MiB floor.", "")
    page.w("### Tuned patterns (search measurements)", "")
    cells = [c for x in ctx.decisions for c in x.cells]
    if not cells:
        page.not_measured("memory of the tuned patterns", "No tuned pattern with measurements.")
    else:
        rows = []
        for c in cells:
            flag = lambda b: "†" if b is not None and b < fl else ""  # noqa: E731
            sdpa_naive = (1 - max(c.sdpa_peak_mib, fl) / max(c.naive_peak_mib, fl)
                          if c.sdpa_peak_mib is not None and c.naive_peak_mib is not None else None)
            red_sdpa = reduction(c, SDPA, fl)
            rows.append([str(c.bucket), c.workload, f"{c.sparsity:.3f}", f_ms(c.naive_peak_mib) if c.naive_peak_mib
                         is not None else "out of memory", f_ms(c.sdpa_peak_mib), f_ms(c.peak_mib),
                         f_pct(reduction(c, NAIVE, fl)) + flag(c.naive_peak_mib),
                         (f_x(1 - red_sdpa) if red_sdpa is not None else "—") + flag(c.sdpa_peak_mib),
                         f_pct(sdpa_naive) + flag(c.naive_peak_mib), c.memory_method, cite("m", [c.id])])
        page.w(*table(["L", "workload", "sparsity", "naive MiB", "SDPA MiB", "ours MiB", "ours vs naive (reduction)",
                       "ours vs SDPA (ratio)", "SDPA vs naive", "method", "source"], rows), "")
    page.w("### Kernel benchmark", "")
    runs = [b for b in d.bench_runs if b.kind == "kernel"]
    if not runs:
        page.not_measured("kernel benchmark memory", "No kernel benchmark CSV ingested.")
        return
    for br in runs:
        cases = kernel_cases([r for r in d.kernel_rows if r.bench_run_id == br.id])
        rows = [[case.workload, case.pass_, str(case.L), f"{case.actual:.3f}", f_ms(case.mib(NAIVE)), f_ms(case.mib(SDPA)),
                 f_ms(case.mib("flex")), f_ms(case.mib(case.ours) if case.ours else None),
                 mem_reduction(case, NAIVE, case.ours), mem_reduction(case, SDPA, case.ours), mem_reduction(case, NAIVE, SDPA),
                 cite("kb", [r.id for r in case.rows.values()])] for case in cases]
        page.w(f"bench#{br.id} ({br.device}, {br.dtype}):", "")
        page.w(*table(["workload", "pass", "L", "sparsity", "naive MiB", "SDPA MiB", "flex MiB", "ours MiB",
                       "ours vs naive", "ours vs SDPA", "SDPA vs naive", "source"], rows), "")


def evoformer_cells(ctx: ReportContext) -> list[tuple[str, Any]]:
    """The study's ``evoformer`` measurements to show, one per (workload, bucket): the exported
    trial's cell where the bucket has an export, else the fastest cell (highest speedup) over the
    complete trials. (label, at_measurements row), ordered by bucket and workload."""
    d = ctx.data
    evo = [m for m in d.measurements if m.kind == "evoformer"]
    complete = {t.id for t in d.trials if t.state == TrialState.COMPLETE}
    exported = {x.bucket: x.trial.id for x in ctx.decisions if x.tuned is not None and x.trial is not None}
    out = []
    for key in sorted({(m.bucket, m.workload) for m in evo}):
        grp = [m for m in evo if (m.bucket, m.workload) == key and m.trial_id in complete]
        tu = next((m for m in grp if m.trial_id == exported.get(key[0])), None)
        if tu is not None:
            out.append(("tuned (exported)", tu))
        elif grp:
            out.append(("fastest trial (no export)", max(grp, key=lambda m: m.speedup or 0.0)))
    return out


def evoformer_search(ctx: ReportContext, page: Page) -> None:
    """The rows of `evoformer_cells`: sparse block against the dense SDPA and the naive block."""
    d = ctx.data
    page.w("### EvoFormer block in the search (kind `evoformer`)", "")
    wls = [w for w in ((d.space or {}).get("workloads") or []) if w.get("kind") == "evoformer"]
    shown = evoformer_cells(ctx)
    if not shown:
        page.w("The study has no `evoformer` workload measurement (add one to the space, e.g. "
               "`search_spaces/cpu_evoformer.yaml`)." if not wls else
               "The study's `evoformer` workload has no measurement of a complete trial yet.", "")
        return
    page.w("One whole EvoFormer block per trial and bucket (at_measurements, kind `evoformer`): the trial's pattern "
           "on MSA row and both triangle attentions (sparse) against the same block with dense SDPA attention "
           "(`sdpa_ms`) and with naive attention (`naive_ms`), same worker, inputs and pass. vs SDPA = "
           "at_measurements.speedup (median of the per-round ratios of the paired, interleaved timing), vs naive = speedup_naive; peak memory above the inputs.", "")
    by_id = {t.id: t for t in d.trials}
    rows = []
    for label, c in shown:
        tr = by_id.get(c.trial_id)
        naive = f_ms(c.naive_ms) if c.naive_ms is not None else "out of memory"
        rows.append([str(c.bucket), c.workload, label, f"t#{tr.number}" if tr else "—",
                     pattern_label(tr.pattern if tr else None), f"{c.sparsity:.3f}", str(c.batch), c.mode,
                     f_ms(c.time_ms), f_ms(c.sdpa_ms), naive, f_x(c.speedup), f_x(c.speedup_naive),
                     f_ms(c.peak_mib), f_ms(c.sdpa_peak_mib),
                     f_ms(c.naive_peak_mib) if c.naive_peak_mib is not None else "out of memory",
                     cite("m", [c.id])])
    page.w(*table(["L", "workload", "choice", "trial", "pattern", "sparsity", "MSA depth", "pass", "sparse block ms",
                   "SDPA block ms", "naive block ms", "vs SDPA", "vs naive", "sparse MiB", "SDPA MiB", "naive MiB",
                   "source"], rows), "")


def evoformer(ctx: ReportContext, page: Page) -> None:
    """The EvoFormer block: the search's measurements (`evoformer_search`), then each block benchmark
    run's rows with speedups over the SDPA and naive blocks and the Amdahl bound 1 / (1 - share)."""
    d = ctx.data
    page.w("## EvoFormer block", "")
    evoformer_search(ctx, page)
    page.w("### EvoFormer block benchmark", "")
    runs = [b for b in d.bench_runs if b.kind == "evoformer"]
    if not runs:
        page.not_measured("EvoFormer block benchmark", "No `python -m autotune.evoformer.bench` CSV has been "
                          "ingested (`python -m autotune.ingest --evoformer-csv FILE`).")
        return
    page.w("One EvoFormer block: naive attention vs dense SDPA vs block-sparse attention (MSA row and both "
           "triangle attentions sparse). vs SDPA = ms of the SDPA block / ms of the variant, same L and pass. "
           "Attention share = 1 - t(block with the attention cores removed) / t(block); bound = 1 / (1 - share of "
           "the SDPA block), the most any attention kernel could speed the block up (Amdahl).", "")
    for br in runs:
        rows_ = [r for r in d.evoformer_rows if r.bench_run_id == br.id]
        page.w(f"#### bench#{br.id}: {br.device}, {br.dtype}, {br.threads} thread(s)", "")
        out = []
        for (L, mode, ck) in sorted({(r.seq_len, r.mode, _ckpt(r)) for r in rows_}):
            grp = [r for r in rows_ if (r.seq_len, r.mode, _ckpt(r)) == (L, mode, ck)]
            sd = next((r for r in grp if r.variant == SDPA and r.status == "ok"), None)
            nv = next((r for r in grp if r.variant == NAIVE and r.status == "ok"), None)
            bound = (1 / (1 - sd.core_share) if sd is not None and sd.core_share is not None
                     and 0 <= sd.core_share < 1 else None)
            for r in grp:
                ok = r.status == "ok" and r.median_ms
                out.append([str(L), mode if ck == "none" else f"{mode} ckpt={ck}", str(r.depth), r.variant, r.pattern or "—", f"{r.sparsity:.3f}",
                            f_ms(r.median_ms) if ok else r.status, f_ms(r.peak_mib) if ok else "—",
                            f_x(sd.median_ms / r.median_ms) if ok and sd else "—",
                            f_x(nv.median_ms / r.median_ms) if ok and nv else "—",
                            f_pct(r.core_share), f_x(bound), cite("eb", [r.id] + ([sd.id] if sd and sd is not r else []))])
        page.w(*table(["L", "pass", "MSA depth", "variant", "pattern", "sparsity", "block ms", "peak MiB", "vs SDPA",
                       "vs naive", "attention share", "bound", "source"], out), "")


def _ckpt(r) -> str:
    """The activation checkpointing of an EvoFormer bench row (NULL: none; older rows and fwd)."""
    return getattr(r, "checkpoint", None) or "none"

"""Where the numbers come from: the search runs (hardware, versions, dates, command lines without
passwords), the ingested benchmark runs, the exports, and the key to the citations."""

from __future__ import annotations

from pathlib import Path

from .context import Page, ReportContext
from .formatting import cite, mask_command, table


def provenance(ctx: ReportContext, page: Page) -> None:
    """The search runs (times, status, hardware, versions, git, executor, masked command), the
    benchmark runs and the exports, each with its row id."""
    d = ctx.data
    page.w("## Hardware, software, dates and commands", "")
    page.w("### Search runs", "")
    if not d.runs:
        page.not_measured("search runs", "No `python -m autotune.search` run in the database.")
    else:
        rows = []
        for r in d.runs:
            hw = r.hardware or {}
            hw_s = ", ".join(f"{k} {hw[k]}" for k in ("device_name", "cores", "driver", "cuda", "torch_threads")
                             if hw.get(k) is not None)
            rows.append([f"run#{r.id}", f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                         f"{r.ended_at:%Y-%m-%d %H:%M:%S}" if r.ended_at else "—", r.status, r.device, hw_s,
                         ", ".join(f"{k} {v}" for k, v in (r.versions or {}).items() if v), r.git_revision or "—",
                         r.executor, f"`{mask_command(r.command_line)}`"])
        page.w(*table(["run", "started (UTC)", "ended (UTC)", "status", "device", "hardware", "versions", "git",
                       "executor", "command"], rows), "")
    page.w("### Benchmark runs", "")
    if not d.bench_runs:
        page.not_measured("benchmark runs", "No benchmark CSV ingested.")
    else:
        rows = [[f"bench#{b.id}", b.kind, b.device, b.dtype, str(b.threads),
                 ", ".join(f"{k} {v}" for k, v in (b.versions or {}).items()) or "—",
                 f"{b.measured_at:%Y-%m-%d %H:%M:%S}" if b.measured_at else "—", f"{b.ingested_at:%Y-%m-%d %H:%M:%S}",
                 str(b.n_rows), f"`{mask_command(b.command)}`" if b.command else "(not recorded)", f"`{Path(b.source_path).name}`"]
                for b in d.bench_runs]
        page.w(*table(["bench", "kind", "device", "dtype", "threads", "versions", "measured (file time, UTC)",
                       "ingested (UTC)", "rows", "command", "file"], rows), "")
    page.w("### Exports", "")
    if not d.tuned:
        page.not_measured("exports", "The study has not been exported.")
    else:
        rows = [[cite("tu", [x.id]), str(x.bucket), f"t#{x.trial_number}", f"{x.exported_at:%Y-%m-%d %H:%M:%S}",
                 f"`{Path(x.out_path).name}`"] for x in d.tuned]
        page.w(*table(["row", "L", "trial", "exported (UTC)", "file"], rows), "")


def sources(ctx: ReportContext, page: Page) -> None:
    """The key to the citations and the formulas of the derived numbers."""
    page.w("## Sources", "",
           "- `m#N`: `at_measurements.id` (one trial x workload x bucket); `c#N`: `at_confirmations.id` (one "
           "confirmed re-measurement); `t#N`: `at_trials.number` of this study; "
           "`tu#N`: `at_tuned.id`; `run#N`: `at_runs.id`.",
           "- `kb#N`: `at_kernel_bench.id` (one CSV row of `kernels.bench`); `eb#N`: `at_evoformer_bench.id`; "
           "`bench#N`: `at_bench_runs.id` (one ingested CSV).",
           "- Speedups of the chosen patterns are confirmed `at_confirmations.speedup` [speedup_lo, speedup_hi] "
           "(median of per-round ratios SDPA / candidate, interleaved), search speedups `at_measurements.speedup`; "
           "naive ratios `speedup_naive` (= naive_ms / time_ms) and "
           "`speedup_naive`; memory reductions are 1 - `memory_vs_sdpa` / `memory_vs_naive`. Benchmark ratios are "
           "computed from the `ms` / `mib` / `median_ms` columns of the cited rows.",
           "- Decision rule: see the module documentation of `results.report.build`.", "")

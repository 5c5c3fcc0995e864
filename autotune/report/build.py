"""Build the Markdown report (and its PNG figures) from a `ReportData`.

Every number comes from a database row and is cited next to it: ``m#`` = ``at_measurements.id``,
``t#`` = trial number of the study (``at_trials.number``), ``tu#`` = ``at_tuned.id``, ``run#`` =
``at_runs.id``, ``kb#`` = ``at_kernel_bench.id``, ``eb#`` = ``at_evoformer_bench.id``, ``bench#`` =
``at_bench_runs.id``. Derived numbers (ratios, reductions) are computed from the cited rows with
the formula stated beside them.

Recommendation rule, per length bucket (`decide`): the bucket's tuned choice is the ``at_tuned`` row
of the study's latest export (the export's own rule picks it among the feasible trials). It is
recommended for deployment iff, at EVERY workload measured at that bucket (``at_measurements`` of
that trial and bucket): (1) the study's constraints are met (the per-cell ``feasible`` flag:
accuracy floor, memory, ...), (2) the speedup over the speedup baseline is >= the speedup target,
(3) the memory reduction 1 - peak / max(baseline peak, 1 MiB) against the memory baseline is >=
the memory target, and (4) where an extra accuracy floor is given, the metric is >= it. A check
that cannot be evaluated (value missing, or a baseline peak under the 1 MiB resolution) counts as
not met: the report never recommends on a number it does not have. A bucket without an exported
choice is not recommended, with the reason (no feasible trial, or not exported).
"""

from __future__ import annotations

import datetime as dt
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from . import plots
from .data import ReportData, safe_url
from .targets import BASELINE_NAMES, Targets

MIB_FLOOR = 1.0  # memory ratios use max(baseline peak, 1 MiB), as at_measurements.memory_vs_* does
NOT_MEASURED = "not measured"
OURS = ("triton", "cpu")


# ---- formatting ----------------------------------------------------------------------------------
def f_ms(x: Optional[float]) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def f_x(x: Optional[float]) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.2f}x" if abs(x) >= 0.1 else f"{x:.2g}x"


def f_pct(x: Optional[float]) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def f_num(x: Optional[float], nd: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def cite(prefix: str, ids: Iterable[Any]) -> str:
    ids = [i for i in ids if i is not None]
    return f"{prefix}#" + ",".join(str(i) for i in ids) if ids else "—"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _geomean(xs: Iterable[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def _metrics(acc: Any) -> dict[str, float]:
    if not isinstance(acc, dict):
        return {}
    m = acc.get("metrics", acc)
    return {k: v for k, v in m.items() if isinstance(v, (int, float))}


def _pattern_str(p: Optional[dict]) -> str:
    if not p:
        return "—"
    s = f"bs{p.get('block_size')}/w{p.get('window')}/g{p.get('num_global')}/s{p.get('stride')}"
    if p.get("num_global") and p.get("global_placement") not in (None, "first"):
        s += f"/{p['global_placement']}"
    return s


# ---- the recommendation --------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    measured: bool = True


@dataclass
class Decision:
    bucket: int
    deploy: bool
    why: str
    tuned: Any = None
    trial: Any = None
    cells: list = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _speedup(c: Any, baseline: str) -> Optional[float]:
    return c.speedup if baseline == "sdpa" else c.speedup_naive


def _base_peak(c: Any, baseline: str) -> Optional[float]:
    return c.sdpa_peak_mib if baseline == "sdpa" else c.naive_peak_mib


def _reduction(c: Any, baseline: str) -> Optional[float]:
    ratio = c.memory_vs_sdpa if baseline == "sdpa" else c.memory_vs_naive
    return None if ratio is None else 1.0 - ratio


def decide(data: ReportData, targets: Targets) -> list[Decision]:
    tuned = {t.bucket: t for t in data.tuned}
    out = []
    for L in sorted(set(data.buckets) | set(tuned)):
        tu = tuned.get(L)
        if tu is None:
            complete = [t for t in data.trials if t.state == "COMPLETE"]
            feas = [t for t in complete if (cs := data.cells(t.id, L)) and all(c.feasible for c in cs)]
            if not feas:
                why = f"no trial met the study's constraints at this bucket ({len(complete)} complete trial(s))"
            else:
                why = (f"no exported choice ({len(feas)} feasible trial(s): "
                       f"{cite('t', [t.number for t in feas[:8]])}{'...' if len(feas) > 8 else ''}); "
                       f"run python -m autotune.export")
            out.append(Decision(L, False, why))
            continue
        trial = data.trial_by_number(tu.trial_number)
        cells = data.cells(trial.id, L) if trial is not None else []
        d = Decision(L, False, "", tuned=tu, trial=trial, cells=cells)
        if not cells:
            d.why = f"the exported trial t#{tu.trial_number} has no measurement at L={L} ({NOT_MEASURED})"
            out.append(d)
            continue
        # (1) the study's constraints
        bad = [f"{c.workload}: " + ", ".join(f"{k} {v:+.3g}" for k, v in (c.violations or {}).items() if v > 0)
               for c in cells if not c.feasible]
        d.checks.append(Check("study constraints", not bad, "met at every workload" if not bad else "violated: " + "; ".join(bad)))
        # (2) speedup
        sb = targets.speedup_baseline
        vals = {c.workload: _speedup(c, sb) for c in cells}
        miss = [w for w, v in vals.items() if v is None]
        ok = not miss and all(v >= targets.speedup for v in vals.values())
        d.checks.append(Check(f"speedup vs {sb} >= {targets.speedup:g}x", ok,
                              ", ".join(f"{w} {f_x(v) if v is not None else NOT_MEASURED}" for w, v in vals.items()),
                              measured=not miss))
        if ok and sb == "sdpa":
            pess = {c.workload: c.sdpa_p10_ms / c.time_p90_ms for c in cells
                    if c.sdpa_p10_ms and c.time_p90_ms}
            low = [w for w, v in pess.items() if v < targets.speedup]
            if low:
                d.notes.append(f"speedup within the timing spread at {', '.join(low)} "
                               f"(SDPA p10 / candidate p90 = {', '.join(f_x(pess[w]) for w in low)})")
        # (3) memory
        mb = targets.memory_baseline
        parts, ok, measured = [], True, True
        for c in cells:
            base, red = _base_peak(c, mb), _reduction(c, mb)
            if base is None and mb == "naive" and c.peak_mib is not None:
                parts.append(f"{c.workload}: baseline out of memory")
            elif red is None or base is None:
                parts.append(f"{c.workload}: {NOT_MEASURED}")
                ok = measured = False
            elif base < MIB_FLOOR:
                parts.append(f"{c.workload}: not resolvable ({mb} peak {base:.2g} MiB < {MIB_FLOOR:g} MiB)")
                ok = measured = False
            else:
                parts.append(f"{c.workload} {f_pct(red)}")
                ok = ok and red >= targets.memory_reduction
        d.checks.append(Check(f"memory reduction vs {mb} >= {targets.memory_reduction:.0%}", ok, ", ".join(parts), measured))
        # (4) extra accuracy floor
        if targets.accuracy_metric is not None:
            accs = {c.workload: _metrics(c.accuracy).get(targets.accuracy_metric) for c in cells}
            miss = [w for w, v in accs.items() if v is None]
            ok = not miss and all(v >= targets.accuracy_min for v in accs.values())
            vals = sorted({v for v in accs.values() if v is not None})
            d.checks.append(Check(f"{targets.accuracy_metric} >= {targets.accuracy_min:g}", ok,
                                  ", ".join(f_num(v) for v in vals) if not miss else NOT_MEASURED, not miss))
        if any((c.accuracy or {}).get("extrapolated") for c in cells if isinstance(c.accuracy, dict)):
            d.notes.append("accuracy extrapolated from other lengths (no protein of this length in the set)")
        d.deploy = all(ch.passed for ch in d.checks)
        failed = [ch for ch in d.checks if not ch.passed]
        d.why = ("meets every target: " + "; ".join(f"{ch.name} ({ch.detail})" for ch in d.checks) if d.deploy else
                 "fails " + "; ".join(f"{ch.name} ({ch.detail})" for ch in failed))
        out.append(d)
    return out


# ---- kernel benchmark ----------------------------------------------------------------------------
@dataclass
class KernelCase:
    workload: str
    pass_: str
    L: int
    batch: int
    target: float
    actual: float
    rows: dict[str, Any]  # backend -> at_kernel_bench row

    def ms(self, backend: str) -> Optional[float]:
        r = self.rows.get(backend)
        return r.ms if r is not None and r.status == "ok" else None

    def mib(self, backend: str) -> Optional[float]:
        r = self.rows.get(backend)
        return r.mib if r is not None and r.status == "ok" else None

    @property
    def ours(self) -> Optional[str]:
        return next((b for b in OURS if b in self.rows), None)

    def ratio(self, num: str, den: Optional[str]) -> Optional[float]:
        a, b = self.ms(num), (self.ms(den) if den else None)
        return a / b if a is not None and b else None

    def cell(self, backend: Optional[str]) -> str:
        if backend is None or backend not in self.rows:
            return NOT_MEASURED if backend is None else "—"
        r = self.rows[backend]
        return f_ms(r.ms) if r.status == "ok" else r.status


def kernel_cases(rows: list[Any]) -> list[KernelCase]:
    groups: dict[tuple, KernelCase] = {}
    for r in rows:
        key = (r.workload, r.pass_, r.seq_len, r.batch, r.sparsity_target)
        kc = groups.setdefault(key, KernelCase(r.workload, r.pass_, r.seq_len, r.batch, r.sparsity_target,
                                               r.sparsity_actual, {}))
        kc.rows[r.backend] = r
    return [groups[k] for k in sorted(groups)]


def _mem_red(kc: KernelCase, base: str, who: Optional[str]) -> str:
    b, m = kc.mib(base), (kc.mib(who) if who else None)
    if b is None or m is None:
        return "—"
    return f_pct(1 - m / max(b, MIB_FLOOR)) + ("†" if b < MIB_FLOOR else "")


# ---- the report ----------------------------------------------------------------------------------
class Report:
    def __init__(self, data: ReportData, targets: Targets, out: Path, plots_dir: Path, argv: Optional[list[str]] = None):
        self.data, self.t, self.out, self.plots_dir = data, targets, out, plots_dir
        self.argv = argv
        self.lines: list[str] = []
        self.absent: list[str] = []
        self.figures: list[Path] = []
        self.decisions = decide(data, targets)

    def w(self, *lines: str) -> None:
        self.lines.extend(lines)

    def fig(self, path: Path, alt: str) -> None:
        self.figures.append(path)
        try:
            rel = path.resolve().relative_to(self.out.resolve().parent)
        except ValueError:
            rel = path.resolve()
        self.w(f"![{alt}]({rel.as_posix()})", "")

    def not_measured(self, what: str, hint: str) -> None:
        self.absent.append(what)
        self.w(f"**{what}: {NOT_MEASURED}.** {hint}", "")

    # -- sections ----------------------------------------------------------------------------
    def build(self) -> str:
        body_builders = [self.recommendations, self.targets_section, self.attention, self.memory, self.evoformer,
                         self.accuracy, self.pareto_section, self.layouts, self.provenance, self.sources]
        body: list[str] = []
        for b in body_builders:
            self.lines = []
            b()
            body += self.lines
        self.lines = []
        self.header()
        self.summary()
        return "\n".join(self.lines + body).rstrip() + "\n"

    def header(self) -> None:
        d = self.data
        title = f"study `{d.study}`" if d.study else "benchmarks only (no study in the database)"
        cmd = _mask("python -m autotune.report" + ((" " + shlex.join(self.argv)) if self.argv is not None else ""))
        self.w(f"# Sparse attention report: {title}", "",
               f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `{cmd}` from the results database "
               f"`{safe_url(d.storage)}` alone. Every number cites its rows (`m#` at_measurements, `t#` trial number, "
               f"`kb#` at_kernel_bench, `eb#` at_evoformer_bench, ...; see [Sources](#sources)).", "")
        if d.other_studies:
            self.w(f"Other studies in this database (not reported here; use `--study`): {', '.join(d.other_studies)}.", "")

    def summary(self) -> None:
        d, t = self.data, self.t
        self.w("## Executive summary", "")
        dep = [x.bucket for x in self.decisions if x.deploy]
        nodep = [x for x in self.decisions if not x.deploy]
        if not self.decisions:
            self.w(f"- **Recommendation: {NOT_MEASURED}** — the database holds no trial measurements to decide on.")
        else:
            if dep:
                self.w(f"- **Deploy the tuned pattern at L = {', '.join(map(str, dep))}**"
                       + (f"; **do not deploy at L = {', '.join(str(x.bucket) for x in nodep)}**." if nodep else "."))
            else:
                self.w(f"- **Do not deploy at any bucket** (L = {', '.join(str(x.bucket) for x in nodep)}): "
                       f"no tuned pattern meets every target.")
            for x in nodep:
                self.w(f"  - L={x.bucket}: {x.why}.")
        self.w(f"- Targets: speedup >= {t.speedup:g}x against {t.speedup_baseline}, memory reduction >= "
               f"{t.memory_reduction:.0%} against {t.memory_baseline}, the study's constraints met"
               + (f", {t.accuracy_metric} >= {t.accuracy_min:g}" if t.accuracy_metric else "") + ", at every workload.")
        if d.study:
            comp = sum(1 for x in d.trials if x.state == "COMPLETE")
            fail = sum(1 for x in d.trials if x.state == "FAIL")
            feas = sum(1 for x in d.trials if x.state == "COMPLETE" and x.feasible)
            devs = sorted({(r.hardware or {}).get("device_name") or r.device for r in d.runs})
            self.w(f"- Search: {len(d.trials)} trial(s) ({comp} complete, {feas} feasible, {fail} failed) in "
                   f"{len(d.runs)} run(s) on {', '.join(map(str, devs)) or '?'}; buckets "
                   f"{', '.join(map(str, d.buckets)) or NOT_MEASURED}.")
            reasons: dict[str, list[int]] = {}
            for x in d.trials:
                if x.state == "FAIL":
                    reasons.setdefault((x.reason or "no reason recorded").split(":")[0][:60], []).append(x.number)
            if reasons:
                self.w("  - Failed trials by reason: " + "; ".join(
                    f"{r}: {len(n)} ({cite('t', n[:6])}{'...' if len(n) > 6 else ''})"
                    for r, n in sorted(reasons.items(), key=lambda kv: -len(kv[1]))) + ".")
            for x in self.decisions:
                if x.cells:
                    sp = {c.workload: c.speedup for c in x.cells}
                    acc = _metrics(x.cells[0].accuracy)
                    self.w(f"  - L={x.bucket}: tuned t#{x.trial.number if x.trial else '?'} at sparsity "
                           f"{x.cells[0].sparsity:.2f}: speedup vs SDPA "
                           f"{', '.join(f'{w} {f_x(v)}' for w, v in sp.items())}; long-range contact recall "
                           f"{f_num(acc.get('contact_recall_long'))} ({cite('m', [c.id for c in x.cells])}).")
        for br in [b for b in d.bench_runs if b.kind == "kernel"]:
            cases = [kc for kc in kernel_cases([r for r in d.kernel_rows if r.bench_run_id == br.id]) if kc.target > 0]
            parts = []
            for s in sorted({kc.target for kc in cases}):
                # per workload and pass: the largest L measured (the regime sparsity is for), not the best cell
                at = [kc for kc in cases if kc.target == s and kc.ours and kc.ratio("sdpa", kc.ours)]
                top = {}
                for kc in at:
                    k = (kc.workload, kc.pass_)
                    if k not in top or kc.L > top[k].L:
                        top[k] = kc
                cells = []
                for kc in sorted(top.values(), key=lambda kc: (kc.workload, kc.pass_)):
                    vs_flex = kc.ratio("flex", kc.ours)
                    cells.append(f"{kc.workload} {kc.pass_} L={kc.L} {f_x(kc.ratio('sdpa', kc.ours))}"
                                 + (f" ({f_x(vs_flex)} vs flex)" if vs_flex else "")
                                 + f" at s={kc.actual:.2f} (ideal {f_x(1 / (1 - kc.actual)) if kc.actual < 1 else '—'}; "
                                 f"{cite('kb', [r.id for r in kc.rows.values()])})")
                if cells:
                    parts.append(f"target {s:.0%}: " + ", ".join(cells))
            if parts:
                self.w(f"- Kernel benchmark bench#{br.id} ({br.device}, {br.dtype}), our kernel's speedup over dense "
                       f"SDPA at the largest L measured: " + "; ".join(parts) + ".")
            mem = [(kc, kc.mib(kc.ours), kc.mib("sdpa"), kc.mib("naive")) for kc in cases if kc.ours]
            mem = [m for m in mem if None not in m[1:]]
            if mem:
                ours_naive = max(1 - m[1] / max(m[3], MIB_FLOOR) for m in mem)
                sdpa_naive = max(1 - m[2] / max(m[3], MIB_FLOOR) for m in mem)
                ours_sdpa = max(1 - m[1] / max(m[2], MIB_FLOOR) for m in mem)
                self.w(f"  - Memory: our kernel saves up to {f_pct(ours_naive)} against naive attention, but dense SDPA "
                       f"alone saves up to {f_pct(sdpa_naive)} against it (a reduction against naive attention comes "
                       f"from fusion, not sparsity); against SDPA at best {f_pct(ours_sdpa)}.")
        evo = self.evoformer_cells()
        if evo:
            self.w("- EvoFormer block in the search (kind `evoformer`), sparse block vs dense SDPA block: " + "; ".join(
                f"{c.workload} L={c.bucket} {c.mode} {f_x(c.speedup)} at sparsity {c.sparsity:.2f}, "
                f"t#{next((t.number for t in d.trials if t.id == c.trial_id), '?')} {label.split(' (')[0]} "
                f"({cite('m', [c.id])})" for label, c in evo) + ".")
        for br in [b for b in d.bench_runs if b.kind == "evoformer"]:
            rows = [r for r in d.evoformer_rows if r.bench_run_id == br.id and r.status == "ok"]
            parts = []
            for (L, mode) in sorted({(r.seq_len, r.mode) for r in rows}):
                grp = [r for r in rows if (r.seq_len, r.mode) == (L, mode)]
                sd = next((r for r in grp if r.variant == "sdpa"), None)
                sp = [r for r in grp if r.variant.startswith("sparse") and r.median_ms]
                if sd is None or not sp:
                    continue
                best = max(sp, key=lambda r: sd.median_ms / r.median_ms)
                bound = (f", attention cores {f_pct(sd.core_share)} of the dense block: bound "
                         f"{f_x(1 / (1 - sd.core_share))}" if sd.core_share is not None and 0 <= sd.core_share < 1 else "")
                parts.append(f"L={L} {mode} {f_x(sd.median_ms / best.median_ms)} at sparsity {best.sparsity:.2f}{bound} "
                             f"({cite('eb', [sd.id, best.id])})")
            if parts:
                self.w(f"- EvoFormer block bench#{br.id} ({br.device}, {br.dtype}), best sparse block vs dense SDPA "
                       f"block: " + "; ".join(parts) + ".")
        if self.absent:
            self.w(f"- {NOT_MEASURED.capitalize()}: {'; '.join(self.absent)}.")
        self.w("")

    def recommendations(self) -> None:
        t = self.t
        self.w("## Recommendation per length bucket", "")
        if not self.decisions:
            self.not_measured("recommendation", "No trial measurements in the database (run `python -m autotune.search`).")
            return
        self.w(f"Rule: deploy a bucket's exported pattern iff at every workload the study's constraints hold, speedup "
               f"vs {t.speedup_baseline} >= {t.speedup:g}x and memory reduction vs {t.memory_baseline} >= "
               f"{t.memory_reduction:.0%}" + (f" and {t.accuracy_metric} >= {t.accuracy_min:g}" if t.accuracy_metric else "")
               + "; a value that is missing or below the 1 MiB memory resolution (marked †) counts as not met.", "")
        rows = []
        for x in self.decisions:
            acc = _metrics(x.cells[0].accuracy) if x.cells else {}
            rows.append([
                str(x.bucket), "**deploy**" if x.deploy else "do not deploy",
                f"t#{x.trial.number}" if x.trial else "—",
                _pattern_str(x.tuned.pattern) if x.tuned else "—",
                f"{x.cells[0].sparsity:.3f}" if x.cells else "—",
                ", ".join(f"{c.workload} {f_x(_speedup(c, t.speedup_baseline))}" for c in x.cells) or "—",
                ", ".join(f"{c.workload} {f_pct(_reduction(c, t.memory_baseline))}"
                          + ("†" if (_base_peak(c, t.memory_baseline) or MIB_FLOOR) < MIB_FLOOR else "")
                          for c in x.cells) or "—",
                f_num(acc.get("contact_recall_long")),
                x.why + ("; note: " + "; ".join(x.notes) if x.notes else ""),
                (cite("tu", [x.tuned.id]) + " " if x.tuned else "") + cite("m", [c.id for c in x.cells]),
            ])
        self.w(*table(["L", "decision", "trial", "pattern", "sparsity", f"speedup vs {t.speedup_baseline}",
                       f"memory reduction vs {t.memory_baseline}", "contact recall (long)", "why", "source"], rows), "")
        stale = []
        if self.data.tuned:
            exported = max(x.exported_at for x in self.data.tuned)
            stale = [x for x in self.data.trials if x.finished_at and x.finished_at > exported]
            self.w(f"Tuned choices: the latest export ({cite('tu', [x.id for x in self.data.tuned])}, "
                   f"{exported:%Y-%m-%d %H:%M} UTC, rule: {self.data.tuned[0].rule})."
                   + (f" **{len(stale)} trial(s) finished after this export; export again to include them.**" if stale else ""),
                   "")

    def targets_section(self) -> None:
        t = self.t
        self.w("## Targets", "")
        if not self.decisions or not any(x.checks for x in self.decisions):
            self.not_measured("targets", "No tuned pattern with measurements to check the targets against.")
        hdr = ["target", "threshold", "measured against", "where"] + [f"L={x.bucket}" for x in self.decisions]
        specs = [("speedup", f">= {t.speedup:g}x", BASELINE_NAMES[t.speedup_baseline],
                  "candidate median time vs the baseline's, same process, every workload (at_measurements.speedup"
                  + ("" if t.speedup_baseline == "sdpa" else "_naive") + ")"),
                 ("memory reduction", f">= {t.memory_reduction:.0%}", BASELINE_NAMES[t.memory_baseline],
                  f"1 - peak / max(baseline peak, 1 MiB), every workload (at_measurements.memory_vs_{t.memory_baseline})"),
                 ("study constraints", "all met", "the search space's constraints", "at_measurements.feasible, every workload")]
        if t.accuracy_metric:
            specs.append((t.accuracy_metric, f">= {t.accuracy_min:g}", "contacts of the protein set",
                          "at_measurements.accuracy"))
        rows = []
        for name, thr, base, where in specs:
            row = [name, thr, base, where]
            for x in self.decisions:
                ch = next((c for c in x.checks if c.name.startswith(name)), None)
                row.append(NOT_MEASURED if ch is None else ("PASS" if ch.passed else ("FAIL" if ch.measured else
                                                                                      f"FAIL ({NOT_MEASURED})")))
            rows.append(row)
        self.w(*table(hdr, rows), "")

    def attention(self) -> None:
        d = self.data
        self.w("## Attention kernels", "")
        runs = [b for b in d.bench_runs if b.kind == "kernel"]
        if not runs:
            self.not_measured("attention kernel benchmark", "No `python -m kernels.bench` CSV has been ingested "
                              "(`python -m autotune.ingest --kernel-csv FILE`).")
            return
        self.w("Median time per configuration of `kernels.bench` (`ours` = this project's kernel: Triton on CUDA, the "
               "CPU kernel on CPU). Speedup = ms of the baseline / ms of the candidate, same configuration and "
               "process. Ideal speedup at sparsity s: 1/(1-s); ‡ marks a speedup over SDPA more than 10% above it "
               "(impossible for the same work: a timing outlier, e.g. a loaded machine; rerun before quoting it).", "")
        for br in runs:
            cases = kernel_cases([r for r in d.kernel_rows if r.bench_run_id == br.id])
            self.w(f"### bench#{br.id}: {br.device}, {br.dtype}, {br.threads} thread(s)", "")
            rows = [[kc.workload, kc.pass_, str(kc.L), str(kc.batch), f"{kc.target:.2f} / {kc.actual:.3f}",
                     kc.cell("naive"), kc.cell("sdpa"), kc.cell("flex"), kc.cell(kc.ours),
                     f_x(kc.ratio("sdpa", kc.ours) if kc.ours else None) + self._above_ideal(kc, kc.ours),
                     f_x(kc.ratio("flex", kc.ours) if kc.ours else None),
                     f_x(kc.ratio("sdpa", "flex")) + self._above_ideal(kc, "flex"),
                     cite("kb", [r.id for r in kc.rows.values()])] for kc in cases]
            self.w(*table(["workload", "pass", "L", "batch", "sparsity (target / actual)", "naive ms", "SDPA ms",
                           "flex ms", "ours ms", "ours vs SDPA", "ours vs flex", "flex vs SDPA", "source"], rows), "")
            series: dict = {}
            for kc in cases:
                if kc.ours and kc.ratio("sdpa", kc.ours):
                    series.setdefault((kc.workload, kc.pass_), {}).setdefault(kc.target, []).append(
                        (kc.L, kc.ratio("sdpa", kc.ours), kc.ratio("sdpa", "flex")))
            if series:
                p = plots.speedup_vs_length(series, self.plots_dir / f"speedup_vs_L_bench{br.id}.png",
                                            f"bench#{br.id}: {br.device}, {br.dtype}")
                self.fig(p, f"speedup against L per sparsity, bench#{br.id}")

    @staticmethod
    def _above_ideal(kc: KernelCase, who: Optional[str]) -> str:
        r = kc.ratio("sdpa", who) if who else None
        return "‡" if r is not None and kc.actual < 1 and r > 1.1 / (1 - kc.actual) else ""

    def memory(self) -> None:
        d, t = self.data, self.t
        self.w("## Memory", "",
               "Peak memory above the inputs. Reduction = 1 - peak / max(baseline peak, 1 MiB); † marks a baseline "
               "peak under 1 MiB (below the resolution of the measurement). A reduction against naive attention is "
               "what any fused kernel gives (see the SDPA vs naive column); only the one against SDPA is due to "
               "sparsity.", "")
        self.w("### Tuned patterns (search measurements)", "")
        cells = [c for x in self.decisions for c in x.cells]
        if not cells:
            self.not_measured("memory of the tuned patterns", "No tuned pattern with measurements.")
        else:
            rows = []
            for c in cells:
                flag = lambda b: "†" if b is not None and b < MIB_FLOOR else ""  # noqa: E731
                sdpa_naive = (1 - c.sdpa_peak_mib / max(c.naive_peak_mib, MIB_FLOOR)
                              if c.sdpa_peak_mib is not None and c.naive_peak_mib is not None else None)
                rows.append([str(c.bucket), c.workload, f"{c.sparsity:.3f}", f_ms(c.naive_peak_mib) if c.naive_peak_mib
                             is not None else "out of memory", f_ms(c.sdpa_peak_mib), f_ms(c.peak_mib),
                             f_pct(_reduction(c, "naive")) + flag(c.naive_peak_mib),
                             f_pct(_reduction(c, "sdpa")) + flag(c.sdpa_peak_mib),
                             f_pct(sdpa_naive) + flag(c.naive_peak_mib), c.memory_method, cite("m", [c.id])])
            self.w(*table(["L", "workload", "sparsity", "naive MiB", "SDPA MiB", "ours MiB", "ours vs naive",
                           "ours vs SDPA", "SDPA vs naive", "method", "source"], rows), "")
        self.w("### Kernel benchmark", "")
        runs = [b for b in d.bench_runs if b.kind == "kernel"]
        if not runs:
            self.not_measured("kernel benchmark memory", "No kernel benchmark CSV ingested.")
            return
        for br in runs:
            cases = kernel_cases([r for r in d.kernel_rows if r.bench_run_id == br.id])
            rows = [[kc.workload, kc.pass_, str(kc.L), f"{kc.actual:.3f}", f_ms(kc.mib("naive")), f_ms(kc.mib("sdpa")),
                     f_ms(kc.mib("flex")), f_ms(kc.mib(kc.ours) if kc.ours else None),
                     _mem_red(kc, "naive", kc.ours), _mem_red(kc, "sdpa", kc.ours), _mem_red(kc, "naive", "sdpa"),
                     cite("kb", [r.id for r in kc.rows.values()])] for kc in cases]
            self.w(f"bench#{br.id} ({br.device}, {br.dtype}):", "")
            self.w(*table(["workload", "pass", "L", "sparsity", "naive MiB", "SDPA MiB", "flex MiB", "ours MiB",
                           "ours vs naive", "ours vs SDPA", "SDPA vs naive", "source"], rows), "")

    def evoformer_cells(self) -> list[tuple[str, Any]]:
        """The study's ``evoformer`` measurements to show, one per (workload, bucket): the exported
        trial's cell where the bucket has an export, else the fastest cell (highest speedup) over the
        complete trials. (label, at_measurements row), ordered by bucket and workload."""
        d = self.data
        evo = [m for m in d.measurements if m.kind == "evoformer"]
        complete = {t.id for t in d.trials if t.state == "COMPLETE"}
        exported = {x.bucket: x.trial.id for x in self.decisions if x.tuned is not None and x.trial is not None}
        out = []
        for key in sorted({(m.bucket, m.workload) for m in evo}):
            grp = [m for m in evo if (m.bucket, m.workload) == key and m.trial_id in complete]
            tu = next((m for m in grp if m.trial_id == exported.get(key[0])), None)
            if tu is not None:
                out.append(("tuned (exported)", tu))
            elif grp:
                out.append(("fastest trial (no export)", max(grp, key=lambda m: m.speedup or 0.0)))
        return out

    def evoformer_search(self) -> None:
        d = self.data
        self.w("### EvoFormer block in the search (kind `evoformer`)", "")
        wls = [w for w in ((d.space or {}).get("workloads") or []) if w.get("kind") == "evoformer"]
        shown = self.evoformer_cells()
        if not shown:
            self.w("The study has no `evoformer` workload measurement (add one to the space, e.g. "
                   "`search_spaces/cpu_evoformer.yaml`)." if not wls else
                   "The study's `evoformer` workload has no measurement of a complete trial yet.", "")
            return
        self.w("One whole EvoFormer block per trial and bucket (at_measurements, kind `evoformer`): the trial's pattern "
               "on MSA row and both triangle attentions (sparse) against the same block with dense SDPA attention "
               "(`sdpa_ms`) and with naive attention (`naive_ms`), same worker, inputs and pass. vs SDPA = "
               "at_measurements.speedup (sdpa_ms / time_ms), vs naive = speedup_naive; peak memory above the inputs.", "")
        by_id = {t.id: t for t in d.trials}
        rows = []
        for label, c in shown:
            tr = by_id.get(c.trial_id)
            naive = f_ms(c.naive_ms) if c.naive_ms is not None else "out of memory"
            rows.append([str(c.bucket), c.workload, label, f"t#{tr.number}" if tr else "—",
                         _pattern_str(tr.pattern if tr else None), f"{c.sparsity:.3f}", str(c.batch), c.mode,
                         f_ms(c.time_ms), f_ms(c.sdpa_ms), naive, f_x(c.speedup), f_x(c.speedup_naive),
                         f_ms(c.peak_mib), f_ms(c.sdpa_peak_mib),
                         f_ms(c.naive_peak_mib) if c.naive_peak_mib is not None else "out of memory",
                         cite("m", [c.id])])
        self.w(*table(["L", "workload", "choice", "trial", "pattern", "sparsity", "MSA depth", "pass", "sparse block ms",
                       "SDPA block ms", "naive block ms", "vs SDPA", "vs naive", "sparse MiB", "SDPA MiB", "naive MiB",
                       "source"], rows), "")

    def evoformer(self) -> None:
        d = self.data
        self.w("## EvoFormer block", "")
        self.evoformer_search()
        self.w("### EvoFormer block benchmark", "")
        runs = [b for b in d.bench_runs if b.kind == "evoformer"]
        if not runs:
            self.not_measured("EvoFormer block benchmark", "No `python -m autotune.evoformer.bench` CSV has been "
                              "ingested (`python -m autotune.ingest --evoformer-csv FILE`).")
            return
        self.w("One EvoFormer block: naive attention vs dense SDPA vs block-sparse attention (MSA row and both "
               "triangle attentions sparse). vs SDPA = ms of the SDPA block / ms of the variant, same L and pass. "
               "Attention share = 1 - t(block with the attention cores removed) / t(block); bound = 1 / (1 - share of "
               "the SDPA block), the most any attention kernel could speed the block up (Amdahl).", "")
        for br in runs:
            rows_ = [r for r in d.evoformer_rows if r.bench_run_id == br.id]
            self.w(f"#### bench#{br.id}: {br.device}, {br.dtype}, {br.threads} thread(s)", "")
            out = []
            for (L, mode) in sorted({(r.seq_len, r.mode) for r in rows_}):
                grp = [r for r in rows_ if (r.seq_len, r.mode) == (L, mode)]
                sd = next((r for r in grp if r.variant == "sdpa" and r.status == "ok"), None)
                nv = next((r for r in grp if r.variant == "naive" and r.status == "ok"), None)
                bound = (1 / (1 - sd.core_share) if sd is not None and sd.core_share is not None
                         and 0 <= sd.core_share < 1 else None)
                for r in grp:
                    ok = r.status == "ok" and r.median_ms
                    out.append([str(L), mode, str(r.depth), r.variant, r.pattern or "—", f"{r.sparsity:.3f}",
                                f_ms(r.median_ms) if ok else r.status, f_ms(r.peak_mib) if ok else "—",
                                f_x(sd.median_ms / r.median_ms) if ok and sd else "—",
                                f_x(nv.median_ms / r.median_ms) if ok and nv else "—",
                                f_pct(r.core_share), f_x(bound), cite("eb", [r.id] + ([sd.id] if sd and sd is not r else []))])
            self.w(*table(["L", "pass", "MSA depth", "variant", "pattern", "sparsity", "block ms", "peak MiB", "vs SDPA",
                           "vs naive", "attention share", "bound", "source"], out), "")

    def accuracy(self) -> None:
        self.w("## Accuracy of the tuned patterns", "")
        xs = [x for x in self.decisions if x.cells]
        if not xs:
            self.not_measured("accuracy of tuned patterns", "No tuned pattern with measurements.")
            return
        self.w("Static patterns against real contacts of the protein set (C-beta < 8 Å; short 6-11, medium 12-23, "
               "long >= 24 residues apart): the share of contacts whose residue pair the pattern computes, beside the "
               "speedup it buys.", "")
        rows = []
        for x in xs:
            c0 = x.cells[0]
            m = _metrics(c0.accuracy)
            acc = c0.accuracy if isinstance(c0.accuracy, dict) else {}
            rows.append([str(x.bucket), f"t#{x.trial.number}", f"{c0.sparsity:.3f}",
                         f_num(m.get("contact_recall_short")), f_num(m.get("contact_recall_medium")),
                         f_num(m.get("contact_recall_long")), f_num(m.get("attention_mass_recall")),
                         f"{m['output_rel_error']:.3g}" if "output_rel_error" in m else "—",
                         str(acc.get("n_chains", "—")), "yes" if acc.get("extrapolated") else "no",
                         ", ".join(f"{c.workload} {f_x(c.speedup)}" for c in x.cells),
                         cite("m", [c.id for c in x.cells])])
        self.w(*table(["L", "trial", "sparsity", "recall short", "recall medium", "recall long", "attention mass recall",
                       "output rel. error", "chains", "extrapolated", "speedup vs SDPA", "source"], rows), "")

    def pareto_points(self) -> list[dict[str, Any]]:
        d = self.data
        tuned = {x.trial_number for x in d.tuned}
        pts = []
        for tr in d.trials:
            if tr.state != "COMPLETE":
                continue
            names, objs = tr.objective_names or [], tr.objectives or []
            obj = dict(zip(names, objs))
            cells = d.cells(tr.id)
            y = obj.get("speedup", _geomean(c.speedup for c in cells))
            accs = [c.accuracy_value for c in cells if c.accuracy_value is not None]
            x = obj.get("accuracy", min(accs) if accs else None)
            if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
                continue
            pts.append(dict(number=tr.number, x=float(x), y=float(y), feasible=bool(tr.feasible), tuned=tr.number in tuned,
                            front=False, sparsity=sum(c.sparsity for c in cells) / len(cells) if cells else None))
        for p in pts:
            p["front"] = not any(q["x"] >= p["x"] and q["y"] >= p["y"] and (q["x"] > p["x"] or q["y"] > p["y"])
                                 for q in pts)
        return pts

    def pareto_section(self) -> None:
        self.w("## Speed / accuracy trade-off of the study", "")
        pts = self.pareto_points()
        if not pts:
            self.not_measured("speed/accuracy Pareto front", "No complete trial with speedup and accuracy.")
            return
        metric = (self.data.space or {}).get("accuracy_metric") or "accuracy"
        self.w(f"Each complete trial: speedup over SDPA (geometric mean over workloads and buckets, the search "
               f"objective) against {metric} (worst bucket). The Pareto front (no other trial is both faster and "
               f"more accurate):", "")
        rows = [[f"t#{p['number']}", f_x(p["y"]), f_num(p["x"]), f_num(p["sparsity"]),
                 "yes" if p["feasible"] else "no", "yes" if p["tuned"] else ""] for p in
                sorted((p for p in pts if p["front"]), key=lambda p: -p["y"])]
        self.w(*table(["trial", "speedup (geomean)", metric, "mean sparsity", "feasible", "exported"], rows), "")
        p = plots.pareto(pts, self.plots_dir / "pareto.png", xlabel=f"{metric} (worst bucket)",
                         ylabel="speedup over SDPA (geomean)",
                         title=f"study {self.data.study}: {len(pts)} complete trials (at_trials.objectives)")
        self.fig(p, "speed/accuracy Pareto front")

    def layouts(self) -> None:
        self.w("## Layouts of the tuned patterns", "")
        if not self.data.tuned:
            self.not_measured("tuned pattern layouts", "No export in the database (`python -m autotune.export`).")
            return
        for tu in self.data.tuned:
            try:
                p = plots.layout(tu.pattern, tu.bucket, self.plots_dir / f"layout_L{tu.bucket}.png",
                                 f"L={tu.bucket}, t#{tu.trial_number}: {_pattern_str(tu.pattern)}")
            except Exception as e:  # noqa: BLE001 - a pattern this checkout can no longer build
                self.w(f"L={tu.bucket} ({cite('tu', [tu.id])}): layout not drawn ({type(e).__name__}: {e}).", "")
                continue
            self.w(f"L={tu.bucket}, trial t#{tu.trial_number}, pattern `{tu.pattern}` ({cite('tu', [tu.id])}):", "")
            self.fig(p, f"layout L={tu.bucket}")

    def provenance(self) -> None:
        d = self.data
        self.w("## Hardware, software, dates and commands", "")
        self.w("### Search runs", "")
        if not d.runs:
            self.not_measured("search runs", "No `python -m autotune.search` run in the database.")
        else:
            rows = []
            for r in d.runs:
                hw = r.hardware or {}
                hw_s = ", ".join(f"{k} {hw[k]}" for k in ("device_name", "cores", "driver", "cuda", "torch_threads")
                                 if hw.get(k) is not None)
                rows.append([f"run#{r.id}", f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                             f"{r.ended_at:%Y-%m-%d %H:%M:%S}" if r.ended_at else "—", r.status, r.device, hw_s,
                             ", ".join(f"{k} {v}" for k, v in (r.versions or {}).items() if v), r.git_revision or "—",
                             r.executor, f"`{_mask(r.command_line)}`"])
            self.w(*table(["run", "started (UTC)", "ended (UTC)", "status", "device", "hardware", "versions", "git",
                           "executor", "command"], rows), "")
        self.w("### Benchmark runs", "")
        if not d.bench_runs:
            self.not_measured("benchmark runs", "No benchmark CSV ingested.")
        else:
            rows = [[f"bench#{b.id}", b.kind, b.device, b.dtype, str(b.threads),
                     ", ".join(f"{k} {v}" for k, v in (b.versions or {}).items()) or "—",
                     f"{b.measured_at:%Y-%m-%d %H:%M:%S}" if b.measured_at else "—", f"{b.ingested_at:%Y-%m-%d %H:%M:%S}",
                     str(b.n_rows), f"`{_mask(b.command)}`" if b.command else "(not recorded)", f"`{Path(b.source_path).name}`"]
                    for b in d.bench_runs]
            self.w(*table(["bench", "kind", "device", "dtype", "threads", "versions", "measured (file time, UTC)",
                           "ingested (UTC)", "rows", "command", "file"], rows), "")
        self.w("### Exports", "")
        if not d.tuned:
            self.not_measured("exports", "The study has not been exported.")
        else:
            rows = [[cite("tu", [x.id]), str(x.bucket), f"t#{x.trial_number}", f"{x.exported_at:%Y-%m-%d %H:%M:%S}",
                     f"`{Path(x.out_path).name}`"] for x in d.tuned]
            self.w(*table(["row", "L", "trial", "exported (UTC)", "file"], rows), "")

    def sources(self) -> None:
        self.w("## Sources", "",
               "- `m#N`: `at_measurements.id` (one trial x workload x bucket); `t#N`: `at_trials.number` of this study; "
               "`tu#N`: `at_tuned.id`; `run#N`: `at_runs.id`.",
               "- `kb#N`: `at_kernel_bench.id` (one CSV row of `kernels.bench`); `eb#N`: `at_evoformer_bench.id`; "
               "`bench#N`: `at_bench_runs.id` (one ingested CSV).",
               "- Speedups of the tuned patterns are `at_measurements.speedup` (= sdpa_ms / time_ms) and "
               "`speedup_naive`; memory reductions are 1 - `memory_vs_sdpa` / `memory_vs_naive`. Benchmark ratios are "
               "computed from the `ms` / `mib` / `median_ms` columns of the cited rows.",
               "- Decision rule: see the module documentation of `autotune.report.build`.", "")


def _mask(text: str) -> str:
    """Command lines without passwords (also for rows written before they were masked)."""
    from autotune.storage import mask_secrets

    return mask_secrets(text or "")


def build_report(data: ReportData, targets: Targets, out: Path, plots_dir: Optional[Path] = None,
                 argv: Optional[list[str]] = None) -> tuple[str, list[Path]]:
    """Write the report to ``out`` and its figures to ``plots_dir`` (default ``<out stem>_files``)."""
    out = Path(out)
    plots_dir = Path(plots_dir) if plots_dir else out.with_name(out.stem + "_files")
    rep = Report(data, targets, out, plots_dir, argv)
    text = rep.build()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text, rep.figures

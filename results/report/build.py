"""Build the Markdown report (and its PNG figures) from a `ReportData`.

Every number comes from a database row and is cited next to it: ``m#`` = ``at_measurements.id``,
``t#`` = trial number of the study (``at_trials.number``), ``tu#`` = ``at_tuned.id``, ``run#`` =
``at_runs.id``, ``kb#`` = ``at_kernel_bench.id``, ``eb#`` = ``at_evoformer_bench.id``, ``bench#`` =
``at_bench_runs.id``. Derived numbers (ratios, reductions) are computed from the cited rows with
the formula stated beside them.

Recommendation rule, per length bucket: the one rule of `results.verdict` (the same function
the search's verdict and the export call), on the study's targets (the space's ``targets`` section
over the per-device defaults, stored with every run): the bucket's leaders re-measured together
with SDPA (``at_confirmations``), the confirmed leader with the highest geometric-mean speedup
whose interval clears the speedup target and that meets every other target at every workload.
Without a current confirmation (a trial finished after it, or none) the bucket is undecided and
the report says which command confirms (the export). The report never measures and never
re-decides with other thresholds: the report, the search and the export cannot disagree. The
tuned file on disk (the latest export's ``at_tuned.out_path``, else ``results/<study>.yaml``) is
compared with the verdict (`results.export.file_status`): a missing file, or one with other
layouts, launch configs, verdicts or provisional marks, is said to be out of date. A verdict reached
while the noise check fired is marked provisional, and every caveat is the one
`results.verdict.caveats` gives (the search and the tuned file carry the same).

Memory: the headline is the reduction against naive attention (materialised logits, what
OpenFold's default attention computes); against SDPA (already flash-style) only the
no-regression bound, both on max(peak, floor) / max(baseline peak, floor) with the targets'
resolution floor (`Targets.memory_floor_mib`).
"""

from __future__ import annotations

import datetime as dt
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from results.storage import mask_url

from patterns import pattern_label
from patterns.output import write_output
from . import plots
from .data import ReportData
from .targets import describe

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


def _geomean(xs: Iterable[Optional[float]], what: str = "cell values") -> Optional[float]:
    """`results.aggregate.geomean` (logs what it leaves out)."""
    from results.aggregate import geomean

    return geomean(xs, what).value


def _metrics(acc: Any) -> dict[str, float]:
    if not isinstance(acc, dict):
        return {}
    m = acc.get("metrics", acc)
    return {k: v for k, v in m.items() if isinstance(v, (int, float))}


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
    verdict: Any = None  # the results.verdict.BucketVerdict behind it


def _speedup(c: Any, baseline: str) -> Optional[float]:
    return c.speedup if baseline == "sdpa" else c.speedup_naive


def _base_peak(c: Any, baseline: str) -> Optional[float]:
    return c.sdpa_peak_mib if baseline == "sdpa" else c.naive_peak_mib


def _reduction(c: Any, baseline: str, floor: float = MIB_FLOOR) -> Optional[float]:
    from results.verdict import memory_ratio

    ratio = memory_ratio(c.peak_mib, _base_peak(c, baseline), floor)
    return None if ratio is None else 1.0 - ratio


def noisy_shapes(data: ReportData) -> list[tuple[str, int, float, float, int]]:
    """(workload, bucket, min, max, trials) of every shape whose SDPA baseline median spread more
    than 2x across the study's complete trials."""
    complete = {t.id for t in data.trials if t.state == "COMPLETE"}
    by: dict[tuple, list[float]] = {}
    for m in data.measurements:
        if m.trial_id in complete and m.sdpa_ms:
            by.setdefault((m.workload, m.bucket), []).append(m.sdpa_ms)
    return [(w, L, min(xs), max(xs), len(xs)) for (w, L), xs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            if len(xs) > 1 and max(xs) > 2 * min(xs)]


def decide(data: ReportData, targets: Any) -> list[Decision]:
    """The verdict of `results.verdict.decide` per bucket, with one `Check` per target."""
    from results.verdict import caveats, cell_values, decide as rule

    sd = data.study_data
    tuned = {t.bucket: t for t in data.tuned}
    if sd is None or targets is None:
        return []
    top = int(((sd.space or {}).get("measure") or {}).get("confirm_top", 3))
    out = []
    for v in rule(targets, sd.cells_by_trial, sorted(set(data.buckets) | set(tuned)), sd.confirmations, top):
        tu = tuned.get(v.bucket)
        trial = data.trial_by_number(v.trial) if v.trial is not None else None
        d = Decision(v.bucket, v.deploy, v.why, tuned=tu, trial=trial, cells=list(v.cells))
        d.verdict = v
        for b in targets.bounds:
            vals = {c.workload: cell_values(targets, c).get(b.name) for c in d.cells}
            miss = [w for w, x in vals.items() if x is None]
            ok = bool(vals) and all(b.violation(x) <= 0 for x in vals.values())
            d.checks.append(Check(b.text(), ok, ", ".join(f"{w} {f_num(x) if x is not None else NOT_MEASURED}"
                                                           for w, x in vals.items()), measured=bool(vals) and not miss))
        d.notes.extend(caveats(v))  # the same caveats the search prints and the tuned file carries
        if sd.confirmations is None and v.trial is not None:
            d.why += "; python -m autotune.export confirms the leaders and decides"
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


def deployed_file(data: ReportData, decisions: list[Decision]) -> tuple[Optional[str], list[str]]:
    """(the tuned file on disk - the latest export's ``out_path``, else ``results/<study>.yaml`` -,
    the lines saying where it differs from the verdict: `results.export.file_status`; [] when it
    deploys exactly the verdict). None, [] without a study or a decided bucket."""
    import os

    from results.export import file_status

    sd = data.study_data
    if not data.study or sd is None or not decisions:
        return None, []
    path = data.tuned[-1].out_path if data.tuned else os.path.join("results", f"{data.study}.yaml")
    return path, file_status(path, [x.verdict for x in decisions], sd.trials, data.study)


# ---- the report ----------------------------------------------------------------------------------
class Report:
    def __init__(self, data: ReportData, out: Path, plots_dir: Path, argv: Optional[list[str]] = None):
        targets = data.study_data.targets() if data.study_data is not None and data.study_data.space else None
        self.data, self.t, self.out, self.plots_dir = data, targets, out, plots_dir
        self.floor = targets.memory_floor_mib if targets is not None else MIB_FLOOR
        self.noisy = noisy_shapes(data)
        self.argv = argv
        self.lines: list[str] = []
        self.absent: list[str] = []
        self.figures: list[Path] = []
        self.decisions = decide(data, targets)
        self.tuned_file, self.stale = deployed_file(data, self.decisions)

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
               f"`{mask_url(d.storage)}` alone. Every number cites its rows (`m#` at_measurements, `t#` trial number, "
               f"`kb#` at_kernel_bench, `eb#` at_evoformer_bench, ...; see [Sources](#sources)).", "")
        if d.other_studies:
            self.w(f"Other studies in this database (not reported here; use `--study`): {', '.join(d.other_studies)}.", "")

    def summary(self) -> None:
        """The executive summary: the recommendation per bucket, the targets, noise, the search, and
        the headline of each ingested benchmark (each step below writes its own bullet points)."""
        self.w("## Executive summary", "")
        self.summary_recommendation()
        self.summary_targets()
        self.summary_search()
        for br in [b for b in self.data.bench_runs if b.kind == "kernel"]:
            self.summary_kernel_bench(br)
        self.summary_evoformer()
        if self.absent:
            self.w(f"- {NOT_MEASURED.capitalize()}: {'; '.join(self.absent)}.")
        self.w("")

    def summary_recommendation(self) -> None:
        """Where to deploy and where not, with each chosen pattern's confirmed speedup and memory."""
        dep = [x.bucket for x in self.decisions if x.deploy]
        nodep = [x for x in self.decisions if not x.deploy]
        if not self.decisions:
            self.w(f"- **Recommendation: {NOT_MEASURED}** — the database holds no trial measurements to decide on.")
            return
        if dep:
            self.w(f"- **Deploy the tuned pattern at L = {', '.join(map(str, dep))}**"
                   + (f"; **do not deploy at L = {', '.join(str(x.bucket) for x in nodep)}**." if nodep else "."))
        else:
            self.w(f"- **Do not deploy at any bucket** (L = {', '.join(str(x.bucket) for x in nodep)}): "
                   f"no tuned pattern meets every target on confirmed figures.")
        self.summary_tuned_file()
        for x in self.decisions:
            if not x.deploy:
                self.w(f"  - L={x.bucket}: {x.why}" + (f"; {'; '.join(x.notes)}" if x.notes else "") + ".")
                continue
            v = x.verdict
            red = [(c.workload, _reduction(c, "naive", self.floor), c.naive_peak_mib) for c in x.cells]
            self.w(f"  - L={x.bucket}: t#{v.trial} ({pattern_label(x.trial.pattern if x.trial else None)}, "
                   f"sparsity {x.cells[0].sparsity:.2f}) {f_x(v.speedup)} over SDPA, "
                   f"{'hold-out' if v.holdout else 'confirmed'} interval "
                   f"[{f_x(v.lo)}, {f_x(v.hi)}]; memory "
                   + ", ".join(f"{w} {f_pct(r)} less than naive attention" if nv is not None and nv >= self.floor
                               else f"{w} naive peak under the {self.floor:g} MiB resolution"
                               for w, r, nv in red)
                   + f" ({cite('m', [c.id for c in x.cells])})"
                   + (f"; {'; '.join(x.notes)}" if x.notes else "") + ".")

    def summary_tuned_file(self) -> None:
        """Whether the tuned file on disk deploys this verdict (`deployed_file`), and which buckets
        are provisional (decided while the noise check fired)."""
        prov = [x.bucket for x in self.decisions if x.verdict is not None and x.verdict.provisional]
        if prov:
            self.w(f"- **Provisional at L = {', '.join(map(str, prov))}**: decided while the SDPA baseline varied more "
                   f"than 2x across trials (a noisy machine); re-run the search on a quiet machine before relying on it.")
        if self.tuned_file is None:
            return
        if self.stale:
            self.w(f"- **The tuned file `{self.tuned_file}` is out of date** (export again: `python -m autotune.export "
                   f"--study {shlex.quote(self.data.study)} --out {shlex.quote(self.tuned_file)}`, with this report's "
                   f"storage):")
            self.w(*(f"  - {line.split(' is out of date: ', 1)[-1]}" for line in self.stale))
        else:
            self.w(f"- The tuned file `{self.tuned_file}` deploys exactly this verdict.")

    def summary_targets(self) -> None:
        """The study's targets, and a warning where the SDPA baseline was noisy."""
        t = self.t
        if t is not None:
            self.w(f"- Targets (from the study's space, {t.source}; read alike by the search, the export and this "
                   f"report): " + "; ".join(b.text() for b in t.bounds)
                   + f"; speedup = lower end of the paired {t.confidence:.0%} interval against dense SDPA; memory "
                   f"ratios on readings floored at {t.memory_floor_mib:g} MiB; at every workload.")
        if self.noisy:
            self.w("- **Noisy machine**: the SDPA baseline's median spread more than 2x across trials at "
                   + ", ".join(f"{w} L={L} ({f_ms(lo)}-{f_ms(hi)} ms, {n} trials)" for w, L, lo, hi, n in self.noisy)
                   + "; single-trial speedups are unreliable there, the choices rest on the confirmation's interleaved "
                   "re-measurement.")

    def summary_search(self) -> None:
        """How many trials ran, completed, met the targets and failed (by reason), where."""
        d, t = self.data, self.t
        if not d.study:
            return
        from results.verdict import cell_ok

        comp = sum(1 for x in d.trials if x.state == "COMPLETE")
        fail = sum(1 for x in d.trials if x.state == "FAIL")
        feas = sum(1 for x in d.trials if x.state == "COMPLETE" and t is not None and any(
            (cs := d.cells(x.id, L)) and all(cell_ok(t, c) for c in cs) for L in d.buckets))
        devs = sorted({(r.hardware or {}).get("device_name") or r.device for r in d.runs})
        self.w(f"- Search: {len(d.trials)} trial(s) ({comp} complete, {feas} meeting every target at some bucket "
               f"on their own timing, {fail} failed) in "
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

    def summary_kernel_bench(self, br: Any) -> None:
        """One kernel benchmark run: our kernel's speedup over SDPA at the largest L per target
        sparsity, and what its memory saves against naive attention and SDPA."""
        d = self.data
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

    def summary_evoformer(self) -> None:
        """The EvoFormer block: in the search (kind ``evoformer``) and in each ingested block benchmark,
        the sparse block against the dense SDPA block."""
        d = self.data
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

    def recommendations(self) -> None:
        t = self.t
        self.w("## Recommendation per length bucket", "")
        if not self.decisions:
            self.not_measured("recommendation", "No trial measurements in the database (run `python -m autotune.search`).")
            return
        self.w("Rule (`results.verdict`, shared with the search's verdict and the export): the bucket's leaders by the "
               "search's paired timing are re-measured together with SDPA (`at_confirmations`); deploy the confirmed "
               "leader with the highest geometric-mean speedup whose confirmed interval clears the speedup target and "
               "that meets every other target at every workload; the chosen config is then re-measured alone "
               "against SDPA (hold-out, `at_confirmations.stage`), whose figures - free of the selection's upward "
               "bias - must clear the speedup target too and are the ones shown. Speedups are medians of per-round "
               "ratios with their intervals.", "")
        rows = []
        for x in self.decisions:
            acc = _metrics(x.cells[0].accuracy) if x.cells else {}
            conf = [c.confirmation_id for c in x.cells if getattr(c, "confirmation_id", None)]
            rows.append([
                str(x.bucket), "**deploy**" if x.deploy else "do not deploy",
                f"t#{x.trial.number}" if x.trial else "—",
                pattern_label(x.trial.pattern) if x.trial else "—",
                f"{x.cells[0].sparsity:.3f}" if x.cells else "—",
                ", ".join(f"{c.workload} {f_x(c.speedup)} [{f_x(c.speedup_lo)}, {f_x(c.speedup_hi)}]"
                          for c in x.cells) or "—",
                ", ".join(f"{c.workload} {f_pct(_reduction(c, 'naive', self.floor))}"
                          if (c.naive_peak_mib or 0.0) >= self.floor else f"{c.workload} < {self.floor:g} MiB resolution"
                          for c in x.cells) or "—",
                ", ".join(f"{c.workload} {f_x(1 - r) if (r := _reduction(c, 'sdpa', self.floor)) is not None else '—'}"
                          for c in x.cells) or "—",
                f_num(acc.get("contact_recall_long")),
                f"{acc['output_rel_error']:.3g}" if "output_rel_error" in acc else "—",
                x.why + ("; note: " + "; ".join(x.notes) if x.notes else ""),
                (cite("tu", [x.tuned.id]) + " " if x.tuned else "") + cite("m", [c.id for c in x.cells])
                + (" " + cite("c", conf) if conf else ""),
            ])
        self.w(*table(["L", "decision", "trial", "pattern", "sparsity", "speedup vs sdpa [interval]",
                       "memory reduction vs naive", "memory vs SDPA (ratio)", "contact recall (long)",
                       "output rel. error", "why", "source"], rows), "")
        if self.data.tuned:
            exported = max(x.exported_at for x in self.data.tuned)
            self.w(f"Latest export: {cite('tu', [x.id for x in self.data.tuned])}, {exported:%Y-%m-%d %H:%M} UTC.", "")
        sd = self.data.study_data
        if sd is not None and sd.confirmations is None:
            self.w("**No current confirmation**: " + ("a trial finished after the latest one" if sd.latest_confirmation
                                                     else "the study was never confirmed")
                   + "; `python -m autotune.export` confirms the leaders on the measuring machine and decides.", "")

    def targets_section(self) -> None:
        t = self.t
        self.w("## Targets", "")
        if t is None or not self.decisions or not any(x.checks for x in self.decisions):
            self.not_measured("targets", "No tuned pattern with measurements to check the targets against.")
        if t is None:
            return
        hdr = ["target", "threshold", "measured against", "where"] + [f"L={x.bucket}" for x in self.decisions]
        rows = []
        for b in t.bounds:
            base, where = describe(b.name, t)
            thr = " and ".join(([f">= {b.min:g}"] if b.min is not None else []) + ([f"<= {b.max:g}"] if b.max is not None else []))
            row = [b.name, thr, base, where]
            for x in self.decisions:
                ch = next((c for c in x.checks if c.name == b.text()), None)
                row.append(NOT_MEASURED if ch is None or not x.cells else
                           ("PASS" if ch.passed else ("FAIL" if ch.measured else f"FAIL ({NOT_MEASURED})")))
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
        fl = self.floor
        self.w("## Memory", "",
               f"Peak memory above the inputs. The headline is the reduction against naive attention (materialised "
               f"logits, what OpenFold's default attention computes): 1 - max(peak, F) / max(naive peak, F). Against "
               f"dense SDPA, already flash-style, the target is no regression: max(peak, F) / max(SDPA peak, F) within "
               f"the bound, where F = {fl:g} MiB is the resolution floor of the readings (targets' memory_floor_mib; "
               f"† marks a baseline peak under it). A reduction against naive attention is what any fused kernel "
               f"gives (see the SDPA vs naive column); only the one against SDPA is due to sparsity. Kernel benchmark "
               f"tables below use a 1 MiB floor.", "")
        self.w("### Tuned patterns (search measurements)", "")
        cells = [c for x in self.decisions for c in x.cells]
        if not cells:
            self.not_measured("memory of the tuned patterns", "No tuned pattern with measurements.")
        else:
            rows = []
            for c in cells:
                flag = lambda b: "†" if b is not None and b < fl else ""  # noqa: E731
                sdpa_naive = (1 - max(c.sdpa_peak_mib, fl) / max(c.naive_peak_mib, fl)
                              if c.sdpa_peak_mib is not None and c.naive_peak_mib is not None else None)
                red_sdpa = _reduction(c, "sdpa", fl)
                rows.append([str(c.bucket), c.workload, f"{c.sparsity:.3f}", f_ms(c.naive_peak_mib) if c.naive_peak_mib
                             is not None else "out of memory", f_ms(c.sdpa_peak_mib), f_ms(c.peak_mib),
                             f_pct(_reduction(c, "naive", fl)) + flag(c.naive_peak_mib),
                             (f_x(1 - red_sdpa) if red_sdpa is not None else "—") + flag(c.sdpa_peak_mib),
                             f_pct(sdpa_naive) + flag(c.naive_peak_mib), c.memory_method, cite("m", [c.id])])
            self.w(*table(["L", "workload", "sparsity", "naive MiB", "SDPA MiB", "ours MiB", "ours vs naive (reduction)",
                           "ours vs SDPA (ratio)", "SDPA vs naive", "method", "source"], rows), "")
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
        from results.verdict import NEAR, extrapolated

        self.w("Static patterns against real contacts of the protein set (C-beta < 8 Å; short 6-11, medium 12-23, "
               "long >= 24 residues apart): the share of contacts whose residue pair the pattern computes, the "
               "attention mass it keeps and the relative error of its output under the structure-derived bias, "
               "measured on the chains of the bucket, each at its own length - so the sparsity beside the recall is "
               "the layout's sparsity at those lengths (the bucket's own is shown apart). `extrapolated`: no chain "
               f"reaches {NEAR:.0%} of the bucket's length. The accuracy command in the last column reproduces the row "
               "on the same chains.", "")
        space = (self.data.space or {})
        buckets = ",".join(map(str, space.get("buckets") or []))
        rows = []
        for x in xs:
            c0 = x.cells[0]
            m = _metrics(c0.accuracy)
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
        self.w(*table(["L", "trial", "sparsity at the chains' lengths", "sparsity at L", "recall short", "recall medium",
                       "recall long", "attention mass recall", "output rel. error", "chains", "chain lengths",
                       "extrapolated", "speedup vs SDPA", "source", "accuracy command"], rows), "")

    def pareto_points(self) -> list[dict[str, Any]]:
        d = self.data
        tuned = {x.verdict.trial for x in self.decisions if x.deploy}
        feasible_somewhere = {x.trial for v in self.decisions if v.verdict is not None for x in v.verdict.leaders}
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
            pts.append(dict(number=tr.number, x=float(x), y=float(y), feasible=tr.number in feasible_somewhere or bool(tr.feasible),
                            tuned=tr.number in tuned,
                            front=False, sparsity=sum(c.sparsity for c in cells) / len(cells) if cells else None,
                            pattern=pattern_label(tr.pattern),
                            family=(tr.pattern or {}).get("family", "static"),
                            memory=_geomean(c.memory_vs_sdpa for c in cells)))
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
        rows = [[f"t#{p['number']}", p["pattern"], f_x(p["y"]), f_num(p["x"]), f_num(p["sparsity"]),
                 "yes" if p["feasible"] else "no", "yes" if p["tuned"] else ""] for p in
                sorted((p for p in pts if p["front"]), key=lambda p: -p["y"])]
        self.w(*table(["trial", "pattern", "speedup (geomean)", metric, "mean sparsity", "feasible (at some bucket)", "chosen"], rows), "")
        fams = sorted({p["family"] for p in pts})
        if len(fams) > 1:  # static and guided side by side: each family's fastest and most accurate trial
            self.w("Static and guided patterns side by side (guided speedups include building the layout from "
                   "the bias in every call; guided accuracy: layouts chosen from degraded structures):", "")
            frows = []
            for fam in fams:
                fp = [p for p in pts if p["family"] == fam]
                for what, best in (("fastest", max(fp, key=lambda p: p["y"])), ("most accurate", max(fp, key=lambda p: p["x"]))):
                    frows.append([fam, what, f"t#{best['number']}", best["pattern"], f_x(best["y"]),
                                  f_num(best["memory"], 2), f_num(best["x"]), f_num(best["sparsity"])])
            self.w(*table(["family", "best by", "trial", "pattern", "speedup (geomean)", "peak memory / SDPA (geomean)",
                           metric, "mean sparsity"], frows), "")
        p = plots.pareto_by_bucket(self.bucket_points(), self.plots_dir / "pareto.png", xlabel=f"{metric} at L",
                                   title=f"study {self.data.study}: each complete trial at each bucket (at_measurements)")
        self.fig(p, "speed/accuracy Pareto front per bucket")

    def bucket_points(self) -> dict[int, list[dict[str, Any]]]:
        """Each complete trial at each bucket L (the figure's points): its speedup over SDPA there
        (geometric mean over the workloads), its accuracy there (the worse over the workloads),
        ``feasible`` when every target is met at every workload of L and it is faster than SDPA
        there, ``chosen`` when the verdict deploys it for L."""
        d = self.data
        chosen = {x.bucket: x.verdict.trial for x in self.decisions if x.deploy and x.verdict is not None}
        out: dict[int, list[dict[str, Any]]] = {}
        for tr in d.trials:
            if tr.state != "COMPLETE":
                continue
            by_L: dict[int, list[Any]] = {}
            for c in d.cells(tr.id):
                by_L.setdefault(int(c.bucket), []).append(c)
            for L, cells in sorted(by_L.items()):
                y = _geomean(c.speedup for c in cells)
                accs = [c.accuracy_value for c in cells if c.accuracy_value is not None]
                if y is None or not accs or not math.isfinite(y):
                    continue
                meets = all(v <= 0 for c in cells for v in (c.violations or {}).values())
                out.setdefault(L, []).append(dict(number=tr.number, x=float(min(accs)), y=float(y),
                                                  feasible=meets and all((c.speedup or 0) > 1 for c in cells),
                                                  chosen=chosen.get(L) == tr.number))
        return out

    def layouts(self) -> None:
        self.w("## Layouts of the tuned patterns", "")
        if not self.data.tuned:
            self.not_measured("tuned pattern layouts", "No export in the database (`python -m autotune.export`).")
            return
        for tu in self.data.tuned:
            try:
                p = plots.layout(tu.pattern, tu.bucket, self.plots_dir / f"layout_L{tu.bucket}.png",
                                 f"L={tu.bucket}, t#{tu.trial_number}: {pattern_label(tu.pattern)}")
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


def _mask(text: str) -> str:
    """Command lines without passwords (also for rows written before they were masked)."""
    from results.storage import mask_secrets

    return mask_secrets(text or "")


def build_report(data: ReportData, out: Path, plots_dir: Optional[Path] = None,
                 argv: Optional[list[str]] = None) -> tuple[str, list[Path]]:
    """Write the report to ``out`` and its figures to ``plots_dir`` (default ``<out stem>_files``)."""
    out = Path(out)
    plots_dir = Path(plots_dir) if plots_dir else out.with_name(out.stem + "_files")
    rep = Report(data, out, plots_dir, argv)
    text = rep.build()
    write_output(out, text)  # only a regular file is replaced, atomically (patterns.output)
    return text, rep.figures

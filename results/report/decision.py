"""The verdict the report shows, per length bucket: `results.verdict.decide` on the study's own
targets (the rule is described in `results.report.build`), one pass / fail `Check` per target, the
caveats of `results.verdict.caveats`, and whether the tuned file on disk deploys it
(`results.export.file_status`). Also the memory reduction of a cell against a baseline and the
shapes whose SDPA baseline was noisy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from kernels.baselines import SDPA
from results.states import TrialState

from .data import ReportData
from .formatting import MIB_FLOOR, NOT_MEASURED, f_num


@dataclass
class Check:
    """One target at one bucket: its text, whether every workload meets it, the value per
    workload, and whether every workload was measured."""
    name: str
    passed: bool
    detail: str
    measured: bool = True


@dataclass
class Decision:
    """Deploy or not at one bucket, why, and the rows behind it."""
    bucket: int
    deploy: bool
    why: str
    tuned: Any = None
    trial: Any = None
    cells: list = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdict: Any = None  # the results.verdict.BucketVerdict behind it


def base_peak(c: Any, baseline: str) -> Optional[float]:
    """The cell's peak memory of ``baseline`` (``sdpa`` or ``naive``) in MiB."""
    return c.sdpa_peak_mib if baseline == SDPA else c.naive_peak_mib


def reduction(c: Any, baseline: str, floor: float = MIB_FLOOR) -> Optional[float]:
    """1 - max(peak, floor) / max(baseline peak, floor) of a cell (`results.verdict.memory_ratio`)."""
    from results.verdict import memory_ratio

    ratio = memory_ratio(c.peak_mib, base_peak(c, baseline), floor)
    return None if ratio is None else 1.0 - ratio


def noisy_shapes(data: ReportData) -> list[tuple[str, int, float, float, int]]:
    """(workload, bucket, min, max, trials) of every shape whose SDPA baseline median spread more
    than 2x across the study's complete trials."""
    complete = {t.id for t in data.trials if t.state == TrialState.COMPLETE}
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

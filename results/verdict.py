"""One verdict per length bucket, shared by the search, the export and the report.

The targets (`search_spaces.space.Targets`: the space's ``targets`` section over per-device defaults)
are the only thresholds. They are checked per (workload, bucket) cell by `cell_violations`, which
the search uses for Optuna's constraint values, and the one best-per-bucket rule (`decide`) that
the search's progress bar and end-of-run verdict, ``python -m autotune.export`` and
``python -m autotune.report`` all call:

1. *Candidates*: the study's COMPLETE trials that meet every target other than speedup at every
   workload of the bucket (memory, sparsity, accuracy from the trial's measurements), ranked by
   the geometric mean over the workloads of their paired speedup over SDPA (median of per-round
   ratios, `kernels.measure.time_paired`); ties to the lower geometric-mean peak memory, then the
   earlier trial. The first ``measure.confirm_top`` are the bucket's *leaders* - what the progress
   bar shows, marked unconfirmed.
2. *Confirmation* (`autotune.confirm.confirm`, which measures and so lives in the layer that runs
   trials): the leaders are re-measured together - one interleaved loop per
   workload with the SDPA baseline and each other, more rounds (``measure.confirm_*``) - and the
   figures are stored in ``at_confirmations``.
3. *Choice*: among the confirmed leaders whose confirmed interval clears the speedup target at
   every workload (the lower end of the interval, not the point estimate) and that meet every other
   target, the highest confirmed geometric-mean speedup; ties as above. Leaders whose geometric-mean
   intervals overlap the winner's are reported as statistically tied with it. A bucket with no such
   leader gets no choice, with the reason.
4. *Hold-out* (`autotune.confirm.confirm`): the choice is made on the confirmation's figures, so the winner's
   figures are biased upwards (the best of several noisy estimates: the winner's curse). The chosen
   config is therefore measured once more, alone against SDPA on fresh inputs (rows with
   ``stage = "holdout"``), and those unbiased figures are the ones exported and reported; a choice
   whose hold-out interval does not clear the speedup target is not deployed.

A confirmation is *current* when it covered the same complete trials the study holds now; the
search confirms at the end of every run, the export confirms again when the one it finds is not
current (the measuring happens on the machine that runs the export).

Accuracy is read as the trial measured it: on the chains of the bucket, each at its own length;
`extrapolated` marks a bucket whose chains do not come near its length (no chain of at least
``NEAR`` x the bucket) or that the accuracy module marked extrapolated.

This module only reads: the rule (`leaders`, `decide`), the per-cell values (`cell_values`), the
verdict lines and `load_study`. The steps that re-measure (2 and 4) are `autotune.confirm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from search_spaces.objectives import TARGET_OBJECTIVES, memory_ratio  # noqa: F401  (memory_ratio: read here by the export, report)
from search_spaces.space import SearchSpace, Targets

from .aggregate import cell_field, geomean
from .states import TrialState
from .tables import Confirmation  # noqa: F401  (the at_confirmations table; named here for compatibility)
from .ties import Orphans

__all__ = ["Confirmation", "cell_values", "cell_violations", "cell_ok", "leaders", "decide", "BucketVerdict",
           "load_study", "StudyData", "NEAR", "NOISE_SPREAD", "confirmation_current", "verdict_lines", "caveats",
           "noisy_workloads", "restrict_study_data"]

NEAR = 0.75  # accuracy chains must reach NEAR x the bucket length, else the bucket is extrapolated
NOISE_SPREAD = 2.0  # the noise check: an SDPA baseline whose median spreads more than this across trials


# ---- per-cell checks ---------------------------------------------------------------------------------


def _metrics(acc: Any) -> dict[str, float]:
    if not isinstance(acc, dict):
        return {}
    m = acc.get("metrics", acc)
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def cell_values(targets: Targets, c: Any) -> dict[str, Optional[float]]:
    """The targeted quantities of one (workload, bucket) cell (a measurement dict or row), by each
    objective's target rule (`search_spaces.objectives`): ``speedup`` is the lower end of the
    cell's interval when it has one (``speedup_lo``), memory ratios floored at the study's
    resolution; then each accuracy bound's metric."""
    acc = _metrics(cell_field(c, "accuracy"))
    out: dict[str, Optional[float]] = {o.name: o.target(lambda k: cell_field(c, k), targets.memory_floor_mib)
                                       for o in TARGET_OBJECTIVES}  # each target's rule (its record)
    for b in targets.bounds:
        if b.accuracy_metric:
            out[b.name] = acc.get(b.accuracy_metric)
    return out


def cell_violations(targets: Targets, c: Any, skip: Iterable[str] = ()) -> dict[str, float]:
    """name -> violation (<= 0 met) of every target at this cell."""
    vals = cell_values(targets, c)
    skip = set(skip)
    return {b.name: b.violation(vals.get(b.name)) for b in targets.bounds if b.name not in skip}


def cell_ok(targets: Targets, c: Any, skip: Iterable[str] = ()) -> bool:
    return all(v <= 0 for v in cell_violations(targets, c, skip).values())


def _geomean(xs: Iterable[Optional[float]], what: str = "cell values") -> Optional[float]:
    """`results.aggregate.geomean` (logs what it leaves out)."""
    return geomean(xs, what).value


def extrapolated(c: Any, bucket: int) -> bool:
    """Whether the cell's accuracy comes from chains far from the bucket's length."""
    acc = cell_field(c, "accuracy")
    if not isinstance(acc, dict):
        return False
    if acc.get("extrapolated"):
        return True
    lengths = acc.get("lengths")
    return bool(lengths) and max(lengths) < NEAR * bucket


# ---- the rule ----------------------------------------------------------------------------------------


@dataclass
class Candidate:
    trial: int
    cells: list[Any]  # one per workload (search measurements, or merged with the confirmation)
    speedup: Optional[float]  # geomean of the point estimates
    lo: Optional[float] = None  # geomean of the interval ends
    hi: Optional[float] = None
    peak: Optional[float] = None
    confirmed: bool = False

    def key(self) -> tuple:
        return (-(self.speedup or 0.0), self.peak or 0.0, self.trial)


@dataclass
class BucketVerdict:
    bucket: int
    deploy: bool
    why: str
    trial: Optional[int] = None
    cells: list[Any] = field(default_factory=list)  # the chosen trial's cells (confirmed figures merged)
    speedup: Optional[float] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    confirmed: bool = False
    tied_with: list[int] = field(default_factory=list)
    leaders: list[Candidate] = field(default_factory=list)
    extrapolated: bool = False
    failed: dict[int, str] = field(default_factory=dict)  # leader -> why it was not chosen
    above_bound: list[str] = field(default_factory=list)  # workloads whose speedup exceeds 1.1 / (1 - sparsity)
    holdout: bool = False  # the figures are the chosen config's hold-out re-measurement (step 4)
    selected: Optional[Candidate] = None  # the chosen config on the confirmation's figures
    noisy: list[str] = field(default_factory=list)  # workloads where the noise check fired at this bucket

    @property
    def provisional(self) -> bool:
        """Reached while the noise check fired at this bucket (`noisy_workloads`): the search's
        timings there were unreliable, so the verdict is provisional until re-run on a quiet machine."""
        return bool(self.noisy)


def noisy_workloads(cells_by_trial: dict[int, list[Any]]) -> dict[int, list[str]]:
    """bucket -> workloads whose SDPA baseline median spread more than `NOISE_SPREAD` x across the
    complete trials' cells (the noise check the search warns with as it runs and the report shows)."""
    seen: dict[tuple, list[float]] = {}
    for cells in cells_by_trial.values():
        for c in cells:
            if cell_field(c, "sdpa_ms"):
                seen.setdefault((cell_field(c, "bucket"), cell_field(c, "workload")), []).append(cell_field(c, "sdpa_ms"))
    out: dict[int, list[str]] = {}
    for (L, w), xs in sorted(seen.items()):
        if len(xs) > 1 and max(xs) > NOISE_SPREAD * min(xs):
            out.setdefault(L, []).append(w)
    return out


def caveats(v: "BucketVerdict") -> list[str]:
    """Every caveat of a verdict, one phrase each, in the words the search's verdict lines, the
    tuned file (``caveats`` per bucket) and the report all use: provisional (noise check), tied
    leaders, extrapolated accuracy, a speedup above the sparsity bound."""
    out = []
    if v.provisional:
        out.append(f"provisional: the SDPA baseline of {', '.join(v.noisy)} varied more than {NOISE_SPREAD:g}x across "
                   f"trials (a noisy machine); re-run the search on a quiet machine before relying on it")
    if v.deploy and v.tied_with:
        out.append(f"statistically tied with {', '.join(f't#{t}' for t in v.tied_with)} (overlapping confirmed "
                   f"intervals)")
    if v.deploy and v.extrapolated:
        out.append("accuracy extrapolated: no chain of the set comes near this length")
    if v.deploy and v.above_bound:
        out.append(f"speedup above the sparsity bound 1.1/(1-s) at {', '.join(v.above_bound)}: a loaded machine or "
                   f"a slow baseline, re-time before quoting")
    return out


def above_sparsity_bound(c: Any) -> bool:
    """Whether a speedup over SDPA exceeds 1.1 / (1 - sparsity): more than skipping the work explains
    if both kernels were equally efficient (a loaded machine, or a baseline slow for other reasons)."""
    sp, s = cell_field(c, "speedup"), cell_field(c, "sparsity")
    return sp is not None and s is not None and s < 1 and sp > 1.1 / (1 - s)


def _candidate(trial: int, cells: list[Any]) -> Candidate:
    def interval_end(key: str) -> Optional[float]:
        values = [cell_field(c, key) for c in cells]
        return _geomean(values, f"t#{trial} {key}") if all(values) else None

    lo, hi = interval_end("speedup_lo"), interval_end("speedup_hi")
    return Candidate(trial, cells, _geomean((cell_field(c, "speedup") for c in cells), f"t#{trial} speedup"), lo, hi,
                     _geomean((max(cell_field(c, "peak_mib") or 0.0, 1e-6) for c in cells), f"t#{trial} peak_mib"))


def leaders(targets: Targets, cells_by_trial: dict[int, list[Any]], bucket: int, top: Optional[int] = None) -> list[Candidate]:
    """Step 1 of the rule: the bucket's candidates, best first (``top`` of them)."""
    out = []
    for number, cells in cells_by_trial.items():
        cs = [c for c in cells if cell_field(c, "bucket") == bucket]
        if not cs or not all(cell_ok(targets, c, skip=("speedup",)) for c in cs):
            continue
        if any(cell_field(c, "speedup") is None for c in cs):
            continue
        out.append(_candidate(number, sorted(cs, key=lambda c: cell_field(c, "workload"))))
    out.sort(key=Candidate.key)
    return out[:top] if top else out


class Cell(dict):
    """A cell as a dict whose keys read as attributes too (missing ones read None)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)


def _merge(cell: Any, conf: Any) -> "Cell":
    """A search cell (every column) with the confirmation's speedup figures; the search's own
    figures stay under ``search``."""
    if isinstance(cell, dict):
        d = Cell(cell)
    else:
        d = Cell({k: getattr(cell, k) for k in cell.__table__.columns.keys()})
    d["search"] = {k: cell_field(cell, k) for k in ("speedup", "speedup_lo", "speedup_hi", "repeats")}
    if conf is not None:
        d.update({k: cell_field(conf, k) for k in ("speedup", "speedup_lo", "speedup_hi", "repeats", "time_ms", "sdpa_ms")},
                 confirmation_id=cell_field(conf, "id"))
    return d


def decide(targets: Targets, cells_by_trial: dict[int, list[Any]], buckets: Iterable[int],
           confirmations: Optional[list[Any]] = None, top: int = 3) -> list[BucketVerdict]:
    """The verdict per bucket (module docstring). ``confirmations``: rows of the current
    confirmation pass (None: not confirmed yet; the verdict then names the unconfirmed leader and
    never says deploy)."""
    out = []
    conf_by, hold_by = {}, {}
    noisy = noisy_workloads(cells_by_trial)
    for r in confirmations or []:
        by = hold_by if cell_field(r, "stage") == "holdout" else conf_by
        by.setdefault((cell_field(r, "bucket"), cell_field(r, "trial_number")), {})[cell_field(r, "workload")] = r
    for L in sorted(set(buckets)):
        lead = leaders(targets, cells_by_trial, L, top)
        v = BucketVerdict(L, False, "", leaders=lead, noisy=list(noisy.get(L, [])))
        if not lead:
            n = len(cells_by_trial)
            v.why = f"no trial meets the non-speedup targets at every workload ({n} complete trial(s))"
            out.append(v)
            continue
        if confirmations is None:
            best = lead[0]
            v.trial, v.cells, v.speedup, v.lo, v.hi = best.trial, best.cells, best.speedup, best.lo, best.hi
            v.extrapolated = any(extrapolated(c, L) for c in best.cells)
            v.why = "not confirmed yet (leader by the search's own timing)"
            out.append(v)
            continue
        confirmed = []
        for cand in lead:
            confs = conf_by.get((L, cand.trial), {})
            if not confs or any(cell_field(c, "workload") not in confs for c in cand.cells):
                v.failed[cand.trial] = "not in the confirmation"
                continue
            merged = [_merge(c, confs[cell_field(c, "workload")]) for c in cand.cells]
            cc = _candidate(cand.trial, merged)
            cc.confirmed = True
            viol = {}
            for c in merged:
                for name, x in cell_violations(targets, c).items():
                    if x > 0:
                        viol.setdefault(name, []).append(cell_field(c, "workload"))
            if viol:
                b = targets.bound("speedup")
                v.failed[cand.trial] = "; ".join(
                    f"{name} not met at {', '.join(ws)}"
                    + (f" (confirmed interval lower end < {b.min:g})" if name == "speedup" and b and b.min is not None else "")
                    for name, ws in viol.items())
                continue
            confirmed.append(cc)
        if not confirmed:
            v.why = ("no leader's confirmed figures meet the targets: "
                     + "; ".join(f"t#{t} {why}" for t, why in v.failed.items()))
            out.append(v)
            continue
        confirmed.sort(key=Candidate.key)
        best = v.selected = confirmed[0]
        v.tied_with = [c.trial for c in confirmed[1:] if best.lo is not None and c.hi is not None and c.hi >= best.lo]
        hold = hold_by.get((L, best.trial), {})
        if hold and all(cell_field(c, "workload") in hold for c in best.cells):  # step 4: unbiased figures
            merged = [_merge(c, hold[cell_field(c, "workload")]) for c in best.cells]
            for c, m in zip(best.cells, merged):
                m["confirmation"] = {k: cell_field(c, k) for k in ("speedup", "speedup_lo", "speedup_hi", "repeats")}
            best = _candidate(best.trial, merged)
            best.confirmed = v.holdout = True
            slow = [cell_field(c, "workload") for c in merged if cell_violations(targets, c).get("speedup", 0.0) > 0]
            if slow:
                v.confirmed = True  # decided on measured figures: not deployed (never "undecided")
                v.trial, v.cells, v.speedup, v.lo, v.hi = best.trial, best.cells, best.speedup, best.lo, best.hi
                v.failed[best.trial] = f"hold-out re-measurement: speedup not met at {', '.join(slow)}"
                v.why = (f"t#{best.trial}, chosen on the confirmation, does not clear the speedup target in its "
                         f"independent hold-out re-measurement at {', '.join(slow)}")
                out.append(v)
                continue
        v.deploy, v.confirmed = True, True
        v.trial, v.cells, v.speedup, v.lo, v.hi = best.trial, best.cells, best.speedup, best.lo, best.hi
        v.extrapolated = any(extrapolated(c, L) for c in best.cells)
        v.above_bound = [cell_field(c, "workload") for c in best.cells if above_sparsity_bound(c)]
        v.why = ("meets every target on confirmed figures"
                 + ("; speedup from the hold-out re-measurement" if v.holdout else ""))
        out.append(v)
    return out


def verdict_lines(verdicts: list[BucketVerdict]) -> list[str]:
    """One line per bucket, the same words everywhere."""
    out = []
    for v in verdicts:
        notes = "".join(f"; {c}" for c in caveats(v))
        if v.trial is None or not v.deploy:
            head = f"L={v.bucket}: do not deploy"
            if v.trial is not None and not v.confirmed:
                head = f"L={v.bucket}: undecided, leader t#{v.trial} {v.speedup:.2f}x (unconfirmed)"
            out.append(f"{head}: {v.why}{notes}")
            continue
        out.append(f"L={v.bucket}: deploy t#{v.trial}{' (provisional)' if v.provisional else ''}: {v.speedup:.2f}x "
                   f"over SDPA [{v.lo:.2f}, {v.hi:.2f}] {'hold-out' if v.holdout else 'confirmed'}{notes}")
    return out


# ---- reading a study ---------------------------------------------------------------------------------


@dataclass
class StudyData:
    """What the rule needs from the database (plain ORM rows, detached)."""

    study: str
    space: Optional[dict]
    trials: dict[int, Any]  # number -> at_trials row (COMPLETE ones)
    n_trials: int
    cells_by_trial: dict[int, list[Any]]  # number -> at_measurements rows
    confirmations: Optional[list[Any]]  # the latest pass, when current; else None
    latest_confirmation: list[Any]  # the latest pass, current or not
    runs: list[Any]

    @property
    def buckets(self) -> list[int]:
        return sorted({cell_field(c, "bucket") for cs in self.cells_by_trial.values() for c in cs})

    def targets(self) -> Targets:
        return SearchSpace.from_dict(self.space).effective_targets() if self.space else None


def confirmation_current(rows: list[Any], n_complete: int) -> bool:
    return bool(rows) and all(cell_field(r, "complete_trials") == n_complete for r in rows)


def load_study(session, study: str) -> StudyData:
    """What the rule needs of ``study`` (`StudyData`), read through ``session``: its complete trials
    and their measurements, its runs and space, and its latest confirmation pass (current or not).
    Other drivers may write meanwhile: measurements of a trial completed after the trials were read
    are left for the next read."""
    from sqlalchemy import inspect, select

    from .tables import Measurement, Run, TrialRow

    trials = session.scalars(select(TrialRow).where(TrialRow.study_name == study)).all()
    complete = {t.number: t for t in trials if t.state == TrialState.COMPLETE}
    ms = session.scalars(select(Measurement).join(TrialRow)
                         .where(TrialRow.study_name == study, TrialRow.state == TrialState.COMPLETE.value)).all()
    by_id = {t.id: t.number for t in complete.values()}
    cells: dict[int, list[Any]] = {}
    for m in ms:  # a trial another driver completed between the two reads waits for the next read
        if m.trial_id in by_id:
            cells.setdefault(by_id[m.trial_id], []).append(m)
    runs = list(session.scalars(select(Run).where(Run.study_name == study).order_by(Run.id)).all())
    space = next((r.space for r in reversed(runs) if r.space), None)
    latest: list[Any] = []
    if inspect(session.get_bind()).has_table(Confirmation.__tablename__):
        last = session.scalars(select(Confirmation.confirm_id).where(Confirmation.study_name == study)
                               .order_by(Confirmation.confirm_id.desc()).limit(1)).first()
        if last is not None:
            latest = list(session.scalars(select(Confirmation).where(Confirmation.study_name == study,
                                                                     Confirmation.confirm_id == last)).all())
    current = latest if confirmation_current(latest, len(complete)) else None
    return StudyData(study, space, complete, len(trials), cells, current, latest, runs)


def read_study(db, study: str) -> StudyData:
    """`load_study` in a session of its own on ``db`` (a `results.db.Database`), its rows detached
    from the session so that they stay readable after it closes."""
    with db.Session() as s:
        data = load_study(s, study)
        s.expunge_all()
    return data


def read_study_at(storage: str, study: str, *, create: bool = True) -> StudyData:
    """`read_study` of ``study`` in the results database at ``storage`` (a URL), opened for the read
    and closed after it; ``create=False``: a database without the tables is not set up."""
    from .store import Database

    db = Database(storage, create=create)
    try:
        return read_study(db, study)
    finally:
        db.close()


def restrict_study_data(data: StudyData, orphans: Orphans) -> StudyData:
    """``data`` without the orphans' rows (`results.db.find_orphans`): only trials tied to
    Optuna's study are left to cite, confirmations only of those trials and not older than
    ``orphans.cutoff``, the space from the latest run left."""
    import dataclasses

    if not orphans:
        return data
    bad = set(orphans.trial_ids)
    trials = {n: t for n, t in data.trials.items() if t.id not in bad}
    cells = {n: c for n, c in data.cells_by_trial.items() if n in trials}
    cutoff = orphans.cutoff

    def keep_conf(r: Any) -> bool:
        return r.trial_number in trials and not (cutoff is not None and r.created_at is not None and r.created_at < cutoff)

    latest = [r for r in data.latest_confirmation if keep_conf(r)] if orphans.trial_ids else list(data.latest_confirmation)
    current = latest if confirmation_current(latest, len(trials)) else None
    runs = [r for r in data.runs if r.id not in set(orphans.run_ids)]
    space = next((r.space for r in reversed(runs) if r.space), None)
    return dataclasses.replace(data, trials=trials, cells_by_trial=cells, confirmations=current,
                               latest_confirmation=latest, runs=runs, space=space,
                               n_trials=max(0, data.n_trials - len(bad)))

"""Recording of returned trials (`autotune.search`, "What Optuna's own tools show"): our rows first
(`results.db.Database.write_trial_result`), then Optuna's ``tell`` with the constraint values and
per-bucket user attributes (`bucket_view`); the run's timing statistics, the progress bar's
best-so-far per bucket and the baseline-noise watch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from results.states import EndReason

from .optuna_view import bucket_view, optuna_constraint_names

if TYPE_CHECKING:
    from ..trial import TrialResult


class Recorder:
    """Writes what comes back from the workers and what Optuna is told, for the driver ``driver``
    (an `autotune.search.Search`: its database, study, statistics and running trials); holds the
    best-so-far of the progress bar and the SDPA medians seen (noise warning)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.compile_records: list[dict[str, Any]] = []  # every compile phase of this run's trials
        self.cells_by_trial: dict[int, list[dict[str, Any]]] = {}  # complete trials' cells (progress bar)
        self.sdpa_seen: dict[tuple, list[float]] = {}  # (workload, bucket) -> SDPA medians (noise warning)
        self.noisy: set[tuple] = set()
        self.best: Optional[float] = None
        self.best_by_bucket: dict[int, float] = {}

    def tell(self, number: int, values: list[float], constraints: list[float],
             buckets: Optional[dict[str, Any]] = None, constraint_bucket: Optional[int] = None) -> None:
        """Complete trial ``number`` in Optuna with its values; its constraint values go where
        Optuna's samplers, ``best_trials`` and plots read them (system attribute ``constraints``)
        and, with their names and the per-bucket view (`bucket_view`), into user attributes that
        ``optuna trials``, the dashboard and ``load_study`` show."""
        d = self.driver
        tid = d.ostorage.get_trial_id_from_study_id_trial_number(d.study._study_id, number)
        if constraints:
            d.ostorage.set_trial_user_attr(tid, "constraints", list(constraints))
            d.ostorage.set_trial_user_attr(tid, "constraint_names", optuna_constraint_names(d.space))
            d.ostorage.set_trial_system_attr(tid, "constraints", list(constraints))
        if buckets is not None:
            from ..trial import bucket_attrs

            for key, value in bucket_attrs(buckets).items():  # flat: one per bucket and metric
                d.ostorage.set_trial_user_attr(tid, key, value)
            d.ostorage.set_trial_user_attr(tid, "feasible_buckets",
                                           [int(L) for L, b in buckets.items() if b["feasible"]])
            d.ostorage.set_trial_user_attr(tid, "constraint_bucket", constraint_bucket)
        d.study.tell(number, values)

    def cells_of(self, trial_row_id: int) -> list[Any]:
        """The at_measurements rows of the trial row ``trial_row_id`` (a trial completed from them)."""
        d = self.driver
        from sqlalchemy import select

        from results.db import Measurement

        with d.db.Session() as s:
            return list(s.scalars(select(Measurement).where(Measurement.trial_id == trial_row_id)).all())

    def record(self, req: dict[str, Any], res: "TrialResult") -> bool:
        """Write one returned trial; False when it is to be run again (not finished)."""
        d = self.driver
        from optuna.trial import TrialState

        number = req["number"]
        trial = d.trials.pop(number)
        if d.ostorage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            # failed as stale meanwhile (this driver stopped beating for the grace period, e.g. a
            # database locked for that long): its retry is queued and measures it again
            d.log(f"trial {number}: dropped its result; the trial was failed as stale and is retried")
            return False
        self._account_timing(res)
        if res.retry:  # its worker's node was lost: failed with the reason, run again
            self._record_retry(trial, res)
            return False
        if res.ok:
            self._summarize(res)
        if res.ok:
            self._record_complete(trial, res)
        else:
            self._record_failed(trial, res)
        return True

    def _account_timing(self, res: "TrialResult") -> None:
        """Add a returned trial's stage times to the run's statistics (the overhead line)."""
        d = self.driver
        t = res.timing
        if t is None:
            return
        d.stats["trial_s"] += t.total_s
        d.stats["compile_s"] += getattr(t, "compile_s", 0.0)
        self.compile_records.extend(res.compiles or [])
        d.stats["measure_s"] += t.gate_s + t.candidate_s + t.baseline_s + t.accuracy_s
        d.stats["timed_s"] += t.timed_s
        d.stats["windows_s"] += t.candidate_s + t.baseline_s

    def _summarize(self, res: "TrialResult") -> None:
        """Objectives of a successful trial and its cells' judgement; a result that cannot be
        summarised (non-finite objectives) becomes a failed trial."""
        d = self.driver
        from ..trial import summarize

        try:
            objs, _ = summarize(d.space, res)
            if any(not math.isfinite(v) for v in objs):
                raise ValueError(f"non-finite objective values {objs}")
            res.judge(d.space)
        except Exception as e:  # noqa: BLE001
            res.ok, res.reason = False, f"could not summarize: {type(e).__name__}: {e}"
            return
        res.objectives = objs

    def _record_complete(self, trial, res: "TrialResult") -> None:
        """Store a complete trial, tell Optuna, update the best-so-far."""
        d = self.driver
        # Optuna's constraint values: the least violating bucket's (bucket_view), so that a
        # trial the export can choose at some bucket is feasible for Optuna's tools too
        cons, buckets, cons_bucket = bucket_view(d.space, res.cells)
        res.conclude(res.objectives or [], cons)
        d.db.write_trial_result(d.study_name, res.number, res)
        self.tell(res.number, res.objectives, cons, buckets, cons_bucket)
        d.stats["completed"] += 1
        if "speedup" in d.space.objectives and res.feasible:
            sp = res.objectives[d.space.objectives.index("speedup")]
            self.best = sp if self.best is None else max(self.best, sp)
        self.update_best_by_bucket([c.to_dict() for c in res.cells], res.number)

    def _record_failed(self, trial, res: "TrialResult") -> None:
        d = self.driver
        from optuna.trial import TrialState

        res.reason = res.reason or "unknown failure"
        d.db.write_trial_result(d.study_name, res.number, res)
        trial.set_user_attr("fail_reason", res.reason)
        d.study.tell(trial, state=TrialState.FAIL)
        d.stats["failed"] += 1
        d.log(f"trial {res.number} failed: {res.reason.splitlines()[0][:300]}")

    def _record_retry(self, trial, res: "TrialResult") -> None:
        """A trial whose worker's node was lost: recorded failed with the reason, enqueued again."""
        d = self.driver
        from optuna.trial import TrialState

        res.reason = res.reason or EndReason.NODE_LOST.text()
        d.db.write_trial_result(d.study_name, res.number, res)
        trial.set_user_attr("fail_reason", res.reason)
        d.study.tell(trial, state=TrialState.FAIL)
        d.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": res.number}, skip_if_exists=False)
        d.stats["retried"] += 1
        d.log(f"trial {res.number} failed ({res.reason.splitlines()[0][:200]}): enqueued again")

    def update_best_by_bucket(self, rows: list[dict[str, Any]], number: Optional[int] = None) -> None:
        """Feed a complete trial's cells to the progress bar's best-so-far (the leaders of
        `results.verdict`, the rule export and report use; unconfirmed until the end of the run)
        and to the baseline-noise watch."""
        d = self.driver
        if number is not None:
            self.cells_by_trial[number] = rows
        self._watch_noise(rows)
        from results.verdict import leaders

        targets = d.space.effective_targets()
        for bucket in sorted({r["bucket"] for r in rows}):
            lead = leaders(targets, self.cells_by_trial, bucket, 1)
            if lead and lead[0].speedup:
                self.best_by_bucket[bucket] = lead[0].speedup

    def _watch_noise(self, rows: list[dict[str, Any]]) -> None:
        """Warn once per shape when the SDPA baseline's median spreads more than 2x across trials."""
        d = self.driver
        for r in rows:
            if not r.get("sdpa_ms"):
                continue
            key = (r["workload"], r["bucket"])
            seen = self.sdpa_seen.setdefault(key, [])
            seen.append(r["sdpa_ms"])
            if key not in self.noisy and len(seen) > 1 and max(seen) > 2 * min(seen):
                self.noisy.add(key)
                d.log(f"warning: noisy machine: the SDPA baseline of {key[0]} at L={key[1]} ranged "
                      f"{min(seen):.3g}-{max(seen):.3g} ms over {len(seen)} trials (> 2x); single-trial speedups "
                      f"are unreliable here, the end-of-run confirmation re-measures the leaders")

    def load_cells(self) -> None:
        """Cells of the study's complete trials from earlier runs (resume), for the best-so-far."""
        d = self.driver
        from results.verdict import read_study

        data = read_study(d.db, d.study_name)
        for number, cells in data.cells_by_trial.items():
            self.cells_by_trial[number] = [{c: getattr(m, c) for c in m.__table__.columns.keys()} for m in cells]

    def best_text(self) -> str:
        """The best-so-far per bucket, as the progress bar shows it (``?``: unconfirmed)."""
        if not self.best_by_bucket:
            return "-"
        return " ".join(f"L{b}:{v:.2f}x?" for b, v in sorted(self.best_by_bucket.items()))

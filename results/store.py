"""The store of the results database: `Database`, our tables' reads and writes on one URL.

Runs (start, heartbeat, end, the settling of runs whose driver died), the study's shared budget
(`Database.claim_trial`: one locked transaction, rules in `results.db`'s docstring, "Concurrency"),
trials (start, fail, one transaction per trial's result) and the ties to Optuna (`drop_orphans`).
States and end reasons are `results.states`'s; the schema is created or checked on opening
(`results.schema`).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from .base import utcnow
from .schema import check_schema, create_schema, make_engine, refuse_foreign
from .states import EndReason, TrialState
from .tables import Measurement, Run, TrialRow, Tuned
from .ties import LiveStudy, Orphans, find_orphans, live_study


def _study_lock_key(study: str) -> int:
    return int.from_bytes(hashlib.sha256(study.encode()).digest()[:8], "big", signed=True)


class Database:
    """Our tables on ``url``: created with the version row if missing (``create``), refused with
    `SchemaError` when the database is at another schema version (`check_schema`)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            if create:
                create_schema(self.engine)
            else:  # readers: nothing is written; another version is refused (`check_schema`)
                with self.engine.connect() as conn:
                    refuse_foreign(conn, url)
                    check_schema(conn, url)
        except BaseException:
            self.engine.dispose()
            raise
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        with self.Session() as s:
            with s.begin():
                yield s

    def close(self) -> None:
        self.engine.dispose()

    # -- ties to Optuna ----------------------------------------------------------------------
    def live_study(self, name: str) -> LiveStudy:
        with self.Session() as s:
            return live_study(s, name)

    def orphans(self, name: str) -> Orphans:
        with self.Session() as s:
            return find_orphans(s, name)

    def drop_orphans(self, name: str) -> Orphans:
        """Delete the rows of study ``name`` that Optuna's storage does not hold (`find_orphans`:
        left by ``optuna delete-study``, or by a study deleted and created again under the same
        name), in one transaction; and record Optuna's study id on the tied rows that lack it (a
        database from before the column). Returns what was deleted."""
        from sqlalchemy import delete, inspect as _inspect, update

        with self.session() as s:
            o = find_orphans(s, name)
            if not o.live.has_optuna:
                return o
            if o.trial_ids:
                s.execute(delete(Measurement).where(Measurement.trial_id.in_(o.trial_ids)))
                s.execute(delete(TrialRow).where(TrialRow.id.in_(o.trial_ids)))
                tables = set(_inspect(s.get_bind()).get_table_names())
                if "at_confirmations" in tables:
                    s.execute(text("DELETE FROM at_confirmations WHERE study_name = :n AND created_at < :c"),
                              {"n": name, "c": o.cutoff})
                s.execute(delete(Tuned).where(Tuned.study_name == name, Tuned.exported_at < o.cutoff))
            if o.run_ids:
                s.execute(delete(Run).where(Run.id.in_(o.run_ids)))
            if o.live.study_id is not None:  # rows from before the columns: tied now, recorded
                s.execute(update(TrialRow).where(TrialRow.study_name == name, TrialRow.optuna_study_id.is_(None))
                          .values(optuna_study_id=o.live.study_id))
                if o.live.uid is not None:
                    s.execute(update(TrialRow).where(TrialRow.study_name == name, TrialRow.optuna_study_uid.is_(None))
                              .values(optuna_study_uid=o.live.uid))
            return o

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, **fields: Any) -> int:
        with self.session() as s:
            run = Run(**fields)
            s.add(run)
            s.flush()
            return run.id

    def record_cluster(self, run_id: int, cluster: dict[str, Any]) -> None:
        """The Ray cluster the run's workers joined (``at_runs.cluster``)."""
        with self.session() as s:
            s.get(Run, run_id).cluster = dict(cluster) if cluster else None

    def heartbeat(self, run_id: int) -> None:
        """The run's own heartbeat (``at_runs.heartbeat_at``: tells other hosts the driver lives);
        its trials' heartbeats are Optuna's (``RDBStorage.record_heartbeat``)."""
        with self.session() as s:
            run = s.get(Run, run_id)
            run.heartbeat_at = utcnow()

    def end_run(self, run_id: int, status: str) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            run.ended_at = utcnow()
            run.status = status

    def set_run_stats(self, run_id: int, stats: dict) -> None:
        """Store a run's statistics (trials per minute, phase shares) on its at_runs row."""
        with self.session() as s:
            s.get(Run, run_id).stats = stats

    def settle_dead_runs(self, alive, by_run: int) -> list[int]:
        """Mark every unended run whose driver is gone (``alive(run)`` False) ended, status "died",
        with the reason; ``ended_at`` is its last heartbeat. Returns their ids."""
        done = []
        with self.session() as s:
            for run in s.scalars(select(Run).where(Run.ended_at.is_(None), Run.id != by_run)):
                if alive(run):
                    continue
                last = run.heartbeat_at or run.started_at
                run.ended_at, run.status = last, "died"
                run.end_reason = EndReason.DRIVER_DIED.text(
                    f"found gone by run {by_run} at {utcnow():%Y-%m-%d %H:%M:%S} UTC "
                    f"(host {run.host}, pid {run.pid}, last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC)")
                done.append(run.id)
        return done

    # -- the shared budget -------------------------------------------------------------------------
    @staticmethod
    def _occupying(t: "TrialRow") -> bool:
        """Whether a trial row holds a budget slot: running, complete, or failed for a reason that
        is not retried (`EndReason.retried`)."""
        if t.state in (TrialState.RUNNING, TrialState.COMPLETE):
            return True
        return t.state == TrialState.FAIL and not EndReason.is_retried(t.reason)

    def _lock_study(self, s: Session, study: str, run_id: int) -> None:
        if self.engine.dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _study_lock_key(study)})
        else:  # SQLite: a write as the transaction's first statement takes the database write lock
            s.execute(text(f"UPDATE {Run.__tablename__} SET heartbeat_at = heartbeat_at WHERE id = :i"), {"i": run_id})

    def claim_trial(self, fields: dict[str, Any], budget: int, *, allow_repeats: bool = False,
                    same_work: Optional[Callable[["TrialRow"], bool]] = None) -> tuple[str, Optional[int]]:
        """Insert the at_trials row of a new trial if the study has a free budget slot and (unless
        ``allow_repeats``) no occupying trial with the same params, nor one for which ``same_work``
        (a row -> bool, `autotune.same_work.WorkKeys`) says it computes the same; atomically
        (module docstring). Returns ("ok", None), ("budget", None), ("duplicate", number of the
        earlier trial) or ("same_work", number of the earlier trial)."""
        study = fields["study_name"]
        with self.session() as s:
            self._lock_study(s, study, fields["run_id"])
            rows = s.scalars(select(TrialRow).where(TrialRow.study_name == study)).all()
            retry_of = fields.get("retry_of")
            occupying, reserved = self._slots(rows)
            taken = len(occupying) + len(reserved) - (1 if retry_of is not None and any(t.number == retry_of for t in reserved) else 0)
            if taken >= budget:  # before the duplicate check: a full budget ends the asking at once
                return "budget", None
            if not allow_repeats:
                others = [t for t in occupying if t.number != fields["number"]]
                earlier = next((("duplicate", t) for t in others if t.params == fields["params"]), None)
                if earlier is None and same_work is not None:
                    earlier = next((("same_work", t) for t in others if same_work(t)), None)
                if earlier is not None:
                    status, t = earlier
                    if retry_of is not None:  # the retry is not needed: release its reservation
                        for o in rows:
                            if o.number == retry_of and o.state == TrialState.FAIL:
                                o.reason = EndReason.skip_retry(o.reason, t.number)
                    return status, t.number
            existing = next((t for t in rows if t.number == fields["number"]), None)
            if existing is not None:
                for k, v in fields.items():
                    setattr(existing, k, v)
            else:
                s.add(TrialRow(**fields))
            return "ok", None

    def _slots(self, rows: list["TrialRow"]) -> tuple[list["TrialRow"], list["TrialRow"]]:
        """(occupying trials, trials whose slot is reserved for their retry) among ``rows``: a
        trial run again (interrupted, node lost) keeps a slot reserved for its retry until the
        retry is claimed, so a full budget never drops a retry."""
        retried = {t.retry_of for t in rows if t.retry_of is not None}
        reserved = [t for t in rows if not self._occupying(t) and t.state == TrialState.FAIL and t.number not in retried
                    and not EndReason.retry_skipped(t.reason)]
        return [t for t in rows if self._occupying(t)], reserved

    def budget_taken(self, study: str) -> int:
        """Budget slots of ``study`` taken now, by any driver (what `claim_trial` counts)."""
        with self.Session() as s:
            occupying, reserved = self._slots(s.scalars(select(TrialRow).where(TrialRow.study_name == study)).all())
            return len(occupying) + len(reserved)

    def pending_retries(self, study: str) -> list["TrialRow"]:
        """Trials of ``study`` failed for a retried reason whose retry has not been claimed yet
        (each keeps a budget slot reserved for it)."""
        with self.Session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.study_name == study)).all()
            retried = {t.retry_of for t in rows if t.retry_of is not None}
            return [t for t in rows if t.state == TrialState.FAIL and EndReason.is_retried(t.reason)
                    and t.number not in retried and not EndReason.retry_skipped(t.reason)]

    def count_running(self, study: str) -> int:
        """Trials of ``study`` in state RUNNING (measured now, by any driver)."""
        with self.Session() as s:
            return len(s.scalars(select(TrialRow.id).where(TrialRow.study_name == study, TrialRow.state == TrialState.RUNNING.value)).all())

    def count_finished(self, study: str) -> int:
        """Trials of ``study`` finished for good (complete, or failed for a reason not retried)."""
        with self.Session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.study_name == study, TrialRow.state != TrialState.RUNNING.value)).all()
            return sum(1 for t in rows if self._occupying(t))

    # -- trials --------------------------------------------------------------------------------
    def start_trial(self, **fields: Any) -> None:
        with self.session() as s:
            existing = s.scalar(
                select(TrialRow).where(TrialRow.study_name == fields["study_name"], TrialRow.number == fields["number"])
            )
            if existing is not None:  # a re-asked trial number cannot happen in Optuna; be safe
                for k, v in fields.items():
                    setattr(existing, k, v)
            else:
                s.add(TrialRow(**fields))

    def trial(self, study: str, number: int) -> Optional[TrialRow]:
        with self.Session() as s:
            return s.scalar(select(TrialRow).where(TrialRow.study_name == study, TrialRow.number == number))

    def mark_failed(self, study: str, number: int, reason: str) -> None:
        with self.session() as s:
            t = s.scalar(select(TrialRow).where(TrialRow.study_name == study, TrialRow.number == number))
            if t is not None:
                t.state, t.reason, t.finished_at, t.lease_until = TrialState.FAIL.value, reason, utcnow(), None

    def record_result(self, study: str, number: int, *, state: str, reason: Optional[str], fields: dict[str, Any],
                      measurements: list[dict[str, Any]]) -> None:
        """Write one trial's outcome and all its measurements in one transaction."""
        with self.session() as s:
            t = s.scalar(select(TrialRow).where(TrialRow.study_name == study, TrialRow.number == number))
            if t is None:
                raise KeyError(f"no at_trials row for study {study!r} trial {number}")
            t.state, t.reason, t.finished_at, t.lease_until = TrialState(state).value, reason, utcnow(), None
            for k, v in fields.items():
                setattr(t, k, v)
            t.measurements.clear()
            for m in measurements:
                t.measurements.append(Measurement(**m))

    def write_trial_result(self, study: str, number: int, result: Any) -> None:
        """Write one trial's ``autotune.trial.TrialResult`` in one transaction: its state
        (COMPLETE when ``ok``, else FAIL with its ``reason``), gate, timing and worker, and for a
        complete trial the driver's objectives, constraint values and feasibility and one
        ``at_measurements`` row per cell (a `CellMeasurement`'s fields are named as the columns,
        units in the names). The record is read through its attributes: this layer does not import
        the trials, which sit above it."""
        fields: dict[str, Any] = {"gate": None if result.gate is None else result.gate.to_dict(),
                                  "timing": {} if result.timing is None else result.timing.to_dict(),
                                  "worker": None if result.worker is None else result.worker.to_dict()}
        rows: list[dict[str, Any]] = []
        if result.ok:
            fields.update(objectives=list(result.objectives), constraints=list(result.constraints),
                          feasible=bool(result.feasible))
            columns = [c for c in Measurement.__table__.columns.keys() if c not in ("id", "trial_id")]
            rows = [{c: getattr(cell, c) for c in columns} for cell in result.cells]
        self.record_result(study, number, state=result.state, reason=None if result.ok else result.reason,
                           fields=fields, measurements=rows)


"""Everything the report shows, read from the results database (and nothing else).

`load(storage, study)` returns a `ReportData`: the study's runs, trials, measurements and latest
export (``at_runs``, ``at_trials``, ``at_measurements``, ``at_tuned``) and every ingested benchmark
(``at_bench_runs``, ``at_kernel_bench``, ``at_evoformer_bench``). The ORM rows are loaded eagerly
and detached, so the rest of the report works on plain attributes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from patterns.errors import InputError

from results.storage import mask_url, sqlite_file


class ReportError(InputError):
    """The report cannot be built (missing or empty database, unknown study): exit status 2."""


@dataclass
class ReportData:
    storage: str
    study: Optional[str]
    other_studies: list[str]
    runs: list[Any] = field(default_factory=list)            # at_runs of the study
    trials: list[Any] = field(default_factory=list)          # at_trials of the study
    measurements: list[Any] = field(default_factory=list)    # at_measurements of the study's trials
    tuned: list[Any] = field(default_factory=list)           # at_tuned rows of the latest export
    bench_runs: list[Any] = field(default_factory=list)      # at_bench_runs (all)
    kernel_rows: list[Any] = field(default_factory=list)     # at_kernel_bench (all)
    evoformer_rows: list[Any] = field(default_factory=list)  # at_evoformer_bench (all)
    study_data: Any = None  # results.verdict.StudyData of the study (what the one rule reads)
    _by_trial: Optional[dict] = field(default=None, repr=False)

    # -- lookups -------------------------------------------------------------------------------
    def trial_by_number(self, number: int) -> Optional[Any]:
        return next((t for t in self.trials if t.number == number), None)

    def cells(self, trial_id: int, bucket: Optional[int] = None) -> list[Any]:
        """The trial's at_measurements rows (at ``bucket``), ordered by bucket and workload."""
        if self._by_trial is None:
            self._by_trial = {}
            for m in self.measurements:
                self._by_trial.setdefault(m.trial_id, []).append(m)
            for v in self._by_trial.values():
                v.sort(key=lambda m: (m.bucket, m.workload))
        return [m for m in self._by_trial.get(trial_id, []) if bucket is None or m.bucket == bucket]

    @property
    def buckets(self) -> list[int]:
        return sorted({m.bucket for m in self.measurements})

    @property
    def space(self) -> Optional[dict]:
        for r in sorted(self.runs, key=lambda r: r.id, reverse=True):
            if r.space:
                return r.space
        return None


def _latest_export(rows: list[Any]) -> list[Any]:
    """The at_tuned rows written by the study's last export: one export writes its buckets in one
    transaction, in increasing bucket order, so they are the run of consecutive ids (same out_path,
    buckets decreasing when read backwards) that ends at the highest id."""
    rows = sorted(rows, key=lambda r: r.id, reverse=True)
    out: list[Any] = []
    for r in rows:
        if out and (r.out_path != out[-1].out_path or r.bucket >= out[-1].bucket or r.id != out[-1].id - 1):
            break
        out.append(r)
    return sorted(out, key=lambda r: r.bucket)


def _optuna_holds(s: Any, study: str) -> bool:
    """Whether Optuna's storage holds ``study`` (True where the database has no Optuna tables:
    nothing to check against)."""
    from results.db import live_study

    live = live_study(s, study)
    return live.exists or not live.has_optuna


def _open(storage: str) -> tuple[str, Any]:
    """The checked URL and the open `results.db.Database` of ``storage`` (ReportError: a bad value,
    a missing file, a server that does not answer; `results.db.SchemaError`: another version)."""
    from sqlalchemy.exc import SQLAlchemyError

    from results.db import Database, SchemaError
    from results.storage import StorageError, resolve_storage

    try:
        storage = resolve_storage(storage, "read").url
    except StorageError as e:
        raise ReportError(str(e)) from None

    path = sqlite_file(storage)
    if path is not None and not os.path.isfile(path):
        raise ReportError(f"no database file {path} (--storage {mask_url(storage)})")
    try:
        return storage, Database(storage, create=False)
    except SchemaError:  # another schema version: its own line (and the upgrade command)
        raise
    except SQLAlchemyError as e:  # the server does not answer, ...: checking the schema reads it
        raise ReportError(f"cannot read --storage {mask_url(storage)}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - a bad URL or driver
        raise ReportError(f"cannot open --storage {mask_url(storage)}: {e}") from None


def _pick_study(s: Any, storage: str, study: Optional[str], has: Any) -> tuple[Optional[str], list[str]]:
    """(the study to report, the other studies Optuna's storage holds): ``study``, else the latest
    run's. ReportError: no autotune tables, an empty database, an unknown or deleted study."""
    from sqlalchemy import func, select

    from results.bench_tables import BenchRun
    from results.db import Run, TrialRow

    studies = sorted(set(s.scalars(select(TrialRow.study_name).distinct()).all())) if has(TrialRow) else []
    # only studies Optuna's storage still holds: the rows of a study removed with
    # `optuna delete-study` cite trials that no longer exist
    deleted = [x for x in studies if not _optuna_holds(s, x)]
    studies = [x for x in studies if x not in deleted]
    n_bench = s.scalar(select(func.count()).select_from(BenchRun)) if has(BenchRun) else 0
    if study is not None and study in deleted:
        raise ReportError(f"study {study!r} is not in Optuna's storage in {mask_url(storage)} (deleted with "
                          f"optuna delete-study?): its leftover rows are not reported "
                          f"(studies: {', '.join(studies) if studies else 'none'})")
    if study is not None and study not in studies:
        raise ReportError(f"study {study!r} not found in {mask_url(storage)} "
                          f"(studies: {', '.join(studies) if studies else 'none'})")
    if not studies and not n_bench:
        raise ReportError(f"{mask_url(storage)} is empty: no trial and no ingested benchmark rows")
    if study is None and studies:
        latest = s.scalar(select(Run).where(Run.study_name.in_(studies)).order_by(Run.id.desc()).limit(1))
        study = latest.study_name if latest is not None else studies[-1]
    return study, [x for x in studies if x != study]


def _study_rows(s: Any, data: ReportData, has: Any) -> None:
    """The study's runs, trials, measurements, latest export and `StudyData`, without the rows that
    are not tied to Optuna's study (never cited)."""
    from sqlalchemy import select

    from results.db import Measurement, Run, TrialRow, Tuned, find_orphans
    from results.verdict import load_study, restrict_study_data

    study = data.study
    orphans = find_orphans(s, study)
    bad_trials, bad_runs = set(orphans.trial_ids), set(orphans.run_ids)
    data.runs = [r for r in s.scalars(select(Run).where(Run.study_name == study).order_by(Run.id)).all()
                 if r.id not in bad_runs]
    data.trials = [t for t in s.scalars(select(TrialRow).where(TrialRow.study_name == study)
                                        .order_by(TrialRow.number)).all() if t.id not in bad_trials]
    data.measurements = [m for m in s.scalars(select(Measurement).join(TrialRow)
                                              .where(TrialRow.study_name == study).order_by(Measurement.id)).all()
                         if m.trial_id not in bad_trials]
    if has(Tuned):
        tuned = list(s.scalars(select(Tuned).where(Tuned.study_name == study)).all())
        if bad_trials:
            tuned = [r for r in tuned if r.exported_at is None or r.exported_at >= orphans.cutoff]
        data.tuned = _latest_export(tuned)
    data.study_data = restrict_study_data(load_study(s, study), orphans)


def _bench_rows(s: Any, data: ReportData, has: Any) -> None:
    """Every ingested benchmark run and its rows."""
    from sqlalchemy import select

    from results.bench_tables import BenchRun, EvoformerBenchRow, KernelBenchRow

    if not has(BenchRun):
        return
    data.bench_runs = list(s.scalars(select(BenchRun).order_by(BenchRun.id)).all())
    if data.bench_runs and has(KernelBenchRow):
        data.kernel_rows = list(s.scalars(select(KernelBenchRow).order_by(KernelBenchRow.id)).all())
    if data.bench_runs and has(EvoformerBenchRow):
        data.evoformer_rows = list(s.scalars(select(EvoformerBenchRow).order_by(EvoformerBenchRow.id)).all())


def load(storage: str, study: Optional[str] = None) -> ReportData:
    """Everything the report of ``study`` (default: the latest run's) shows, read from ``storage``
    (module docstring). Raises ReportError (exit status 2) when there is nothing to report."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from results.bench_tables import BenchRun
    from results.db import TrialRow

    storage, db = _open(storage)
    try:
        try:
            tables = set(inspect(db.engine).get_table_names())
        except SQLAlchemyError as e:
            raise ReportError(f"cannot read --storage {mask_url(storage)}: {str(e).splitlines()[0]}") from None
        has = lambda model: model.__tablename__ in tables  # noqa: E731
        if not (has(TrialRow) or has(BenchRun)):
            if {"studies", "trials"} <= tables:
                raise ReportError(f"{mask_url(storage)} holds an Optuna study storage but no autotune tables "
                                  "(written by Optuna alone, not by python -m autotune.search): nothing to report")
            raise ReportError(f"{mask_url(storage)} holds no autotune tables (empty database): nothing to report")
        with db.Session() as s:
            study, others = _pick_study(s, storage, study, has)
            data = ReportData(storage=storage, study=study, other_studies=others)
            if study is not None:
                _study_rows(s, data, has)
            _bench_rows(s, data, has)
            s.expunge_all()
        return data
    finally:
        db.close()

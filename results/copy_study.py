"""A study with its measurements to another database (`copy_study`, behind
``python -m autotune.copy_study``, whose docstring says what is refused).

``optuna.copy_study`` copies Optuna's side of a study and nothing of ours, so the export and the
report at the destination would see no measurement. `copy_study` copies Optuna's study, then, in
one transaction, our rows of it (``at_runs``, ``at_trials`` tied to the destination's Optuna study
and trial ids, ``at_measurements``, ``at_confirmations``, ``at_tuned``): the export and the report
give the same answer at the destination. Only rows tied to Optuna's study are copied
(`results.db.LiveStudy`); the source is only read; if writing our rows fails, the copied Optuna
study is deleted again, so a failed copy leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from patterns.errors import InputError
from patterns.names import check_study_name


class CopyError(InputError):
    """Invalid input found before anything is written: exit status 2."""


@dataclass
class CopyResult:
    study: str
    to_study: str
    trials: int  # Optuna trials copied
    trial_rows: int  # at_trials rows
    measurements: int
    runs: int
    confirmations: int
    exports: int


def _columns(row: Any, **override: Any) -> dict[str, Any]:
    out = {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key != "id"}
    out.update(override)
    return out


@dataclass
class _Rows:
    """Our rows of a study in the source, tied to its Optuna study (detached ORM rows)."""

    trials: list[Any]
    runs: list[Any]
    measurements: list[Any]
    confirmations: list[Any]
    tuned: list[Any]


def _read_source(study: str, src: str) -> _Rows:
    """Our rows of ``study`` in ``src`` that Optuna's study of that name holds (orphans left behind);
    raises CopyError when the source has no autotune tables or no such study."""
    from sqlalchemy import inspect, select

    from .db import Confirmation, Database, Measurement, Run, TrialRow, Tuned, find_orphans, live_study
    from .storage import mask_url

    sdb = Database(src, create=False)
    try:
        tables = set(inspect(sdb.engine).get_table_names())
        if TrialRow.__tablename__ not in tables:
            raise CopyError(f"--from: {mask_url(src)} holds no autotune tables")
        with sdb.Session() as s:
            orphans = find_orphans(s, study)
            live = orphans.live
            if not live.has_optuna or not live.exists:
                names = sorted(set(s.scalars(select(TrialRow.study_name).distinct()).all()))
                names = [n for n in names if live_study(s, n).exists]
                raise CopyError(f"--study: no study {study!r} in Optuna's storage in {mask_url(src)} "
                                f"(studies there: {', '.join(names) if names else 'none'})")
            bad_t, bad_r = set(orphans.trial_ids), set(orphans.run_ids)
            trials = [t for t in s.scalars(select(TrialRow).where(TrialRow.study_name == study)
                                           .order_by(TrialRow.number)).all() if t.id not in bad_t]
            runs = [r for r in s.scalars(select(Run).where(Run.study_name == study).order_by(Run.id)).all()
                    if r.id not in bad_r]
            ms = s.scalars(select(Measurement).where(Measurement.trial_id.in_([t.id for t in trials]))
                           .order_by(Measurement.id)).all() if trials else []
            confs = (s.scalars(select(Confirmation).where(Confirmation.study_name == study)
                               .order_by(Confirmation.id)).all() if Confirmation.__tablename__ in tables else [])
            tuned = (s.scalars(select(Tuned).where(Tuned.study_name == study).order_by(Tuned.id)).all()
                     if Tuned.__tablename__ in tables else [])
            if bad_t:  # records of the deleted study of the same name stay behind
                confs = [c for c in confs if c.created_at is None or c.created_at >= orphans.cutoff]
                tuned = [r for r in tuned if r.exported_at is None or r.exported_at >= orphans.cutoff]
            s.expunge_all()
    finally:
        sdb.close()
    return _Rows(trials, runs, list(ms), list(confs), list(tuned))


def _write_rows(s: Any, rows: _Rows, to_study: str, n_optuna: int) -> dict[int, int]:
    """Add ``rows`` to the destination session ``s`` as study ``to_study``, tied to the copied
    Optuna study's ids; returns the run id map (source -> destination)."""
    from .db import Confirmation, Measurement, Run, TrialRow, Tuned, live_study

    dlive = live_study(s, to_study)
    missing = [t.number for t in rows.trials if t.number not in dlive.trial_ids]
    if missing or len(dlive.trial_ids) != n_optuna:
        raise RuntimeError(f"the copied Optuna study has {len(dlive.trial_ids)} trials, "
                           f"expected {n_optuna} (missing numbers {missing[:10]})")
    run_map: dict[int, int] = {}
    for r in rows.runs:
        nr = Run(**_columns(r, study_name=to_study, optuna_study_id=dlive.study_id))
        s.add(nr)
        s.flush()
        run_map[r.id] = nr.id
    trial_map: dict[int, int] = {}
    for t in rows.trials:
        if t.run_id not in run_map:
            raise RuntimeError(f"trial {t.number} refers to run {t.run_id}, which is not copied")
        nt = TrialRow(**_columns(t, study_name=to_study, run_id=run_map[t.run_id],
                                 optuna_trial_id=dlive.trial_ids[t.number], optuna_study_id=dlive.study_id))
        s.add(nt)
        s.flush()
        trial_map[t.id] = nt.id
    for m in rows.measurements:
        s.add(Measurement(**_columns(m, trial_id=trial_map[m.trial_id])))
    for c in rows.confirmations:
        s.add(Confirmation(**_columns(c, study_name=to_study)))
    for r in rows.tuned:
        s.add(Tuned(**_columns(r, study_name=to_study)))
    return run_map


def copy_study(study: str, src: str, dst: str, to_study: Optional[str] = None) -> CopyResult:
    """Copy ``study`` from the database ``src`` to ``dst`` as ``to_study`` (module docstring):
    read our rows, check the source study and the destination, copy Optuna's study, then write our
    rows in one transaction (deleting the copied Optuna study again if that fails). Both are checked
    URLs (`results.storage.resolve_storage`)."""
    import optuna

    from .db import Database, create_optuna_storage, live_study
    from .storage import mask_url

    check_study_name(study, "--study")  # the one name rule (patterns.names), before anything is read or written
    to_study = check_study_name(to_study, "--to-study") if to_study is not None else study
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = _read_source(study, src)
    sstore = optuna.storages.RDBStorage(src, skip_table_creation=True, skip_compatibility_check=True)
    try:
        source = optuna.load_study(study_name=study, storage=sstore)
        running = [t.number for t in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
        if running:
            raise CopyError(f"--study: study {study!r} has {len(running)} running trial(s) "
                            f"({', '.join(map(str, running[:10]))}): copy it when no driver is running on it")
        n_optuna = len(source.get_trials(deepcopy=False))
        Database(dst, create=False).close()  # a destination at another schema version: refused before any write
        dstore = create_optuna_storage(dst)
        try:
            try:
                optuna.load_study(study_name=to_study, storage=dstore)
                raise CopyError(f"--to: {mask_url(dst)} already holds a study {to_study!r} (use --to-study NAME)")
            except KeyError:
                pass
            ddb = Database(dst)
            try:
                ddb.drop_orphans(to_study)  # rows of a study of that name deleted there earlier
                optuna.copy_study(from_study_name=study, from_storage=sstore, to_storage=dstore, to_study_name=to_study)
                try:
                    with ddb.session() as s:
                        run_map = _write_rows(s, rows, to_study, n_optuna)
                        dlive = live_study(s, to_study)
                    old = source.user_attrs.get("space_run_id")
                    if old in run_map:  # the study names the run that holds its space
                        dstore.set_study_user_attr(dlive.study_id, "space_run_id", run_map[old])
                except BaseException:
                    optuna.delete_study(study_name=to_study, storage=dstore)  # nothing half-written
                    raise
            finally:
                ddb.close()
        finally:
            dstore.remove_session()
            dstore.engine.dispose()
    finally:
        sstore.remove_session()
        sstore.engine.dispose()
    return CopyResult(study, to_study, n_optuna, len(rows.trials), len(rows.measurements), len(rows.runs),
                      len(rows.confirmations), len(rows.tuned))

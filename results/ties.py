"""Ties of our rows to Optuna's study and trial ids: the study's identity token, what Optuna holds
now under a study name (`LiveStudy`) and our rows it does not hold (`Orphans`, `find_orphans`).

Rules in `results.db`'s docstring ("Ties to Optuna"). Only reads, except `ensure_study_uid`, which
creates the token once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Optional

from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .base import utcnow
from .tables import Run, TrialRow


OPTUNA_TABLES = ("studies", "trials")
UID_KEY = "autotune:uid"  # Optuna study system attribute: this study's identity (module docstring)


def ensure_study_uid(engine: Engine, study_id: int) -> str:
    """The identity token of Optuna's study ``study_id`` (its system attribute ``autotune:uid``),
    created if missing. Optuna reuses ids: SQLite gives a study and trials created after a
    deletion the ids of the deleted ones, so only this token, deleted with the study, tells a
    re-created study from the old one. Created atomically by several drivers at once: an insert
    into Optuna's ``study_system_attributes``, whose unique (study_id, key) lets one win; the
    others read the winner's token (Optuna's own setter would let the last writer win)."""
    import json
    import uuid

    def read() -> Optional[str]:
        with engine.connect() as conn:
            v = conn.execute(text("SELECT value_json FROM study_system_attributes WHERE study_id = :s AND key = :k"),
                             {"s": study_id, "k": UID_KEY}).scalar()
        return None if v is None else str(json.loads(v))

    have = read()
    if have is not None:
        return have
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO study_system_attributes (study_id, key, value_json) VALUES (:s, :k, :v)"),
                         {"s": study_id, "k": UID_KEY, "v": json.dumps(uuid.uuid4().hex)})
    except IntegrityError:  # another driver created it first
        pass
    have = read()
    assert have is not None
    return have


@dataclass
class LiveStudy:
    """What Optuna's storage holds now under a study name (read from its ``studies`` and ``trials``
    tables): ``study_id`` (None: no such study, e.g. removed by ``optuna delete-study``) and
    ``trial_ids`` (trial number -> Optuna trial id). ``has_optuna`` is False for a database without
    Optuna's tables (benchmark rows only): nothing can be checked there and no row is tied.

    An ``at_trials`` row is *tied* (`tied`) when it records the study's identity token
    (``optuna_study_uid``), its study id, and the Optuna trial id that the study holds under the
    row's number. Any other row is an orphan: left by a deleted study, or by one deleted and
    created again under the same name (numbers restart at 0, and SQLite hands out the deleted
    study's ids again). Orphans are never cited. Rows written before the token existed (NULL) are
    tied by ids and number alone, and get the token when a search or export next opens the study."""

    name: str
    has_optuna: bool
    study_id: Optional[int] = None
    trial_ids: dict[int, int] = field(default_factory=dict)
    uid: Optional[str] = None  # the study's ``autotune:uid`` (`ensure_study_uid`); None: not set yet

    @property
    def exists(self) -> bool:
        return self.study_id is not None

    def tied(self, row: Any) -> bool:
        if not self.has_optuna:
            return False
        sid = getattr(row, "optuna_study_id", None)
        if self.study_id is None or (sid is not None and sid != self.study_id):
            return False
        uid = getattr(row, "optuna_study_uid", None)
        if uid is not None and uid != self.uid:
            return False
        return self.trial_ids.get(row.number) == row.optuna_trial_id


def live_study(conn: Any, name: str) -> LiveStudy:
    """`LiveStudy` of ``name`` read through ``conn`` (a Connection or Session)."""
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    tables = set(inspect(bind).get_table_names())
    if not set(OPTUNA_TABLES) <= tables:
        return LiveStudy(name, False)
    sid = conn.execute(text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": name}).scalar()
    if sid is None:
        return LiveStudy(name, True)
    ids = {int(n): int(t) for n, t in conn.execute(text("SELECT number, trial_id FROM trials WHERE study_id = :s"),
                                                   {"s": sid}).all()}
    uid = None
    if "study_system_attributes" in tables:
        import json

        v = conn.execute(text("SELECT value_json FROM study_system_attributes WHERE study_id = :s AND key = :k"),
                         {"s": sid, "k": UID_KEY}).scalar()
        uid = None if v is None else str(json.loads(v))
    return LiveStudy(name, True, int(sid), ids, uid)


@dataclass
class Orphans:
    """The rows of a study name that are not tied to Optuna's study of that name (`LiveStudy`):
    at_trials rows (with their measurements), the at_runs rows only they reference or that record
    another Optuna study id, and, when any trial row is an orphan, the study's at_confirmations
    and at_tuned rows written before ``cutoff`` (the first start of a tied trial; now when none)."""

    live: LiveStudy
    trial_ids: list[int] = field(default_factory=list)  # at_trials.id
    trial_numbers: list[int] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)
    cutoff: Optional[dt.datetime] = None

    def __bool__(self) -> bool:
        return bool(self.trial_ids or self.run_ids)

    def text(self) -> str:
        return (f"{len(self.trial_ids)} trial row(s) and {len(self.run_ids)} run row(s) of study {self.live.name!r} "
                f"not in Optuna's study of that name")


def find_orphans(s: Session, name: str) -> Orphans:
    """Our rows of study ``name`` that Optuna's storage does not hold (`Orphans`). Our rows are read
    before Optuna's (a driver asks Optuna for a trial before it writes the trial's row), so a trial
    another driver is starting is never taken for an orphan."""
    trials = s.scalars(select(TrialRow).where(TrialRow.study_name == name)).all()
    runs = s.scalars(select(Run).where(Run.study_name == name)).all()
    live = live_study(s, name)
    o = Orphans(live)
    if not live.has_optuna:
        return o
    tied = [t for t in trials if live.tied(t)]
    for t in trials:
        if not live.tied(t):
            o.trial_ids.append(t.id)
            o.trial_numbers.append(t.number)
    used = {t.run_id for t in tied}
    starts = [t.started_at for t in tied if t.started_at is not None]
    o.cutoff = min(starts) if starts else utcnow()
    for r in runs:
        if r.id in used:
            continue
        if r.optuna_study_uid is not None or r.optuna_study_id is not None:
            if r.optuna_study_id != live.study_id or (r.optuna_study_uid is not None and r.optuna_study_uid != live.uid):
                o.run_ids.append(r.id)
        elif o.trial_ids and r.started_at is not None and r.started_at < o.cutoff:
            o.run_ids.append(r.id)
    return o


"""The results database: one SQLAlchemy URL holds Optuna's study storage and our own tables.

``--storage`` (checked by `results.storage`; default ``sqlite:///results/autotune.db``; PostgreSQL
works the same with ``postgresql+psycopg://user@host/db``) is given both to ``optuna.storages.RDBStorage``
(its own ``studies`` / ``trials`` / ... tables) and to the SQLAlchemy 2.0 models below, whose
tables all start with ``at_``. Only the search driver writes; workers return results.

Schema (one row per ...):

``at_runs`` - one invocation of ``python -m autotune.search``
    id PK, study_name, started_at, ended_at (NULL while running or after a crash),
    heartbeat_at (refreshed by the live driver), status (running | finished | interrupted | failed),
    host, pid, command_line, device, hardware (JSON: device/GPU or CPU model, driver, CUDA, cores),
    versions (JSON: python, torch, triton, optuna, ray, sqlalchemy, ...), git_revision,
    space_path, space (JSON: the validated space, after command-line overrides), executor,
    end_reason (why a run ended other than by its driver: "driver died: ..." when the next driver
    found it dead; status "died"), optuna_study_id, optuna_study_uid (the Optuna study it ran),
    cluster (JSON, schema version 3: the Ray cluster the run's workers ran on - address, where the
    address came from, Ray version, authentication mode; NULL for the local executor).

Ties to Optuna. Every at_runs / at_trials row records the Optuna study it belongs to: its id and
its identity token (the study's system attribute ``autotune:uid``, `ensure_study_uid`; SQLite
reuses the ids of deleted studies and trials, the token is deleted with the study); at_trials
also the Optuna trial id. A row whose study no longer holds that trial is an orphan
(`LiveStudy`, `find_orphans`): export and report never cite it, and the search, the export and
``python -m autotune.copy_study`` remove or leave it behind (`Database.drop_orphans`).

``at_trials`` - one Optuna trial (unique per (study_name, number))
    id PK, run_id FK -> at_runs (the run that measured it), study_name, number (Optuna's trial
    number), optuna_trial_id, params (JSON, flat ``pattern.x`` / ``kernel.x``), pattern (JSON,
    PatternConfig.to_dict()), kernel (JSON KernelConfig.to_dict() or NULL), state (RUNNING |
    COMPLETE | FAIL), reason (why it failed: "gate failed: ...", "out of memory: ...", an exception,
    "worker died: ...", "interrupted"), retry_of (number of the interrupted trial it re-runs),
    objectives (JSON list, order of the space's objectives), objective_names (JSON list),
    constraints (JSON list, <= 0 feasible, worst over cells), constraint_names (JSON list),
    feasible (all constraints <= 0), gate (JSON: gate errors and tolerances), timing (JSON: seconds
    in gate / candidate / baselines / accuracy / total), worker (JSON: host, pid),
    started_at, finished_at, lease_until (no longer written: Optuna's trial heartbeat replaced it),
    optuna_study_id and optuna_study_uid (the Optuna study the row belongs to, `LiveStudy`).

``at_measurements`` - one (trial, workload, bucket)
    id PK, trial_id FK -> at_trials, workload, kind (msa_row | triangle | evoformer), bucket (L), batch, heads,
    head_dim, dtype, mode (fwd | fwd+bwd), sparsity, time_ms (median), time_p10_ms, time_p90_ms,
    repeats, peak_mib (above the inputs), memory_method (cuda_allocator | rss_hwm | rss_sampled),
    sdpa_ms, sdpa_p10_ms, sdpa_p90_ms, sdpa_peak_mib, naive_ms, naive_peak_mib (NULL: the baseline
    ran out of memory), speedup (median of the per-round ratios sdpa / candidate of the paired,
    interleaved timing), speedup_lo / speedup_hi / speedup_level (its confidence interval and
    achieved level), timing_stop (converged | max_repeats | time_cap), speedup_naive, memory_vs_sdpa,
    memory_vs_naive (peak / max(baseline peak, 1 MiB)), accuracy (JSON: all metrics of
    evaluate_pattern at this bucket, n_chains, extrapolated, note), accuracy_metric,
    accuracy_value, violations (JSON: constraint name -> violation at this cell), feasible.

``at_tuned`` - one exported (study, bucket) choice
    id PK, study_name, bucket, trial_number, pattern (JSON), kernel (JSON), speedup (JSON per
    workload), peak_mib (JSON per workload), accuracy (JSON), hardware (JSON), rule, out_path,
    exported_at.

``at_confirmations`` - one re-measurement of a bucket's leader (`Confirmation`, written by
    ``autotune.confirm``, read by the rule of `results.verdict`).

``at_bench_runs``, ``at_kernel_bench``, ``at_evoformer_bench`` - ingested benchmark CSVs
    (`results.bench_tables`).

``at_schema`` - one row: the schema version the database was written with (`SchemaVersion`).

Schema version. ``SCHEMA_VERSION`` is the version of the tables above; a new database gets the row
when its tables are created. Opening a database checks it before anything is written
(`check_schema`): an older one (version 1 = a database written before the version row existed:
our tables, no ``at_schema``) is refused with one line naming the command that upgrades it
(``python -m autotune.upgrade --storage URL``, `upgrade_schema`), a newer one with one line saying
that this code is too old for it (`SchemaError`, exit status 2 in every command).

Another application's database. A database that has tables but neither Optuna's
(`OPTUNA_SCHEMA_TABLES`) nor ours (``at_schema``, or at_ tables with our columns: written before the
version row) is refused with one line before anything is written (`refuse_foreign`, called before
our tables or Optuna's are created and when a database is opened), and `upgrade_schema` changes
only a database whose at_ tables are ours.

All of one trial's writes (its at_trials row update and its at_measurements rows) happen in one
transaction (`Database.record_result`).

Concurrency. Several drivers may share one database (and one study). Schema creation is safe when
they start at once on a fresh database (`create_schema`: under a PostgreSQL advisory lock, and
retried when SQLite reports a concurrent creation). A trial's slot in the study's budget is claimed
atomically (`Database.claim_trial`): the count of the study's occupying trials and the insert of
the new row happen in one transaction that holds the study's write lock (SQLite: the database
write lock, taken by the transaction's first statement; PostgreSQL: a transaction-level advisory
lock on the study name), so drivers sharing a study never exceed its budget and never measure a
parameter set that is already measured or running. A database's schema changes only through
`upgrade_schema` (its version row says which steps it has had).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship, sessionmaker

from .base import PREFIX, Base, utcnow
from .bench_tables import BenchRun, EvoformerBenchRow, KernelBenchRow  # noqa: F401  (created with the tables below)
from .storage import DEFAULT_STORAGE, StorageError, mask_url  # noqa: F401  (DEFAULT_STORAGE: re-exported)

# The version of the schema this code reads and writes (module docstring). Version 1: databases
# written before the version row existed. Version 2: the at_schema row. Version 3: at_runs.cluster.
SCHEMA_VERSION = 3
UNVERSIONED = 1
UPGRADE_COMMAND = "python -m autotune.upgrade --storage {url}"
# at_trials.reason of trials that were not measured to the end and are run again (a retry row
# takes their place in the budget): they occupy no budget slot.
RETRIED_REASONS = ("interrupted", "node lost")
SCHEMA_LOCK = 0x61745F73  # PostgreSQL advisory-lock key of schema creation ("at_s")


class Run(Base):
    __tablename__ = PREFIX + "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(32), default="running")
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    command_line: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(String(16))
    hardware: Mapped[Any] = mapped_column(JSON)
    versions: Mapped[Any] = mapped_column(JSON)
    git_revision: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    space_path: Mapped[str] = mapped_column(Text)
    space: Mapped[Any] = mapped_column(JSON)
    executor: Mapped[str] = mapped_column(String(32))
    end_reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    optuna_study_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    optuna_study_uid: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    cluster: Mapped[Any] = mapped_column(JSON, nullable=True)
    stats: Mapped[Any] = mapped_column(JSON, nullable=True)  # the run's phases and rates (autotune.search.run_stats)


class TrialRow(Base):
    __tablename__ = PREFIX + "trials"
    __table_args__ = (UniqueConstraint("study_name", "number", name=PREFIX + "trials_study_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey(PREFIX + "runs.id"), index=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    number: Mapped[int] = mapped_column(Integer)
    optuna_trial_id: Mapped[int] = mapped_column(Integer)
    optuna_study_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    optuna_study_uid: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    params: Mapped[Any] = mapped_column(JSON)
    pattern: Mapped[Any] = mapped_column(JSON)
    kernel: Mapped[Any] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="RUNNING")
    reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    retry_of: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    objectives: Mapped[Any] = mapped_column(JSON, nullable=True)
    objective_names: Mapped[Any] = mapped_column(JSON, nullable=True)
    constraints: Mapped[Any] = mapped_column(JSON, nullable=True)
    constraint_names: Mapped[Any] = mapped_column(JSON, nullable=True)
    feasible: Mapped[Optional[bool]] = mapped_column(Boolean, nullable=True)
    gate: Mapped[Any] = mapped_column(JSON, nullable=True)
    timing: Mapped[Any] = mapped_column(JSON, nullable=True)
    worker: Mapped[Any] = mapped_column(JSON, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    lease_until: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    measurements: Mapped[list["Measurement"]] = relationship(back_populates="trial", cascade="all, delete-orphan")


class Measurement(Base):
    __tablename__ = PREFIX + "measurements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey(PREFIX + "trials.id"), index=True)
    workload: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    bucket: Mapped[int] = mapped_column(Integer, index=True)
    batch: Mapped[int] = mapped_column(Integer)
    heads: Mapped[int] = mapped_column(Integer)
    head_dim: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))
    sparsity: Mapped[float] = mapped_column(Float)
    time_ms: Mapped[float] = mapped_column(Float)
    time_p10_ms: Mapped[float] = mapped_column(Float)
    time_p90_ms: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    peak_mib: Mapped[float] = mapped_column(Float)
    memory_method: Mapped[str] = mapped_column(String(32))
    sdpa_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    sdpa_p10_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    sdpa_p90_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    sdpa_peak_mib: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    naive_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    naive_peak_mib: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    # paired timing (kernels.measure.time_paired): the speedup's confidence interval, its achieved
    # level and why the loop stopped (converged | max_repeats | time_cap); repeats = rounds
    speedup_lo: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_hi: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_level: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    timing_stop: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    speedup_naive: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    memory_vs_sdpa: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    memory_vs_naive: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    accuracy: Mapped[Any] = mapped_column(JSON, nullable=True)
    accuracy_metric: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    accuracy_value: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    violations: Mapped[Any] = mapped_column(JSON, nullable=True)
    feasible: Mapped[bool] = mapped_column(Boolean)
    trial: Mapped[TrialRow] = relationship(back_populates="measurements")


class Tuned(Base):
    __tablename__ = PREFIX + "tuned"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    bucket: Mapped[int] = mapped_column(Integer)
    trial_number: Mapped[int] = mapped_column(Integer)
    pattern: Mapped[Any] = mapped_column(JSON)
    kernel: Mapped[Any] = mapped_column(JSON, nullable=True)
    speedup: Mapped[Any] = mapped_column(JSON)
    peak_mib: Mapped[Any] = mapped_column(JSON)
    accuracy: Mapped[Any] = mapped_column(JSON, nullable=True)
    hardware: Mapped[Any] = mapped_column(JSON, nullable=True)
    rule: Mapped[str] = mapped_column(Text)
    out_path: Mapped[str] = mapped_column(Text)
    exported_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Confirmation(Base):
    """``at_confirmations``: one (confirmation pass, bucket, workload, trial) re-measurement.

    confirm_id groups one pass; complete_trials is the number of COMPLETE trials of the study when
    it ran (a later trial makes the pass stale); speedup / speedup_lo / speedup_hi the paired
    estimate and its interval at ``level``; repeats the rounds; time_ms / sdpa_ms the medians of the
    candidate and of SDPA in the same loop; stop why the loop ended; hardware the machine; stage
    None for the leaders' joint re-measurement, ``"holdout"`` for the chosen config's own one."""

    __tablename__ = "at_confirmations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    confirm_id: Mapped[int] = mapped_column(Integer, index=True)
    complete_trials: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[int] = mapped_column(Integer)
    workload: Mapped[str] = mapped_column(String(64))
    trial_number: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)  # rank among the bucket's leaders before confirmation
    speedup: Mapped[float] = mapped_column(Float)
    speedup_lo: Mapped[float] = mapped_column(Float)
    speedup_hi: Mapped[float] = mapped_column(Float)
    level: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    time_ms: Mapped[float] = mapped_column(Float)
    sdpa_ms: Mapped[float] = mapped_column(Float)
    stop: Mapped[str] = mapped_column(String(32))
    hardware: Mapped[Any] = mapped_column(JSON, nullable=True)
    stage: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)  # None: confirmation; "holdout"
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SchemaVersion(Base):
    """``at_schema``: one row (id 1), the schema version of the database and when it was written."""

    __tablename__ = PREFIX + "schema"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    written_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SchemaError(StorageError):
    """A database whose schema version is not this code's (`check_schema`); ``str()`` is one line.
    ``found`` is the database's version, ``older`` whether it is older than the code's."""

    def __init__(self, message: str, found: int) -> None:
        super().__init__(message)
        self.found = found
        self.older = found < SCHEMA_VERSION


class ForeignDatabaseError(StorageError):
    """A database with tables that are neither Optuna's nor ours (`refuse_foreign`): left as it is."""


def make_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _pragma(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


def _is_creation_race(e: Exception) -> bool:
    msg = str(e).lower()
    return any(s in msg for s in ("already exists", "unique", "duplicate", "locked", "pg_type"))


def retry_creation(fn, what: str, attempts: int = 12):
    """Run ``fn()`` (a schema creation), again after a short pause when it lost a race with another
    process creating the same schema (the second try finds the tables there)."""
    for i in range(attempts):
        try:
            return fn()
        except (IntegrityError, OperationalError, ProgrammingError) as e:
            if i == attempts - 1 or not _is_creation_race(e):
                raise
            time.sleep(0.1 * (i + 1))
    raise AssertionError(what)  # pragma: no cover


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Serialise schema creation between processes: a PostgreSQL session advisory lock (SQLite:
    nothing; its creation races are retried by `retry_creation`)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK})
            conn.commit()


def _add_missing_columns(conn: Any) -> None:
    """Add model columns missing from an existing table (a database created by an older version);
    only nullable columns, which need no value for the existing rows."""
    insp = inspect(conn)
    for table in Base.metadata.sorted_tables:
        if not insp.has_table(table.name):
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have and col.nullable:
                ctype = col.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ctype}'))


def schema_version(conn: Any) -> Optional[int]:
    """The schema version of the database on ``conn``: its ``at_schema`` row; `UNVERSIONED` for a
    database with our tables but no ``at_schema`` table (written before the row existed); None for
    one without our tables (new, or Optuna's alone) and for one whose schema is being created by
    another process right now (``at_schema`` is the first table created, its row follows)."""
    tables = [t for t in inspect(conn).get_table_names() if t.startswith(PREFIX)]
    if not tables:
        return None
    if SchemaVersion.__tablename__ not in tables:
        return UNVERSIONED
    return conn.execute(select(SchemaVersion.version).where(SchemaVersion.id == 1)).scalar()


# Optuna's RDB storage: these tables are always there once Optuna has created its schema
OPTUNA_SCHEMA_TABLES = frozenset({"studies", "version_info", "alembic_version"})


def _fits_our_tables(conn: Any, names: set) -> bool:
    """Whether every at_ table in ``names`` is one of ours as an older version wrote it: a table
    of `Base.metadata` whose columns are all the model's and include every non-nullable one (an
    upgrade adds only nullable columns, so a table of ours always has those)."""
    insp = inspect(conn)
    for name in (n for n in names if n.startswith(PREFIX)):
        table = Base.metadata.tables.get(name)
        if table is None:
            return False
        have = {c["name"] for c in insp.get_columns(name)}
        model = {c.name for c in table.columns}
        required = {c.name for c in table.columns if not c.nullable}
        if not have <= model or not required <= have:
            return False
    return True


def foreign_tables(conn: Any) -> Optional[list[str]]:
    """The tables of a database that is neither new nor Optuna's nor ours (sorted), else None.
    Ours: an ``at_schema`` table, or at_ tables that fit our models (`_fits_our_tables`, a
    database written before the version row); Optuna's: `OPTUNA_SCHEMA_TABLES`. Only reads."""
    names = set(inspect(conn).get_table_names())
    if not names or SchemaVersion.__tablename__ in names or OPTUNA_SCHEMA_TABLES <= names:
        return None
    if any(n.startswith(PREFIX) for n in names) and _fits_our_tables(conn, names):
        return None
    return sorted(names)


def refuse_foreign(conn: Any, url: str) -> None:
    """`ForeignDatabaseError` (one line) if the database on ``conn`` belongs to another application
    (`foreign_tables`): no command adds tables to it or changes it."""
    tables = foreign_tables(conn)
    if tables is not None:
        shown = ", ".join(tables[:8]) + (f", ... ({len(tables)} tables)" if len(tables) > 8 else "")
        raise ForeignDatabaseError(f"database {mask_url(url)} belongs to another application (tables: {shown}; "
                                   "neither Optuna's nor autotune's): nothing was written; give a new or empty database")


def check_schema(conn: Any, url: str) -> Optional[int]:
    """Raise `SchemaError` (one line) unless the database on ``conn`` is new or at `SCHEMA_VERSION`;
    returns its version (None: no tables of ours yet)."""
    found = schema_version(conn)
    if found is None or found == SCHEMA_VERSION:
        return found
    where = mask_url(url)
    if found < SCHEMA_VERSION:
        what = "no at_schema row: written before schema versions" if found == UNVERSIONED else f"version {found}"
        raise SchemaError(f"database {where} has an older schema ({what}) than this code's (version {SCHEMA_VERSION}); "
                          f"upgrade it with: {UPGRADE_COMMAND.format(url=where)}", found)
    raise SchemaError(f"database {where} has schema version {found}, newer than this code's (version {SCHEMA_VERSION}): "
                      f"use a newer protein-sparse-autotune for it; nothing was written", found)


def create_schema(engine: Engine) -> None:
    """Create our tables with the version row, safe when drivers start at once: under a PostgreSQL
    advisory lock; SQLite creation races are retried. ``at_schema`` is created before the other
    tables (SQLite commits each CREATE TABLE at once), so a database that has our tables but no
    ``at_schema`` is always an old one, never one being created. A database at another version
    raises `SchemaError` and is left as it was."""

    def create() -> None:
        with engine.begin() as conn:
            url = engine.url.render_as_string(hide_password=False)
            refuse_foreign(conn, url)  # another application's database: no table is added to it
            found = check_schema(conn, url)
            if found == SCHEMA_VERSION:
                Base.metadata.create_all(conn)  # tables of this version missing from it: nothing else
                return
            SchemaVersion.__table__.create(conn, checkfirst=True)
            Base.metadata.create_all(conn)
            if conn.execute(select(SchemaVersion.id).where(SchemaVersion.id == 1)).scalar() is None:
                conn.execute(SchemaVersion.__table__.insert().values(id=1, version=SCHEMA_VERSION, written_at=utcnow()))

    with schema_lock(engine):
        retry_creation(create, "create the at_ tables")


# the steps from one schema version to the next: version -> fn(conn), run in one transaction
def _upgrade_from_1(conn: Any) -> None:
    """Version 1 (before the version row) -> 2: the tables and nullable columns added since the
    database was created (at_confirmations, its stage column, ...), and the version row."""
    SchemaVersion.__table__.create(conn, checkfirst=True)
    Base.metadata.create_all(conn)
    _add_missing_columns(conn)


def _upgrade_from_2(conn: Any) -> None:
    """Version 2 -> 3: at_runs.cluster and at_runs.stats (NULL for the runs before them)."""
    _add_missing_columns(conn)


UPGRADES = {1: _upgrade_from_1, 2: _upgrade_from_2}


def upgrade_schema(url: str) -> tuple[Optional[int], int]:
    """Bring the database at ``url`` to `SCHEMA_VERSION` (``python -m autotune.upgrade``): run the
    steps of `UPGRADES` from its version on and write the version row, in one transaction (under
    the schema lock). Returns (version found, version now). A database without our tables or newer
    than the code raises `SchemaError` / `StorageError` and is not touched."""
    engine = make_engine(url)
    try:
        with schema_lock(engine), engine.begin() as conn:
            found = schema_version(conn)
            if found is None:
                raise StorageError(f"database {mask_url(url)} holds no autotune tables: nothing to upgrade")
            if found == UNVERSIONED and not _fits_our_tables(conn, set(inspect(conn).get_table_names())):
                # at_ names but not our tables (no at_schema row to prove them ours): not ours to change
                raise ForeignDatabaseError(f"database {mask_url(url)} has tables named like autotune's but not "
                                           "autotune's (no at_schema row, other columns): not upgraded, nothing written")
            if found > SCHEMA_VERSION:
                check_schema(conn, url)
            for v in range(found, SCHEMA_VERSION):
                UPGRADES[v](conn)
            if found < SCHEMA_VERSION:
                conn.execute(text(f"DELETE FROM {SchemaVersion.__tablename__}"))
                conn.execute(SchemaVersion.__table__.insert().values(id=1, version=SCHEMA_VERSION, written_at=utcnow()))
        return found, SCHEMA_VERSION
    finally:
        engine.dispose()


def create_optuna_storage(url: str, engine_kwargs: Optional[dict] = None, **options: Any):
    """``optuna.storages.RDBStorage(url, **options)`` (e.g. ``heartbeat_interval``,
    ``grace_period``, ``heartbeat_stale_trial_callback``), safe when drivers create it at once on a
    fresh database (Optuna's own table creation and alembic stamp race otherwise: a unique
    violation on alembic_version with SQLite, on pg_type with PostgreSQL)."""
    import optuna

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            refuse_foreign(conn, url)  # another application's database: Optuna adds no table to it
        with schema_lock(engine):
            return retry_creation(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs or {}, **options),
                                  "create Optuna's tables")
    finally:
        engine.dispose()


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
                run.end_reason = (f"driver died: found gone by run {by_run} at {utcnow():%Y-%m-%d %H:%M:%S} UTC "
                                  f"(host {run.host}, pid {run.pid}, last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC)")
                done.append(run.id)
        return done

    # -- the shared budget -------------------------------------------------------------------------
    @staticmethod
    def _occupying(t: "TrialRow") -> bool:
        """Whether a trial row holds a budget slot: running, complete, or failed for a reason that
        is not retried (RETRIED_REASONS)."""
        if t.state in ("RUNNING", "COMPLETE"):
            return True
        return t.state == "FAIL" and not (t.reason or "").startswith(RETRIED_REASONS)

    def _lock_study(self, s: Session, study: str, run_id: int) -> None:
        if self.engine.dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _study_lock_key(study)})
        else:  # SQLite: a write as the transaction's first statement takes the database write lock
            s.execute(text(f"UPDATE {Run.__tablename__} SET heartbeat_at = heartbeat_at WHERE id = :i"), {"i": run_id})

    def claim_trial(self, fields: dict[str, Any], budget: int, *, allow_repeats: bool = False) -> tuple[str, Optional[int]]:
        """Insert the at_trials row of a new trial if the study has a free budget slot and (unless
        ``allow_repeats``) no occupying trial with the same params; atomically (module docstring).
        Returns ("ok", None), ("budget", None) or ("duplicate", number of the earlier trial)."""
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
                for t in occupying:
                    if t.params == fields["params"] and t.number != fields["number"]:
                        if retry_of is not None:  # the retry is not needed: release its reservation
                            for o in rows:
                                if o.number == retry_of and o.state == "FAIL":
                                    o.reason = f"{o.reason} (retry skipped: measured by trial {t.number})"
                        return "duplicate", t.number
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
        reserved = [t for t in rows if not self._occupying(t) and t.state == "FAIL" and t.number not in retried
                    and "(retry skipped" not in (t.reason or "")]
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
            return [t for t in rows if t.state == "FAIL" and (t.reason or "").startswith(RETRIED_REASONS)
                    and t.number not in retried and "(retry skipped" not in (t.reason or "")]

    def count_running(self, study: str) -> int:
        """Trials of ``study`` in state RUNNING (measured now, by any driver)."""
        with self.Session() as s:
            return len(s.scalars(select(TrialRow.id).where(TrialRow.study_name == study, TrialRow.state == "RUNNING")).all())

    def count_finished(self, study: str) -> int:
        """Trials of ``study`` finished for good (complete, or failed for a reason not retried)."""
        with self.Session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.study_name == study, TrialRow.state != "RUNNING")).all()
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
                t.state, t.reason, t.finished_at, t.lease_until = "FAIL", reason, utcnow(), None

    def record_result(self, study: str, number: int, *, state: str, reason: Optional[str], fields: dict[str, Any],
                      measurements: list[dict[str, Any]]) -> None:
        """Write one trial's outcome and all its measurements in one transaction."""
        with self.session() as s:
            t = s.scalar(select(TrialRow).where(TrialRow.study_name == study, TrialRow.number == number))
            if t is None:
                raise KeyError(f"no at_trials row for study {study!r} trial {number}")
            t.state, t.reason, t.finished_at, t.lease_until = state, reason, utcnow(), None
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


# -- ties to Optuna's study and trial ids -------------------------------------------------------------

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

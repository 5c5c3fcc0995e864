"""Creating, checking and upgrading the schema of the results database, and refusing a foreign one.

The rules are `results.db`'s docstring (sections "Schema version", "Another application's
database", "Concurrency"): `create_schema` creates our tables with the version row, safe when
drivers start at once; `check_schema` refuses a database at another version with one line
(`SchemaError`); `refuse_foreign` refuses another application's database before anything is written
(`ForeignDatabaseError`); `upgrade_schema` runs the steps of `UPGRADES` from the database's version
to `SCHEMA_VERSION` in one transaction; `create_optuna_storage` creates Optuna's tables under the
same lock.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from .base import PREFIX, Base, utcnow
from .storage import StorageError, mask_url
from .tables import SCHEMA_VERSION, UNVERSIONED, SchemaVersion

UPGRADE_COMMAND = "python -m autotune.upgrade --storage {url}"
SCHEMA_LOCK = 0x61745F73  # PostgreSQL advisory-lock key of schema creation ("at_s")


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


def _upgrade_from_3(conn: Any) -> None:
    """Version 3 -> 4: at_evoformer_bench.checkpoint (NULL for the rows before it: no checkpointing)."""
    _add_missing_columns(conn)


UPGRADES = {1: _upgrade_from_1, 2: _upgrade_from_2, 3: _upgrade_from_3}


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


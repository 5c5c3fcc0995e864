"""The results database's schema version (`results.db`): a new database gets the version row; one
written before the row existed (``tests/data/schema_v1.sql``: a study with measurements, a
confirmation and an export, written by the code of the last commit before schema versions) is
refused by every command with one line naming ``python -m autotune.upgrade``, which upgrades it so
that the export and the report give the answers they gave before; a database newer than the code
is refused with one line, exit status 2, and nothing written."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autotune.copy_study import main as copy_main
from autotune.export import main as export_main
from autotune.ingest import main as ingest_main
from autotune.report.__main__ import main as report_main
from autotune.search import main as search_main
from autotune.upgrade import main as upgrade_main
from results.db import SCHEMA_VERSION, Database, SchemaError
from test_search import ROOT, rows, write_space

V1 = Path(__file__).parent / "data" / "schema_v1.sql"
KERNEL_CSV = ROOT / "benchmarks" / "results" / "cpu-2cores.csv"


def v1_database(tmp_path: Path, name: str = "v1.db") -> Path:
    db = tmp_path / name
    con = sqlite3.connect(db)
    con.executescript(V1.read_text())
    con.close()
    return db


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def commands(db: Path, tmp_path: Path) -> dict[str, tuple]:
    """Every command that opens the database, with the study of the fixture."""
    url = f"sqlite:///{db}"
    return {
        "export": (export_main, ["--study", "v1", "--storage", url, "--out", str(tmp_path / "t.yaml")]),
        "report": (report_main, ["--storage", url, "--out", str(tmp_path / "r.md")]),
        "ingest": (ingest_main, ["--storage", url, "--kernel-csv", str(KERNEL_CSV)]),
        "copy_study": (copy_main, ["--study", "v1", "--from", url, "--to", str(tmp_path / "copy.db")]),
        "copy_study to": (copy_main, ["--study", "v1", "--from", str(v1_upgraded(tmp_path)), "--to", url,
                                      "--to-study", "v1b"]),
        "search": (search_main, ["--space", str(tmp_path / "tiny.yaml"), "--storage", url, "--executor", "local",
                                 "--no-progress", "--trials", "1"]),
    }


def v1_upgraded(tmp_path: Path) -> Path:
    db = tmp_path / "other.db"
    if not db.exists():
        v1_database(tmp_path, "other.db")
        assert upgrade_main(["--storage", str(db)]) == 0
    return db


def test_a_new_database_gets_the_version_row(tmp_path):
    db = tmp_path / "new.db"
    Database(f"sqlite:///{db}").close()
    assert rows(db, "select id, version from at_schema") == [(1, SCHEMA_VERSION)]
    Database(f"sqlite:///{db}").close()  # opened again: still one row
    Database(f"sqlite:///{db}", create=False).close()
    assert rows(db, "select id, version from at_schema") == [(1, SCHEMA_VERSION)]


def test_drivers_creating_one_database_at_once(tmp_path):
    """Several processes creating the same new database: each opens it, one version row."""
    db = tmp_path / "race.db"
    code = f"from results.db import Database; Database({f'sqlite:///{db}'!r}).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errs
    assert rows(db, "select id, version from at_schema") == [(1, SCHEMA_VERSION)]


@pytest.mark.parametrize("cmd", ["export", "report", "ingest", "copy_study", "copy_study to", "search"])
def test_an_older_database_is_refused_with_the_upgrade_command(tmp_path, capsys, cmd):
    db = v1_database(tmp_path)
    _write_tiny_space(tmp_path)
    fn, argv = commands(db, tmp_path)[cmd]
    capsys.readouterr()
    before = digest(db)
    assert fn(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "older schema" in err[0] and f"python -m autotune.upgrade --storage sqlite:///{db}" in err[0], err
    assert digest(db) == before  # nothing written
    assert not (tmp_path / "t.yaml").exists() and not (tmp_path / "r.md").exists()


def _write_tiny_space(tmp_path: Path) -> None:
    """A small space file for the search (it stops at the database, before measuring)."""
    write_space(tmp_path)


def test_upgrade_keeps_every_answer(tmp_path, capsys):
    """The upgraded database gives the export and the report the answer the old code exported."""
    db = v1_database(tmp_path)
    old_tuned = rows(db, "select bucket, trial_number from at_tuned")
    n = {t: rows(db, f"select count(*) from {t}")[0][0] for t in ("at_runs", "at_trials", "at_measurements",
                                                                   "at_confirmations", "trials")}
    assert upgrade_main(["--storage", str(db)]) == 0
    assert f"from schema version 1 to {SCHEMA_VERSION}" in capsys.readouterr().err
    assert rows(db, "select version from at_schema") == [(SCHEMA_VERSION,)]
    assert {t: rows(db, f"select count(*) from {t}")[0][0] for t in n} == n  # nothing lost
    tables = {r[0] for r in rows(db, "select name from sqlite_master where type = 'table'")}
    assert {"at_bench_runs", "at_kernel_bench", "at_evoformer_bench"} <= tables  # added by the upgrade
    out = tmp_path / "t.yaml"
    # the confirmation of the old database is current: no re-measurement, the same choice
    assert export_main(["--study", "v1", "--storage", str(db), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "confirming" not in err, err
    doc = yaml.safe_load(out.read_text())
    assert [(b["seq_len"], b["source"]["trial"]) for b in doc["buckets"]] == old_tuned
    assert report_main(["--storage", str(db), "--out", str(tmp_path / "r.md")]) == 0
    report = (tmp_path / "r.md").read_text()
    (L, trial), = old_tuned
    assert f"**Deploy the tuned pattern at L = {L}**" in report and f"  - L={L}: t#{trial} (" in report
    assert upgrade_main(["--storage", str(db)]) == 0  # again: nothing to do
    assert "already" in capsys.readouterr().err


def test_upgrade_adds_missing_tables_and_columns(tmp_path):
    """An older database lacking a table and a nullable column the code has gets them."""
    db = v1_database(tmp_path)
    con = sqlite3.connect(db)
    con.execute("drop table at_confirmations")
    con.execute("alter table at_measurements drop column timing_stop")
    con.commit()
    con.close()
    assert upgrade_main(["--storage", str(db)]) == 0
    cols = {r[1] for r in rows(db, "pragma table_info(at_measurements)")}
    assert "timing_stop" in cols
    assert rows(db, "select count(*) from at_confirmations") == [(0,)]


def test_upgrade_from_version_3_adds_the_evoformer_checkpoint_column(tmp_path, capsys):
    """Version 3 -> 4: at_evoformer_bench.checkpoint is added (NULL for the rows already there)."""
    db = tmp_path / "v3.db"
    Database(f"sqlite:///{db}").close()
    con = sqlite3.connect(db)
    con.execute("alter table at_evoformer_bench drop column checkpoint")
    con.execute("update at_schema set version = 3")
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match="older schema"):
        Database(f"sqlite:///{db}")
    assert upgrade_main(["--storage", str(db)]) == 0
    assert f"from schema version 3 to {SCHEMA_VERSION}" in capsys.readouterr().err
    assert "checkpoint" in {r[1] for r in rows(db, "pragma table_info(at_evoformer_bench)")}
    assert rows(db, "select version from at_schema") == [(SCHEMA_VERSION,)]
    Database(f"sqlite:///{db}").close()


def test_a_newer_database_is_refused_and_left_alone(tmp_path, capsys):
    db = tmp_path / "new.db"
    Database(f"sqlite:///{db}").close()
    con = sqlite3.connect(db)
    con.execute("update at_schema set version = ?", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    _write_tiny_space(tmp_path)
    before = digest(db)
    cmds = commands(db, tmp_path)
    for name in ("export", "report", "ingest", "search", "copy_study to"):
        fn, argv = cmds[name]
        capsys.readouterr()
        assert fn(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "newer than this code's" in err[0] and "nothing was written" in err[0], (name, err)
        assert digest(db) == before, name
    assert upgrade_main(["--storage", str(db)]) == 2
    assert "newer" in capsys.readouterr().err
    with pytest.raises(SchemaError) as e:
        Database(f"sqlite:///{db}")
    assert not e.value.older and e.value.found == SCHEMA_VERSION + 1
    assert digest(db) == before


def test_upgrade_refuses_what_it_cannot_upgrade(tmp_path, capsys):
    assert upgrade_main(["--storage", str(tmp_path / "missing.db")]) == 2
    assert "no database file" in capsys.readouterr().err
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert upgrade_main(["--storage", str(empty)]) == 2
    assert "no autotune tables" in capsys.readouterr().err
    assert rows(empty, "select name from sqlite_master") == []


PG_URL = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")


@pytest.mark.skipif(not PG_URL, reason="set AUTOTUNE_TEST_POSTGRES_URL to a PostgreSQL database to run")
def test_postgresql_versions(capsys):
    """On PostgreSQL (in a schema of its own): an older database - today's tables without
    ``at_schema`` and without a column added since - is refused, upgraded, then opens; a newer one
    is refused with nothing written."""
    import uuid

    from sqlalchemy import create_engine, text

    from results.db import Base

    name = f"v1_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f"CREATE SCHEMA {name}"))
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{name}"
    try:
        old = create_engine(url)
        with old.begin() as c:
            Base.metadata.create_all(c, tables=[t for t in Base.metadata.sorted_tables if t.name != "at_schema"])
            c.execute(text("ALTER TABLE at_confirmations DROP COLUMN stage"))
        old.dispose()
        with pytest.raises(SchemaError, match="older schema"):
            Database(url)
        assert upgrade_main(["--storage", url]) == 0
        d = Database(url)
        with d.engine.connect() as c:
            assert c.execute(text("SELECT version FROM at_schema")).all() == [(SCHEMA_VERSION,)]
            c.execute(text("UPDATE at_schema SET version = :v"), {"v": SCHEMA_VERSION + 1})
            c.commit()
        d.close()
        capsys.readouterr()
        assert export_main(["--study", "x", "--storage", url, "--out", "never.yaml"]) == 2
        assert "newer than this code's" in capsys.readouterr().err
        assert not Path("never.yaml").exists()
    finally:
        with admin.begin() as c:
            c.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


def test_warm_start_and_verdict_read_a_stored_study_through_one_reader(tmp_path):
    """`results.verdict.read_study_at` (the warm start's and the confirmation's reader) on an upgraded
    older database: the study's complete trials, their cells and its space, readable once the
    database is closed; the warm start ranks that study's leaders from it."""
    from autotune.warmstart import read_leaders
    from results.verdict import read_study_at

    url = f"sqlite:///{v1_upgraded(tmp_path)}"
    data = read_study_at(url, "v1", create=False)
    assert data.space["name"] == "tiny" and data.trials and data.buckets == [64, 128]
    assert all(c.workload in ("row", "tri") for cs in data.cells_by_trial.values() for c in cs)
    assert read_study_at(url, "no such study").trials == {}
    leaders = read_leaders(url, "v1")
    assert leaders and {ld.bucket for ld in leaders} <= {64, 128}
    assert all(ld.trial in data.trials for ld in leaders)

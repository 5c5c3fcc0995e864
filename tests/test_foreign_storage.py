"""A database that is not ours is never changed, and an export never runs under a live search.

Real SQLite files throughout: another application's database (tables, but neither Optuna's nor
ours) is refused with one line before anything is written, by every command that may create
tables; ``autotune.upgrade`` changes only at_ tables that are ours; ``autotune.export`` on a study
whose search is still measuring says so (exit status 2) and confirms, measures and writes nothing.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from results.db import Database, ForeignDatabaseError, create_optuna_storage, upgrade_schema

ROOT = Path(__file__).resolve().parent.parent


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tables(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in con.execute("select name from sqlite_master where type = 'table'"))
    finally:
        con.close()


@pytest.fixture
def app_db(tmp_path) -> Path:
    """Another application's SQLite file: its own tables and rows."""
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("create table users (id integer primary key, name text not null)")
    con.execute("create table orders (id integer primary key, user_id integer, total real)")
    con.execute("insert into users values (1, 'ada')")
    con.commit()
    con.close()
    return path


@pytest.fixture
def fake_runs_db(tmp_path) -> Path:
    """Another application's database that happens to have a table named ``at_runs``."""
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("create table at_runs (id integer primary key, runner text, km real)")
    con.execute("insert into at_runs values (1, 'ada', 42.195)")
    con.commit()
    con.close()
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("opener", ["ours", "optuna", "reader"])
def test_no_table_is_added_to_another_applications_database(app_db, opener):
    before = _digest(app_db)
    url = f"sqlite:///{app_db}"
    with pytest.raises(ForeignDatabaseError, match="belongs to another application .*users"):
        {"ours": lambda: Database(url), "optuna": lambda: create_optuna_storage(url),
         "reader": lambda: Database(url, create=False)}[opener]()
    assert _digest(app_db) == before and _tables(app_db) == ["orders", "users"]


def test_new_optunas_and_our_databases_are_accepted(tmp_path):
    new = tmp_path / "new.db"
    Database(f"sqlite:///{new}").close()  # a new file: our tables and the version row
    assert "at_schema" in _tables(new)
    optuna_only = tmp_path / "optuna.db"
    create_optuna_storage(f"sqlite:///{optuna_only}")  # a user's own Optuna database ...
    assert "at_schema" not in _tables(optuna_only)
    Database(f"sqlite:///{optuna_only}").close()  # ... gets our tables next to Optuna's
    assert {"at_schema", "studies", "version_info"} <= set(_tables(optuna_only))
    Database(f"sqlite:///{new}").close()  # and ours is opened again as it is
    create_optuna_storage(f"sqlite:///{new}")


def test_search_refuses_another_applications_database(app_db, tmp_path, capsys):
    from autotune.search import main as search_main
    from test_search import write_space

    before = _digest(app_db)
    space = write_space(tmp_path)
    rc = search_main(["--space", str(space), "--storage", str(app_db), "--executor", "local", "--no-progress"])
    assert rc == 2
    line = _one_line(capsys)
    assert "belongs to another application" in line and "nothing was written" in line, line
    assert _digest(app_db) == before


def test_ingest_refuses_another_applications_database(app_db, tmp_path, capsys):
    from autotune.ingest import main as ingest_main

    before = _digest(app_db)
    csv = ROOT / "benchmarks" / "results" / "cpu-2cores.csv"
    assert ingest_main(["--storage", str(app_db), "--kernel-csv", str(csv)]) == 2
    assert "belongs to another application" in _one_line(capsys)
    assert _digest(app_db) == before


def test_upgrade_refuses_a_foreign_table_named_like_ours(fake_runs_db, capsys):
    from autotune.upgrade import main as upgrade_main

    before = _digest(fake_runs_db)
    with pytest.raises(ForeignDatabaseError):
        upgrade_schema(f"sqlite:///{fake_runs_db}")
    assert upgrade_main(["--storage", str(fake_runs_db)]) == 2
    line = _one_line(capsys)
    assert "not upgraded, nothing written" in line, line
    assert _digest(fake_runs_db) == before and _tables(fake_runs_db) == ["at_runs"]


def test_a_search_refuses_a_foreign_table_named_like_ours_without_suggesting_upgrade(fake_runs_db):
    before = _digest(fake_runs_db)
    with pytest.raises(ForeignDatabaseError, match="another application") as info:
        Database(f"sqlite:///{fake_runs_db}")
    assert "upgrade" not in str(info.value)
    assert _digest(fake_runs_db) == before


def test_upgrade_still_upgrades_our_own_old_database(tmp_path):
    path = tmp_path / "v1.db"
    con = sqlite3.connect(path)
    con.executescript((ROOT / "tests" / "data" / "schema_v1.sql").read_text())
    con.close()
    from results.db import SCHEMA_VERSION

    assert upgrade_schema(f"sqlite:///{path}") == (1, SCHEMA_VERSION)
    assert "at_schema" in _tables(path)


# ---- export while the search still runs --------------------------------------------------------------
def _study_with_a_running_trial(tmp_path: Path, pid: int) -> tuple[str, Database, int]:
    """A study "s" in Optuna's storage and ours: one trial RUNNING, measured by a run whose driver
    is process ``pid`` on this host."""
    import optuna

    url = f"sqlite:///{tmp_path / 'results.db'}"
    db = Database(url)
    storage = create_optuna_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    run_id = db.start_run(study_name="s", host=socket.gethostname(), pid=pid, command_line="python -m autotune.search",
                          device="cpu", hardware={}, versions={}, space_path="space.yaml", space={}, executor="local")
    db.start_trial(run_id=run_id, study_name="s", number=trial.number, optuna_trial_id=trial._trial_id,
                   params={}, pattern={}, state="RUNNING")
    return url, db, run_id


def test_export_while_trials_still_run_says_so_and_measures_nothing(tmp_path, capsys):
    from autotune.export import main as export_main

    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        url, db, run_id = _study_with_a_running_trial(tmp_path, driver.pid)
        out = tmp_path / "tuned.yaml"
        before = _digest(tmp_path / "results.db")
        assert export_main(["--study", "s", "--storage", url, "--out", str(out)]) == 2
        line = _one_line(capsys)
        assert "1 trial still running; export again when the search ends" in line, line
        assert "feasible" not in line
        assert not out.exists() and _digest(tmp_path / "results.db") == before
    finally:
        driver.kill()
        driver.wait()
    # the driver is gone: its trial will never finish, so the study is no longer "running"
    assert export_main(["--study", "s", "--storage", url, "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "still running" not in line and "no complete trial" in line, line
    assert not out.exists()
    db.close()

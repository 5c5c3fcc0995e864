"""``--storage`` values (results.storage) and secrets: every malformed URL gives one line and exit
status 2 with nothing written; a password given in a URL appears in no table, log line, report or
error message."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from results.storage import DEFAULT_STORAGE, StorageError, mask_secrets, resolve_storage

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")
PASSWORD = "Pw-7f3Kq9zX"  # a password that cannot occur by chance


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTOTUNE_STORAGE", raising=False)
    (tmp_path / "notdb.db").write_text("hello, not a database\n")
    (tmp_path / "adir").mkdir()
    sqlite3.connect(tmp_path / "real.db").execute("create table t (x)").connection.commit()
    return tmp_path


# (value, purpose, expected message part) - every one must raise StorageError
BAD_URLS = [
    ("", "write", "--storage: empty URL"),
    ("   ", "write", "--storage: empty URL"),
    ("sqlite://", "write", "is an in-memory database"),
    ("sqlite:///:memory:", "write", "is an in-memory database"),
    ("sqlite:///file:x?mode=memory&uri=true", "write", "is an in-memory database"),
    ("sqlite:///notdb.db", "write", "notdb.db is not an SQLite database"),
    ("notdb.db", "read", "notdb.db is not an SQLite database"),
    ("sqlite:///adir", "write", "adir is a directory, not a database file"),
    ("adir", "read", "adir is a directory"),
    ("sqlite:///nodir/x.db", "write", "folder"),
    ("sqlite:///missing.db", "read", "no database file missing.db"),
    ("sqlite:///file:real.db?mode=ro&uri=true", "write", "read-only (mode=ro) but this command writes"),
    ("foo://x", "write", "unknown database backend 'foo'"),
    ("mysql+nosuchdriver://u@h/db", "write", "unknown database backend"),
    ("postgresql+nosuchdriver://u:" + PASSWORD + "@h/db", "write", "unknown database backend"),
    ("mssql+pymssql://u:" + PASSWORD + "@h/db", "write", "driver not installed"),
    ("://nothing", "write", "not a database URL"),
]


@pytest.mark.parametrize("value,purpose,message", BAD_URLS, ids=[f"{i}:{v[:30]}" for i, (v, _, _) in enumerate(BAD_URLS)])
def test_bad_storage_values(here, value, purpose, message):
    with pytest.raises(StorageError) as ei:
        resolve_storage(value, purpose)
    msg = str(ei.value)
    assert message in msg and "\n" not in msg and PASSWORD not in msg, msg


def test_good_storage_values(here, monkeypatch):
    s = resolve_storage("results/a.db".replace("results/", ""), "write")  # a bare path: that SQLite file
    assert s.url == "sqlite:///a.db" and s.sqlite_path == "a.db"
    ro = resolve_storage("sqlite:///file:real.db?mode=ro&uri=true", "read")
    assert ro.sqlite_path == "real.db"
    assert resolve_storage(str(here / "real.db"), "read").sqlite_path == str(here / "real.db")
    pg = resolve_storage(f"postgresql+psycopg://me:{PASSWORD}@db.example/x", "write")
    assert PASSWORD not in pg.masked and "***" in pg.masked and pg.password == PASSWORD
    # default: results/autotune.db, folder created only when writing
    d = resolve_storage(None, "write")
    assert d.url == DEFAULT_STORAGE and (here / "results").is_dir()
    monkeypatch.setenv("AUTOTUNE_STORAGE", "sqlite:///real.db")
    assert resolve_storage(None, "read").sqlite_path == "real.db"


def test_postgres_without_driver_says_install(here, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psycopg(name, *a, **k):
        if name.split(".")[0] in ("psycopg", "psycopg2"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    for mod in [m for m in sys.modules if m.split(".")[0] in ("psycopg", "psycopg2")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(StorageError, match=r"pip install -e '\.\[postgres\]'"):
        resolve_storage(f"postgresql+psycopg://u:{PASSWORD}@h/db", "write")


def test_mask_secrets():
    text = f"--storage postgresql+psycopg://u:{PASSWORD}@h/db host=h password={PASSWORD} p%40ss"
    out = mask_secrets(text, [PASSWORD, "p@ss"])
    assert PASSWORD not in out and "p%40ss" not in out and out.count("***") >= 3


@pytest.mark.slow
@pytest.mark.parametrize("value,message", [("", "empty URL"), ("sqlite://", "in-memory"), ("sqlite:///notdb.db", "not an SQLite"),
                                           ("sqlite:///adir", "is a directory")])
def test_search_export_report_ingest_refuse_bad_storage(here, value, message):
    space = ROOT / "search_spaces" / "cpu.yaml"
    before = sorted(p.name for p in here.iterdir())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("AUTOTUNE_STORAGE", None)
    csv = ROOT / "benchmarks" / "results"
    csvs = sorted(csv.glob("cpu-2cores.csv"))  # a kernel-benchmark CSV
    for cmd in (["autotune.search", "--space", str(space), "--executor", "local", "--device", "cpu"],
                ["autotune.export", "--study", "x", "--out", "t.yaml"],
                ["autotune.report", "--out", "r.md"],
                ["autotune.ingest", "--kernel-csv", str(csvs[0])] if csvs else None):
        if cmd is None:
            continue
        proc = subprocess.run([sys.executable, "-m", *cmd, "--storage", value], cwd=here, env=env,
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert len(lines) == 1 and message in lines[0], (cmd, proc.stderr)
    assert sorted(p.name for p in here.iterdir()) == before  # nothing written


@pytest.mark.parametrize("cmd", [
    ["autotune.search", "--space", str(ROOT / "search_spaces" / "cpu.yaml"), "--executor", "local", "--device", "cpu",
     "--no-progress"],
    ["autotune.export", "--study", "x", "--out", "t.yaml"],
    ["autotune.report", "--out", "r.md"],
    ["autotune.ingest", "--kernel-csv", str(ROOT / "benchmarks" / "results" / "cpu-2cores.csv")],
], ids=["search", "export", "report", "ingest"])
def test_database_error_is_one_line_without_password(tmp_path, cmd):
    """A PostgreSQL server that does not answer: one line, no traceback, no password."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    url = f"postgresql+psycopg://autotune:{PASSWORD}@127.0.0.1:9/nodb?connect_timeout=3"
    proc = subprocess.run([sys.executable, "-m", *cmd, "--storage", url], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (1, 2), proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "database" in proc.stderr or "cannot read --storage" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not PG_URL, reason="set AUTOTUNE_TEST_POSTGRES_URL to a PostgreSQL database to run")
def test_password_appears_nowhere(tmp_path):
    """Search, export and report against PostgreSQL with a password in --storage; then search every
    table of the database, every line the commands printed and every file they wrote."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from test_search import write_space

    url = make_url(PG_URL).set(password=PASSWORD).render_as_string(hide_password=False)
    study = f"secret-{uuid.uuid4().hex[:8]}"
    space = write_space(tmp_path, budget={"trials": 2}, objectives=["speedup", "memory_vs_sdpa"],
                        constraints={"memory_vs_naive": {"max": 50.0}})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    logs = []
    for cmd in (["autotune.search", "--space", str(space), "--study", study, "--executor", "local", "--no-progress"],
                ["autotune.export", "--study", study, "--out", str(out_dir / "tuned.yaml")],
                ["autotune.report", "--study", study, "--out", str(out_dir / "REPORT.md")]):
        proc = subprocess.run([sys.executable, "-m", *cmd, "--storage", url], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        logs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stderr
    assert all(PASSWORD not in text for text in logs)
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".md" for p in files)
    for p in files:
        assert PASSWORD.encode() not in p.read_bytes(), p
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as con:
            tables = sa.inspect(con).get_table_names()
            assert "at_runs" in tables and "trials" in tables
            for t in tables:
                for row in con.execute(sa.text(f'select * from "{t}"')):
                    assert PASSWORD not in repr(tuple(row)), t
            cmd_line = con.execute(sa.text("select command_line from at_runs where study_name = :s"),
                                   {"s": study}).scalar_one()
    finally:
        engine.dispose()
    assert cmd_line.startswith("python -m autotune.search ") and "***" in cmd_line

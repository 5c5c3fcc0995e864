"""Bad input to the command lines, beyond the space and tuned-file corpora: the report on a
hand-corrupted database and on an Optuna-only database, study names the database cannot hold, the
recorded command line (``python -m`` form, password masked)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from autotune import hardware
from autotune.report.__main__ import main as report_main
from autotune.search import main as search_main

ROOT = Path(__file__).resolve().parent.parent


def _db_with_one_run(path: Path) -> str:
    from results.db import Database

    url = f"sqlite:///{path}"
    db = Database(url)
    run = db.start_run(study_name="s", host="h", pid=1, command_line="python -m autotune.search", device="cpu",
                       hardware={"cpu": "x"}, versions={}, git_revision=None, space_path="p", space={}, executor="local")
    db.claim_trial(dict(run_id=run, study_name="s", number=0, optuna_trial_id=0, params={"x": 1}, pattern={},
                        kernel=None, state="COMPLETE", objectives=[1.0]), 10)
    db.close()
    return url


@pytest.mark.parametrize("table,column", [("at_runs", "hardware"), ("at_trials", "params"), ("at_trials", "objectives")])
def test_report_on_a_corrupted_json_cell_is_one_line(tmp_path, capsys, table, column):
    url = _db_with_one_run(tmp_path / "c.db")
    con = sqlite3.connect(tmp_path / "c.db")
    con.execute(f"update {table} set {column} = '{{not json'")
    con.commit()
    con.close()
    out = tmp_path / "r.md"
    assert report_main(["--storage", url, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a stored value is corrupted" in err[0], err
    assert not out.exists()


def test_report_on_an_optuna_only_database_says_so(tmp_path, capsys):
    import optuna

    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="plain", storage=url)
    assert report_main(["--storage", url, "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert "holds an Optuna study storage but no autotune tables" in err and "empty" not in err


@pytest.mark.parametrize("study,message", [("x" * 300, "--study: 300 characters: at most 256"),
                                           ("", "--study: must not be empty"),
                                           ("a\tb", "--study: must not contain control characters (U+0009")])
def test_study_names_the_database_cannot_hold(tmp_path, capsys, study, message):
    rc = search_main(["--space", str(ROOT / "search_spaces" / "cpu.yaml"), "--device", "cpu", "--study", study,
                      "--storage", f"sqlite:///{tmp_path / 'a.db'}", "--executor", "local", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_command_line_is_recorded_as_python_dash_m_with_password_masked():
    script = str(ROOT / "autotune" / "search.py")
    line = hardware.command_line([script, "--space", "a b.yaml", "--storage", "postgresql+psycopg://me:s3cr3t@db/x"],
                                 secrets=("s3cr3t",))
    assert line == "python -m autotune.search --space 'a b.yaml' --storage postgresql+psycopg://me:***@db/x"
    rep = hardware.command_line([str(ROOT / "autotune" / "report" / "__main__.py"), "--out", "r.md"])
    assert rep == "python -m autotune.report --out r.md"

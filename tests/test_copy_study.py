"""``python -m autotune.copy_study``: a study with its measurements to another database (SQLite to
SQLite, and SQLite to PostgreSQL when AUTOTUNE_TEST_POSTGRES_URL is set); the export at the
destination gives the source's answer; bad input is one line, exit status 2, nothing written."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from autotune.copy_study import main as copy_main
from test_optuna_views import sparse_study
from test_search import rows

PG_URL = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")


@pytest.fixture(scope="module")
def exported_db(tmp_path_factory) -> Path:
    """A small study, exported once (so it has a confirmation and at_tuned rows)."""
    from autotune.export import export

    d = tmp_path_factory.mktemp("copy")
    db = sparse_study(d, trials=3, study="src")
    export("src", f"sqlite:///{db}", str(d / "src.yaml"), log=lambda m: None)
    return db


@pytest.fixture
def src(exported_db, tmp_path) -> Path:
    out = tmp_path / "src.db"
    shutil.copy(exported_db, out)
    return out


def _counts(url: str, study: str) -> dict[str, int]:
    from sqlalchemy import text

    from results.db import Database

    d = Database(url, create=False)
    try:
        with d.engine.connect() as c:
            q = lambda sql: c.execute(text(sql), {"s": study}).scalar()  # noqa: E731
            return {
                "trials": q("select count(*) from at_trials where study_name = :s"),
                "measurements": q("select count(*) from at_measurements m join at_trials t on m.trial_id = t.id "
                                  "where t.study_name = :s"),
                "runs": q("select count(*) from at_runs where study_name = :s"),
                "confirmations": q("select count(*) from at_confirmations where study_name = :s"),
                "tuned": q("select count(*) from at_tuned where study_name = :s"),
            }
    finally:
        d.close()


def _same_answer(src_url: str, dst_url: str, to_study: str) -> None:
    import optuna

    from results.db import Database, find_orphans
    from autotune.export import choose

    a = choose("src", src_url, log=lambda m: pytest.fail(f"source re-confirmed: {m}"))
    b = choose(to_study, dst_url, log=lambda m: pytest.fail(f"copy re-confirmed: {m}"))  # confirmation still current
    strip = lambda d: [{k: v for k, v in x.items() if k != "source"} for x in d["buckets"]]  # noqa: E731
    assert strip(a) == strip(b) and a["not_exported"] == b["not_exported"]
    assert [x["source"]["trial"] for x in a["buckets"]] == [x["source"]["trial"] for x in b["buckets"]]
    s1 = optuna.load_study(study_name="src", storage=src_url)
    s2 = optuna.load_study(study_name=to_study, storage=dst_url)
    assert [(t.number, t.state, t.values, t.params, t.user_attrs) for t in s1.trials] == \
           [(t.number, t.state, t.values, t.params, t.user_attrs) for t in s2.trials]
    assert [t.number for t in s1.best_trials] == [t.number for t in s2.best_trials]
    d = Database(dst_url, create=False)
    try:
        with d.Session() as s:
            o = find_orphans(s, to_study)
    finally:
        d.close()
    assert not o and len(o.live.trial_ids) == len(s2.trials)  # every copied row tied to the copy's ids
    # the study names the run that holds its space, at the destination too
    run_id = s2.user_attrs["space_run_id"]
    assert _run_exists(dst_url, run_id, to_study)


def _run_exists(url: str, run_id: int, study: str) -> bool:
    from sqlalchemy import text

    from results.db import Database

    d = Database(url, create=False)
    try:
        with d.engine.connect() as c:
            return c.execute(text("select count(*) from at_runs where id = :i and study_name = :s and space is not null"),
                             {"i": run_id, "s": study}).scalar() == 1
    finally:
        d.close()


def test_copy_sqlite_to_sqlite(src, tmp_path, capsys):
    dst = tmp_path / "dst.db"
    assert copy_main(["--study", "src", "--from", str(src), "--to", str(dst), "--to-study", "moved"]) == 0
    err = capsys.readouterr().err
    assert "copied study 'src'" in err and "as 'moved'" in err
    before = _counts(f"sqlite:///{src}", "src")
    assert before["measurements"] == 12 and before["confirmations"] > 0 and before["tuned"] > 0
    assert _counts(f"sqlite:///{dst}", "moved") == before
    _same_answer(f"sqlite:///{src}", f"sqlite:///{dst}", "moved")


def test_copy_refuses_bad_input_and_writes_nothing(src, tmp_path, capsys):
    import optuna

    dst = tmp_path / "dst.db"
    assert copy_main(["--study", "nope", "--from", str(src), "--to", str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no study 'nope'" in err[0] and "src" in err[0]
    assert not dst.exists() or optuna.get_all_study_names(f"sqlite:///{dst}") == []
    assert copy_main(["--study", "src", "--from", str(tmp_path / "missing.db"), "--to", str(dst)]) == 2
    assert "--from" in capsys.readouterr().err
    assert copy_main(["--study", "src", "--from", str(src), "--to", str(src)]) == 2
    assert "same database" in capsys.readouterr().err
    # a destination that already holds the study: refused, and its rows untouched
    assert copy_main(["--study", "src", "--from", str(src), "--to", str(dst)]) == 0
    capsys.readouterr()
    n = _counts(f"sqlite:///{dst}", "src")
    assert copy_main(["--study", "src", "--from", str(src), "--to", str(dst)]) == 2
    assert "already holds a study 'src'" in capsys.readouterr().err
    assert _counts(f"sqlite:///{dst}", "src") == n


def test_copy_refuses_a_running_study(src, capsys, tmp_path):
    import optuna

    s = optuna.load_study(study_name="src", storage=f"sqlite:///{src}")
    s.ask()
    assert copy_main(["--study", "src", "--from", str(src), "--to", str(tmp_path / "d.db")]) == 2
    assert "running trial" in capsys.readouterr().err


def test_copy_leaves_a_deleted_studys_rows_behind(src, tmp_path):
    """Rows of a deleted study of the same name are not copied (not tied to Optuna's study)."""
    import optuna

    url = f"sqlite:///{src}"
    optuna.delete_study(study_name="src", storage=url)
    new = optuna.create_study(study_name="src", storage=url, directions=["maximize", "minimize"])
    t = new.ask()
    new.tell(t, [1.0, 1.0])
    dst = tmp_path / "dst.db"
    assert copy_main(["--study", "src", "--from", str(src), "--to", str(dst)]) == 0
    assert _counts(f"sqlite:///{dst}", "src") == {"trials": 0, "measurements": 0, "runs": 0, "confirmations": 0,
                                                  "tuned": 0}
    assert len(optuna.load_study(study_name="src", storage=f"sqlite:///{dst}").trials) == 1


def test_a_failed_copy_leaves_nothing(src, tmp_path, monkeypatch):
    import optuna

    import results.copy_study as cs

    dst = tmp_path / "dst.db"

    def boom(row, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cs, "_columns", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cs.copy_study("src", f"sqlite:///{src}", f"sqlite:///{dst}")
    assert optuna.get_all_study_names(f"sqlite:///{dst}") == []
    assert rows(dst, "select count(*) from at_trials") == [(0,)]


@pytest.mark.skipif(not PG_URL, reason="set AUTOTUNE_TEST_POSTGRES_URL to a PostgreSQL database to run")
def test_copy_sqlite_to_postgresql(src, capsys):
    import optuna

    name = f"copy-{uuid.uuid4().hex[:10]}"
    try:
        assert copy_main(["--study", "src", "--from", str(src), "--to", PG_URL, "--to-study", name]) == 0
        from sqlalchemy.engine import make_url

        pw = make_url(PG_URL).password
        assert not pw or pw not in capsys.readouterr().err  # no password printed
        assert _counts(PG_URL, name) == _counts(f"sqlite:///{src}", "src")
        _same_answer(f"sqlite:///{src}", PG_URL, name)
    finally:
        try:
            optuna.delete_study(study_name=name, storage=PG_URL)
        except KeyError:
            pass
        from results.db import Database

        d = Database(PG_URL, create=False)
        d.drop_orphans(name)  # our rows of the test study go with it
        d.close()

"""Several drivers, resumes and fresh databases: the sampler continues from the study across
resumes, drivers sharing one study share its budget exactly and never measure a parameter set
twice, schema creation survives drivers starting at once."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from test_search import ROOT, rows, write_space

PG_URL = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")
FAST = dict(objectives=["speedup", "memory_vs_sdpa"], constraints={"memory_vs_naive": {"max": 50.0}},
            measure={"warmup": 0, "repeats": 1}, buckets=[64])


def _search_cmd(space: Path, storage: str, trials: int, study: str = "tiny") -> list[str]:
    return [sys.executable, "-m", "autotune.search", "--space", str(space), "--storage", storage, "--study", study,
            "--executor", "local", "--trials", str(trials), "--no-progress"]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("AUTOTUNE_FAULT_INJECT", None)
    return env


@pytest.mark.slow
def test_resume_continues_the_sampler(tmp_path):
    """Three starts of the same seeded command (budget 2, 4, 6): six different parameter sets."""
    space = write_space(tmp_path, sampler={"name": "random", "seed": 0}, **FAST)
    db = tmp_path / "a.db"
    for n in (2, 4, 6):
        out = subprocess.run(_search_cmd(space, f"sqlite:///{db}", n), cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr
        assert f"{n} finished in total" in out.stderr
    params = [p for (p,) in rows(db, "select params from at_trials where state = 'COMPLETE' order by number")]
    assert len(params) == 6 and len(set(params)) == 6


def _concurrent_drivers(tmp_path: Path, storage: str, study: str, budget: int = 8):
    space = write_space(tmp_path, **FAST)
    procs = [subprocess.Popen(_search_cmd(space, storage, budget, study), cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=280)
        finally:
            if p.poll() is None:
                p.kill()
        outs.append((p.returncode, err))
    for rc, err in outs:
        assert rc == 0, err
        assert "Traceback" not in err, err
    return outs


def _check_shared_budget(trials, n_meas, outs, budget=8):
    """trials: (number, state, reason, params) of the study; exactly the budget measured, once each."""
    complete = [t for t in trials if t[1] == "COMPLETE"]
    assert len(complete) == budget, trials
    assert not [t for t in trials if t[1] == "RUNNING"]
    params = [str(t[3]) for t in trials if t[1] in ("COMPLETE", "FAIL") and not (t[2] or "").startswith("interrupted")]
    assert len(params) == len(set(params)), "a parameter set was measured twice"
    assert n_meas == budget  # trials with measurements: each measured trial once
    completed = [int(err.split(" completed,")[0].rsplit(" ", 1)[1]) for _, err in outs]
    assert sum(completed) == budget, outs  # each driver's own count adds up to the study's
    last = [err for _, err in outs if f"{budget} finished in total" in err]
    assert last, outs  # at least the driver that ended last saw the whole budget


@pytest.mark.slow
def test_two_drivers_share_one_budget_on_a_fresh_sqlite_database(tmp_path):
    db = tmp_path / "shared.db"
    outs = _concurrent_drivers(tmp_path, f"sqlite:///{db}", "tiny")
    trials = rows(db, "select number, state, reason, params from at_trials order by number")
    n_meas = rows(db, "select count(distinct trial_id) from at_measurements")[0][0]
    _check_shared_budget(trials, n_meas, outs)
    assert rows(db, "select count(*) from at_runs where status = 'finished'") == [(2,)]


@pytest.mark.slow
@pytest.mark.skipif(not PG_URL, reason="set AUTOTUNE_TEST_POSTGRES_URL to a PostgreSQL database to run")
def test_two_drivers_share_one_budget_on_a_fresh_postgresql_database(tmp_path):
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"at_race_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        outs = _concurrent_drivers(tmp_path, url, "tiny")
        eng = sa.create_engine(url)
        with eng.connect() as c:
            trials = [tuple(r) for r in c.execute(sa.text(
                "select number, state, reason, params::text from at_trials order by number"))]
            n_meas = c.execute(sa.text("select count(distinct trial_id) from at_measurements")).scalar_one()
        eng.dispose()
        _check_shared_budget(trials, n_meas, outs)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _open_schema(url: str, barrier) -> None:
    from results.db import Database, create_optuna_storage

    barrier.wait()
    Database(url).close()
    create_optuna_storage(url).engine.dispose()


@pytest.mark.slow
def test_schema_creation_race_on_a_fresh_sqlite_database(tmp_path):
    """Four processes create both schemas (ours and Optuna's) on one fresh file at the same moment."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_schema, args=(url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    tables = {t for (t,) in rows(tmp_path / "fresh.db", "select name from sqlite_master where type = 'table'")}
    assert {"at_runs", "at_trials", "studies", "trials", "alembic_version"} <= tables


def test_claim_trial_is_exact_and_refuses_duplicates(tmp_path):
    from results.db import Database

    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    run = db.start_run(study_name="s", host="h", pid=1, command_line="c", device="cpu", hardware={}, versions={},
                       git_revision=None, space_path="p", space={}, executor="local")

    def fields(n, p, **kw):
        return dict(dict(run_id=run, study_name="s", number=n, optuna_trial_id=n, params={"x": p}, pattern={},
                         kernel=None, state="RUNNING"), **kw)

    assert db.claim_trial(fields(0, 0), 2) == ("ok", None)
    assert db.claim_trial(fields(1, 0), 2) == ("duplicate", 0)
    assert db.claim_trial(fields(1, 0), 2, allow_repeats=True) == ("ok", None)
    assert db.claim_trial(fields(2, 2), 2) == ("budget", None)
    db.mark_failed("s", 1, "interrupted")  # an interrupted trial keeps its slot for its retry only
    assert db.claim_trial(fields(3, 3), 2) == ("budget", None)
    assert db.claim_trial(fields(3, 0, retry_of=1), 2, allow_repeats=True) == ("ok", None)
    assert db.count_finished("s") == 0 and db.count_running("s") == 2
    db.close()


@pytest.mark.slow
def test_a_lost_retry_is_enqueued_again(tmp_path):
    """A trial failed for a retried reason whose queued retry vanished (its driver died between
    the two writes) is enqueued again by the next driver: its reserved slot is not lost."""
    import optuna

    from results.db import Database
    from autotune.search import Search
    from search_spaces.space import load_space

    space = load_space(write_space(tmp_path, **FAST)).override(trials=2)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    Search(space, study_name="tiny", storage=url, executor="local", progress=False).run()
    db = Database(url)
    with db.session() as s:  # trial 1 "lost its node" and its retry never reached Optuna's queue
        from results.db import TrialRow

        # the second measured trial (a duplicate proposal between the two is pruned, unnumbered here)
        t = s.query(TrialRow).filter_by(study_name="tiny").order_by(TrialRow.number).all()[1]
        t.state, t.reason = "FAIL", "node lost: test"
        params_1, lost = t.params, t.number
    db.close()
    summary = Search(space, study_name="tiny", storage=url, executor="local", progress=False).run()
    assert summary["finished"] == 2 and summary["completed"] == 1
    retry = rows(tmp_path / "r.db", f"select state, params from at_trials where retry_of = {lost}")
    assert len(retry) == 1 and retry[0][0] == "COMPLETE"
    import json

    assert json.loads(retry[0][1]) == params_1
    assert optuna.load_study(study_name="tiny", storage=url).get_trials(states=(optuna.trial.TrialState.WAITING,)) == []

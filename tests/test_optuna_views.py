"""Optuna's own views of a study agree with the product's: per-bucket objectives and feasibility
on each trial, Optuna's constraints feasible for a trial the export can choose at some bucket
(so ``study.best_trials`` holds the export's choice), the space stored once (in at_runs); our rows
tied to Optuna's study and trial ids, so that a study removed with ``optuna delete-study`` is never
cited and a study re-created under its name does not inherit its rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autotune.search import Search
from search_spaces.space import load_space
from test_search import rows, write_space

# One bucket-dependent target: a diagonal-only layout (window 0, 16-residue blocks) is 75% sparse
# at L=64 and 87.5% at L=128, so it meets `sparsity >= 0.8` at L=128 only; a window of 16 or a
# stride of 2 never does.
VIEWS = dict(
    objectives=["speedup", "memory_vs_sdpa"],
    constraints={"sparsity": {"min": 0.8}},
    pattern={"block_size": {"choices": [16]}, "window": {"choices": [0, 16]}, "num_global": {"choices": [0]},
             "stride": {"choices": [0, 2]}},
    sampler={"name": "random", "seed": 0},
    measure={"warmup": 0, "repeats": 1, "confirm_top": 1, "confirm_repeats": 2},
    buckets=[64, 128],
)


def sparse_study(tmp_path: Path, *, trials: int = 4, study: str = "views", db_name: str = "v.db", **changes) -> Path:
    space = load_space(write_space(tmp_path, **dict(VIEWS, **changes))).override(trials=trials)
    db = tmp_path / db_name
    Search(space, study_name=study, storage=f"sqlite:///{db}", executor="local", progress=False).run()
    return db


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> Path:
    return sparse_study(tmp_path_factory.mktemp("views"))


@pytest.fixture
def db(study_db, tmp_path) -> Path:
    out = tmp_path / "v.db"
    shutil.copy(study_db, out)
    return out


def per_bucket(trial) -> dict[str, dict]:
    """A trial's flat user attributes ``L<bucket>.<metric>`` regrouped by bucket."""
    out: dict[str, dict] = {}
    for k, v in trial.user_attrs.items():
        if k.startswith("L") and "." in k:
            L, metric = k[1:].split(".", 1)
            out.setdefault(L, {})[metric] = v
    return out


@pytest.mark.slow  # a real 4-trial search (module fixture): ~20 s on 2 idle cores
def test_per_bucket_view_and_constraints(db):
    import optuna

    study = optuna.load_study(study_name="views", storage=f"sqlite:///{db}")
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 4
    # --trials 4 stores 4 trials: none asked past the budget (only proposals already measured are
    # kept, pruned unmeasured, with their reason)
    assert all(t.user_attrs["not_run"].startswith("duplicate of trial") for t in study.trials
               if t.state.name != "COMPLETE")
    for t in done:
        p = t.params
        diag = p["pattern.window"] == 0 and p["pattern.stride"] == 0
        b = per_bucket(t)
        assert sorted(b) == ["128", "64"]
        assert b["64"]["feasible"] is False and b["128"]["feasible"] is diag
        assert b["128"]["sparsity"] >= b["64"]["sparsity"]
        assert b["64"]["speedup"] > 0 and b["64"]["workloads"] == "row,tri"
        assert b["64"]["violated"] == "sparsity" and b["128"]["violated"] == ("" if diag else "sparsity")
        assert t.user_attrs["feasible_buckets"] == ([128] if diag else [])
        # Optuna's constraint values: the least violating bucket's (the sparser one; ties: the shorter)
        at = 128 if b["128"]["sparsity"] > b["64"]["sparsity"] else 64
        assert t.user_attrs["constraint_bucket"] == at
        assert t.system_attrs["constraints"] == pytest.approx([0.8 - b[str(at)]["sparsity"]])
        assert (max(t.system_attrs["constraints"]) <= 0) is diag
    # the diagonal trial is the only feasible one for Optuna: best_trials is it, not empty
    best = study.best_trials
    assert [t.params["pattern.window"] for t in best] == [0] and [t.params["pattern.stride"] for t in best] == [0]
    # ours agree: at_trials.feasible is "feasible at some bucket", with Optuna's constraint values
    ours = dict(rows(db, "select number, feasible from at_trials"))
    assert {n: bool(f) for n, f in ours.items()} == {t.number: t.number == best[0].number for t in done}


@pytest.mark.slow
def test_an_unmet_speedup_target_does_not_make_every_trial_infeasible(tmp_path):
    """Speedup is judged on confirmed figures (results.verdict): a speedup target no trial meets
    on the search's figures leaves Optuna's feasibility to the other targets."""
    import optuna

    db = sparse_study(tmp_path, trials=2, constraints={"sparsity": {"min": 0.8}, "speedup": {"min": 1000.0}},
                      pattern=dict(VIEWS["pattern"], stride={"choices": [0]}))
    study = optuna.load_study(study_name="views", storage=f"sqlite:///{db}")
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 2
    for t in done:
        assert t.user_attrs["constraint_names"] == ["sparsity"]
        assert t.user_attrs["L128.meets_speedup"] is False
        assert "speedup" in t.user_attrs["L128.violated"].split(",")
    diag = [t.number for t in done if t.params["pattern.window"] == 0]
    assert [t.number for t in study.best_trials] == diag


@pytest.mark.slow  # a real 4-trial search (module fixture): ~20 s on 2 idle cores
def test_export_choice_is_optunas_best(db, tmp_path):
    import optuna

    from autotune.export import choose

    doc = choose("views", f"sqlite:///{db}", log=lambda m: None)
    chosen = {b["seq_len"]: b["source"]["trial"] for b in doc["buckets"]}
    study = optuna.load_study(study_name="views", storage=f"sqlite:///{db}")
    best = {t.number for t in study.best_trials}
    assert set(chosen) <= {128} and doc["not_exported"].keys() >= {64}
    assert set(chosen.values()) <= best  # what the export deploys, Optuna lists among its best
    # the end-of-run verdict, on the study where Optuna's tools show it: the export's choice
    from autotune.search import record_verdict
    from autotune.confirm import current_verdicts

    import re

    record_verdict(f"sqlite:///{db}", "views", current_verdicts(f"sqlite:///{db}", "views"))
    attrs = optuna.load_study(study_name="views", storage=f"sqlite:///{db}").user_attrs
    v = {int(k.split(".L")[1]): line for k, line in attrs.items() if k.startswith("verdict.L")}
    assert sorted(v) == [64, 128] and all(isinstance(line, str) for line in v.values())  # words, not JSON
    assert {L: int(re.match(r"deploy t#(\d+): ", line).group(1)) for L, line in v.items()
            if line.startswith("deploy")} == chosen
    assert v[64].startswith("do not deploy") or v[64].startswith("undecided")


@pytest.mark.slow  # a real 4-trial search (module fixture): ~20 s on 2 idle cores
def test_space_is_stored_once(db):
    import json

    import optuna

    study = optuna.load_study(study_name="views", storage=f"sqlite:///{db}")
    assert "space" not in study.user_attrs
    run_id = study.user_attrs["space_run_id"]
    space = json.loads(rows(db, f"select space from at_runs where id = {run_id}")[0][0])
    assert space["name"] == "tiny" and space["buckets"] == [64, 128]
    assert all(len(json.dumps(v)) < 200 for v in study.user_attrs.values())


@pytest.mark.slow  # a real 4-trial search (module fixture): ~20 s on 2 idle cores
def test_user_attributes_are_small_and_flat(db):
    """Each user attribute of a trial or the study is a number, flag or short string under 1 KB
    (the dashboard's trial page and the Pareto plot's hover texts show them all)."""
    import json

    import optuna

    study = optuna.load_study(study_name="views", storage=f"sqlite:///{db}")
    attrs = [v for t in study.trials for v in t.user_attrs.values()] + list(study.user_attrs.values())
    assert attrs and max(len(json.dumps(v)) for v in attrs) < 1000
    assert all(not isinstance(v, dict) for v in attrs)
    assert study.metric_names == ["speedup", "memory_vs_sdpa"]


def test_objective_accuracy_is_named_for_its_metric(tmp_path):
    from autotune.trial import metric_names

    space = load_space(write_space(tmp_path, objectives=["speedup", "accuracy"],
                                   constraints={"accuracy": {"metric": "contact_recall_long", "min": 0.0}}))
    assert metric_names(space) == ["speedup", "contact_recall_long"]
    assert space.objectives == ["speedup", "accuracy"]  # our tables keep the space's names


GUIDED_OR_STATIC = dict(VIEWS, pattern={"family": {"choices": ["static", "guided"]}, "block_size": 16,
                                        "window": {"choices": [0, 16]}, "num_global": 0,
                                        "stride": {"choices": [0, 2]}, "keep": {"choices": [0.25, 0.5]},
                                        "pool": {"choices": ["max", "logsumexp"]}, "spread": "layout"})


def test_parameters_are_suggested_only_where_in_effect(tmp_path):
    """Define-by-run: a static trial carries no guided-only parameter (keep, pool), a guided one
    no stride, so Optuna's importance and slice plots rank only parameters in effect; the same
    seed gives the same suggestions; an enqueued retry gets its parameters back."""
    import optuna

    from autotune.search import make_sampler
    from autotune.trial import suggest_params

    space = load_space(write_space(tmp_path, **GUIDED_OR_STATIC))

    def sample(n: int = 12) -> list[dict]:
        study = optuna.create_study(directions=space.directions(), sampler=make_sampler(space))  # in memory
        out = []
        for _ in range(n):
            trial = study.ask()
            out.append(suggest_params(trial, space))
            study.tell(trial, [1.0, 1.0])
        assert [t.params for t in study.trials] == out  # Optuna stores exactly what was suggested
        return out

    first = sample()
    families = {p["pattern.family"] for p in first}
    assert families == {"static", "guided"}
    for p in first:
        if p["pattern.family"] == "static":
            assert "pattern.stride" in p and not {"pattern.keep", "pattern.pool"} & set(p), p
        else:
            assert "pattern.stride" not in p and {"pattern.keep", "pattern.pool"} <= set(p), p
    assert sample() == first  # reproducible under the space's seed
    study = optuna.create_study(directions=space.directions())
    study.enqueue_trial(first[0], user_attrs={"retry_of": 0})
    assert suggest_params(study.ask(), space) == first[0]


@pytest.mark.slow  # a real 4-trial search (module fixture): ~20 s on 2 idle cores
def test_export_and_report_are_the_studys_artifacts(db, tmp_path, capsys):
    """The tuned file and the report go to Optuna's artifact store (artifacts/ next to them by
    default), linked to the study: what optuna-dashboard lists and downloads is the file on disk."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta

    from autotune.export import main as export_main
    from autotune.report.__main__ import main as report_main

    url = f"sqlite:///{db}"
    out, rep = tmp_path / "out" / "views.yaml", tmp_path / "out" / "views_REPORT.md"
    assert export_main(["--study", "views", "--storage", url, "--out", str(out)]) == 0
    assert report_main(["--storage", url, "--study", "views", "--out", str(rep)]) == 0
    assert "also in Optuna's artifact store" in capsys.readouterr().err
    study = optuna.load_study(study_name="views", storage=url)
    metas = {m.filename: m for m in get_all_artifact_meta(study)}
    assert {"views.yaml", "views_REPORT.md"} <= set(metas), metas
    assert metas["views.yaml"].mimetype == "text/yaml" and metas["views_REPORT.md"].mimetype == "text/markdown"
    store = FileSystemArtifactStore(str(tmp_path / "out" / "artifacts"))
    for name, path in (("views.yaml", out), ("views_REPORT.md", rep)):
        got = tmp_path / f"got-{name}"
        download_artifact(artifact_store=store, file_path=str(got), artifact_id=metas[name].artifact_id)
        assert got.read_bytes() == path.read_bytes()
        assert study.user_attrs[f"artifact:{name}"] == metas[name].artifact_id  # the latest one
    # a store that is not a folder: one line, exit 2, nothing written
    bad = tmp_path / "a-file"
    bad.write_text("x")
    assert export_main(["--study", "views", "--storage", url, "--out", str(tmp_path / "n.yaml"),
                        "--artifacts", str(bad)]) == 2
    assert not (tmp_path / "n.yaml").exists()
    assert capsys.readouterr().err.strip() == f"autotune.export: error: --artifacts {bad}: not a folder"
    assert export_main(["--study", "views", "--storage", url, "--out", str(tmp_path / "m.yaml"), "--artifacts", "none"]) == 0
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.slow  # a real 4-trial search (module fixture): ~20 s on 2 idle cores
def test_rows_are_tied_to_optuna_ids(db):
    import optuna

    study = optuna.load_study(study_name="views", storage=f"sqlite:///{db}")
    ids = {t.number: t._trial_id for t in study.trials}
    ours = rows(db, "select number, optuna_trial_id, optuna_study_id from at_trials")
    assert ours and all(ids[n] == tid and sid == study._study_id for n, tid, sid in ours)
    assert rows(db, "select distinct optuna_study_id from at_runs") == [(study._study_id,)]


@pytest.mark.slow  # a real 4-trial search (module fixture): ~20 s on 2 idle cores
def test_deleted_study_is_never_cited(db, tmp_path, capsys):
    import optuna

    from autotune.export import main as export_main
    from autotune.report.__main__ import main as report_main

    url = f"sqlite:///{db}"
    optuna.delete_study(study_name="views", storage=url)
    n_rows = rows(db, "select count(*) from at_trials")[0][0]
    assert n_rows == 4  # Optuna removes its rows only
    out = tmp_path / "x.yaml"
    assert export_main(["--study", "views", "--storage", url, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in Optuna's storage" in err[0] and not out.exists()
    assert report_main(["--storage", url, "--study", "views", "--out", str(tmp_path / "r.md")]) == 2
    assert "not in Optuna's storage" in capsys.readouterr().err
    assert rows(db, "select count(*) from at_trials")[0][0] == n_rows  # refusing writes nothing


@pytest.mark.slow  # a real 4-trial search (module fixture): ~20 s on 2 idle cores
def test_recreated_study_does_not_inherit_rows(db, tmp_path):
    """Delete, then create the study again under the same name with other trials: the old rows
    (numbers 0-3) are removed; the export and the report see the new study's trials only."""
    import optuna

    from results.db import Database, find_orphans
    from results.report.data import load as report_load

    url = f"sqlite:///{db}"
    old = sorted(n for (n,) in rows(db, "select number from at_trials"))
    assert len(old) == 4
    optuna.delete_study(study_name="views", storage=url)
    # re-created outside the product with two trials: our old rows 0-3 are orphans, not its trials
    new = optuna.create_study(study_name="views", storage=url, directions=["maximize", "minimize"])
    for _ in range(2):
        t = new.ask()
        new.tell(t, [1.0, 1.0])
    d = Database(url, create=False)
    with d.Session() as s:
        o = find_orphans(s, "views")
    d.close()
    # SQLite gives the new study and trials the deleted ones' ids: only the study's token tells them apart
    assert new._study_id == rows(db, "select distinct optuna_study_id from at_trials")[0][0]
    assert sorted(o.trial_numbers) == old and o.run_ids
    rep = report_load(url, "views")
    assert rep.trials == [] and rep.measurements == [] and rep.runs == [] and rep.study_data.trials == {}
    # the next search on that name removes them (drop_orphans) and measures its own trials
    optuna.delete_study(study_name="views", storage=url)
    space = load_space(write_space(tmp_path, **VIEWS)).override(trials=1)
    logs: list[str] = []
    Search(space, study_name="views", storage=url, executor="local", progress=False, log=logs.append).run()
    assert any("removed 4 trial row(s)" in m for m in logs)
    study = optuna.load_study(study_name="views", storage=url)
    ours = rows(db, "select number, optuna_trial_id from at_trials")
    assert ours == [(0, study.trials[0]._trial_id)]
    assert rows(db, "select count(*) from at_measurements")[0][0] == 4  # 2 buckets x 2 workloads, new trial only
    assert rows(db, "select count(*) from at_runs")[0][0] == 1


def test_geomean_says_what_it_drops(caplog):
    import math

    from results.aggregate import geomean

    g = geomean([2.0, 8.0, None, -1.0, math.inf, math.nan, "x", True], "speedup")
    assert g.value == pytest.approx(4.0) and g.used == 2
    assert [(i, why) for i, _, why in g.dropped] == [(2, "missing"), (3, "not positive"), (4, "not finite"),
                                                      (5, "not finite"), (6, "not a number"), (7, "not a number")]
    assert "speedup over 2 of 8 values" in caplog.text and "#3 -1.0 (not positive)" in caplog.text
    caplog.clear()
    assert geomean([1.0, 4.0]).value == pytest.approx(2.0) and caplog.text == ""
    assert geomean([None], quiet=True).value is None and caplog.text == ""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Argument ``heartbeat_interval``", "ignore:Heartbeat of storage")
def test_stale_trial_of_a_live_driver_is_failed_by_optunas_heartbeat(tmp_path, monkeypatch):
    """A trial whose driver still exists but stopped beating (hung, or on a host whose process
    table this machine cannot see) is failed by ``optuna.storages.fail_stale_trials`` once its
    heartbeat is older than the grace period, and run again (``retry_of``)."""
    import socket
    import subprocess
    import sys
    import time

    import optuna

    import autotune.driver.recovery as recovery
    from results.db import Database

    monkeypatch.setattr(recovery, "GRACE_SECONDS", 1)  # read by the heartbeat storage and recovery
    space = load_space(write_space(tmp_path, **VIEWS)).override(trials=1)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    Search(space, study_name="hb", storage=url, executor="local", progress=False).run()
    # a driver that is alive (a process of this host) but beats no more: its run and one claimed trial
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)
        study = optuna.load_study(study_name="hb", storage=storage)
        import json

        measured = [json.loads(r[0]) for r in rows(tmp_path / "h.db", "select params from at_trials")]
        fresh = next(p for p in ({"pattern.window": w, "pattern.stride": st} for w in (0, 16) for st in (0, 2))
                     if p not in measured)
        study.enqueue_trial(fresh)
        t = study.ask(fixed_distributions=space.distributions())
        assert t.params == fresh
        db = Database(url)
        run = db.start_run(study_name="hb", host=socket.gethostname(), pid=sleeper.pid, command_line="x", device="cpu",
                           hardware={}, versions={}, space_path="x", space=space.to_dict(), executor="local",
                           optuna_study_id=study._study_id)
        status, _ = db.claim_trial(dict(run_id=run, study_name="hb", number=t.number, optuna_trial_id=t._trial_id,
                                        optuna_study_id=study._study_id, params=dict(t.params), pattern={}, kernel=None,
                                        state="RUNNING"), 5)
        assert status == "ok"
        storage.record_heartbeat(t._trial_id)
        db.close()
        time.sleep(2.5)  # older than the grace period
        logs: list[str] = []
        Search(space.override(trials=2), study_name="hb", storage=url, executor="local", progress=False,
               log=logs.append).run()
        assert sleeper.poll() is None  # the "driver" was alive throughout: only the heartbeat told
    finally:
        sleeper.kill()
        sleeper.wait()
    assert any(f"trial {t.number} was interrupted (no heartbeat" in m for m in logs), logs
    got = dict((n, (s, r, ro)) for n, s, r, ro in rows(tmp_path / "h.db", "select number, state, reason, retry_of from at_trials"))
    assert got[t.number][:2] == ("FAIL", "interrupted")
    assert [v[0] for v in got.values() if v[2] == t.number] == ["COMPLETE"]  # its retry ran
    st = optuna.load_study(study_name="hb", storage=url)
    assert st.trials[t.number].state == optuna.trial.TrialState.FAIL


def test_plots_extra_installs_what_optuna_visualization_needs():
    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(dep.startswith("plotly") for dep in extras["plots"])  # optuna.visualization's backend
    assert any(dep.startswith("matplotlib") for dep in extras["plots"])

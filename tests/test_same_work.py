"""`autotune.same_work`: a static pattern whose layouts (at every bucket and accuracy chain length)
and launch config equal a measured trial's computes the same thing, and the search measures it once."""

from __future__ import annotations

import json

import pytest

from autotune.same_work import WorkKeys, accuracy_lengths, work_key
from search_spaces.space import load_space
from test_search import rows, write_space

# At L=64 a 64-residue block is one tile: every window and stride builds the same layout there,
# and the chains of bucket 64 (length <= 64) are one tile too.
ONE_TILE = dict(objectives=["speedup", "memory_vs_sdpa"], constraints={"memory_vs_naive": {"max": 50.0}},
                measure={"warmup": 0, "repeats": 1}, buckets=[64], sampler={"name": "random", "seed": 0},
                pattern={"block_size": {"choices": [64]}, "window": {"choices": [0, 16]},
                         "num_global": {"choices": [0]}, "stride": {"choices": [0, 2]}})


def space_of(tmp_path, **changes):
    return load_space(write_space(tmp_path, **changes))


def static(block=64, window=0, num_global=0, stride=0):
    return {"block_size": block, "window": window, "num_global": num_global, "stride": stride}


def test_twins_share_a_key_and_others_do_not(tmp_path):
    space = space_of(tmp_path, **ONE_TILE)
    assert all(L <= 64 for L in accuracy_lengths(space))
    keys = {work_key(space, static(window=w, stride=s), None) for w in (0, 16) for s in (0, 2)}
    assert len(keys) == 1 and None not in keys
    # a longer bucket separates them: at 128 the 64-residue blocks are 2 x 2 tiles
    longer = space_of(tmp_path, **dict(ONE_TILE, buckets=[64, 128]))
    assert work_key(longer, static(window=0), None) != work_key(longer, static(window=16), None)
    # a different launch config is different work
    assert (work_key(space, static(), {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3})
            != work_key(space, static(), {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}))


def test_the_accuracy_chains_lengths_count():
    """Layouts equal at the bucket but not at a chain's length (a chain longer than the bucket,
    as the accuracy's extrapolation rule can choose) are different work: the recall differs."""

    class Space:
        buckets = [64]
        accuracy_max_chains = None

    assert work_key(Space, static(window=0), None, lengths=[60]) == work_key(Space, static(window=16), None, lengths=[60])
    assert work_key(Space, static(window=0), None, lengths=[200]) != work_key(Space, static(window=16), None, lengths=[200])


def test_a_guided_pattern_is_never_assumed_the_same(tmp_path):
    space = space_of(tmp_path, **ONE_TILE)
    guided = {"family": "guided", "block_size": 64, "keep": 0.5}
    assert work_key(space, guided, None) is None
    keys = WorkKeys(space)
    assert keys.key(guided, None) is None and keys.key({}, None) is None
    assert keys.key({"block_size": 7}, None) is None  # a row the pattern classes reject


def test_an_unreadable_chain_set_assumes_no_twin(tmp_path, monkeypatch):
    import autotune.accuracy as acc

    def broken(*a, **k):
        raise ValueError("proteins.json: not JSON")

    monkeypatch.setattr(acc, "load_proteins", broken)
    keys = WorkKeys(space_of(tmp_path, **ONE_TILE))
    assert keys.key(static(), None) is None and keys.key(static(window=16), None) is None
    assert "not JSON" in keys.disabled


def test_claim_refuses_a_twin_unless_repeats_are_allowed(tmp_path):
    from results.db import Database

    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    run = db.start_run(study_name="s", host="h", pid=1, command_line="c", device="cpu", hardware={}, versions={},
                       git_revision=None, space_path="p", space={}, executor="local")

    def fields(n, p):
        return dict(run_id=run, study_name="s", number=n, optuna_trial_id=n, params={"x": p}, pattern={"x": p},
                    kernel=None, state="RUNNING")

    def twin_of_zero(row):
        return row.pattern == {"x": 0}

    assert db.claim_trial(fields(0, 0), 3) == ("ok", None)
    assert db.claim_trial(fields(1, 1), 3, same_work=twin_of_zero) == ("same_work", 0)
    assert db.claim_trial(fields(1, 1), 3, same_work=twin_of_zero, allow_repeats=True) == ("ok", None)
    assert db.claim_trial(fields(2, 0), 3, same_work=twin_of_zero) == ("duplicate", 0)  # the same params say so first
    db.close()


@pytest.mark.slow  # a real search that runs out of distinct work: ~10 s on 2 idle cores
def test_the_search_measures_each_computation_once(tmp_path, capsys):
    import optuna

    from autotune.search import Search

    space = space_of(tmp_path, **ONE_TILE).override(trials=3)
    db = tmp_path / "w.db"
    logs: list[str] = []
    summary = Search(space, study_name="w", storage=f"sqlite:///{db}", executor="local", progress=False,
                     log=logs.append).run()
    measured = rows(db, "select number, params from at_trials")
    assert len(measured) == 1 and summary["completed"] == 1  # 4 parameter sets, one computation
    assert summary["same_work_skipped"] >= 3  # the three other parameter sets, asked at least once each
    assert any("space looks exhausted" in m for m in logs)
    first = measured[0][0]
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{db}")
    twins = [t for t in study.trials if t.user_attrs.get("same_work_as") is not None]
    assert len({json.dumps(t.params, sort_keys=True) for t in twins}) == 3  # each other parameter set
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["same_work_as"] == first
               and t.user_attrs["not_run"] == f"duplicate of trial {first}: the same layouts and launch config"
               for t in twins)
    # --allow-repeats measures them
    again = Search(space.override(trials=2), study_name="w2", storage=f"sqlite:///{db}", executor="local",
                   progress=False, allow_repeats=True, log=logs.append).run()
    assert again["completed"] == 2 and again["same_work_skipped"] == 0

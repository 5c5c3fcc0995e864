"""The ``local`` sampler (`autotune.local_search.LocalSearchSampler`): valid, unmeasured, seeded
proposals; enqueued, failed, pruned and infeasible trials; multi-objective studies; conditional
spaces; and a replay on a synthetic unimodal grid that it must solve within a budget."""

from __future__ import annotations

import itertools

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from autotune.local_search import LocalSearchSampler, neighbour_values, ordered_values

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTS = {"a": CategoricalDistribution([32, 64, 128]), "b": IntDistribution(0, 192, step=64),
         "c": CategoricalDistribution(["x", "y", "z"])}
GRID = [dict(zip(DISTS, v)) for v in itertools.product([32, 64, 128], [0, 64, 128, 192], ["x", "y", "z"])]


def _value(p: dict) -> float:
    """Unimodal over the ordered axes: best at a=64, b=128, c='y'."""
    return -(abs([32, 64, 128].index(p["a"]) - 1) + abs(p["b"] // 64 - 2) + (p["c"] != "y"))


def _key(p: dict) -> tuple:
    return tuple(sorted(p.items()))


def _study(seed=0, directions=("maximize",), **kw):
    return optuna.create_study(directions=list(directions), sampler=LocalSearchSampler(seed=seed, **kw))


def _distance(p: dict, q: dict) -> int:
    """Moves between two parameter sets (ordered steps on a and b; c any other value)."""
    return (abs([32, 64, 128].index(p["a"]) - [32, 64, 128].index(q["a"])) + abs(p["b"] - q["b"]) // 64
            + (p["c"] != q["c"]))


def test_ordered_values_and_neighbours():
    assert ordered_values(CategoricalDistribution([128, 32, 64])) == [32, 64, 128]
    assert neighbour_values(CategoricalDistribution([128, 32, 64]), 64) == [32, 128]
    assert neighbour_values(CategoricalDistribution([128, 32, 64]), 128) == [64]
    assert neighbour_values(IntDistribution(0, 256, step=64), 0) == [64]
    assert sorted(neighbour_values(CategoricalDistribution(["max", "lse", "mean"]), "lse")) == ["max", "mean"]
    assert neighbour_values(optuna.distributions.FloatDistribution(0, 1), 0.5) == []


def test_valid_and_never_remeasured_until_the_grid_is_exhausted():
    study = _study(seed=1)
    seen = []
    for _ in range(len(GRID)):
        t = study.ask(DISTS)
        assert all(DISTS[n]._contains(DISTS[n].to_internal_repr(v)) for n, v in t.params.items())
        seen.append(_key(t.params))
        study.tell(t, _value(t.params))
    assert len(set(seen)) == len(GRID)  # every config once: nothing proposed twice


def test_proposes_neighbours_of_the_incumbent_after_the_start():
    study = _study(seed=2, n_startup_trials=3, rankings=("objective",))
    for _ in range(3):
        t = study.ask(DISTS)
        study.tell(t, _value(t.params))
    best = study.best_trial.params
    t = study.ask(DISTS)
    assert _distance(t.params, best) == 1


@pytest.mark.parametrize("seed", [0, 7])
def test_deterministic_per_seed(seed):
    def run(s):
        study = _study(seed=s)
        out = []
        for _ in range(15):
            t = study.ask(DISTS)
            out.append(_key(t.params))
            study.tell(t, _value(t.params))
        return out

    assert run(seed) == run(seed)
    assert run(seed) != run(seed + 1)


def test_enqueued_trials_come_first_and_lead():
    study = _study(seed=3, n_startup_trials=2, rankings=("objective",))
    leader = {"a": 64, "b": 128, "c": "x"}
    other = {"a": 32, "b": 0, "c": "z"}
    study.enqueue_trial(leader)
    study.enqueue_trial(other)
    for want in (leader, other):
        t = study.ask(DISTS)
        assert t.params == want
        study.tell(t, _value(t.params))
    for _ in range(6):  # the leader's six neighbours are searched next; one of them is the optimum
        incumbent = study.best_trial.params
        t = study.ask(DISTS)
        assert _distance(t.params, incumbent) == 1
        study.tell(t, _value(t.params))
        if study.best_value == 0:
            break
    assert study.best_value == 0


def test_every_enqueued_leader_starts_a_climb():
    """A warm start's leaders are climbed from in turn (the ``ils`` step), not only the best one."""
    study = _study(seed=8, n_startup_trials=2, rankings=("ils",))
    a, b = {"a": 64, "b": 0, "c": "y"}, {"a": 32, "b": 192, "c": "x"}
    for params in (a, b):
        study.enqueue_trial(params)
        t = study.ask(DISTS)
        study.tell(t, _value(t.params))
    near = []
    for _ in range(2):
        t = study.ask(DISTS)
        near.append((_distance(t.params, a), _distance(t.params, b)))
        study.tell(t, -10.0)  # worse than both: neither climb moves
    assert {(da == 1, db == 1) for da, db in near} == {(True, False), (False, True)}  # one each


def _tell_with_constraints(study, t, value, cons):
    study._storage.set_trial_system_attr(t._trial_id, "constraints", list(cons))
    study.tell(t, value)


def test_failed_pruned_and_infeasible_trials():
    study = _study(seed=4, n_startup_trials=0, rankings=("feasible",))
    fixed = [({"a": 32, "b": 0, "c": "x"}, "fail"), ({"a": 32, "b": 64, "c": "x"}, "prune"),
             ({"a": 128, "b": 192, "c": "z"}, (10.0, [0.5])),  # best value, infeasible
             ({"a": 64, "b": 0, "c": "z"}, (1.0, [0.0]))]  # the feasible incumbent
    for params, what in fixed:
        study.enqueue_trial(params)
        t = study.ask(DISTS)
        if what == "fail":
            study.tell(t, state=TrialState.FAIL)
        elif what == "prune":
            study.tell(t, state=TrialState.PRUNED)
        else:
            _tell_with_constraints(study, t, what[0], what[1])
    measured = {_key(p) for p, _ in fixed}
    incumbent = fixed[3][0]
    for _ in range(5):  # neighbours of the feasible trial, never of the infeasible one, never re-measured
        t = study.ask(DISTS)
        assert _key(t.params) not in measured
        assert _distance(t.params, incumbent) == 1
        measured.add(_key(t.params))
        _tell_with_constraints(study, t, 0.0, [0.0])


def test_multi_objective_ranks_by_the_first_objective():
    study = _study(seed=5, directions=("minimize", "maximize"), n_startup_trials=2, rankings=("objective",))
    for params, values in (({"a": 128, "b": 192, "c": "z"}, (1.0, 0.0)), ({"a": 32, "b": 0, "c": "x"}, (5.0, 9.0))):
        study.enqueue_trial(params)
        t = study.ask(DISTS)
        study.tell(t, values)
    t = study.ask(DISTS)  # the first objective is minimised: the first trial leads
    assert _distance(t.params, {"a": 128, "b": 192, "c": "z"}) == 1
    study.tell(t, (2.0, 1.0))


def test_conditional_space_no_duplicates():
    """Define-by-run: ``b`` exists only when ``fam`` is 'static' (as the pattern families)."""
    study = _study(seed=6, n_startup_trials=2)

    def suggest(t):
        fam = t.suggest_categorical("fam", ["static", "guided"])
        a = t.suggest_categorical("a", [32, 64, 128])
        if fam == "static":
            t.suggest_int("b", 0, 192, step=64)
        else:
            t.suggest_categorical("keep", [0.1, 0.25, 0.5])
        return a

    seen = []
    total = 3 * 4 + 3 * 3
    for _ in range(total):
        t = study.ask()
        suggest(t)
        seen.append(_key(t.params))
        study.tell(t, float(t.params["a"]) + t.params.get("b", 0) / 64)
    assert len(set(seen)) == total


def test_make_sampler_builds_local():
    from dataclasses import replace

    from autotune.search import make_sampler
    from search_spaces.space import load_space
    from pathlib import Path

    space = load_space(Path(__file__).resolve().parent.parent / "search_spaces" / "cpu.yaml")
    space.sampler = replace(space.sampler, name="local", seed=3, n_startup_trials=5)
    s = make_sampler(space)
    assert isinstance(s, LocalSearchSampler) and s._n_startup == 5


def _replay(sampler, budget: int) -> float:
    """A synthetic 4-axis grid (6 values each, 1296 configs): unimodal, best 0 at (4, 1, 3, 2)."""
    target = (4, 1, 3, 2)
    dists = {f"x{i}": IntDistribution(0, 5) for i in range(4)}
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(budget):
        t = study.ask(dists)
        study.tell(t, -sum((t.params[f"x{i}"] - c) ** 2 * (i + 1) for i, c in enumerate(target)))
    return study.best_value


@pytest.mark.parametrize("seed", range(5))
def test_finds_the_optimum_of_a_unimodal_grid_within_budget(seed):
    assert _replay(LocalSearchSampler(seed=seed), budget=60) == 0  # 60 of 1296 configs


def test_random_does_not_within_that_budget():
    """The budget above is tight: random sampling (5 seeds) finds the optimum at most once."""
    hits = sum(_replay(optuna.samplers.RandomSampler(seed=s), budget=60) == 0 for s in range(5))
    assert hits <= 1

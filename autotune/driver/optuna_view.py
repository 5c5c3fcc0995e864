"""What Optuna sees of a study: the sampler the driver builds (`make_sampler`, `sampler_seed`), the
names of Optuna's constraint values (`optuna_constraint_names`) and the per-bucket view of one
complete trial (`bucket_view`: its constraint values and user attributes; see `autotune.search`,
"What Optuna's own tools show")."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from search_spaces.objectives import OBJECTIVE_TABLE
from search_spaces.space import SearchSpace


def sampler_seed(seed: Optional[int], n_trials: int, run_id: Optional[int]) -> Optional[int]:
    """The seed of one driver's sampler: the space's seed on a fresh study; on a study that already
    has trials (a resume, or another driver's study), a seed derived from (seed, number of trials,
    run id), so the sampler continues from the study instead of replaying the sequence it proposed
    at the first start (which re-proposed the parameters measured then)."""
    if seed is None or (n_trials == 0 and run_id is None):
        return seed
    return int(hashlib.sha256(f"{seed}:{n_trials}:{run_id}".encode()).hexdigest()[:8], 16)


def make_sampler(space: SearchSpace, seed: Optional[int] = None, *, use_space_seed: bool = True):
    import warnings

    import optuna

    cfg = space.sampler
    seed = cfg.seed if use_space_seed else seed

    def constraints_func(trial) -> list[float]:
        return list(trial.user_attrs.get("constraints", []))

    # Constraint values are written by the driver to the trial's system attribute "constraints"
    # (the list format that Optuna 4 and 5 both read). Optuna >= 5 samplers find them there by
    # themselves (and deprecate constraints_func); Optuna 4 samplers need constraints_func.
    new_api = hasattr(optuna.trial.Trial, "set_constraint")
    cons = constraints_func if (space.constraints and not new_api) else None
    if cfg.name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=seed, constraints_func=cons)
    if cfg.name == "tpe":
        with warnings.catch_warnings():  # group: the conditional (per-family) parameters, sampled jointly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(n_startup_trials=cfg.startup_trials, seed=seed,
                                              multivariate=True, group=True, constraints_func=cons)
    if cfg.name == "gp":  # Gaussian process, constrained log-EHVI (Optuna >= 4.2; needs torch)
        return optuna.samplers.GPSampler(n_startup_trials=cfg.startup_trials, seed=seed, constraints_func=cons)
    if cfg.name == "local":  # constrained iterated local search (autotune.local_search); reads the constraints itself
        from ..local_search import STARTUP_DEFAULT, LocalSearchSampler

        startup = STARTUP_DEFAULT if cfg.n_startup_trials is None else cfg.n_startup_trials
        return LocalSearchSampler(n_startup_trials=startup, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def optuna_constraint_names(space: SearchSpace) -> list[str]:
    """The targets Optuna's constraint values stand for: every target but ``speedup``, which
    `results.verdict` judges on confirmed figures only (its step 1 admits a trial to a bucket's
    leaders on every other target); the speedup is an objective."""
    return [n for n in space.effective_targets().names() if n != "speedup"]


def bucket_view(space: SearchSpace, cells: list[Any]) -> tuple[list[float], dict[str, dict[str, Any]], Optional[int]]:
    """What Optuna records of one complete trial, from its (workload, bucket) cells (measurement
    dicts or at_measurements rows, each with its ``violations``: target -> violation, <= 0 met).

    Per bucket: the violation of each target is its worst over the bucket's workloads; the bucket
    is *feasible* when every target but speedup is met there - the trial is then a candidate of
    that bucket in `results.verdict` (step 1: the leaders, re-measured and judged on the speedup
    target there) - and ``meets_speedup`` says whether the search's own interval already clears
    the speedup target; its objectives are aggregated over the bucket's workloads as the trial's
    are over all cells (speedup, its interval's lower end and the memory ratios by geometric mean,
    sparsity by mean, accuracy by the worse value).

    Returns (constraints, buckets, constraint_bucket): the constraint values Optuna stores (in the
    order of `optuna_constraint_names`) are the violations at the trial's *least violating*
    bucket (smallest worst violation; ties to the shorter length), so a trial is feasible for
    Optuna - its samplers, ``study.best_trials``, ``optuna best-trials``, ``plot_pareto_front`` -
    exactly when it is a candidate of at least one bucket, and every trial the export chooses is
    feasible there; ``buckets`` maps str(L) to that bucket's objectives, violations and
    feasibility (the trial's user attribute ``buckets``)."""
    from results.aggregate import geomean

    def g(c: Any, k: str) -> Any:
        return c.get(k) if isinstance(c, dict) else getattr(c, k, None)

    all_names = space.effective_targets().names()
    names = optuna_constraint_names(space)
    by_bucket: dict[int, list[Any]] = {}
    for c in cells:
        by_bucket.setdefault(int(g(c, "bucket")), []).append(c)
    out: dict[str, dict[str, Any]] = {}
    best: Optional[tuple[float, int]] = None
    worse = min
    if space.accuracy_metric:
        from search_spaces.space import ACCURACY_METRIC_DIRECTIONS

        worse = min if ACCURACY_METRIC_DIRECTIONS[space.accuracy_metric] == "max" else max
    for L in sorted(by_bucket):
        cs = by_bucket[L]
        viol = {n: max(float((g(c, "violations") or {}).get(n, 0.0)) for c in cs) for n in all_names}
        worst = max((viol[n] for n in names), default=0.0)
        feasible = worst <= 0
        entry: dict[str, Any] = {"feasible": feasible, "meets_speedup": viol.get("speedup", 0.0) <= 0}
        for o in OBJECTIVE_TABLE:  # each objective by its record's aggregation, over the bucket's cells
            if o.per_metric:
                accs = [g(c, "accuracy_value") for c in cs if g(c, "accuracy_value") is not None]
                if space.accuracy_metric:
                    entry[space.accuracy_metric] = worse(accs) if accs else None
                continue
            values = {o.name: [o.measure(lambda k, c=c: g(c, k)) for c in cs]}
            values.update({k: [g(c, k) for c in cs] for k in o.companions})
            for k, xs in values.items():
                entry[k] = (sum(xs) / len(xs) if o.aggregate == "mean"
                            else geomean(xs, f"{k} at L={L}", quiet=k in o.companions).value)
        entry["workloads"] = sorted(str(g(c, "workload")) for c in cs)
        entry["violations"] = viol
        out[str(L)] = entry
        if best is None or worst < best[0]:
            best = (worst, L)
    if best is None:
        return [], out, None
    at = out[str(best[1])]["violations"]
    return [float(at[n]) for n in names], out, best[1]


def trial_seed(study: str, number: int) -> int:
    """The seed of trial ``number`` of ``study`` (its inputs, the same on every worker and resume)."""
    return int(hashlib.sha256(f"{study}:{number}".encode()).hexdigest()[:8], 16)

"""How efficient is the search? Two figures, on CPU.

1. Throughput: trials per minute with 1 and 2 Ray workers on a small CPU space (cpu.yaml reduced
   to buckets 256 and 512, 3 repeats), and the share of wall time spent outside measurement:
   1 - (seconds the workers spent measuring: gate + candidate + baselines + accuracy) /
   (workers x wall seconds of the search loop). Start-up (Ray, actors) is reported separately.
2. Sampler quality: a reduced discrete space (block 32/64, window 0/64/128, global 0/16,
   stride 0/4: 24 configs; buckets 256/512; the row workload) is measured exhaustively once; the
   samplers are then replayed against that table (same measurements for every sampler, so the
   comparison is not blurred by timing noise) with a budget of N trials over several seeds:
   best feasible speedup found / best feasible speedup of the grid, and the hypervolume of the
   feasible (speedup, accuracy) front found / the grid's. NSGA-II and TPE against RandomSampler.

    python benchmarks/search_efficiency.py [--trials 12] [--budget 8] [--seeds 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def throughput(workers: int, trials: int) -> dict:
    import ray

    from autotune.search import Search
    from search_spaces.space import BudgetSettings, ExecutionSettings, MeasureSettings, load_space

    space = load_space(ROOT / "search_spaces" / "cpu.yaml").override(trials=trials)
    space.buckets = [256, 512]
    space.measure = MeasureSettings(warmup=1, repeats=3)
    space.budget = BudgetSettings(trials=space.budget.trials, timeout=None)
    space.execution = ExecutionSettings(workers=workers, threads_per_worker=1)  # N single-threaded workers
    with tempfile.TemporaryDirectory() as d:
        s = Search(space, study_name=f"eff-{workers}", storage=f"sqlite:///{d}/a.db", executor="ray",
                   workers=workers, progress=False, num_cpus=2)
        t0 = time.perf_counter()
        summary = s.run()
        wall = time.perf_counter() - t0
    if ray.is_initialized():
        ray.shutdown()
    out = {
        "workers": workers,
        "trials": summary["completed"] + summary["failed"],
        "failed": summary["failed"],
        "wall_s": round(wall, 2),
        "trials_per_min": round(60 * (summary["completed"] + summary["failed"]) / wall, 2),
        "measure_s": round(summary["measure_s"], 2),
        "trial_s": round(summary["trial_s"], 2),
        "startup_s": round(summary["startup_s"], 2),
        "outside_measurement_share": round(1 - summary["measure_s"] / (workers * wall), 3),
        "outside_measurement_share_after_startup": round(
            1 - summary["measure_s"] / (workers * (summary["wall_s"] - summary["startup_s"])), 3),
    }
    return out


def grid_table(seed: int = 0) -> tuple[list[dict], object]:
    from search_spaces.space import parse_space
    from autotune.trial import TrialRequest, TrialRunner, summarize

    import yaml

    data = yaml.safe_load((ROOT / "search_spaces" / "cpu.yaml").read_text())
    data.update(
        buckets=[256, 512],
        pattern={"block_size": {"choices": [32, 64]}, "window": {"choices": [0, 64, 128]},
                 "num_global": {"choices": [0, 16]}, "stride": {"choices": [0, 4]}},
        workloads=[w for w in data["workloads"] if w["kind"] == "msa_row"],
        objectives=["speedup", "accuracy"],
        measure={"warmup": 1, "repeats": 5},
    )
    space = parse_space(data, "cpu.yaml (reduced grid)")
    runner = TrialRunner(threads=2)
    table = []
    for i, params in enumerate(space.grid()):
        pattern, kernel = space.split_params(params)
        req = TrialRequest("grid", i, params, pattern, kernel, space.to_dict(), seed)
        res = runner.run(req.to_dict())
        if not res.ok:
            table.append({"params": params, "ok": False, "reason": res.reason})
            continue
        objs, cons = summarize(space, res)
        table.append({"params": params, "ok": True, "objs": objs, "cons": cons, "feasible": all(c <= 0 for c in cons)})
    return table, space


def hv2(points: list[tuple[float, float]], ref: tuple[float, float] = (0.0, 0.0)) -> float:
    """Hypervolume of maximised 2-D points above ``ref``."""
    pts = sorted({p for p in points if p[0] > ref[0] and p[1] > ref[1]}, key=lambda p: -p[0])
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def replay(table: list[dict], space, sampler_name: str, budget: int, seed: int,
           constrained: bool = True) -> tuple[float, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from autotune.search import make_sampler

    from search_spaces.space import SamplerSettings

    space.sampler = SamplerSettings(name=sampler_name, seed=seed, population_size=4, n_startup_trials=4)
    lookup = {tuple(sorted(r["params"].items())): r for r in table}
    study = optuna.create_study(directions=space.directions(), sampler=make_sampler(space))
    dists = space.distributions()
    found = []
    for _ in range(budget):
        t = study.ask(fixed_distributions=dists)
        r = lookup[tuple(sorted(dict(space.fixed(), **t.params).items()))]
        if not r["ok"]:
            study.tell(t, state=optuna.trial.TrialState.FAIL)
            continue
        study._storage.set_trial_system_attr(t._trial_id, "constraints", r["cons"])
        t.set_user_attr("constraints", r["cons"])
        study.tell(t, r["objs"])
        found.append(r)
    feas = [r for r in found if r["feasible"] or not constrained]
    best = max((r["objs"][0] for r in feas), default=0.0)
    return best, hv2([tuple(r["objs"]) for r in feas])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12, help="trials per throughput run")
    ap.add_argument("--budget", type=int, default=8, help="sampler budget in the grid replay")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_efficiency.json"))
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result: dict = {}
    if not args.skip_throughput:
        result["throughput"] = [throughput(w, args.trials) for w in (1, 2)]
        for r in result["throughput"]:
            print(f"throughput: {r}", flush=True)
    t0 = time.perf_counter()
    table, space = grid_table()
    grid_s = time.perf_counter() - t0
    feas = [r for r in table if r.get("ok") and r["feasible"]]
    constrained = bool(feas)
    if not constrained:  # no config meets the space's constraints: compare on all measured points
        print("grid: no feasible config; comparing samplers without constraints", flush=True)
        feas = [r for r in table if r.get("ok")]
    grid_best = max((r["objs"][0] for r in feas), default=0.0)
    grid_hv = hv2([tuple(r["objs"]) for r in feas])
    result["grid"] = {"configs": len(table), "constrained": constrained, "points": len(feas), "best_speedup": grid_best, "hypervolume": grid_hv,
                      "seconds": round(grid_s, 1)}
    print(f"grid: {result['grid']}", flush=True)
    result["samplers"] = {}
    for name in ("nsga2", "tpe", "random"):
        ratios, hvs = [], []
        for seed in range(args.seeds):
            best, hv = replay(table, space, name, args.budget, seed, constrained)
            ratios.append(best / grid_best if grid_best else 0.0)
            hvs.append(hv / grid_hv if grid_hv else 0.0)
        result["samplers"][name] = {
            "budget": args.budget, "seeds": args.seeds,
            "best_ratio_mean": round(statistics.mean(ratios), 3), "best_ratio_min": round(min(ratios), 3),
            "found_grid_best": sum(r >= 0.999 for r in ratios),
            "hv_ratio_mean": round(statistics.mean(hvs), 3),
        }
        print(f"{name}: {result['samplers'][name]}", flush=True)
    result["grid_table"] = table
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""How efficient is the search? Three figures, on CPU.

1. Throughput (``--throughput``): trials per minute with 1 and 2 Ray workers on a small CPU space
   (cpu.yaml reduced to buckets 256 and 512, 3 repeats), and the share of wall time spent outside
   measurement. Start-up (Ray, actors) is reported separately.
2. Sampler quality: a discrete space (block 32/64/128, window 0/64/128/192, global 0/16/32,
   stride 0/4/8: 108 static configs; buckets 256/512; the MSA-row workload; objectives speedup and
   long-range contact recall; the cpu.yaml targets, under which several configs are feasible) is
   measured exhaustively once (`build_grid`, written to ``--grid``; reused when the file exists).
   Every sampler is then replayed against that table (the same measurements for every sampler, so
   the comparison is not blurred by timing noise) with a budget of a third of the grid over 10
   seeds: whether it found the grid's best feasible speedup, the best found / the grid's best, and
   the hypervolume of the feasible (speedup, recall) front found / the grid's. As in the search, a
   proposal already measured is pruned and asked again without costing budget. Samplers: NSGA-II,
   TPE (independent and multivariate), the Gaussian-process sampler (`optuna.samplers.GPSampler`,
   constrained log-EHVI), random and ``local`` (`autotune.local_search`: constrained iterated local
   search over the ordered parameter values, as kernel autotuners search). Hold-out, against
   fitting one grid: the same replay with seeds 10..29, and single-objective studies of each
   bucket's own feasible speedup (an infeasible config scores 0, as in 3) over 20 seeds: whether
   the bucket's best was found within the budget (``holdout``; not for GP, too slow here).
3. Warm start (`autotune.warmstart`): single-objective studies at bucket 512 (its feasible
   speedup; an infeasible config scores 0), cold, or warm-started with the confirmed leaders of a
   study at bucket 256 (the 3 best feasible configs there, enqueued first): trials until the best
   found is within 5% of the bucket's best, median over 3 seeds (0..2) and over the hold-out seeds
   3..9; and the same from 512 to 256 (and between every pair of buckets of a grid's
   ``warm_pairs``). ``warm`` is what the search enqueues (`autotune.warmstart.warm_start`): the
   leaders as they are, then their length-scaled counterparts (``scaled`` below, adopted after the
   triangle grid of 5); the other transfers of `transfer_leaders` are measured beside it
   (``as_is``: the leaders alone, the search's rule before):
   ``scaled``: each leader's length-scaled counterparts (`autotune.warmstart.length_scaled`), block
   size, window and globals (residues) times L_new / L_old, snapped to the nearest choices (both on a tie; stride is in blocks and
   stays), the same pattern relative to the chain; ``scaled_no_block``: the same with the block
   size (also the kernel's tile) kept; ``near_feasible`` (to a shorter bucket only): the 3 fastest
   configs at the source bucket that missed a target other than speedup there (in this grid the
   accuracy targets, which a static pattern of fixed reach meets more easily on a shorter chain:
   every config feasible at 512 is feasible at 256); ``all_buckets``: the earlier study measured
   both buckets, as a real study does, and the leaders of the bucket nearest the new one come first
   (`autotune.warmstart.order_by_length`, the search's order).
4. Three grids, and the search's own rule that a static pattern computing what a measured trial
   computes is not measured again (`autotune.same_work`; `_ask_new` prunes such a twin and asks
   again at no cost, as the search does), section ``grids`` of ``--out``; sections 2 and 3 are
   run on each:
   ``one_shot``: the grid above. It measures each config once, and at a bucket many configs share
   one layout (108 configs make 46 distinct computations over both buckets and the accuracy
   chains; at 256 alone 20 layouts), measured up to 1.45x apart there, so that its "best" at 256
   is the luckiest of three identical computations;
   ``pooled``: the same measurements, each config's bucket speedup the median over the configs
   with its layout there (`pooled_by_layout`);
   ``remeasured``: the 46 distinct computations measured again with the current code, ``--rounds``
   independent rounds (seeds 1..5), each computation's bucket speedups the median over the rounds
   (`remeasured_table`; written to ``--remeasured``, built when absent, about a minute a round).
   The one-shot grid is replayed without the rule only (as the search ran before it: with the rule
   its "best", one lucky measurement, is found only when the sampler happens to measure that twin
   first), the other two with and without it (``*_without_same_work``).

5. A second, larger grid (`TRI_GRID`, ``grids.tri``): the triangle workload at three buckets
   (256, 512, 1024), block 32/64/128 x window 0/32/64/128/256 x global 0/16/32 x stride 0/4/8
   (135 configs, 66 distinct computations), re-measured in 5 rounds like ``remeasured`` above
   (``results/search_grid_cpu_tri.json``); the replay and the warm start between every pair of
   buckets. The grids are data (`GridSpec`); `activate` makes one the grid the functions read.

    python benchmarks/search_efficiency.py [--grids row,tri] [--seeds 10] [--out FILE] [--throughput]
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
from dataclasses import dataclass, field
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class GridSpec:
    """One replay grid (module docstring, 5), as data: the cpu.yaml workload it times, its buckets
    and pattern axes, its files (``one_shot``: measured once per config, absent for a grid that has
    only the re-measured rounds) and the (source, target) buckets of its warm starts."""

    name: str
    workload: str
    buckets: tuple[int, ...]
    pattern: dict = field(hash=False)
    remeasured: Path = field(hash=False)
    one_shot: Optional[Path] = field(default=None, hash=False)
    warm_pairs: tuple[tuple[int, int], ...] = ()
    rounds: int = 5


ROW_GRID = GridSpec(
    "row", "row", (256, 512),
    {"block_size": {"choices": [32, 64, 128]}, "window": {"choices": [0, 64, 128, 192]},
     "num_global": {"choices": [0, 16, 32]}, "stride": {"choices": [0, 4, 8]}},
    RESULTS / "search_grid_cpu_distinct.json", RESULTS / "search_grid_cpu.json", ((256, 512), (512, 256)))
TRI_GRID = GridSpec(
    "tri", "tri", (256, 512, 1024),
    {"block_size": {"choices": [32, 64, 128]}, "window": {"choices": [0, 32, 64, 128, 256]},
     "num_global": {"choices": [0, 16, 32]}, "stride": {"choices": [0, 4, 8]}},
    RESULTS / "search_grid_cpu_tri.json", None,
    ((256, 512), (512, 256), (512, 1024), (1024, 512), (256, 1024), (1024, 256)))
GRIDS = {g.name: g for g in (ROW_GRID, TRI_GRID)}

# the active grid (`activate`): what grid_space, the work keys and the replay read
GRID = ROW_GRID
GRID_PATTERN = GRID.pattern
GRID_BUCKETS = list(GRID.buckets)
SAMPLERS = ("nsga2", "tpe", "tpe_independent", "gp", "random", "local")
WARM_FROM, WARM_TO, WARM_TOP = 256, 512, 3
HOLDOUT_SEEDS = (10, 30)  # the replay's hold-out seeds (module docstring, 2)
BUCKET_SEEDS = 20  # seeds of the single-bucket hold-out
WARM_HOLDOUT_SEEDS = (3, 10)  # the warm start's hold-out seeds (module docstring, 3)


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
    n = summary["completed"] + summary["failed"]
    return {
        "workers": workers, "trials": n, "failed": summary["failed"], "wall_s": round(wall, 2),
        "trials_per_min": round(60 * n / wall, 2), "measure_s": round(summary["measure_s"], 2),
        "trial_s": round(summary["trial_s"], 2), "startup_s": round(summary["startup_s"], 2),
        "outside_measurement_share": round(1 - summary["measure_s"] / (workers * wall), 3),
    }


def activate(spec: GridSpec) -> None:
    """Make ``spec`` the active grid (module globals ``GRID``, ``GRID_PATTERN``, ``GRID_BUCKETS``)."""
    global GRID, GRID_PATTERN, GRID_BUCKETS
    GRID, GRID_PATTERN, GRID_BUCKETS = spec, spec.pattern, list(spec.buckets)
    _WORK_KEYS.clear()


def grid_space(sampler: Optional[dict] = None):
    """The replay's space: cpu.yaml with the active grid's pattern axes, buckets and workload."""
    import yaml

    from search_spaces.space import parse_space

    data = yaml.safe_load((ROOT / "search_spaces" / "cpu.yaml").read_text())
    data.update(buckets=GRID_BUCKETS, pattern=GRID_PATTERN,
                workloads=[w for w in data["workloads"] if w["name"] == GRID.workload],
                objectives=["speedup", "accuracy"], measure={"warmup": 1, "repeats": 5})
    if sampler is not None:
        data["sampler"] = sampler
    return parse_space(data, "cpu.yaml (replay grid)")


def layout_key(params: dict, L: int) -> tuple:
    """What a static config of the grid computes at length ``L``: its layout's block size and kept
    tiles (`patterns.build_layout`)."""
    from patterns import PatternConfig, build_layout

    lay = build_layout(PatternConfig(**{k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("pattern.")}), L)
    return lay.block_size, lay.block_mask.cpu().numpy().tobytes()


def distinct_configs(space) -> list[dict]:
    """One config (the first in grid order) per distinct computation (`work_keys`: the search's rule)."""
    keys = work_keys(space)
    seen: dict = {}
    for params in space.grid():
        seen.setdefault(keys[_key(params)], params)
    return list(seen.values())


def build_grid(seed: int = 0, distinct: bool = False) -> list[dict]:
    """Measure every config of `grid_space` once (one trial each, as the search would): the
    aggregate objectives and Optuna constraint values, and per bucket (`bucket_view`) the speedup
    and whether every target but speedup is met there. ``distinct``: only one config per distinct
    computation (`distinct_configs`; the independent re-measurement of module
    docstring, 4)."""
    from autotune.search import bucket_view
    from autotune.trial import TrialRequest, TrialRunner, summarize

    space = grid_space()
    runner = TrialRunner(threads=2)
    table = []
    for i, params in enumerate(distinct_configs(space) if distinct else space.grid()):
        pattern, kernel = space.split_params(params)
        res = runner.run(TrialRequest("grid", i, params, pattern, kernel, space.to_dict(), seed).to_dict())
        if not res.ok:
            table.append({"params": params, "ok": False, "reason": res.reason})
            continue
        objs, _ = summarize(space, res)
        res.judge(space)
        cons, buckets, _ = bucket_view(space, [c.to_dict() for c in res.cells])
        table.append({"params": params, "ok": True, "objs": objs, "cons": cons,
                      "feasible": all(c <= 0 for c in cons),
                      "buckets": {L: {"speedup": b["speedup"], "feasible": b["feasible"]} for L, b in buckets.items()}})
        print(f"grid {i + 1}: {params} -> {[round(o, 3) for o in objs]} feasible={table[-1]['feasible']}", flush=True)
    return table


def pooled_by_layout(table: list[dict], buckets: Optional[list[int]] = None) -> list[dict]:
    """``table`` with each config's speedup at each bucket replaced by the median over every config
    of the table whose static layout there is the same (`patterns.build_layout`: the same block
    size and kept tiles, hence the same kernel work), and its aggregate speedup (``objs[0]``, the
    geometric mean over the buckets, as `autotune.trial.summarize` has it with one workload)
    recomputed from those; feasibility, the other objectives and the constraint values are the
    config's own (they depend on the layouts at the accuracy chains' lengths too).

    The grid measures each config once, and configs whose layouts coincide at a bucket (at 256 a
    block-128 layout has 2 x 2 tiles, so stride and globals change nothing) measured up to 1.45x
    apart there: which of two identical computations is "the best" is noise. The median of a
    layout's measurements is the grid's best estimate of its speed, and a sampler that finds any
    config of the best layout has found the best (module docstring, 4)."""
    import copy

    out = copy.deepcopy(table)
    buckets = GRID_BUCKETS if buckets is None else buckets
    for L in buckets:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(table):
            if not r.get("ok"):
                continue
            groups.setdefault(layout_key(r["params"], L), []).append(i)
        for members in groups.values():
            m = statistics.median(table[i]["buckets"][str(L)]["speedup"] for i in members)
            for i in members:
                out[i]["buckets"][str(L)]["speedup"] = m
                out[i]["buckets"][str(L)]["layout_twins"] = len(members)
    for r in out:
        if r.get("ok"):
            speeds = [r["buckets"][str(L)]["speedup"] for L in buckets]
            r["objs"] = [statistics.geometric_mean(speeds)] + list(r["objs"][1:])
    return out


def hv2(points: list[tuple[float, float]], ref: tuple[float, float] = (0.0, 0.0)) -> float:
    """Hypervolume of maximised 2-D points above ``ref``."""
    pts = sorted({p for p in points if p[0] > ref[0] and p[1] > ref[1]}, key=lambda p: -p[0])
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


MAX_DUPLICATE_ASKS = 200  # as the search: that many re-proposals in a row end the study


_WORK_KEYS: dict[tuple, Optional[str]] = {}


def work_keys(space) -> dict[tuple, Optional[str]]:
    """Each grid config's work key (`autotune.same_work`: its layouts at the buckets and accuracy
    chain lengths, and its launch config), by `_key` of its parameters; computed once."""
    if not _WORK_KEYS:
        from autotune.same_work import WorkKeys

        keys = WorkKeys(space)
        for params in space.grid():
            _WORK_KEYS[_key(params)] = keys.key(*space.split_params(params))
    return _WORK_KEYS


def _ask_new(study, space, lookup: dict, asked: set, same_work: bool = True):
    """Ask until the sampler proposes a config not measured yet, as the search does (a proposal
    already measured is pruned unmeasured and asked again; it costs no budget); with ``same_work``
    (the search's default) so is one whose work key (`work_keys`) a measured config has. Returns
    (trial, table row), or (None, None) when the space looks exhausted."""
    import optuna

    dists = space.distributions()
    keys = work_keys(space) if same_work else {}
    for _ in range(MAX_DUPLICATE_ASKS):
        t = study.ask(fixed_distributions=dists)
        key = _key(dict(space.fixed(), **t.params))
        work = keys.get(key) or key
        if work not in asked:
            asked.add(work)
            return t, lookup[key]
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
    return None, None


def replay_sampler(name: str, seed: int, space, directions: list[str]):
    """The Optuna sampler ``name`` as the search builds it (`autotune.search.make_sampler`), with
    ``tpe_independent`` (TPE without the multivariate model) for comparison."""
    import optuna

    from autotune.search import make_sampler
    from search_spaces.space import SamplerSettings

    if name == "tpe_independent":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=SamplerSettings.STARTUP_DEFAULT)
    from dataclasses import replace

    space.sampler = replace(space.sampler, name=name, seed=seed)
    return make_sampler(space)


def replay(table: list[dict], space, sampler_name: str, budget: int, seed: int,
           constrained: bool = True, same_work: bool = True) -> tuple[float, float]:
    """One seeded study of ``budget`` trials answered from ``table`` (``same_work``: see `_ask_new`).
    Returns (best feasible speedup found, hypervolume of the feasible points found)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lookup = {_key(r["params"]): r for r in table}
    study = optuna.create_study(directions=space.directions(),
                                sampler=replay_sampler(sampler_name, seed, space, space.directions()))
    found = []
    asked: set[tuple] = set()
    for _ in range(budget):
        t, r = _ask_new(study, space, lookup, asked, same_work)
        if t is None:
            break
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


def sampler_replays(table: list[dict], seeds: int, budget: int, samplers: tuple[str, ...] = SAMPLERS,
                    seeds_of: Optional[dict[str, int]] = None, same_work: bool = True) -> tuple[dict, dict]:
    """Every sampler of ``samplers`` over ``seeds`` seeds (``seeds_of`` per sampler) at ``budget``
    trials (module docstring, 2; ``same_work``: see `_ask_new`)."""
    space = grid_space()
    feas = [r for r in table if r.get("ok") and r["feasible"]]
    constrained = bool(feas)
    if not constrained:
        feas = [r for r in table if r.get("ok")]
    grid_best = max(r["objs"][0] for r in feas)
    grid_hv = hv2([tuple(r["objs"]) for r in feas])
    grid = {"configs": len(table), "constrained": constrained, "feasible": len(feas),
            "best_speedup": round(grid_best, 4), "hypervolume": round(grid_hv, 4), "budget": budget}
    out = {}
    for name in samplers:
        t0 = time.perf_counter()
        ratios, hvs = [], []
        n_seeds = (seeds_of or {}).get(name, seeds)
        for seed in range(n_seeds):
            best, hv = replay(table, grid_space(), name, budget, seed, constrained, same_work)
            ratios.append(best / grid_best)
            hvs.append(hv / grid_hv if grid_hv else 0.0)
        out[name] = {"budget": budget, "seeds": n_seeds, "found_grid_best": sum(r >= 0.999 for r in ratios),
                     "best_ratio_mean": round(statistics.mean(ratios), 3), "best_ratio_min": round(min(ratios), 3),
                     "hv_ratio_mean": round(statistics.mean(hvs), 3)}
        if name != "gp":  # hold-out (module docstring, 2): other seeds, and each bucket's own objective
            held = [replay(table, grid_space(), name, budget, seed, constrained, same_work)[0] / grid_best
                    for seed in range(HOLDOUT_SEEDS[0], HOLDOUT_SEEDS[1])]
            out[name]["holdout"] = {"seeds": f"{HOLDOUT_SEEDS[0]}..{HOLDOUT_SEEDS[1] - 1}",
                                    "found_grid_best": sum(r >= 0.999 for r in held)}
            for L in GRID_BUCKETS:
                hits = [warm_start_replay(table, name, seed, False, budget, L, L, within=0.0, same_work=same_work) is not None
                        for seed in range(BUCKET_SEEDS)]
                out[name]["holdout"][f"bucket_{L}_found_best"] = sum(hits)
            out[name]["holdout"]["bucket_seeds"] = BUCKET_SEEDS
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {out[name]}", flush=True)
    return grid, out


TRANSFERS = ("scaled", "as_is", "scaled_no_block", "near_feasible", "all_buckets")  # module docstring, 3
PRODUCT_TRANSFER = "scaled"  # what `autotune.warmstart.warm_start` enqueues for a length it has no leaders of


def _score(r: dict, L: int) -> float:
    """The bucket's feasible speedup (an infeasible or failed config scores 0)."""
    b = r.get("buckets", {}).get(str(L)) if r.get("ok") else None
    return b["speedup"] if b and b["feasible"] else 0.0


def transfer_leaders(table: list[dict], space, transfer: str, src: int, dst: int) -> list:
    """The configs a warm start from a study at bucket ``src`` enqueues for bucket ``dst`` (module
    docstring, 3): the ``WARM_TOP`` leaders at ``src`` as they are, then, by ``transfer``, their
    length-scaled counterparts (``scaled``: block, window and globals, by the product's
    `autotune.warmstart.length_scaled`; ``scaled_no_block``: window and globals) or (``near_feasible``, only when ``dst < src``) the ``WARM_TOP`` fastest configs at
    ``src`` that failed a target other than speedup there (in this grid: the accuracy targets).
    ``all_buckets``: the earlier study measured every grid bucket, as a real study does; the
    ``WARM_TOP`` leaders of each, the bucket nearest ``dst`` first (`autotune.warmstart.order_by_length`)."""
    from autotune.warmstart import LENGTH_PARAMS, Leader, length_scaled, order_by_length, scaled_counterparts

    ok = [r for r in table if r.get("ok")]
    if transfer == "all_buckets":
        leaders = [ld for L in GRID_BUCKETS for ld in transfer_leaders(table, space, "as_is", L, dst)]
        return order_by_length(leaders, [dst])
    src_rows = sorted((r for r in ok if _score(r, src) > 0), key=lambda r: -_score(r, src))[:WARM_TOP]
    params = [r["params"] for r in src_rows]
    if transfer == "scaled":  # the product's rule, by the product's code
        leaders = [Leader(bucket=src, trial=i, params=p) for i, p in enumerate(params)]
        return leaders + length_scaled(leaders, space, [dst])
    if transfer == "scaled_no_block":
        params += [q for p in params for q in scaled_counterparts(space, p, src, dst, LENGTH_PARAMS[1:])]
    elif transfer == "near_feasible" and dst < src:
        near = sorted((r for r in ok if not r["buckets"][str(src)]["feasible"]),
                      key=lambda r: -r["buckets"][str(src)]["speedup"])[:WARM_TOP]
        params += [r["params"] for r in near]
    return [Leader(bucket=src, trial=i, params=p) for i, p in enumerate(params)]


def warm_start_replay(table: list[dict], sampler_name: str, seed: int, warm: bool, budget: int,
                      src_bucket: int = WARM_FROM, dst_bucket: int = WARM_TO, within: float = 0.05,
                      transfer: str = "as_is", same_work: bool = True) -> Optional[int]:
    """Trials a single-objective study at bucket ``dst_bucket`` needs until its best feasible
    speedup there is within ``within`` of the bucket's best (None: not within ``budget``). ``warm``:
    the configs of `transfer_leaders` (the earlier study's confirmed leaders first) are enqueued
    first through `autotune.warmstart.enqueue_leaders` (``same_work``: see `_ask_new`)."""
    import optuna

    from autotune.warmstart import enqueue_leaders

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = grid_space()
    lookup = {_key(r["params"]): r for r in table}
    target = (1 - within) * max(_score(r, dst_bucket) for r in table) * (0.999 if within == 0 else 1)
    study = optuna.create_study(direction="maximize", sampler=replay_sampler(sampler_name, seed, space, ["maximize"]))
    if warm:
        enqueue_leaders(study, space, transfer_leaders(table, space, transfer, src_bucket, dst_bucket), log=lambda m: None)
    best = 0.0
    asked: set[tuple] = set()
    for n in range(1, budget + 1):
        t, r = _ask_new(study, space, lookup, asked, same_work)
        if t is None:
            return None
        v = _score(r, dst_bucket)
        study.tell(t, v)
        best = max(best, v)
        if best >= target:
            return n
    return None


def _median_trials(ns: list, budget: int) -> float:
    return statistics.median(n if n is not None else budget + 1 for n in ns)


def warm_start(table: list[dict], sampler_name: str, seeds: int = 3, src: int = WARM_FROM, dst: int = WARM_TO,
               holdout: tuple[int, int] = WARM_HOLDOUT_SEEDS, transfers: tuple[str, ...] = TRANSFERS,
               same_work: bool = True) -> dict:
    """Cold against warm start (module docstring, 3): trials to within 5%, median over ``seeds``
    (and over the hold-out seeds ``holdout``), warm by each transfer of ``transfers`` (``same_work``:
    see `_ask_new`)."""
    budget = len(table)
    res: dict[str, Any] = {"sampler": sampler_name, "from_bucket": src, "to_bucket": dst,
                           "leaders": WARM_TOP, "seeds": seeds, "holdout_seeds": f"{holdout[0]}..{holdout[1] - 1}",
                           "within": 0.05, "same_work": same_work}
    runs = [("cold", False, "as_is")] + [("warm" if t == PRODUCT_TRANSFER else f"warm_{t}", True, t) for t in transfers]
    for mode, warm, transfer in runs:
        if transfer == "near_feasible" and dst > src:
            continue  # the rule applies to a shorter target only
        ns = [warm_start_replay(table, sampler_name, s, warm, budget, src, dst, transfer=transfer, same_work=same_work)
              for s in range(seeds)]
        held = [warm_start_replay(table, sampler_name, s, warm, budget, src, dst, transfer=transfer, same_work=same_work)
                for s in range(*holdout)]
        res[mode] = {"trials": ns, "median": _median_trials(ns, budget),
                     "holdout_trials": held, "holdout_median": _median_trials(held, budget)}
        if warm:
            res[mode]["enqueued"] = len({_key(p.params) for p in transfer_leaders(table, grid_space(), transfer, src, dst)})
            res[mode]["over_cold"] = round(res[mode]["median"] / res["cold"]["median"], 3)
            res[mode]["holdout_over_cold"] = round(res[mode]["holdout_median"] / res["cold"]["holdout_median"], 3)
    res["warm_over_cold"] = res.get("warm", {}).get("over_cold")
    print(f"warm start: {res}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grids", default=",".join(GRIDS), help="comma-separated, of " + ", ".join(GRIDS)
                    + " (module docstring, 5; a grid's files are built when absent)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, help="sampler budget (default: a third of the grid)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_efficiency.json"))
    ap.add_argument("--throughput", action="store_true", help="also time 1 and 2 Ray workers")
    ap.add_argument("--trials", type=int, default=12, help="trials per throughput run")
    ap.add_argument("--samplers", default=",".join(n for n in SAMPLERS if n != "gp"),
                    help="comma-separated, of " + ", ".join(SAMPLERS))
    ap.add_argument("--gp-seeds", type=int, help="seeds of the GP sampler (slow: seconds per trial on 2 cores)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result: dict = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    result["machine"] = "2-core CPU, float32"
    if args.throughput:
        result["throughput"] = [throughput(w, args.trials) for w in (1, 2)]
    names = tuple(n for n in args.samplers.split(",") if n)
    seeds_of = {"gp": args.gp_seeds} if args.gp_seeds else None
    result["grids"] = {k: v for k, v in result.get("grids", {}).items() if k in GRIDS}  # the other grids' kept
    for grid_name in (n for n in args.grids.split(",") if n):
        spec = GRIDS[grid_name]
        activate(spec)
        again = remeasured_table(_load_or_build(spec.remeasured, lambda: {
            "rounds": [build_grid(seed=r + 1, distinct=True) for r in range(spec.rounds)]})["rounds"])
        budget = args.budget or len(again) // 3
        sections = {}
        if spec.one_shot is not None:  # module docstring, 4: the one-shot grid as the search ran before the rule
            table = _load_or_build(spec.one_shot, lambda: {"table": build_grid()})["table"]
            pooled = pooled_by_layout(table)
            sections["one_shot"] = grid_section(table, args.seeds, budget, names, seeds_of, same_work=False)
            sections["pooled"] = grid_section(pooled, args.seeds, budget, names, seeds_of)
            sections["pooled_without_same_work"] = grid_section(pooled, args.seeds, budget, names, seeds_of,
                                                                same_work=False)
        sections["remeasured"] = grid_section(again, args.seeds, budget, names, seeds_of)
        sections["remeasured_without_same_work"] = grid_section(again, args.seeds, budget, names, seeds_of,
                                                                same_work=False)
        result["grids"][grid_name] = dict(
            {"workload": spec.workload, "buckets": list(spec.buckets), "pattern": spec.pattern,
             "configs": len(again), "distinct_computations": len(set(work_keys(grid_space()).values())),
             "rounds": spec.rounds}, **sections)
    result["command"] = "python benchmarks/search_efficiency.py"
    for key in ("grid", "samplers", "winner", "warm_start", "pooled", "warm_start_command", "one_shot_without_same_work"):
        result.pop(key, None)
    _write(args.out, result)


def _load_or_build(path: Path, build) -> dict:
    """The JSON at ``path``, else ``build()`` with the space and the seconds it took, written there."""
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    data = build()
    data = dict({"space": grid_space().to_dict(), "seconds": round(time.perf_counter() - t0, 1),
                 "machine": "2-core CPU, float32, 2 threads"}, **data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return data


def _write(out: str, result: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def remeasured_table(rounds: list[list[dict]]) -> list[dict]:
    """The grid's table from the rounds of distinct computations (module docstring, 4): each
    computation's bucket speedups the median over the rounds (its feasibility and accuracy are the
    same in every round), given to every grid config with its work key (`work_keys`)."""
    space = grid_space()
    keys = work_keys(space)
    by_work: dict[Optional[str], dict] = {}
    for rows in zip(*rounds):
        first = rows[0]
        if not all(r.get("ok") for r in rows):
            by_work[keys[_key(first["params"])]] = {"ok": False, "reason": next(r.get("reason") for r in rows if not r.get("ok"))}
            continue
        merged = json.loads(json.dumps(first))
        for L in GRID_BUCKETS:
            merged["buckets"][str(L)]["speedup"] = statistics.median(r["buckets"][str(L)]["speedup"] for r in rows)
            merged["buckets"][str(L)]["speedup_rounds"] = [round(r["buckets"][str(L)]["speedup"], 4) for r in rows]
        merged["objs"] = [statistics.geometric_mean([merged["buckets"][str(L)]["speedup"] for L in GRID_BUCKETS])] + first["objs"][1:]
        by_work[keys[_key(first["params"])]] = merged
    out = []
    for params in space.grid():
        row = dict(json.loads(json.dumps(by_work[keys[_key(params)]])), params=params)
        out.append(row)
    return out


def grid_section(table: list[dict], seeds: int, budget: int, samplers: tuple[str, ...],
                 seeds_of: Optional[dict[str, int]] = None, same_work: bool = True) -> dict:
    """Sections 2 and 3 on one grid: each bucket's best, the sampler replay of ``samplers`` and its
    winner, and the warm start of `local`, TPE and random both ways (``same_work``: `_ask_new`)."""
    sec: dict[str, Any] = {"same_work": same_work}
    for L in GRID_BUCKETS:
        feas = sorted((r for r in table if _score(r, L) > 0), key=lambda r: -_score(r, L))
        best = _score(feas[0], L)
        sec[f"bucket_{L}"] = {"best_speedup": round(best, 4),
                              "best_configs": [r["params"] for r in feas if _score(r, L) == best],
                              "feasible_within_5pct": sum(_score(r, L) >= 0.95 * best for r in feas)}
    sec["grid"], sec["samplers"] = sampler_replays(table, seeds, budget, samplers, seeds_of, same_work)
    # the winner: most seeds that found the grid's best, as a share of its seeds; then the front
    sec["winner"] = max(samplers, key=lambda n: (sec["samplers"][n]["found_grid_best"] / sec["samplers"][n]["seeds"],
                                                 sec["samplers"][n]["hv_ratio_mean"]))
    sec["warm_start"] = [warm_start(table, name, src=a, dst=b, same_work=same_work)
                         for name in ("local", "tpe", "random") for a, b in GRID.warm_pairs]
    return sec


if __name__ == "__main__":
    main()

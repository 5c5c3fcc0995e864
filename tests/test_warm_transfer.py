"""The warm-start transfers measured by ``benchmarks/search_efficiency.py`` (its docstring, 3):
length-scaled counterparts snapped to the space's choices, the near-feasible configs of a longer
source bucket, and what `autotune.warmstart.enqueue_leaders` enqueues from them (order, no duplicates)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def se():
    spec = importlib.util.spec_from_file_location("search_efficiency", ROOT / "benchmarks" / "search_efficiency.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _p(block, window, glob, stride):
    return {"pattern.block_size": block, "pattern.window": window, "pattern.num_global": glob, "pattern.stride": stride}


def _row(params, s256, f256, s512, f512):
    return {"params": params, "ok": True, "buckets": {"256": {"speedup": s256, "feasible": f256},
                                                      "512": {"speedup": s512, "feasible": f512}}}


def test_snapped_takes_the_nearest_choices_both_on_a_tie_and_keeps_zero():
    from autotune.warmstart import snapped

    assert snapped([0, 64, 128, 192], 32) == [0, 64]
    assert snapped([0, 64, 128, 192], 100) == [128]
    assert snapped([32, 64, 128], 16) == [32]  # below the smallest choice: the smallest
    assert snapped([32, 64, 128], 256) == [128]
    assert snapped([0, 16, 32], 0) == [0]
    assert snapped([16, 32], 0) == []  # off, but the space cannot turn it off: dropped


def test_scaled_counterparts_of_a_leader_from_512_to_256(se):
    from autotune.warmstart import LENGTH_PARAMS, scaled_counterparts

    space = se.grid_space()
    got = scaled_counterparts(space, _p(64, 128, 32, 8), 512, 256)
    assert got == [_p(32, 64, 16, 8)]  # every length halved; stride (in blocks) as it is
    got = scaled_counterparts(space, _p(32, 64, 0, 4), 512, 256)
    assert got == [_p(32, 0, 0, 4), _p(32, 64, 0, 4)]  # block 16 snaps to 32; window 32 ties 0 / 64
    got = scaled_counterparts(space, _p(64, 64, 16, 0), 256, 512, LENGTH_PARAMS[1:])
    assert got == [_p(64, 128, 32, 0)]  # without the block size: it stays


def test_scaled_counterparts_on_an_integer_range(tmp_path):
    from autotune.warmstart import scaled_counterparts
    from search_spaces.space import load_space
    from test_search import write_space

    space = load_space(write_space(tmp_path))  # window: 0..64 step 16; block_size: choices 16, 32
    got = scaled_counterparts(space, {"pattern.block_size": 32, "pattern.window": 48, "pattern.stride": 2}, 128, 64)
    assert got == [{"pattern.block_size": 16, "pattern.window": w, "pattern.stride": 2} for w in (16, 32)]  # 24: a tie
    got = scaled_counterparts(space, {"pattern.block_size": 16, "pattern.window": 48}, 64, 256)
    assert got == [{"pattern.block_size": 32, "pattern.window": 64}]  # clipped to the range and the choices


def test_length_scaled_only_for_lengths_without_leaders():
    """The product's rule (`autotune.warmstart.length_scaled`): counterparts of the nearest bucket's
    leaders, for each new length the earlier study has no leaders at, after every leader."""
    from autotune.warmstart import Leader, length_scaled

    class Space:
        buckets = [256, 512, 1024]

        @staticmethod
        def distributions():
            from optuna.distributions import CategoricalDistribution as C

            return {"pattern.block_size": C([32, 64, 128]), "pattern.window": C([0, 32, 64, 128, 256]),
                    "pattern.num_global": C([0, 16, 32]), "pattern.stride": C([0, 4, 8])}

    leaders = [Leader(512, 7, _p(32, 64, 0, 0), 1.3, True), Leader(256, 3, _p(128, 0, 0, 0), 0.9, True)]
    assert length_scaled(leaders, Space, [256, 512]) == []  # both lengths have leaders
    got = length_scaled(leaders, Space, [1024, 2048])
    # 1024 and 2048: from 512 (the nearest), the block and window doubled, then quadrupled (snapped)
    assert [(ld.bucket, ld.trial, ld.scaled_to, ld.params) for ld in got] == [
        (512, 7, 1024, _p(64, 128, 0, 0)), (512, 7, 2048, _p(128, 256, 0, 0))]
    assert all(ld.speedup is None and not ld.confirmed for ld in got)


def test_transfer_leaders_in_order_and_enqueued_once(se):
    space = se.grid_space()
    table = [_row(_p(32, 64, 0, 0), 2.0, True, 3.0, True), _row(_p(64, 64, 0, 0), 1.0, True, 2.0, True),
             _row(_p(128, 0, 0, 0), 2.5, True, 4.0, False), _row(_p(32, 0, 0, 0), 3.0, False, 5.0, False),
             _row(_p(64, 128, 0, 0), 0.5, True, 1.0, True), _row(_p(128, 128, 0, 0), 0.4, True, 0.5, True)]
    as_is = [ld.params for ld in se.transfer_leaders(table, space, "as_is", 512, 256)]
    assert as_is == [_p(32, 64, 0, 0), _p(64, 64, 0, 0), _p(64, 128, 0, 0)]  # best feasible at 512 first
    near = [ld.params for ld in se.transfer_leaders(table, space, "near_feasible", 512, 256)]
    assert near == as_is + [_p(32, 0, 0, 0), _p(128, 0, 0, 0)]  # then the fastest infeasible at 512
    assert [ld.params for ld in se.transfer_leaders(table, space, "near_feasible", 256, 512)] == \
        [_p(128, 0, 0, 0), _p(32, 64, 0, 0), _p(64, 64, 0, 0)]  # to a longer bucket: the leaders only
    scaled = se.transfer_leaders(table, space, "scaled", 512, 256)

    class Study:
        def __init__(self):
            self.queued = []

        def enqueue_trial(self, params, user_attrs=None, skip_if_exists=False):
            self.queued.append(params)

    from autotune.warmstart import enqueue_leaders

    st = Study()
    n = enqueue_leaders(st, space, scaled, log=lambda m: None)
    # (32,64) -> (32,0) and itself; (64,64) -> (32,0) and (32,64); (64,128) -> (32,64): each once, in order
    assert st.queued == as_is + [_p(32, 0, 0, 0)] and n == 4


def test_order_by_length_puts_the_nearest_bucket_first_and_keeps_each_buckets_order():
    from autotune.warmstart import Leader, order_by_length

    lds = [Leader(256, 1, {"a": 1}), Leader(256, 2, {"a": 2}), Leader(512, 3, {"a": 3}), Leader(512, 4, {"a": 4}),
           Leader(1024, 5, {"a": 5})]
    assert [ld.trial for ld in order_by_length(lds, [512])] == [3, 4, 1, 2, 5]  # 256 and 1024: a tie, shorter first
    assert [ld.trial for ld in order_by_length(lds, [1024])] == [5, 3, 4, 1, 2]
    assert [ld.trial for ld in order_by_length(lds, [300])] == [1, 2, 3, 4, 5]  # by the ratio: 256 is nearer 300
    assert [ld.trial for ld in order_by_length(lds, [700])] == [3, 4, 5, 1, 2]  # 512 (x1.37) before 1024 (x1.46)
    assert [ld.trial for ld in order_by_length(lds, [256, 512, 1024])] == [1, 2, 3, 4, 5]  # the same buckets
    assert order_by_length(lds, []) == lds


def test_all_buckets_transfer_enqueues_the_target_buckets_leaders_first(se):
    space = se.grid_space()
    table = [_row(_p(32, 64, 0, 0), 2.0, True, 3.0, True), _row(_p(64, 64, 0, 0), 1.0, True, 2.0, True),
             _row(_p(128, 0, 0, 0), 2.5, True, 4.0, False), _row(_p(64, 128, 0, 0), 0.5, True, 1.0, True)]
    got = se.transfer_leaders(table, space, "all_buckets", 512, 256)
    assert [(ld.bucket, ld.params["pattern.block_size"], ld.params["pattern.window"]) for ld in got] == \
        [(256, 128, 0), (256, 32, 64), (256, 64, 64), (512, 32, 64), (512, 64, 64), (512, 64, 128)]


def _grid_rows(se, speed):
    """Every grid config with speedup ``speed(params, L)`` at each bucket, all feasible."""
    rows = []
    for p in se.grid_space().grid():
        b = {str(L): {"speedup": speed(p, L), "feasible": True} for L in se.GRID_BUCKETS}
        rows.append({"params": p, "ok": True, "objs": [1.0, 1.0], "cons": [0.0], "feasible": True, "buckets": b})
    return rows


def test_pooled_grid_gives_each_layout_the_median_of_its_measurements(se):
    # block 128 at L=256 is 2 x 2 tiles: window 0 with stride 0, 4 or 8 builds one layout there
    speeds = {0: 2.5, 4: 1.8, 8: 1.7}
    table = _grid_rows(se, lambda p, L: speeds[p["pattern.stride"]] if (p["pattern.block_size"], p["pattern.window"],
                                                                         p["pattern.num_global"]) == (128, 0, 0) else 1.0)
    pooled = se.pooled_by_layout(table)
    twins = [r for r in pooled if (r["params"]["pattern.block_size"], r["params"]["pattern.window"],
                                   r["params"]["pattern.num_global"]) == (128, 0, 0)]
    assert [r["buckets"]["256"]["speedup"] for r in twins] == [1.8, 1.8, 1.8]
    assert all(r["buckets"]["256"]["layout_twins"] == 3 for r in twins)
    # at 512 (4 x 4 tiles) stride 4 and 8 still add nothing to a 4-block diagonal: the same median
    assert [r["buckets"]["512"]["speedup"] for r in twins] == [1.8, 1.8, 1.8]
    assert twins[0]["objs"][0] == pytest.approx(1.8)  # geometric mean over the buckets, recomputed


def test_the_replay_prunes_a_proposal_that_computes_what_a_measured_one_does(se):
    """As the search does (`autotune.same_work`): with the rule a study of the whole grid measures
    each of its 46 distinct computations once and then finds nothing new; without it, all 108."""
    import optuna

    table = _grid_rows(se, lambda p, L: 1.0)
    space = se.grid_space()
    lookup = {se._key(r["params"]): r for r in table}
    for same_work, expect in ((True, 46), (False, 108)):
        # `local` draws its random proposals from the unmeasured configs: it finds every one
        study = optuna.create_study(sampler=se.replay_sampler("local", 0, space, ["maximize"]))
        asked: set = set()
        n = 0
        while True:
            t, r = se._ask_new(study, space, lookup, asked, same_work)
            if t is None:
                break
            study.tell(t, 1.0)
            n += 1
        assert n == expect


def test_the_remeasured_grid_takes_the_median_of_its_rounds(se):
    space = se.grid_space()
    reps = se.distinct_configs(space)
    assert len(reps) == 46

    def round_(k):
        return [{"params": p, "ok": True, "objs": [1.0, 0.5], "cons": [0.0], "feasible": True,
                 "buckets": {"256": {"speedup": float(k), "feasible": True},
                             "512": {"speedup": float(10 * k), "feasible": False}}} for p in reps]

    table = se.remeasured_table([round_(1), round_(3), round_(2)])
    assert len(table) == 108 and {se._key(r["params"]) for r in table} == {se._key(p) for p in space.grid()}
    assert all(r["buckets"]["256"]["speedup"] == 2.0 and r["buckets"]["512"]["speedup"] == 20.0 for r in table)
    assert table[0]["buckets"]["256"]["speedup_rounds"] == [1.0, 3.0, 2.0]
    assert table[0]["objs"] == [pytest.approx((2.0 * 20.0) ** 0.5), 0.5]


def test_grids_are_data_and_activate_switches_every_reader(se):
    assert se.GRID is se.ROW_GRID
    try:
        se.activate(se.TRI_GRID)
        space = se.grid_space()
        assert space.buckets == [256, 512, 1024] and [w.kind for w in space.workloads] == ["triangle"]
        assert len(space.grid()) == 135 and len(se.distinct_configs(space)) == len(set(se.work_keys(space).values()))
    finally:
        se.activate(se.ROW_GRID)
    space = se.grid_space()
    assert space.buckets == [256, 512] and [w.kind for w in space.workloads] == ["msa_row"]
    assert len(set(se.work_keys(space).values())) == 46  # the row grid's keys again, not the triangle grid's

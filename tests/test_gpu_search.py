"""The search made for a GPU, checked on a CPU: the timeout cuts a trial in flight, a launch config
is compiled once per worker (a fake compile step stands in for Triton's), a compile failure is a
failed trial with its reason, warm start enqueues an earlier study's leaders, and the run reports
trials per minute and where its wall time went (summary line and the at_runs row)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from autotune.search import Search, main, run_stats, run_stats_text
from autotune.trial import TrialRequest, TrialRunner
from kernels.compile_cache import CompileFailed, CompileLedger, compile_key, study_compile_stats
from search_spaces.space import load_space
from test_search import rows, write_space


def _search(tmp_path: Path, study: str = "tiny", trials: int = 3, timeout=None, warm=None, **changes):
    space = load_space(write_space(tmp_path, **changes)).override(trials=trials, timeout=timeout)
    db = tmp_path / "results.db"
    s = Search(space, study_name=study, storage=f"sqlite:///{db}", executor="local", progress=False,
               warm_start=warm, log=lambda m: None)
    return s, db


# ---- the timeout --------------------------------------------------------------------------------


@pytest.mark.slow
def test_timeout_cuts_a_trial_in_flight_within_ten_seconds(tmp_path, monkeypatch):
    """A trial that would run for 120 s (injected) when the 3 s timeout passes is cut: the search
    ends within 10 s of its timeout, the trial is recorded as interrupted by the timeout and queued
    for a resume (it held no budget slot)."""
    monkeypatch.setenv("AUTOTUNE_FAULT_INJECT", "sleep:0")
    s, db = _search(tmp_path, trials=4, timeout=3)
    t0 = time.monotonic()
    summary = s.run()
    took = time.monotonic() - t0 - summary["startup_s"]
    assert took <= 3 + 10, took
    reason = rows(db, "select reason from at_trials where number = 0")[0][0]
    assert reason.startswith("interrupted") and "timeout" in reason
    assert summary["retried"] == 1 and summary["completed"] == 0


def test_trial_past_its_deadline_stops_before_measuring(tmp_path):
    """A trial whose deadline has passed stops at its first cell: no cell measured, retried."""
    space = load_space(write_space(tmp_path))
    params = {"pattern.block_size": 16, "pattern.window": 16, "pattern.num_global": 0, "pattern.stride": 0}
    pattern, kernel = space.split_params(params)
    req = TrialRequest("t", 0, params, pattern, kernel, space.to_dict(), 0, deadline=time.time() - 1)
    res = TrialRunner(1).run(req.to_dict())
    assert not res.ok and res.retry and res.cells == [] and "timeout" in res.reason


# ---- compile once -------------------------------------------------------------------------------


def _key(**kw):
    base = dict(backend="triton", dtype="bfloat16", mode="fwd", heads=8, head_dim=32, bias=True, batch=64,
                length=512, block_size=64, kernel={"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2})
    base.update(kw)
    return compile_key(**base)


def test_compile_key_follows_what_triton_specialises_on():
    assert _key() == _key(batch=32)  # batch is a run-time integer (not 1)
    assert _key() != _key(batch=1)  # == 1 is specialised
    assert _key(length=500) == _key(length=510)  # same padded block count, both ragged
    assert _key(length=512) != _key(length=500)  # even vs ragged
    assert _key(length=512) != _key(length=2048)  # another padded block count
    assert _key() != _key(kernel={"block_m": 64, "block_n": 64, "num_warps": 8, "num_stages": 2})
    assert _key() != _key(dtype="float16") and _key() != _key(head_dim=64) and _key() != _key(mode="fwd+bwd")


def test_ledger_compiles_a_key_once_and_turns_failures_into_reasons():
    calls = []
    ledger = CompileLedger()

    def fake_compile():
        calls.append(1)
        time.sleep(0.06)  # slower than a disk-cache load

    first = ledger.ensure(_key(), fake_compile)
    assert first is not None and first.seconds >= 0.06 and not first.cache_load
    assert ledger.ensure(_key(), fake_compile) is None and ledger.hits == 1 and len(calls) == 1
    with pytest.raises(CompileFailed, match="compile failed: RuntimeError: out of resources: shared memory"):
        ledger.ensure(_key(head_dim=64), lambda: (_ for _ in ()).throw(RuntimeError("out of resources: shared memory")))
    with pytest.raises(CompileFailed, match="out of resources"):  # again, without compiling
        ledger.ensure(_key(head_dim=64), lambda: calls.append(2))
    assert len(calls) == 1
    from autotune.trial import DeadlineReached

    with pytest.raises(DeadlineReached):  # the search's timeout is no compile failure
        ledger.ensure(_key(head_dim=128), lambda: (_ for _ in ()).throw(DeadlineReached("timeout")))
    assert repr(_key(head_dim=128)) not in ledger.failed
    stats = study_compile_stats([first.to_dict(), first.to_dict(), {"key": "k", "seconds": 0.01, "cache_load": True}])
    assert stats["compiled"] == 1 and stats["compiled_twice"] == 1 and stats["cache_loads"] == 1


def _triton_space(tmp_path, **changes):
    """The tiny space with backend triton (only its compile bookkeeping is exercised: the compile
    step is faked and the measured backend is the reference's)."""
    return write_space(tmp_path, **changes)


@pytest.mark.slow
def test_search_compiles_each_launch_config_once_per_study(tmp_path, monkeypatch):
    """Three trials over a space whose launch configs repeat: the fake compile step runs once per
    compile key, every later trial with that key skips its compile phase, the driver counts 0 keys
    compiled twice, and a config whose compile fails is a failed trial with the reason."""
    compiled: list[tuple] = []

    def fake_step(self, space, w, pattern_config, kernel_config, L, batch, seed):
        compiled.append((w.name, L, batch, pattern_config.block_size))
        time.sleep(0.06)
        if pattern_config.block_size == 32 and L == 128:
            raise RuntimeError("OutOfResources: out of resource: shared memory, Required: 300000, Hardware limit: 232448")

    monkeypatch.setattr(TrialRunner, "compile_step", fake_step)
    monkeypatch.setattr("autotune.trial.TrialRunner._compile_phase", _compile_phase_as_triton(TrialRunner._compile_phase))
    s, db = _search(tmp_path, trials=6, sampler={"name": "random", "seed": 3},
                    pattern={"block_size": {"choices": [16, 32]}, "window": {"choices": [16, 32]},
                             "num_global": {"choices": [0]}, "stride": {"choices": [0]}})
    summary = s.run()
    assert len(compiled) == len(set(compiled))  # never twice
    assert summary["compiles"]["compiled_twice"] == 0 and summary["compiles"]["compiled"] >= 1
    assert summary["compile_s"] > 0
    failed = rows(db, "select reason from at_trials where state = 'FAIL'")
    assert all("compile failed" in r[0] and "OutOfResources" in r[0] for r in failed)
    bs = rows(db, "select pattern from at_trials")
    assert any(json.loads(p)["block_size"] == 32 for (p,) in bs) == bool(failed)


def test_an_evoformer_workload_has_its_own_compile_phase(tmp_path, monkeypatch):
    """A whole-block workload is compiled apart from its timing too: one untimed block pass per new
    key (its keys: the MSA row call and the triangle calls at that length), skipped when the key
    returns, and the real pass runs the block with the candidate's attention and restores dense."""
    from autotune.trial import TrialResult, _Candidate
    from autotune.workloads import EvoformerBench, TrialTiming, bench_for
    from patterns import PatternConfig

    evo = {"name": "evo", "kind": "evoformer", "msa_depth": 3, "c_m": 16, "c_z": 8, "heads": 2, "pair_heads": 2,
           "head_dim": 8, "c_hidden_opm": 4, "c_hidden_mul": 8}
    space = load_space(write_space(tmp_path, backend="cpu", buckets=[32, 48], workloads=[evo],
                                   pattern={"block_size": 16, "window": 16, "num_global": 0, "stride": 0}))
    passes: list[int] = []
    monkeypatch.setattr(EvoformerBench, "compile_pass", lambda self, pc, kc, L, batch, seed: passes.append(L))
    phase = _compile_phase_as_triton(TrialRunner._compile_phase)
    runner, pc = TrialRunner(), PatternConfig(block_size=16, window=16)
    results = [TrialResult(number=i, timing=TrialTiming()) for i in range(3)]
    for res, L in zip(results, (32, 32, 48)):
        phase(runner, _Candidate(space, pc, None), L, None, res, 0)
    assert passes == [32, 48]  # the second trial at L=32 finds its key compiled
    assert [len(r.compiles) for r in results] == [1, 0, 1]
    key = results[0].compiles[0]["key"]
    assert "evoformer" in key and key.count("'triton'") == 2  # one compile key per sparse call shape
    monkeypatch.undo()
    bench = bench_for(space, space.workloads[0], runner)
    assert bench.compile_shapes(32, 3) == [(2, 8, True, 3), (2, 8, True, 32)]
    block, seen = bench.block(), []
    hook = block.msa_att_row.register_forward_pre_hook(lambda mod, args: seen.append(mod.attention.kind))
    bench.compile_pass(pc, None, 32, 3, 0)  # the real pass, on the space's CPU backend
    hook.remove()
    assert seen == ["sparse"] and block.attention.msa_row.kind == "sdpa"  # the candidate ran; dense restored


def _compile_phase_as_triton(original):
    """The compile phase run as if the space's backend were triton (the tiny space measures with
    the reference backend, which compiles nothing)."""
    from dataclasses import replace

    def phase(self, cand, L, B, result, seed):
        space = cand.space
        space_t = space.__class__.from_dict(dict(space.to_dict(), backend="triton"))
        return original(self, replace(cand, space=space_t), L, B, result, seed)

    return phase


# ---- run statistics -----------------------------------------------------------------------------


def test_run_stats_shares_add_up_and_name_the_phases():
    st = run_stats({"wall_s": 60.0, "workers_used": 1, "completed": 20, "failed": 1, "compile_s": 12.0,
                    "measure_s": 30.0, "compiles": {"compiled": 9, "compiled_twice": 0, "cache_loads": 0}}, 15.0)
    assert st["trials_per_min"] == 21.0
    assert st["share"] == {"compiling": 0.16, "measuring": 0.4, "confirming": 0.2, "idle": 0.24}
    text = run_stats_text(st)
    assert "21.0 trials/min" in text and "compiling 16%" in text and "0 twice" in text


@pytest.mark.slow
def test_cli_prints_and_stores_run_stats(tmp_path, capsys):
    space = write_space(tmp_path, budget={"trials": 2})
    db = tmp_path / "r.db"
    assert main(["--space", str(space), "--executor", "local", "--storage", f"sqlite:///{db}", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "trials/min; wall time: compiling" in err and "confirming" in err and "idle" in err
    (stats,) = rows(db, "select stats from at_runs")[0]
    st = json.loads(stats)
    assert st["trials"] == 2 and set(st["share"]) == {"compiling", "measuring", "confirming", "idle"}
    assert abs(sum(st["share"].values()) - 1) < 1e-3


# ---- warm start ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_warm_start_enqueues_the_earlier_studys_leaders_first(tmp_path):
    """A study at bucket 128 warm-started from a finished study at buckets 64/128: its first trials
    are the earlier leaders (mapped onto the new space), marked ``warm_start``, those of bucket 128
    (the nearest length) first."""
    from autotune.warmstart import read_leaders

    s, db = _search(tmp_path, study="first", trials=4)
    s.run()
    leaders = read_leaders(f"sqlite:///{db}", "first")
    assert leaders and {ld.bucket for ld in leaders} <= {64, 128}
    s2, _ = _search(tmp_path, study="second", trials=2, warm=("first", f"sqlite:///{db}"), buckets=[128])
    s2.run()
    import optuna

    st = optuna.load_study(study_name="second", storage=f"sqlite:///{db}")
    first = sorted(st.get_trials(deepcopy=False), key=lambda t: t.number)[0]
    assert first.user_attrs.get("warm_start", "").startswith("first#")
    lead = min(leaders, key=lambda ld: ld.bucket != 128)  # the first leader at 128, if it has one
    assert first.user_attrs["warm_start"] == f"first#{lead.trial}@{lead.bucket}"
    assert {k: v for k, v in first.params.items()} == {k: v for k, v in lead.params.items() if k in first.params}


@pytest.mark.slow
def test_warm_start_at_a_new_length_adds_the_length_scaled_counterparts(tmp_path):
    """A study at bucket 256 (a length the earlier study at 64/128 did not measure): every earlier
    leader first, then the leaders of 128 (the nearest) with block, window and globals doubled,
    marked ``first#N@128->256``."""
    from autotune.warmstart import length_scaled, order_by_length, read_leaders

    s, db = _search(tmp_path, study="first", trials=4)
    s.run()
    leaders = order_by_length(read_leaders(f"sqlite:///{db}", "first"), [256])
    s2, _ = _search(tmp_path, study="second", trials=1, warm=("first", f"sqlite:///{db}"), buckets=[256])
    expected = length_scaled(leaders, s2.space, [256])
    assert expected and all(ld.bucket == 128 and ld.scaled_to == 256 for ld in expected)
    s2.run()
    import optuna

    st = optuna.load_study(study_name="second", storage=f"sqlite:///{db}")
    tags = [t.user_attrs.get("warm_start") for t in sorted(st.get_trials(deepcopy=False), key=lambda t: t.number)]
    scaled = [t for t in tags if t and "->" in t]
    assert scaled and all(t.endswith("@128->256") for t in scaled)
    assert tags.index(scaled[0]) >= len({tuple(sorted(ld.params.items())) for ld in leaders}) - 1  # after the leaders
    by_tag = {t.user_attrs["warm_start"]: t for t in st.get_trials(deepcopy=False) if "warm_start" in t.user_attrs}
    queued = by_tag[scaled[0]]  # still waiting (a budget of 1): its parameters are the enqueued ones
    params = queued.params or queued.system_attrs["fixed_params"]
    src = next(ld for ld in leaders if ld.bucket == 128 and f"#{ld.trial}@" in scaled[0])
    assert params["pattern.block_size"] == min(32, 2 * src.params["pattern.block_size"])  # doubled, snapped
    assert {k: v for k, v in params.items()} in [dict(ld.params) for ld in expected]


def test_map_params_keeps_values_in_range_and_skips_the_rest(tmp_path):
    from autotune.warmstart import Leader, enqueue_leaders, map_params

    space = load_space(write_space(tmp_path))
    ok, why = map_params(space, {"pattern.block_size": 32, "pattern.window": 48, "kernel.num_warps": 4})
    assert ok == {"pattern.block_size": 32, "pattern.window": 48} and why == ""  # kernel: not in this space
    assert map_params(space, {"pattern.block_size": 128})[0] is None
    assert "outside 0..64" in map_params(space, {"pattern.window": 96})[1]

    class FakeStudy:
        def __init__(self):
            self.queued = []

        def enqueue_trial(self, params, user_attrs=None, skip_if_exists=False):
            self.queued.append((params, user_attrs))

    lines: list[str] = []
    st = FakeStudy()
    n = enqueue_leaders(st, space, [Leader(64, 1, {"pattern.block_size": 32}), Leader(128, 2, {"pattern.block_size": 32}),
                                    Leader(128, 3, {"pattern.block_size": 128})], source="old", log=lines.append)
    assert n == 1 and st.queued[0][1] == {"warm_start": "old#1@64"}  # the duplicate at 128 once
    assert len(lines) == 1 and "#3@128" in lines[0] and "not one of" in lines[0]


def test_warm_start_from_a_missing_study_is_one_line_exit_2(tmp_path, capsys):
    space = write_space(tmp_path)
    db = tmp_path / "r.db"
    rc = main(["--space", str(space), "--executor", "local", "--storage", f"sqlite:///{db}", "--no-progress",
               "--warm-start", "nope", "--warm-start-storage", f"sqlite:///{tmp_path / 'absent.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--warm-start-storage" in err[0]
    assert not db.exists() and not (tmp_path / "absent.db").exists()

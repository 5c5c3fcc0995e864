"""End-to-end search: a tiny space (L 64-128, reference backend) on a real SQLite file, in-process
and over a real local Ray instance with 2 CPUs; failing and crashing workers; SIGKILL and resume."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from autotune.search import Search
from search_spaces.space import load_space

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "name": "tiny",
    "device": "cpu",
    "backend": "reference",
    "dtype": "float32",
    "mode": "fwd",
    "buckets": [64, 128],
    "pattern": {
        "block_size": {"choices": [16, 32]},
        "window": {"low": 0, "high": 64, "step": 16},
        "num_global": {"choices": [0, 16]},
        "stride": {"choices": [0, 2]},
    },
    "workloads": [
        {"name": "row", "kind": "msa_row", "heads": 2, "head_dim": 16, "tokens": 256, "bias": True},
        {"name": "tri", "kind": "triangle", "heads": 2, "head_dim": 16, "max_batch": 2, "bias": True},
    ],
    "objectives": ["speedup", "memory_vs_sdpa", "accuracy"],
    "constraints": {
        "memory_vs_naive": {"max": 50.0},
        "accuracy": {"metric": "contact_recall_long", "min": 0.0, "max_chains": 2},
    },
    "sampler": {"name": "nsga2", "seed": 0, "population_size": 4},
    "budget": {"trials": 4},
    "measure": {"warmup": 1, "repeats": 3},
    "gate": {"seq_len": 72, "batch": 1},
    "execution": {"workers": 2, "threads_per_worker": 1},
}


def write_space(tmp_path: Path, **changes) -> Path:
    data = dict(TINY, **changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rows(db: Path, sql: str):
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def run_search(tmp_path: Path, *, executor: str = "local", trials: int = 4, study: str = "tiny",
               allow_repeats: bool = False, **changes):
    space = load_space(write_space(tmp_path, **changes)).override(trials=trials)
    db = tmp_path / "results.db"
    s = Search(space, study_name=study, storage=f"sqlite:///{db}", executor=executor, progress=False, num_cpus=2,
               allow_repeats=allow_repeats)
    return s.run(), db


def test_the_space_goes_to_a_worker_once_not_with_every_trial(tmp_path, monkeypatch):
    """The executor hands the parsed space to its worker when it starts it; the trial requests
    carry none and are run with the worker's. A worker given no space and a request carrying none
    fails that trial with the reason (no crash)."""
    from autotune import executor as ex
    from autotune.trial import TrialRequest, TrialRunner

    sent, spaces = [], []
    submit, init = ex.LocalExecutor.submit, ex.LocalExecutor.__init__

    def record_init(self, threads=None, space=None):
        spaces.append(space)
        init(self, threads, space)

    monkeypatch.setattr(ex.LocalExecutor, "__init__", record_init)
    monkeypatch.setattr(ex.LocalExecutor, "submit", lambda self, req: (sent.append(req), submit(self, req)))
    summary, _ = run_search(tmp_path, trials=2)
    assert summary["completed"] == 2 and len(sent) == 2 and len(spaces) == 1
    assert all(req["space"] is None for req in sent) and spaces[0]["buckets"] == load_space(
        write_space(tmp_path)).to_dict()["buckets"]
    res = TrialRunner().run(TrialRequest("s", 0, {}, {"block_size": 16}, None, None))
    assert not res.ok and "carries no search space" in res.reason


def test_local_search_end_to_end(tmp_path):
    summary, db = run_search(tmp_path, trials=3)
    assert summary["completed"] == 3 and summary["failed"] == 0
    trials = rows(db, "select number, state, objectives, constraints, feasible, gate from at_trials order by number")
    # numbers in Optuna's order; a proposal between them may have been a duplicate (pruned unmeasured)
    numbers = [t[0] for t in trials]
    assert len(numbers) == 3 and numbers[0] == 0 and all(t[1] == "COMPLETE" for t in trials)
    # 2 buckets x 2 workloads per trial, every field of the measurement filled
    ms = rows(db, "select trial_id, workload, bucket, time_ms, time_p10_ms, time_p90_ms, peak_mib, sdpa_ms, "
                  "sdpa_peak_mib, naive_ms, naive_peak_mib, speedup, accuracy_value, memory_method from at_measurements")
    assert len(ms) == 12
    for m in ms:
        assert m[4] <= m[3] <= m[5] and m[6] >= 0 and m[7] > 0 and m[9] > 0 and m[11] > 0
        assert m[12] is not None and m[13] in ("rss_hwm", "rss_sampled")
    run = rows(db, "select status, hardware, versions, command_line, ended_at from at_runs")
    assert run[0][0] == "finished" and "torch" in run[0][2] and run[0][4] is not None
    # Optuna's side: same file, values and constraint values stored
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 3 and all(len(t.values) == 3 for t in done)
    assert all(len(t.system_attrs["constraints"]) == 2 for t in done)
    assert all(t.user_attrs["constraint_names"] == ["memory_vs_naive", "accuracy"] for t in done)

    # the same command again: budget already met, nothing measured twice
    summary2, _ = run_search(tmp_path, trials=3)
    assert summary2["completed"] == 0
    assert len(rows(db, "select * from at_trials")) == 3
    # a larger budget continues the study from trial 3
    summary3, _ = run_search(tmp_path, trials=4)
    assert summary3["completed"] == 1
    measured = rows(db, "select number, params from at_trials order by number")
    assert len(measured) == 4 and [r[0] for r in measured[:3]] == numbers
    assert len({r[1] for r in measured}) == 4  # the resumed sampler proposed nothing measured before


def test_gate_failure_is_a_failed_trial(tmp_path):
    # an impossible tolerance makes every gate fail (reference vs itself on the dense path is exact,
    # so use a negative-free but tiny tolerance with the dense backend, which differs in rounding)
    summary, db = run_search(tmp_path, trials=2, backend="dense", gate={"seq_len": 72, "batch": 1, "fwd_tol": 1e-30})
    assert summary["failed"] == 2
    reasons = [r[0] for r in rows(db, "select reason from at_trials")]
    assert all(r.startswith("gate failed: row forward error") for r in reasons), reasons
    assert rows(db, "select count(*) from at_measurements") == [(0,)]


@pytest.mark.slow  # a search over whole EvoFormer blocks: ~4 s on 2 idle cores
def test_evoformer_workload_search(tmp_path):
    """A whole (tiny) EvoFormer block as a workload: rows at the buckets up to max_len only, block
    times against the SDPA and naive blocks, speedup from its own columns, the block gate recorded."""
    import json

    evo = {"name": "evo", "kind": "evoformer", "msa_depth": 3, "c_m": 16, "c_z": 8, "heads": 2, "pair_heads": 2,
           "head_dim": 8, "c_hidden_opm": 4, "c_hidden_mul": 8, "max_len": 64}
    summary, db = run_search(
        tmp_path, trials=2, study="evo", mode="fwd+bwd", buckets=[32, 64, 96], backend="cpu",
        pattern={"block_size": 16, "window": {"low": 0, "high": 16, "step": 16}, "num_global": 0, "stride": 0},
        workloads=[evo, {"name": "row", "kind": "msa_row", "heads": 2, "head_dim": 16, "tokens": 128, "bias": True}],
        objectives=["speedup", "accuracy"], gate={"seq_len": 48, "batch": 2},
    )
    assert summary["completed"] == 2 and summary["failed"] == 0
    ms = rows(db, "select workload, kind, bucket, batch, heads, head_dim, mode, sparsity, time_ms, time_p10_ms, "
                  "time_p90_ms, peak_mib, sdpa_ms, sdpa_peak_mib, naive_ms, naive_peak_mib, speedup, speedup_naive, "
                  "accuracy_value from at_measurements where kind = 'evoformer' order by trial_id, bucket")
    assert [m[2] for m in ms] == [32, 64, 32, 64]  # L = 96 is above max_len
    assert len(rows(db, "select * from at_measurements where workload = 'row'")) == 6
    for (w, kind, L, batch, heads, hd, mode, sp, t, t10, t90, peak, sdpa, sdpa_peak, naive, naive_peak, speedup,
         speedup_naive, acc) in ms:
        assert (w, batch, heads, hd, mode) == ("evo", 3, 2, 8, "fwd+bwd")
        assert 0.0 <= sp < 1.0 and t10 <= t <= t90 and t > 0 and sdpa > 0 and naive > 0
        assert peak >= 0 and sdpa_peak >= 0 and naive_peak >= 0
        # speedup: median of the paired per-round ratios, between the ratios' extremes (not sdpa / t)
        assert speedup > 0 and speedup_naive == pytest.approx(naive / t)
        assert acc is not None
    assert any(m[7] > 0 for m in ms)  # a sparse layout at L = 64 (window 0: block diagonal)
    for (gate,) in rows(db, "select gate from at_trials"):
        gate = json.loads(gate)
        assert gate["evo.fwd_m_err"] <= gate["fwd_tol"] and gate["evo.dtri_end_err"] <= gate["bwd_tol"]


@pytest.mark.slow
def test_ray_search_with_failing_and_crashing_workers(tmp_path, monkeypatch):
    import ray

    # trial 1 raises mid-trial, trial 2 kills its worker process (os._exit): only those two fail.
    # Trials are numbered as Optuna asks them; with --allow-repeats no proposal is pruned as a
    # duplicate, so trials 0-5 are the six measured (the faults name Optuna numbers)
    monkeypatch.setenv("AUTOTUNE_FAULT_INJECT", "raise:1,exit:2")
    # accuracy is covered by the in-process test; without it each fresh actor starts in seconds
    try:
        summary, db = run_search(tmp_path, executor="ray", trials=6, objectives=["speedup", "memory_vs_sdpa"],
                                 constraints={"memory_vs_naive": {"max": 50.0}}, allow_repeats=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    trials = dict((n, (s, r)) for n, s, r in rows(db, "select number, state, reason from at_trials"))
    assert len(trials) == 6
    assert trials[1][0] == "FAIL" and "injected fault" in trials[1][1]
    assert trials[2][0] == "FAIL" and trials[2][1].startswith("worker died")
    assert all(trials[n][0] == "COMPLETE" for n in (0, 3, 4, 5))
    assert summary["completed"] == 4 and summary["failed"] == 2
    # trials ran in at least two worker processes, and a replacement actor was started
    pids = {r[0] for r in rows(db, "select json_extract(worker, '$.pid') from at_trials where state = 'COMPLETE'")}
    assert len(pids) >= 2
    # the driver's process survived and finished the run
    assert rows(db, "select status from at_runs") == [("finished",)]


@pytest.mark.slow
def test_sigkill_mid_search_then_resume(tmp_path):
    space = write_space(tmp_path)
    db = tmp_path / "results.db"
    cmd = [sys.executable, "-m", "autotune.search", "--space", str(space), "--storage", f"sqlite:///{db}",
           "--executor", "local", "--trials", "6", "--no-progress", "--allow-repeats"]  # trial n: Optuna's n
    env = dict(os.environ, PYTHONPATH=str(ROOT), AUTOTUNE_FAULT_INJECT="sleep:3")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if db.exists():
                try:
                    if rows(db, "select state from at_trials where number = 3") == [("RUNNING",)]:
                        break
                except sqlite3.OperationalError:
                    pass
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("trial 3 never started")
        assert rows(db, "select count(*) from at_trials where state = 'COMPLETE'") == [(3,)]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    params_3 = rows(db, "select params from at_trials where number = 3")[0][0]

    env.pop("AUTOTUNE_FAULT_INJECT")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "trial 3 was interrupted" in out.stderr
    assert "run 1 had no live driver left" in out.stderr
    trials = rows(db, "select number, state, reason, retry_of, params from at_trials order by number")
    numbers = [t[0] for t in trials]
    assert numbers == sorted(set(numbers)), "a trial number recorded twice"
    by_number = {t[0]: t for t in trials}
    assert by_number[3][1:3] == ("FAIL", "interrupted")
    retries = [t for t in trials if t[3] == 3]
    assert len(retries) == 1 and retries[0][1] == "COMPLETE" and retries[0][4] == params_3
    # budget: 6 finished trials besides the interrupted one; trials 0-2 were not measured again
    assert len([t for t in trials if t[1] == "COMPLETE"]) == 6
    assert rows(db, "select count(distinct trial_id) from at_measurements") == [(6,)]
    runs = rows(db, "select status, ended_at, end_reason from at_runs order by id")
    # the killed driver's run is marked ended by the next driver, with the reason
    assert runs[0][0] == "died" and runs[0][1] is not None and runs[0][2].startswith("driver died: found gone by run 2")
    assert runs[1][0] == "finished"
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states


def stop_ray_head(head: subprocess.Popen, temp_dir: str) -> None:
    """Stop a ``ray start --head --block`` started in its own process group by a test (never
    ``ray stop``: other Ray instances may run on the machine), then any process of that cluster
    that left the group (found by its temp dir), and remove the temp dir."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(10)
    left = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    for pid in left:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_head(cwd, env: dict, prefix: str):
    """A one-node cluster of this test only: ``ray start --head --block`` in its own process group,
    waited for until it answers ``ray status``; yields its address and stops it (`stop_ray_head`)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix=prefix)  # short: Ray's socket paths must stay < 108 bytes
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         f"--dashboard-port={free_port()}", f"--temp-dir={temp_dir}", f"--node-manager-port={free_port()}",
         f"--object-manager-port={free_port()}", "--disable-usage-stats"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # `ray status` uses a token only with RAY_AUTH_MODE=token (a driver joining an address finds it itself)
    token = "RAY_AUTH_MODE" not in env and ("RAY_AUTH_TOKEN_PATH" in env or "RAY_AUTH_TOKEN" in env)
    probe_env = dict(env, RAY_AUTH_MODE="token") if token else env
    try:
        deadline = time.time() + 120
        while True:  # until the head answers
            probe = subprocess.run(["ray", "status", f"--address=127.0.0.1:{port}"], env=probe_env, capture_output=True,
                                   text=True, timeout=60)
            if probe.returncode == 0:
                break
            assert head.poll() is None and time.time() < deadline, probe.stdout + probe.stderr
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        stop_ray_head(head, temp_dir)


# a space section that makes a trial cheap (the Ray cluster tests)
FAST = dict(objectives=["speedup", "memory_vs_sdpa"], constraints={"memory_vs_naive": {"max": 50.0}},
            measure={"warmup": 0, "repeats": 1}, buckets=[64])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trial_result_crosses_process_boundaries_and_names_the_columns(tmp_path):
    """A TrialResult pickles (Ray ships it from the actor) with its typed records intact, and each
    at_measurements column is a field of its cells (the one writer reads them by name)."""
    import dataclasses
    import pickle

    from results.db import Measurement
    from search_spaces.space import WORKLOAD_TYPES
    from autotune.trial import CellMeasurement, TrialRequest, TrialResult, TrialRunner
    from autotune.workloads import BENCHES

    assert set(BENCHES) == set(WORKLOAD_TYPES)
    columns = set(Measurement.__table__.columns.keys()) - {"id", "trial_id"}
    assert columns <= {f.name for f in dataclasses.fields(CellMeasurement)}
    space = load_space(write_space(tmp_path, buckets=[64], workloads=TINY["workloads"][:1]))
    pattern, kernel = space.split_params({"pattern.block_size": 16, "pattern.window": 16, "pattern.num_global": 0,
                                          "pattern.stride": 0})
    res = TrialRunner().run(TrialRequest("tiny", 0, {}, pattern, kernel, space.to_dict()).to_dict())
    assert isinstance(res, TrialResult) and res.ok, res.reason
    back = pickle.loads(pickle.dumps(res))
    assert back == res and isinstance(back.cells[0], CellMeasurement)
    cell = back.cells[0]
    assert (cell.workload, cell.bucket, cell.batch) == ("row", 64, 4) and cell.peak_mib >= 0
    assert cell.speedup_lo <= cell.speedup <= cell.speedup_hi
    assert set(back.accuracy) == {64} and back.gate.seq_len == 72 and back.timing.total_s > 0

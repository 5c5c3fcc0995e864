"""The Ray executor past one machine: a cluster of a head and two worker nodes (each with its own
CPUs) simulated with ``ray.cluster_utils.Cluster``, one worker node removed in the middle of a trial;
and ``--ray-address`` against a cluster started with ``ray start --head`` on a free port. Both start
their own Ray processes (never the default ports) and always stop exactly those."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from autotune.search import Search
from search_spaces.space import load_space
from test_search import FAST, ROOT, ray_head, rows, write_space



@pytest.mark.slow
def test_worker_node_removed_mid_trial(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    import autotune.executor as ex

    monkeypatch.setenv("AUTOTUNE_FAULT_INJECT", "sleep:1")  # trial 1 sleeps on its node until that node goes
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=1, resources={f"machine{i}": 1}) for i in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
                 include_dashboard=False, logging_level="ERROR")
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3
        made: list = []
        real = ex.make_executor

        def capture(*a, **k):
            made.append(real(*a, **k))
            return made[-1]

        monkeypatch.setattr(ex, "make_executor", capture)
        removed: dict = {}

        def remove_node_of_trial_1():
            deadline = time.time() + 240
            while time.time() < deadline:
                if made and 1 in made[0].inflight_numbers():
                    node = made[0].node_of_trial(1, timeout=10)
                    if node:
                        time.sleep(3)  # well inside the trial (it sleeps after its gate)
                        victim = next(w for w in workers if w.node_id == node)
                        cluster.remove_node(victim, allow_graceful=False)
                        removed["node"] = node
                        return
                time.sleep(0.2)

        t = threading.Thread(target=remove_node_of_trial_1, daemon=True)
        t.start()
        space = load_space(write_space(tmp_path, **FAST)).override(trials=4)
        db = tmp_path / "results.db"
        summary = Search(space, study_name="tiny", storage=f"sqlite:///{db}", executor="ray", workers=2,
                         ray_address=cluster.address, progress=False,
                         allow_repeats=True).run()  # no duplicate pruned: trial 1 is measured
        t.join(5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert removed.get("node"), "trial 1 never ran on a worker node"
    trials = rows(db, "select number, state, reason, retry_of, params from at_trials order by number")
    by = {t[0]: t for t in trials}
    assert by[1][1] == "FAIL" and by[1][2].startswith("node lost: worker node " + removed["node"]), by[1]
    retries = [t for t in trials if t[3] == 1]
    assert len(retries) == 1 and retries[0][1] == "COMPLETE" and retries[0][4] == by[1][4]
    complete = [t for t in trials if t[1] == "COMPLETE"]
    assert len(complete) == 4 and summary["finished"] == 4  # the budget, finished on the remaining node
    assert len({t[4] for t in complete}) == 4  # nothing measured twice
    assert rows(db, "select count(distinct trial_id) from at_measurements") == [(4,)]  # nothing lost
    assert summary["retried"] == 1
    assert rows(db, "select status from at_runs") == [("finished",)]


@pytest.mark.slow
def test_ray_address_of_a_cluster_started_with_ray_start(tmp_path):
    # a cluster of this test only, with Ray's default authentication: the head and the driver share
    # a token (as a user's ~/.ray/auth_token), so `ray start --head` turns token authentication on
    from test_ray_conventions import _env, token_file

    env = _env(RAY_AUTH_TOKEN_PATH=token_file(str(tmp_path)))
    with ray_head(tmp_path, env, "atray") as address:
        space = write_space(tmp_path, **FAST)
        db = tmp_path / "a.db"
        cmd = [sys.executable, "-m", "autotune.search", "--space", str(space), "--storage", f"sqlite:///{db}",
               "--executor", "ray", "--ray-address", address, "--trials", "3", "--no-progress"]
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stderr
        assert "2 ray worker(s)" in out.stderr and "3 finished in total" in out.stderr
        assert rows(db, "select count(*) from at_trials where state = 'COMPLETE'") == [(3,)]
        assert rows(db, "select json_extract(cluster, '$.address'), json_extract(cluster, '$.auth') from at_runs") == \
            [(address, "token")]
        # threads_per_worker beyond every node of the cluster: one line, exit 2, no hang
        big = write_space(tmp_path, execution={"workers": 1, "threads_per_worker": 64}, **FAST)
        bad = subprocess.run(cmd[:4] + [str(big)] + cmd[5:] + ["--study", "big"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        errors = [ln for ln in bad.stderr.strip().splitlines() if not ln.endswith(" ...")]  # less the progress line
        assert bad.returncode == 2 and len(errors) == 1 and "threads_per_worker: 64" in errors[0], bad.stderr
        assert rows(db, "select count(*) from at_runs where study_name = 'big'") == [(0,)]  # refused at the join

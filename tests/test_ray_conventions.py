"""Ray's conventions: ``$RAY_ADDRESS`` and ``auto`` honoured, the project's packages shipped to a
joined cluster as ``py_modules``, one line (exit 2) for an address where no cluster answers, and
SIGINT / SIGTERM answered while connecting. The cluster tests start their own head with ``ray
start --head`` on free ports (never the default ones) and stop exactly its process group."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import autotune.executor as ex
from autotune.executor import ClusterUnreachable, cluster_address, project_runtime_env, wait_for_address
from test_search import FAST, ROOT, free_port as _free_port, ray_head, rows, write_space



def token_file(folder: str, token: str = "") -> str:
    """A Ray authentication token in a file of ``folder`` (``$RAY_AUTH_TOKEN_PATH``): what ``ray
    get-auth-token --generate`` writes to ~/.ray/auth_token, without touching the user's home."""
    path = os.path.join(folder, "auth_token")
    with open(path, "w") as f:
        f.write(token or secrets.token_hex(32))
    return path


_TOKEN_DIR = tempfile.mkdtemp(prefix="attok")


def _env(**extra) -> dict[str, str]:
    """The environment of a test's Ray head and drivers: Ray's default authentication (no
    RAY_AUTH_MODE), with a token of the test session: ``ray start --head`` turns token
    authentication on, as it does for a user who has a token."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", **extra)
    if "RAY_AUTH_TOKEN_PATH" not in extra:
        env["RAY_AUTH_TOKEN_PATH"] = os.path.join(_TOKEN_DIR, "auth_token")
        if not os.path.exists(env["RAY_AUTH_TOKEN_PATH"]):
            token_file(_TOKEN_DIR)
    for k in ("AUTOTUNE_FAULT_INJECT", "RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(k, None)
    if "RAY_ADDRESS" not in extra:
        env.pop("RAY_ADDRESS", None)
    return env


# ---- fast: address resolution, probing, the runtime_env ----------------------------------------


def test_address_from_flag_then_environment(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) == (None, "RAY_ADDRESS")  # nothing given: a local instance
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster_address(None) == ("10.0.0.5:6379", "RAY_ADDRESS")  # what `ray job submit` sets
    assert cluster_address("auto") == ("auto", "--ray-address")  # the flag wins
    assert cluster_address("local") == (None, "--ray-address")  # local: a new instance despite RAY_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert cluster_address(None) == (None, "RAY_ADDRESS")


@pytest.mark.parametrize("address", ["nohost", "host:port", "host:0", "ray://:10001", "h:70000"])
def test_malformed_address_is_one_line(address):
    with pytest.raises(ClusterUnreachable) as ei:
        wait_for_address(address, "RAY_ADDRESS", timeout=0.5)
    msg = str(ei.value)
    assert msg.startswith("RAY_ADDRESS: ") and repr(address) in msg and "\n" not in msg, msg


def test_unreachable_address_gives_up_in_time_with_one_line():
    port = _free_port()  # bound and released: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ClusterUnreachable) as ei:
        wait_for_address(f"127.0.0.1:{port}", "--ray-address", timeout=1.5)
    took = time.monotonic() - t0
    msg = str(ei.value)
    assert 1.4 <= took < 5.0, took
    assert msg.startswith(f"--ray-address 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port}"), msg
    assert f"ray start --head --port {port}" in msg and "\n" not in msg


def test_listening_address_passes_the_probe():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        t0 = time.monotonic()
        wait_for_address(f"ray://127.0.0.1:{port}", timeout=5.0)  # Ray Client form: same probe
        assert time.monotonic() - t0 < 2.0


def test_auto_without_a_cluster_is_one_line(monkeypatch):
    import ray._private.services as services

    def none_running(addr, temp_dir=None):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.\nmore")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", none_running)
    with pytest.raises(ClusterUnreachable) as ei:
        wait_for_address("auto", "--ray-address", timeout=0.5)
    assert str(ei.value) == ("--ray-address auto: no running Ray cluster found on this machine (Could not find any "
                             "running Ray instance. Please specify the one to connect to.)")


def test_runtime_env_ships_this_checkout(monkeypatch, tmp_path):
    env = project_runtime_env(str(tmp_path))
    assert env == {"working_dir": str(tmp_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autotune", "kernels", "models", "patterns", "results", "search_spaces"]
    assert all(p.suffix == ".py" or p.is_dir() for p in (tmp_path / "results").rglob("*"))  # no database shipped
    for name in ("autotune/executor.py", "kernels/tuned.py", "kernels/__init__.py", "kernels/csrc"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "autotune/executor.py").read_bytes() == (ROOT / "autotune/executor.py").read_bytes()
    assert not list(tmp_path.rglob("__pycache__")) and not list(tmp_path.rglob("*.pyc"))
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "s3://b/x.zip"}}))
    assert ex._job_runtime_env() == {"working_dir": "s3://b/x.zip"}  # a submitted job's code is kept
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "not json")
    assert ex._job_runtime_env() == {}


# ---- the command line: unreachable cluster, interrupted while connecting ------------------------


def _search_cmd(space: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "autotune.search", "--space", str(space), "--storage", f"sqlite:///{db}",
            "--executor", "ray", "--trials", "2", "--no-progress"]


@pytest.mark.slow
def test_unreachable_ray_address_env_exits_2_with_one_line(tmp_path):
    port = _free_port()
    space = write_space(tmp_path, **FAST)
    out = subprocess.run(_search_cmd(space, tmp_path / "a.db"), cwd=tmp_path, capture_output=True, text=True,
                         timeout=200, env=_env(RAY_ADDRESS=f"127.0.0.1:{port}"))
    assert out.returncode == 2, out.stderr
    errors = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("autotune: error:")]
    assert errors == [f"autotune: error: RAY_ADDRESS 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port} "
                      f"(Connection refused, 20 s); start one there (ray start --head --port {port}) or fix the address"], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_while_connecting(tmp_path, sig):
    port = _free_port()
    space = write_space(tmp_path, **FAST)
    db = tmp_path / "a.db"
    proc = subprocess.Popen(_search_cmd(space, db) + ["--ray-address", f"127.0.0.1:{port}"],
                            cwd=tmp_path, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        line = proc.stderr.readline()  # the first line: the join starts before anything is written
        assert "joining the Ray cluster" in line, line
        time.sleep(3.0)  # inside the probe (it waits 20 s for the address)
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(sig)
        err = ""
        while "interrupted before anything was written" not in err:  # the search's last line
            more = proc.stderr.readline()
            assert more, err
            err += more
        took = time.monotonic() - t0  # answered; the interpreter's own exit (torch, ray) follows
        rc = proc.wait(60)
        err += proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert rc == 130, err
    assert took < 5.0, (took, err)
    assert "Traceback" not in err, err
    assert not db.exists()  # a join that never happened writes nothing: no study, no run


# ---- a real cluster: RAY_ADDRESS without num_cpus, the packages shipped -----------------------


@pytest.fixture(scope="module")
def cluster():
    cwd = tempfile.mkdtemp(prefix="atrc_cwd")
    env = _env()
    env.pop("PYTHONPATH")  # the nodes see no checkout: the driver must ship its packages
    try:
        with ray_head(cwd, env, "atrc") as address:
            yield address
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_joined_cluster_runs_the_drivers_packages(cluster, monkeypatch):
    import ray

    monkeypatch.setenv("RAY_ADDRESS", cluster)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default: the token is found and used
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", _env()["RAY_AUTH_TOKEN_PATH"])
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert not ray.is_initialized()
    executor = ex.RayExecutor(device="cpu", workers=1)  # RAY_ADDRESS: joined without num_cpus
    try:
        assert executor.address == cluster and executor.workers == 1
        assert executor.cluster == {"address": cluster, "source": "RAY_ADDRESS", "ray": ray.__version__, "auth": "token"}

        @ray.remote(num_cpus=0)
        def where():
            import autotune.executor
            import kernels
            import patterns

            return [m.__file__ for m in (autotune.executor, patterns, kernels)]

        files = ray.get(where.remote(), timeout=120)
        ours = [ex.__file__, sys.modules["patterns"].__file__, sys.modules["kernels"].__file__]
        assert [_digest(f) for f in files] == [_digest(f) for f in ours]  # the driver's code, byte for byte
        assert not any(f.startswith(str(ROOT)) for f in files), files  # a shipped copy, not this checkout
        assert ray.get(executor.actors[0].ping.remote(), timeout=120) > 0  # the trial actor starts with it
    finally:
        executor.shutdown()
    assert not ray.is_initialized()
    assert "RAY_AUTH_MODE" not in os.environ  # the token mode of the join ends with it


@pytest.mark.slow
def test_search_under_ray_address_env(cluster, tmp_path):
    space = write_space(tmp_path, **FAST)
    db = tmp_path / "a.db"
    env = _env(RAY_ADDRESS=cluster)  # as `ray job submit` runs its entrypoint: no --ray-address
    out = subprocess.run(_search_cmd(space, db), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr
    assert "num_cpus and num_gpus must not be provided" not in out.stderr
    assert "2 ray worker(s)" in out.stderr and "2 finished in total" in out.stderr, out.stderr
    assert rows(db, "select count(*) from at_trials where state = 'COMPLETE'") == [(2,)]
    # Ray's default authentication: the cluster's token found and used; the run records the cluster
    assert "InvalidAuthToken" not in out.stderr and "authentication token" in out.stderr, out.stderr
    import ray

    (run,) = rows(db, "select cluster from at_runs")
    assert json.loads(run[0]) == {"address": cluster, "source": "RAY_ADDRESS", "ray": ray.__version__, "auth": "token"}


@pytest.mark.slow
@pytest.mark.parametrize("token", ["wrong", "none", "missing-file", "mode-without-token"])
def test_join_refused_for_authentication_is_one_line_and_writes_nothing(cluster, tmp_path, token):
    """A driver without the cluster's token: exit 2, one line naming authentication as the cause,
    no database written (no study, no failed run)."""
    space = write_space(tmp_path, **FAST)
    db = tmp_path / "a.db"
    if token == "wrong":
        env = _env(RAY_AUTH_TOKEN_PATH=token_file(str(tmp_path)))
        why = "the cluster rejected this driver's authentication token"
    elif token == "missing-file":
        env = _env(RAY_AUTH_TOKEN_PATH=str(tmp_path / "no-such-token"))
        why = "Ray token authentication: RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty"
    else:  # no token anywhere (a home without ~/.ray/auth_token)
        env = _env(HOME=str(tmp_path))
        env.pop("RAY_AUTH_TOKEN_PATH")
        if token == "none":
            why = "the cluster uses Ray token authentication and this driver sent no token (RAY_AUTH_MODE=disabled)"
        else:
            env["RAY_AUTH_MODE"] = "token"
            why = "Ray token authentication: Token authentication is enabled but no authentication token was found"
    out = subprocess.run(_search_cmd(space, db) + ["--ray-address", cluster], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 2, out.stderr
    errors = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("autotune: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"autotune: error: --ray-address {cluster}: could not join"), out.stderr
    assert why in errors[0] and "ray get-auth-token" in errors[0] and "RAY_AUTH_TOKEN" in errors[0], errors
    assert "InvalidAuthToken: Authentication token is missing" not in out.stderr  # Ray's repeated log lines left out
    assert not db.exists()

"""Where trials run: long-lived Ray actors, or the driver process itself.

Both executors have the same small interface, used only by the search driver:
``capacity`` (trials that may run at once), ``submit(request)``, ``poll(timeout) -> [(request,
result)]``, ``running``, ``shutdown()``. A request is a `TrialRequest` as a plain dict, a result the
`autotune.trial.TrialResult` of `TrialRunner.run` (plain dataclasses: Ray pickles them across the
actor boundary); a worker never writes to the database.

`RayExecutor`
    Where: ``address`` (``--ray-address``), else ``$RAY_ADDRESS`` (what ``ray job submit`` sets for
    its entrypoint), in Ray's own forms: ``HOST:PORT``, ``ray://HOST:PORT`` (Ray Client), ``auto``
    (the cluster last started on this machine) or ``local``; with neither (or ``local``) a local
    Ray instance is started (``ray.init(address="local", num_cpus=..., include_dashboard=False)``).
    Joining a cluster (`cluster_address`):

    - the address is probed first in Python (a TCP connect every 0.5 s, up to
      ``connect_timeout`` seconds, default 20): nothing answering gives `ClusterUnreachable`, one
      line naming the address and where it came from (the search exits with status 2); the probe
      answers SIGINT / SIGTERM at once, where ``ray.init`` alone retries a dead address for minutes
      inside its C++ client without running Python's signal handlers. Ray's own GCS connection
      retries are then bounded (``RAY_gcs_server_port_wait_time_s=5`` unless set);
    - Ray's token authentication (on by default in ``ray start --head`` once a token exists): with
      ``RAY_AUTH_MODE`` unset and a token available (``~/.ray/auth_token``, ``$RAY_AUTH_TOKEN`` or
      ``$RAY_AUTH_TOKEN_PATH``) the join uses it, as Ray itself does for ``auto`` (`TokenAuth`); a
      join refused for authentication is one line naming that cause (`join_error_line`), Ray's
      repeated ``InvalidAuthToken`` log lines left out. ``cluster`` holds what the run records
      (``at_runs.cluster``): address, where it came from, Ray version, authentication mode;
    - ``ray.init`` gets no ``num_cpus`` (Ray refuses resources when joining) and a ``runtime_env``
      whose ``working_dir`` holds this project's packages (`project_runtime_env`): every worker
      runs the driver's version of ``autotune``, ``patterns`` and ``kernels``, not whatever is
      installed on its node. A job submitted with its own ``py_modules`` or ``working_dir`` (``ray
      job submit --working-dir``) keeps them: Ray refuses conflicting fields, and the submitter chose.

    GPU spaces get one long-lived actor per
    GPU (``num_gpus=1``): its CUDA context, Triton compile cache and baseline cache stay warm from
    trial to trial, which a plain Ray task (a fresh process each time) would lose. CPU spaces get
    ``execution.workers`` actors (default: cluster CPUs // ``threads_per_worker``), each with
    ``num_cpus=threads_per_worker`` and ``torch.set_num_threads`` to match.
    A candidate that kills its process (segfault, illegal memory access, ``os._exit``) takes down
    only its own trial: the driver sees ``RayActorError``, returns a failed result "worker died:
    ...", and starts a replacement actor for the next trial.
    A worker *node* that leaves the cluster (machine lost, preempted, removed) is another matter:
    the trial did nothing wrong. Its result is failed with reason "node lost: ..." and marked
    ``retry`` (the driver records it failed and runs its parameters again); the actor's slot is
    replaced only if the cluster still has the CPUs for it, else capacity shrinks (no slot waits
    forever for resources that left; with no slot left the executor raises `ExecutorError`).
    ``threads_per_worker`` larger than the CPUs of every node would make actors wait forever:
    refused at start (`ExecutorError`, exit status 2).

`LocalExecutor`
    Runs one trial at a time in the driver process (machines without Ray, debugging). A candidate
    that crashes the process crashes the driver; the next run resumes and marks that trial
    "interrupted" (see `autotune.search`).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Optional

from results.states import EndReason

from .trial import FAULT_ENV, TrialResult, TrialRunner

__all__ = ["LocalExecutor", "RayExecutor", "ExecutorError", "ClusterUnreachable", "make_executor",
           "cluster_address", "project_runtime_env", "wait_for_address", "use_token_if_available", "join_error_line"]

CONNECT_TIMEOUT_S = 20.0  # how long a cluster address may stay silent before the search gives up
GCS_WAIT_S = "5"  # Ray's own GCS connection retries once the address answers (RAY_gcs_server_port_wait_time_s)
PACKAGES = ("autotune", "patterns", "kernels", "models", "search_spaces", "results")  # what a joined cluster's workers get from the driver


class ExecutorError(RuntimeError):
    """The executor cannot run trials. ``standalone``: the message names its own source (an
    address, a missing package) rather than a field of the search space."""

    standalone = False


class ClusterUnreachable(ExecutorError):
    """No Ray cluster answers at the address to join (one line)."""

    standalone = True


def cluster_address(address: Optional[str] = None) -> tuple[Optional[str], str]:
    """The Ray address to join and where it came from: ``address`` (``--ray-address``), else
    ``$RAY_ADDRESS``; ``(None, ...)`` for a local instance (neither given, or ``local``)."""
    if address:
        where = "--ray-address"
    else:
        address, where = os.environ.get("RAY_ADDRESS", "").strip() or None, "RAY_ADDRESS"
    if address is None or address == "local":
        return None, where
    return address, where


def _host_port(address: str, where: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``ray://HOST:PORT`` / ``[v6]:PORT`` -> (host, port); ``auto`` resolved as
    Ray resolves it (the cluster last started on this machine)."""
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            resolved = canonicalize_bootstrap_address("auto")
        except Exception as e:  # noqa: BLE001 - ConnectionError when no cluster runs here
            raise ClusterUnreachable(f"{where} auto: no running Ray cluster found on this machine "
                                     f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
        if not resolved:
            raise ClusterUnreachable(f"{where} auto: no running Ray cluster found on this machine")
        address = resolved
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterUnreachable(f"{where}: {address!r} is not a Ray address (HOST:PORT, ray://HOST:PORT, auto or local)")
    return host.strip("[]"), int(port)


def wait_for_address(address: str, where: str = "--ray-address", timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Probe ``address`` until something accepts a TCP connection, for at most ``timeout`` seconds;
    `ClusterUnreachable` (one line) if nothing does. Plain Python between short connects, so SIGINT
    and SIGTERM handlers run at once."""
    import socket
    import time

    host, port = _host_port(address, where)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(1.0, max(0.1, deadline - time.monotonic()))):
                return
        except OSError as e:
            last = e.strerror or type(e).__name__
        if time.monotonic() >= deadline:
            raise ClusterUnreachable(f"{where} {address}: no Ray cluster answers at {host}:{port} ({last}, "
                                     f"{timeout:.0f} s); start one there (ray start --head --port {port}) or fix the address")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def project_runtime_env(staging: str) -> dict[str, Any]:
    """The ``runtime_env`` for joining a cluster: a ``working_dir`` holding a copy of this
    project's packages (the ones this driver imported, without bytecode caches), staged in the
    empty directory ``staging``. Ray uploads it once per content hash and starts every worker in
    it, first on ``sys.path``. A ``working_dir`` rather than ``py_modules``: without one, Ray puts
    the driver's current directory at the front of every worker's path, and a node with another
    checkout at that path would run its own version."""
    import importlib
    import shutil

    caches = shutil.ignore_patterns("__pycache__", "*.pyc")

    def modules_only(folder: str, names: list[str]) -> set[str]:
        # results/ is also the folder of one's own databases, tuned files and reports: only its modules
        return set(caches(folder, names)) | {n for n in names if not n.endswith(".py")
                                             and not os.path.isfile(os.path.join(folder, n, "__init__.py"))}

    for name in PACKAGES:
        src = os.path.dirname(importlib.import_module(name).__file__)
        shutil.copytree(src, os.path.join(staging, name), ignore=modules_only if name == "results" else caches)
    return {"working_dir": staging}


def _job_runtime_env() -> dict[str, Any]:
    """The runtime_env of the Ray job this driver runs in (``ray job submit``), or {}."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


AUTH_HOWTO = ("give this driver the cluster's token (`ray get-auth-token` on the head): in ~/.ray/auth_token, "
              "or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH")


class TokenAuth:
    """Ray's token authentication for joining a cluster (Ray >= 2.5x: ``ray start --head`` turns it
    on when a token exists, ``~/.ray/auth_token`` or ``$RAY_AUTH_TOKEN`` / ``$RAY_AUTH_TOKEN_PATH``).
    Ray's client turns it on by itself only for ``auto``; for an explicit address (``--ray-address``,
    ``$RAY_ADDRESS``) `use_token_if_available` does what ``auto`` does: with ``RAY_AUTH_MODE`` unset
    and a token available, ``RAY_AUTH_MODE=token`` for this process until `restore`. ``mode``: the
    authentication mode the join used ("token", "disabled"; "none" for a Ray without it)."""

    def __init__(self, mode: str, changed: bool) -> None:
        self.mode, self.changed = mode, changed

    def restore(self) -> None:
        if self.changed:
            os.environ.pop("RAY_AUTH_MODE", None)
            _reload_ray_config()
            self.changed = False
        _forget_cached_token()


def _forget_cached_token() -> None:
    """Drop the token Ray's loader cached for this process (read once from ``$RAY_AUTH_TOKEN_PATH``
    or ``~/.ray/auth_token`` at the time of the join): a later local Ray instance must read the token
    of its own time, not send the old cluster's one (its GCS would refuse it: InvalidAuthToken)."""
    try:
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


def _reload_ray_config() -> None:
    try:
        from ray._raylet import Config

        Config.initialize("")  # Ray reads RAY_AUTH_MODE into its cached config
    except (ImportError, AttributeError):
        pass


def _auth_mode_name() -> str:
    """Ray's authentication mode in this process ("token", "disabled"; "none": a Ray without it)."""
    try:
        from ray._private.authentication.authentication_utils import get_authentication_mode_name
        from ray._raylet import get_authentication_mode

        return str(get_authentication_mode_name(get_authentication_mode())).lower()
    except (ImportError, AttributeError):
        return "none"


def use_token_if_available() -> TokenAuth:
    """``RAY_AUTH_MODE=token`` when it is unset and Ray finds a token (`TokenAuth`); an explicit
    ``RAY_AUTH_MODE`` (``disabled`` included) is kept as it is."""
    changed = False
    if os.environ.get("RAY_AUTH_MODE") is None:
        try:
            from ray._raylet import AuthenticationTokenLoader

            has = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
        except (ImportError, AttributeError, TypeError):
            has = False
        if has:
            os.environ["RAY_AUTH_MODE"] = "token"
            _reload_ray_config()
            changed = True
    return TokenAuth(_auth_mode_name(), changed)


@contextmanager
def _ray_log_lines():
    """Collect what is written to file descriptor 2 (Ray's C++ client logs there) inside the
    block into the yielded list; on exit write it back, less the repeated ``InvalidAuthToken``
    lines (the one-line error names the cause instead)."""
    import tempfile

    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            lines.extend(buf.read().decode(errors="replace").splitlines())
            keep = [ln for ln in lines if "InvalidAuthToken" not in ln]
            if keep:
                sys.stderr.write("\n".join(keep) + "\n")
                sys.stderr.flush()


def join_error_line(where: str, target: str, error: BaseException, logged: list[str], mode: str) -> str:
    """One line for a failed ``ray.init`` on a cluster address that answered: the cause when it is
    authentication (Ray's ``AuthenticationError``, or ``InvalidAuthToken`` in its client's log)."""
    head = f"{where} {target}: could not join the Ray cluster: "
    if type(error).__name__ == "AuthenticationError":  # Ray's first sentence names the cause
        cause = str(getattr(error, "message", "") or error).strip().splitlines()[0].split(". ")[0]
        return head + f"Ray token authentication: {cause}; {AUTH_HOWTO}"
    if any("InvalidAuthToken" in ln or "Unauthenticated" in ln for ln in logged):
        why = ("the cluster rejected this driver's authentication token (InvalidAuthToken: not the cluster's token)"
               if mode == "token" else
               f"the cluster uses Ray token authentication and this driver sent no token (RAY_AUTH_MODE={mode})")
        return head + f"{why}; {AUTH_HOWTO}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (head + f"{type(error).__name__}: {first}")[:500]


class LocalExecutor:
    name = "local"

    def __init__(self, threads: Optional[int] = None, space: Optional[dict[str, Any]] = None) -> None:
        self.runner = TrialRunner(threads, space)
        self.queue: list[dict[str, Any]] = []
        self.capacity = 1
        self.workers = 1
        self.cluster: dict[str, Any] = {}  # no Ray cluster

    @property
    def running(self) -> int:
        return len(self.queue)

    def submit(self, request: dict[str, Any]) -> None:
        self.queue.append(request)

    def poll(self, timeout: float = 1.0) -> list[tuple[dict[str, Any], TrialResult]]:
        if not self.queue:
            return []
        req = self.queue.pop(0)
        return [(req, self.runner.run(req))]

    def shutdown(self) -> None:
        self.queue.clear()


class TrialWorker:
    """The Ray actor: one process, one `TrialRunner` (with its caches), trials one at a time."""

    def __init__(self, env: dict[str, str], threads: Optional[int], space: Optional[dict[str, Any]] = None) -> None:
        os.environ.update(env)
        self.runner = TrialRunner(threads, space)

    def ping(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, request: dict[str, Any]) -> TrialResult:
        return self.runner.run(request)


def _failed(request: dict[str, Any], reason: str, retry: bool = False) -> TrialResult:
    """The result of a trial whose worker returned nothing (``retry``: run it again)."""
    return TrialResult.failed(request["number"], reason, retry=retry)


class RayExecutor:
    name = "ray"

    def __init__(self, *, device: str, workers: Optional[int] = None, threads_per_worker: int = 1,
                 address: Optional[str] = None, num_cpus: Optional[int] = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S, space: Optional[dict[str, Any]] = None) -> None:
        import ray

        self.ray = ray
        self.space = space  # handed to every actor when it starts (a restarted one too)
        self._owns_ray = False
        self._auth: Optional[TokenAuth] = None
        self.cluster: dict[str, Any] = {}  # what the run records (at_runs.cluster): address, Ray version, auth
        self.address: Optional[str] = None  # the cluster joined (None: a local instance, or one already running)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": "ERROR"}
            target, where = cluster_address(address)
            if target is not None:
                wait_for_address(target, where, connect_timeout)
                import tempfile

                job_env = _job_runtime_env()
                ship = not ("py_modules" in job_env or "working_dir" in job_env)
                gcs_wait = os.environ.get("RAY_gcs_server_port_wait_time_s")
                os.environ.setdefault("RAY_gcs_server_port_wait_time_s", GCS_WAIT_S)
                try:
                    auth = use_token_if_available()
                except ray.exceptions.RayError as e:  # e.g. RAY_AUTH_TOKEN_PATH names no readable file
                    raise ClusterUnreachable(join_error_line(where, target, e, [], _auth_mode_name())) from None
                try:
                    with tempfile.TemporaryDirectory(prefix="autotune-ship-") as staging, _ray_log_lines() as logged:
                        ray.init(address=target, runtime_env=project_runtime_env(staging) if ship else None, **kwargs)
                except (ConnectionError, RuntimeError, TimeoutError, ValueError, ray.exceptions.RayError) as e:
                    auth.restore()
                    raise ClusterUnreachable(join_error_line(where, target, e, logged, auth.mode)) from None
                finally:
                    if gcs_wait is None:
                        os.environ.pop("RAY_gcs_server_port_wait_time_s", None)
                self._auth = auth
                self._owns_ray = True  # our connection: disconnect at shutdown (the cluster stays)
                self.address = target
                self.cluster = {"address": target, "source": where, "ray": ray.__version__, "auth": auth.mode}
            else:
                # The repository root on the workers' path (a source checkout that is not installed).
                root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                pp = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
                # address="local": a new instance even when $RAY_ADDRESS names a cluster (--ray-address local)
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                         runtime_env={"env_vars": {"PYTHONPATH": pp}}, **kwargs)
                self._owns_ray = True
                self.cluster = {"address": "local", "source": "local", "ray": ray.__version__,
                                "auth": _auth_mode_name()}
        else:  # a Ray instance this process was already connected to
            self.cluster = {"address": ray.get_runtime_context().gcs_address, "source": "ray.init", "ray": ray.__version__,
                            "auth": _auth_mode_name()}
        node_cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        if threads_per_worker > max(node_cpus, default=0):
            self.actors = []
            self.shutdown()
            raise ExecutorError(f"execution.threads_per_worker: {threads_per_worker}, but no node of the Ray cluster has "
                                f"that many CPUs (largest: {max(node_cpus, default=0)}); a worker would wait forever")
        res = ray.cluster_resources()
        self.threads = threads_per_worker
        if device == "cuda":
            gpus = int(res.get("GPU", 0))
            if gpus < 1:
                self.shutdown()
                raise ExecutorError("device cuda: the Ray cluster has no GPU (use --device cpu)")
            n = gpus if workers is None else min(workers, gpus)
            self.options = {"num_gpus": 1, "num_cpus": min(threads_per_worker, max(1, int(res.get("CPU", 1)) // gpus))}
        else:
            cpus = int(res.get("CPU", 1))
            n = workers if workers is not None else max(1, cpus // threads_per_worker)
            n = max(1, min(n, max(1, cpus // threads_per_worker)))
            self.options = {"num_cpus": threads_per_worker}
        self.env = {FAULT_ENV: os.environ[FAULT_ENV]} if FAULT_ENV in os.environ else {}
        self.remote_cls = ray.remote(TrialWorker)
        self.node_refs: dict[int, Any] = {}
        self.actors = [self._new_actor(i) for i in range(n)]
        self.idle = list(range(n))
        self.inflight: dict[Any, tuple[int, dict[str, Any]]] = {}
        self.capacity = n
        self.workers = n
        self.restarts = 0
        self.nodes_lost = 0
        self.placement: dict[int, Optional[str]] = {}  # trial number -> node id of its worker (when known)

    def _new_actor(self, slot: int):
        actor = self.remote_cls.options(max_restarts=0, max_task_retries=0, **self.options).remote(self.env, self.threads, self.space)
        self.node_refs[slot] = actor.node_id.remote()
        return actor

    def node_of(self, slot: int, timeout: float = 0.0) -> Optional[str]:
        """Node id of the actor in ``slot`` (None until the actor has started)."""
        try:
            return self.ray.get(self.node_refs[slot], timeout=timeout)
        except Exception:  # noqa: BLE001 - not started yet, or dead before it answered
            return None

    def inflight_numbers(self) -> list[int]:
        """Trial numbers running now."""
        return [req["number"] for _, req in list(self.inflight.values())]

    def node_of_trial(self, number: int, timeout: float = 0.0) -> Optional[str]:
        """Node id of the worker running trial ``number`` (None if unknown or not running)."""
        for slot, req in list(self.inflight.values()):
            if req["number"] == number:
                return self.node_of(slot, timeout)
        return None

    def _alive_nodes(self) -> set[str]:
        return {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}

    @property
    def running(self) -> int:
        return len(self.inflight)

    def submit(self, request: dict[str, Any]) -> None:
        if not self.idle:
            raise ExecutorError("no idle worker")
        slot = self.idle.pop(0)
        ref = self.actors[slot].run.remote(request)
        self.inflight[ref] = (slot, request)
        self.placement[request["number"]] = self.node_of(slot, timeout=0.0)

    def poll(self, timeout: float = 1.0) -> list[tuple[dict[str, Any], TrialResult]]:
        ray = self.ray
        if not self.inflight:
            return []
        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=0)
        out = []
        for ref in ready:
            slot, req = self.inflight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                node = self.node_of(slot, timeout=5.0)
                # ActorUnavailableError: the actor's node stopped answering (lost or cut off); the
                # actor cannot come back (max_restarts=0). ActorDiedError: the process died; its
                # node is lost only if the cluster says so.
                unavailable = type(e).__name__ == "ActorUnavailableError"
                lost = unavailable or self._node_lost(node, str(e))
                try:
                    ray.kill(self.actors[slot], no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                if lost:  # the machine went away, not the candidate's fault: run it again elsewhere
                    result = _failed(req, EndReason.NODE_LOST.text(f"worker node {node or '?'} left the cluster during "
                                                                  f"the trial ({type(e).__name__})")[:2000], retry=True)
                    self.nodes_lost += 1
                    if not self._room_for_actor(exclude_node=node, slot=slot):
                        self.capacity -= 1
                        self.actors[slot] = None
                        if self.capacity < 1:
                            raise ExecutorError("every Ray worker node is gone: no worker left to run trials")
                        out.append((req, result))
                        continue
                else:  # the candidate took its process down: only this trial fails
                    result = _failed(req, EndReason.WORKER_DIED.text(f"{type(e).__name__}: {msg}")[:2000])
                self.actors[slot] = self._new_actor(slot)
                self.restarts += 1
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None) or e
                result = _failed(req, f"{type(cause).__name__}: {cause}"[:2000])
            self.idle.append(slot)
            out.append((req, result))
        return out

    def _node_lost(self, node: Optional[str], message: str) -> bool:
        """Whether an actor died with its node: its node is no longer alive in the cluster (waits
        a few seconds for the cluster to notice), or Ray says so."""
        import time

        import re

        if re.search(r"\bnode (has |had )?(died|is dead|was removed|was preempted)", message.lower()):
            return True
        if node is None:
            return False
        for _ in range(20):
            if node not in self._alive_nodes():
                return True
            time.sleep(0.25)
        return False

    def _room_for_actor(self, exclude_node: Optional[str], slot: int) -> bool:
        """Whether the alive nodes (without the lost one) hold the resources of one more actor
        besides the live actors of the other slots."""
        total: dict[str, float] = {}
        for n in self.ray.nodes():
            if n.get("Alive") and n["NodeID"] != exclude_node:
                for k in ("CPU", "GPU"):
                    total[k] = total.get(k, 0.0) + float(n.get("Resources", {}).get(k, 0.0))
        others = sum(1 for i, a in enumerate(self.actors) if a is not None and i != slot)
        for opt, res in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            need = float(self.options.get(opt, 0))
            if need and total.get(res, 0.0) - others * need < need:
                return False
        return True

    def shutdown(self) -> None:
        for a in getattr(self, "actors", []):
            if a is None:
                continue
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
        if self._auth is not None:
            self._auth.restore()
            self._auth = None


def make_executor(kind: str, *, device: str, workers: Optional[int], threads_per_worker: int,
                  address: Optional[str] = None, num_cpus: Optional[int] = None,
                  space: Optional[dict[str, Any]] = None):
    """The executor of ``kind``; ``space`` (the stored form) is handed to every worker once, when it
    starts, so that trial requests need not carry it (`autotune.trial.TrialRunner`)."""
    if kind == "local":
        return LocalExecutor(threads_per_worker if device == "cpu" else None, space)
    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            e = ExecutorError("--executor ray: ray is not installed (pip install 'protein-sparse-autotune[search]'), "
                              "or use --executor local")
            e.standalone = True
            raise e from None
        return RayExecutor(device=device, workers=workers, threads_per_worker=threads_per_worker,
                           address=address, num_cpus=num_cpus, space=space)
    raise ValueError(f"unknown executor {kind!r}")

"""The search driver's start-up (`autotune.search`): the database, Optuna's study and this run's
at_runs row opened (`Startup.open_study`), the Ray cluster joined before anything is written, the
fused C kernel loaded, the workers and the progress bar started."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from patterns.errors import InputError

from .optuna_view import make_sampler, sampler_seed


class UsageError(InputError):
    """Invalid input found before anything is written: exit status 2."""


@contextmanager
def bar_safe_stderr(bar) -> Iterator[None]:
    """While the progress bar ``bar`` shows (None: no bar), whatever is written to ``sys.stderr``
    (our log lines, Python warnings, Ray's copies of its workers' output) goes through
    ``tqdm.write``, on its own line above the bar (tqdm's ``DummyTqdmFile``), never glued to it."""
    if bar is None:
        yield
        return
    from tqdm.contrib import DummyTqdmFile

    real = sys.stderr
    sys.stderr = DummyTqdmFile(real)
    try:
        yield
    finally:
        sys.stderr = real


class Startup:
    """Opens the study and starts the workers of the driver ``driver`` (an `autotune.search.Search`),
    setting its ``db``, ``ostorage``, ``study``, ``study_uid``, ``hardware``, ``run_id``, ``_executor``
    and ``_bar``."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def open_study(self) -> None:
        """Open the database (a database from an older version gets the new columns), Optuna's
        storage with its trial heartbeat (`Recovery.open_storage`) and the study (its directions
        checked against the space's), remove our rows of a deleted study of the same name and start
        this run's at_runs row; on a study with trials the sampler continues from it (`sampler_seed`)."""
        d = self.driver
        import optuna

        from .. import hardware
        from results.db import Database

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        from results import verdict  # noqa: F401  (at_confirmations is created / upgraded with our tables)

        d.db = Database(d.storage)  # a database from an older version gets the new columns
        d.ostorage = d.recovery.open_storage(d.storage)
        directions = d.space.directions()
        try:
            existing = optuna.load_study(study_name=d.study_name, storage=d.ostorage)
        except KeyError:
            existing = None
        if existing is not None:
            have = [x.name.lower() for x in existing.directions]
            if have != directions:
                raise UsageError(
                    f"study {d.study_name!r} exists with directions {have}, the space asks for {directions} "
                    f"(objectives {d.space.objectives}); use another --study"
                )
        d.study = optuna.create_study(study_name=d.study_name, storage=d.ostorage, directions=directions,
                                      sampler=make_sampler(d.space), load_if_exists=True)
        if existing is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from ..trial import metric_names

                d.study.set_metric_names(metric_names(d.space))  # accuracy: named for its metric
        # our rows of a study deleted from Optuna's storage (optuna delete-study), or of an earlier
        # study of the same name, are removed before anything of this one is written
        from results.db import ensure_study_uid

        d.study_uid = ensure_study_uid(d.db.engine, d.study._study_id)
        gone = d.db.drop_orphans(d.study_name)
        if gone:
            d.log(f"removed {gone.text()} (left by a deleted study; never cited)")
        d.hardware = hardware.describe(d.space.device)
        d.run_id = d.db.start_run(
            study_name=d.study_name, host=socket.gethostname(), pid=os.getpid(),
            command_line=hardware.command_line(secrets=d.secrets), device=d.space.device, hardware=d.hardware,
            versions=hardware.package_versions(), git_revision=hardware.git_revision(),
            space_path=d.space.source, space=d.space.to_dict(), executor=d.executor_kind,
            optuna_study_id=d.study._study_id, optuna_study_uid=d.study_uid,
        )
        if existing is None:  # the space is stored once, in at_runs; the study names the run that holds it
            d.study.set_user_attr("space_run_id", d.run_id)
        n_trials = len(d.study.get_trials(deepcopy=False))
        if n_trials:  # continue from the study: never replay the sequence of an earlier start
            d.study.sampler = make_sampler(d.space, sampler_seed(d.space.sampler.seed, n_trials, d.run_id),
                                           use_space_seed=False)

    def start(self, t_start: float, budget: int, done0: int) -> None:
        """Start the workers (an executor that cannot start is invalid input: `UsageError`) and
        the progress bar."""
        d = self.driver
        if d.space.device == "cpu":
            self.prepare_c_kernel()
        if d._executor is None:
            d._executor = self.make_executor()
        d.db.record_cluster(d.run_id, d._executor.cluster)
        d.stats["startup_s"] = time.perf_counter() - t_start
        try:  # again: starting Ray may have installed its own handler
            signal.signal(signal.SIGINT, d._on_int)
        except ValueError:
            pass
        executor = d._executor
        d.log(f"study {d.study_name!r}: {done0} trials finished, budget {budget}, "
              f"{executor.workers} {executor.name} worker(s), storage {d._safe_url()}")
        if d.progress:
            from tqdm import tqdm

            d._bar = tqdm(total=budget, initial=done0, desc=d.study_name, unit="trial", dynamic_ncols=True,
                          file=sys.stderr)

    def prepare_c_kernel(self) -> None:
        """Load the fused C kernel in the driver before the workers start: on its first use on a
        machine it is compiled (seconds; `kernels.cpu_fused`, cached after), said so when it takes
        more than a second, instead of silence inside the first trials."""
        d = self.driver
        import threading

        from kernels import cpu_fused

        t0 = time.perf_counter()
        got: list[bool] = []
        load = threading.Thread(target=lambda: got.append(cpu_fused.available()), daemon=True)
        load.start()
        load.join(1.0)
        if load.is_alive():
            d.log("compiling the fused C kernel (first use on this machine; cached after) ...")
            load.join()
            ok = bool(got and got[0])
            d.log(f"fused C kernel {'compiled' if ok else 'not available'} in {time.perf_counter() - t0:.1f} s"
                  + ("" if ok else f": {cpu_fused.unavailable_reason()}"))

    def join_cluster(self) -> None:
        """Join the Ray cluster named by ``--ray-address`` / ``$RAY_ADDRESS``, if any, before the
        study or the run is written: a join that fails leaves the database as it was."""
        d = self.driver
        from ..executor import cluster_address

        target, where = cluster_address(d.ray_address)
        if d.executor_kind == "ray" and target is not None:
            try:
                import ray  # noqa: F401  (seconds: before the line below, which the probe follows at once)
            except ImportError:
                pass  # make_executor says so in one line
            d.log(f"joining the Ray cluster at {target} ({where}) ...")
            d._executor = self.make_executor()

    def make_executor(self):
        """The executor (an executor that cannot start is invalid input: `UsageError`)."""
        d = self.driver
        from ..executor import ExecutorError, cluster_address, make_executor

        if d.executor_kind == "ray" and cluster_address(d.ray_address)[0] is None:
            d.log(f"starting a local Ray instance ({d.num_cpus or os.cpu_count()} CPUs) ...")
        t0 = time.perf_counter()
        try:
            executor = make_executor(d.executor_kind, device=d.space.device, workers=d.workers,
                                     threads_per_worker=d.space.execution.threads_per_worker,
                                     address=d.ray_address, num_cpus=d.num_cpus, space=d.space.to_dict())
        except ExecutorError as e:  # threads_per_worker beyond every node, an unreachable cluster, no ray
            raise UsageError(str(e) if e.standalone else f"{d.space.source}: {e}") from None
        if executor.cluster:
            c = executor.cluster
            d.log(f"Ray {c['ray']} ready in {time.perf_counter() - t0:.1f} s: {c['address']}, "
                  f"authentication {c['auth']}")
        return executor

"""The search driver: ``python -m autotune.search --space FILE [options]``.

Finds, per sequence-length bucket, the sparse patterns and kernel launch parameters that are
fastest and leanest while keeping accuracy; every candidate passes a correctness gate against the
reference backend first, and every measurement is kept in the results database (default ``results/autotune.db``).

Options (each overrides the space file): ``--trials N`` (total budget, trials already finished in
the study count), ``--timeout SECONDS`` (no new trial starts after it; a trial still running
``autotune.trial.CUT_GRACE_S`` later is cut: interrupted, retried on a resume),
``--warm-start STUDY`` / ``--warm-start-storage URL`` (`autotune.warmstart`),
``--study NAME`` (default: the space's name), ``--storage URL`` (default ``$AUTOTUNE_STORAGE``, else
``sqlite:///results/autotune.db``; checked by `results.storage`), ``--executor ray|local``, ``--ray-address ADDRESS``, ``--device
cpu|cuda``, ``--workers N``, ``--no-progress``, ``--allow-repeats`` (measure a parameter set the
study already measured or is running). Exit status: 0 done, 2 invalid input (nothing
written), 1 other errors.

What Optuna's own tools show
----------------------------
Each complete trial carries its objective values (aggregated over all cells: the sampler's
view), and, where Optuna's tools read them, per-bucket results (`bucket_view`): flat user
attributes, one per bucket and metric (`autotune.trial.bucket_attrs`: ``L64.speedup``,
``L64.sparsity``, ``L64.feasible``, ``L64.violated``, ...), ``feasible_buckets``, ``constraint_bucket``, ``constraints`` and
``constraint_names``; the system attribute ``constraints`` holds the violations at the trial's
least violating bucket, for every target but speedup (judged on confirmed figures only, as the
verdict does; speedup is an objective). So a trial is feasible for Optuna's samplers,
``study.best_trials``, ``optuna best-trials`` and ``plot_pareto_front`` exactly when it meets every
other target at every workload of at least one bucket: when it is a candidate the verdict
confirms and may choose there. ``best_trials`` is the Pareto front of those over the aggregate
objectives: every trial the export chooses is feasible, but one chosen for a single length can be
dominated on the aggregates by a trial better elsewhere; the study's user attributes
``verdict.L<bucket>`` (written at the end of each run) name the choice per bucket. Parameters are
suggested define-by-run (`autotune.trial.suggest_params`): a trial carries only the parameters
of its pattern family. Optuna's objective names (``set_metric_names``) call ``accuracy`` by its
metric (e.g. ``contact_recall_long``). The space is stored once, in ``at_runs.space``; the study's user attribute
``space_run_id`` names the run that holds it. The study's system attribute ``autotune:uid`` ties
our rows to it (`results.db.LiveStudy`).

End of a run
------------
The progress bar's best-so-far per bucket is the leader by the one rule of `results.verdict`
(marked ``?``: unconfirmed). When the run ends the leaders of every bucket are re-measured together
with SDPA (`autotune.confirm.confirm`, in the driver process, after the workers have stopped) and
the run prints one verdict line per bucket - the same choice ``python -m autotune.export`` writes and
``python -m autotune.report`` shows - and the export, accuracy and report commands for the study. A
shape whose SDPA baseline spreads more than 2x across trials is warned about as it happens. One
Ctrl-C stops the search (running trials are marked interrupted and retried on resume).

Why plain Optuna ask/tell over Ray actors, not ``study.optimize`` and not Ray Tune
-------------------------------------------------------------------------------
The driver is the only process that talks to the database: it asks Optuna for a trial, sends the
parameters to a Ray actor, and when the result comes back writes it (our measurements, then
``study.tell``) in one place. Workers only return results. This keeps SQLite usable - with
concurrent writers SQLite fails with "database is locked", which is what ``study.optimize`` in
many worker processes sharing one storage runs into - and keeps one trial's rows in one
transaction. ``study.optimize`` would also run the objective in the driver's threads, with no
isolation from a candidate that crashes its process. Optuna's trial heartbeat serves an ask/tell
driver too: the storage is opened with ``heartbeat_interval`` and ``grace_period``, the driver calls
``storage.record_heartbeat(trial_id)`` for each of its running trials and
``optuna.storages.fail_stale_trials(study)`` itself (see "Resuming"). Ray Tune would bring its own
trial scheduler, its own result storage and checkpoint directories next to ours, and its own
notion of trial state, so the database would no longer be the single record of a study. Ray is used
for what it is good at: long-lived actors (one per GPU keeps the CUDA context, Triton's compile
cache and the per-shape baselines warm), placement by resources, detection of dead processes.

Resuming
--------
Running the same command with the same ``--study`` resumes. At start the driver looks at every
trial Optuna holds as RUNNING. Optuna's heartbeat (every ``HEARTBEAT_SECONDS`` for each running
trial, by its driver) decides for trials whose driver may live: ``fail_stale_trials`` - at start and
every ``GRACE_SECONDS / 2`` while the driver runs - fails those without a beat for
``GRACE_SECONDS``, and its callback marks them "interrupted" in ``at_trials`` and enqueues their
parameters again (``retry_of`` records which trial it re-runs). Our own code does only what Optuna
cannot: a trial whose driver is known gone at once (its run ended, or it ran on this host and its
process no longer exists) is settled without waiting out the grace period, and a trial whose
results reached our tables is completed from them (``tell`` replayed, nothing is measured twice);
any other one is marked FAIL "interrupted" and enqueued again, so no trial is lost. Trials waiting in Optuna's queue are asked first. The budget counts every
finished trial except the interrupted ones (their retry counts). Runs whose driver is gone are
marked ended (status "died", ``end_reason``). The sampler continues from the study: on a study
with trials its seed is derived from (seed, trials so far, run id) (`sampler_seed`), and a
proposal whose parameters are already measured or running is pruned unmeasured (user attribute
``not_run``) and asked again, unless ``--allow-repeats``; so is a static pattern that computes what a
measured or running trial computes, the same layouts at every bucket and accuracy chain length with
the same launch config (`autotune.same_work`; user attribute ``same_work_as``), which would only
measure timing noise again.

Several drivers
---------------
Drivers on other machines (each with its own Ray or local executor) may share one study in one
PostgreSQL database (SQLite for drivers on one machine). Each trial's budget slot is claimed in
the database in one locked transaction (`results.db.Database.claim_trial`): together they run
exactly ``--trials`` trials, never one parameter set (nor one static computation) twice, and each
prints the study's true total.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from typing import Any, Optional

from patterns.errors import InputError, exit_status

from patterns.names import check_argv, check_study_name
from search_spaces.space import SearchSpace, check_overrides, load_space

from .driver.end_lines import (deployed_file_lines, end_of_run, overhead_text, record_verdict, run_stats,  # noqa: F401
                               run_stats_text, storage_option, study_commands, tuned_path)
from .driver.loop import MAX_DUPLICATE_ASKS, Loop  # noqa: F401
from .driver.optuna_view import bucket_view, make_sampler, optuna_constraint_names, sampler_seed  # noqa: F401
from .driver.recorder import Recorder
from .driver.recovery import GRACE_SECONDS, HEARTBEAT_SECONDS, INTERRUPTED, LEASE_SECONDS, Recovery, driver_alive  # noqa: F401
from .driver.startup import Startup, UsageError, bar_safe_stderr

# The names above stay importable from here; the constants are read where they are defined
# (`autotune.driver.recovery`, `autotune.driver.loop`): change them there.


def flag_number(text: str) -> Any:
    """A number on the command line read as the space file reads one (YAML 1.2 core, decimal): an
    integer, a float (``1e20``, ``nan``, ``inf`` included), else the text itself; `check_overrides`
    then applies the file's rule, so ``--trials 1e20`` and ``budget: {trials: 1e20}`` give the same
    one-line refusal instead of argparse's usage text."""
    t = text.strip()
    if re.fullmatch(r"[-+]?[0-9]{1,100}", t):
        return int(t)
    if re.fullmatch(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.?(?:inf|infinity)|\.?nan", t,
                    re.IGNORECASE):
        return float(t.replace(".inf", "inf").replace(".nan", "nan").replace(".INF", "inf").replace(".NAN", "nan"))
    return text


def build_parser() -> argparse.ArgumentParser:
    from results.storage import STORAGE_HELP

    p = argparse.ArgumentParser(prog="python -m autotune.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", required=True, help="search-space YAML file")
    p.add_argument("--trials", type=flag_number, help="total trial budget (finished trials of the study count)")
    p.add_argument("--timeout", type=flag_number, help="seconds after which no new trial starts")
    p.add_argument("--study", help="study name (default: the space's name)")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--executor", choices=("ray", "local"), default="ray")
    p.add_argument("--ray-address", help="join this Ray cluster (HOST:PORT, ray://HOST:PORT, auto; default $RAY_ADDRESS) "
                   "instead of starting a local instance (local)")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--workers", type=flag_number, help="CPU spaces: number of worker actors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-repeats", action="store_true",
                   help="measure a parameter set again even if the study already measured it")
    p.add_argument("--warm-start", metavar="STUDY",
                   help="enqueue this earlier study's confirmed leaders as the first trials (autotune.warmstart)")
    p.add_argument("--warm-start-storage", metavar="URL",
                   help="results database of the --warm-start study (default: --storage)")
    return p


# ------------------------------------------------------------------------------------------------


class Search:
    """One driver run over ``space`` (see module docstring). Its parts: `Startup` (the study, the
    run's row, the workers), `Recovery` (what stopped drivers left, heartbeats), `Loop` (launch
    and record until the budget or the timeout) and `Recorder` (our rows, Optuna's tell, the
    best-so-far); this class holds their shared state and ends the run whatever happens."""

    def __init__(self, space: SearchSpace, *, study_name: str, storage: str, executor: str = "ray",
                 ray_address: Optional[str] = None, workers: Optional[int] = None, progress: bool = True,
                 num_cpus: Optional[int] = None, log=None, allow_repeats: bool = False,
                 warm_start: Optional[tuple[str, str]] = None) -> None:
        self.allow_repeats = allow_repeats
        self.warm_start = warm_start  # (earlier study, its storage URL): `autotune.warmstart`
        self.deadline_epoch: Optional[float] = None
        self.space = space
        self.study_name = study_name
        self.storage = storage
        self.executor_kind = executor
        self.ray_address = ray_address
        self.workers = workers if workers is not None else space.execution.workers
        self.progress = progress
        self.num_cpus = num_cpus
        from results.storage import mask_secrets, mask_url

        from sqlalchemy.engine import make_url

        pw = make_url(storage).password
        self.secrets: tuple[str, ...] = (str(pw),) if pw else ()
        self.masked_storage = mask_url(storage)
        raw_log = log or (lambda msg: print(f"autotune: {msg}", file=sys.stderr))
        self.log = lambda msg: raw_log(mask_secrets(str(msg), self.secrets))  # no password in any log line
        self.stats = {"completed": 0, "failed": 0, "recovered": 0, "retried": 0, "wall_s": 0.0, "measure_s": 0.0,
                      "trial_s": 0.0, "startup_s": 0.0, "timed_s": 0.0, "windows_s": 0.0,
                      "duplicates_skipped": 0, "same_work_skipped": 0, "compile_s": 0.0}
        self._stop_requested = False
        from .same_work import WorkKeys

        self.work_keys = WorkKeys(space)  # static patterns' work keys (autotune.same_work)
        self.startup, self.recovery = Startup(self), Recovery(self)
        self.loop, self.recorder = Loop(self), Recorder(self)

    def finished_count(self) -> int:
        """Trials of the study finished for good, counted in the database (all drivers)."""
        return self.db.count_finished(self.study_name)

    def run(self) -> dict[str, Any]:
        """One driver run (module docstring): open the study and settle what earlier drivers left
        (`_begin`), start the workers (`Startup.start`), then launch and record trials until the
        budget or the timeout (`Loop.run`); the run is ended in the database whatever happens (`_end`)."""
        t_start = time.perf_counter()
        self.trials: dict[int, Any] = {}
        self._executor = self._bar = None
        self.db = self.run_id = None
        self._stop_requested = False
        handlers = self._install_signal_handlers()
        status = "failed"
        try:
            self.startup.join_cluster()  # before anything is written: a failed join leaves no study, no run
            done0, budget, deadline = self._begin()
            if done0 >= budget:
                self.log(f"study {self.study_name!r} already has {done0} finished trials (budget {budget}); nothing to do "
                         f"(raise --trials above {done0} to add trials)")
                status = "finished"
                return self._summary(done0, t_start)
            self.startup.start(t_start, budget, done0)
            with bar_safe_stderr(self._bar):  # log lines, warnings and workers' output above the bar
                done = self.loop.run(deadline, done0)
            status = "finished"
            return self._summary(done, t_start)
        except KeyboardInterrupt:
            status = "interrupted"
            self.recovery.interrupt_running()
            self.log("interrupted: running trials were marked interrupted and will be retried on resume"
                     if self.run_id is not None else "interrupted before anything was written")
            raise
        finally:
            self._end(status, handlers)

    def _on_int(self, signum, frame) -> None:
        """SIGINT: one Ctrl-C always stops the search: the loop checks the flag every second, and
        the interrupt is raised at once unless the main thread is inside a finaliser (__del__),
        where Python would swallow it ("Exception ignored in ...") and the search go on."""
        if not self._stop_requested:
            self._stop_requested = True
            self.log("interrupt received: stopping")
        f = frame
        while f is not None:
            if f.f_code.co_name == "__del__":
                return
            f = f.f_back
        raise KeyboardInterrupt

    def _install_signal_handlers(self) -> tuple[Any, Any]:
        """SIGTERM and SIGINT stop the search (as KeyboardInterrupt); returns the old handlers."""
        old_term = signal.getsignal(signal.SIGTERM)
        old_int = signal.getsignal(signal.SIGINT)

        def on_term(signum, frame):
            raise KeyboardInterrupt

        try:
            signal.signal(signal.SIGTERM, on_term)
            signal.signal(signal.SIGINT, self._on_int)
        except ValueError:  # not the main thread
            pass
        return old_term, old_int

    def _begin(self) -> tuple[int, int, Optional[float]]:
        """Open the study, settle the trials earlier drivers left, load the cells of its complete
        trials. Returns (trials finished so far, budget, monotonic deadline or None)."""
        self.startup.open_study()
        self.recovery.recover()
        if self.warm_start is not None:  # the earlier study's leaders first (a new study only)
            from .warmstart import warm_start

            warm_start(self.study, self.space, self.warm_start[0], self.warm_start[1], log=self.log)
        budget = self.space.budget.trials
        timeout = self.space.budget.timeout
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        # the trials see it as epoch seconds (`autotune.trial.DeadlineReached`: cut at the timeout)
        self.deadline_epoch = None if timeout is None else time.time() + float(timeout)
        done0 = self.finished_count()
        self.recorder.load_cells()
        if done0 or self.stats["retried"]:
            from optuna.trial import TrialState

            retry = sum(1 for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                        if "retry_of" in t.user_attrs)
            self.log(f"resuming study {self.study_name!r}: {done0} finished trial(s) kept, "
                     f"{retry} interrupted trial(s) retried")
        return done0, budget, deadline

    def _end(self, status: str, handlers: tuple[Any, Any]) -> None:
        """Restore the signal handlers, stop the workers, end the run with ``status``, close the
        database and Optuna's storage."""
        try:
            signal.signal(signal.SIGTERM, handlers[0])
            signal.signal(signal.SIGINT, handlers[1])
        except ValueError:
            pass
        if self._bar is not None:
            self._bar.close()
        if self._executor is not None:
            self._executor.shutdown()
        try:
            if getattr(self, "run_id", None) is not None:
                self.db.end_run(self.run_id, status)
        finally:
            if getattr(self, "db", None) is not None:
                self.db.close()
            try:
                self.ostorage.remove_session()
                self.ostorage.engine.dispose()
            except Exception:  # noqa: BLE001
                pass

    def _safe_url(self) -> str:
        return self.masked_storage

    def _summary(self, done: int, t_start: float) -> dict[str, Any]:
        self.stats["wall_s"] = time.perf_counter() - t_start
        # true totals: the study's finished trials in the database, whichever driver measured them
        from kernels.compile_cache import study_compile_stats

        return dict(self.stats, finished=self.finished_count(), running_elsewhere=self.db.count_running(self.study_name),
                    study=self.study_name, run_id=self.run_id, best_speedup=self.recorder.best,
                    best_by_bucket=dict(self.recorder.best_by_bucket), best_text=self.recorder.best_text(),
                    compiles=study_compile_stats(self.recorder.compile_records), workers_used=getattr(self._executor, "workers", 1),
                    sdpa_spread={f"{w}@{L}": round(max(v) / min(v), 3) for (w, L), v in self.recorder.sdpa_seen.items()
                                 if len(v) > 1 and min(v) > 0})


def missing_search_packages(args) -> list[str]:
    """Packages of the ``search`` extra this run needs and cannot import (the core install has only
    torch, numpy and pyyaml)."""
    import importlib.util

    need = ["optuna", "sqlalchemy"] + (["ray"] if args.executor == "ray" else []) + ([] if args.no_progress else ["tqdm"])
    return [name for name in need if importlib.util.find_spec(name) is None]


def main(argv: Optional[list[str]] = None) -> int:
    from .executor import ExecutorError, cluster_address
    from results.storage import StorageError, database_error_line, mask_secrets, resolve_storage

    args = build_parser().parse_args(argv)
    missing = missing_search_packages(args)
    if missing:  # a core (deployment) install: one line, not an ImportError traceback
        return exit_status(UsageError(f"the search needs the 'search' extra (missing: {', '.join(missing)}): "
                                      "pip install 'protein-sparse-autotune[search]'"), "autotune")
    # joining a Ray cluster (--ray-address, else $RAY_ADDRESS): its devices and CPUs are checked there
    joining = args.executor == "ray" and cluster_address(args.ray_address)[0] is not None
    try:
        check_argv(sys.argv[1:] if argv is None else argv)  # not UTF-8: nothing could store it
        # the command line's numbers under the file's own rules, before the file is read
        check_overrides(trials=args.trials, timeout=args.timeout, workers=args.workers)
        if args.study is not None:
            check_study_name(args.study, "--study")
        space = load_space(args.space).override(trials=args.trials, timeout=args.timeout, device=args.device)
        if space.device == "cpu" and space.backend == "triton":
            print("autotune: --device cpu: candidate backend triton -> cpu", file=sys.stderr)
            space.backend = "cpu"
        if space.device == "cuda" and not joining:
            import torch

            if not torch.cuda.is_available():  # a GPU-sized study would take hours on a CPU: name the CPU space
                raise UsageError(f"{args.space}: device: cuda, but this machine has no CUDA device; on a CPU search "
                                 f"the CPU-sized space: --space search_spaces/cpu.yaml")
        study = check_study_name(args.study if args.study is not None else space.name, "--study")
        threads = space.execution.threads_per_worker
        if not joining and threads > (os.cpu_count() or 1):  # a cluster's CPUs: checked when joining it
            raise UsageError(f"{args.space}: execution.threads_per_worker: {threads} is more than the "
                             f"{os.cpu_count()} CPUs of this machine")
        storage = resolve_storage(args.storage, "write").url
        warm = None
        if args.warm_start is not None:
            try:
                warm = (args.warm_start, resolve_storage(args.warm_start_storage, "read").url
                        if args.warm_start_storage else storage)
            except StorageError as e:  # its message names --storage: say which flag
                raise UsageError(str(e).replace("--storage", "--warm-start-storage", 1)) from None
            from .warmstart import read_leaders

            read_leaders(*warm)  # a missing study or database: one line, exit 2, nothing written
        elif args.warm_start_storage is not None:
            raise UsageError("--warm-start-storage needs --warm-start STUDY")
        if space.device == "cuda" and space.backend == "triton":  # before any Triton import in the workers
            from kernels.compile_cache import use_cache_dir

            use_cache_dir(storage)
    except InputError as e:  # SpaceError, StorageError, UsageError, ...
        return exit_status(e, "autotune")
    search = Search(space, study_name=study, storage=storage, executor=args.executor,
                    ray_address=args.ray_address, workers=args.workers, progress=not args.no_progress,
                    allow_repeats=args.allow_repeats, warm_start=warm)
    try:
        summary = search.run()
    except BaseException as e:  # noqa: BLE001 - UsageError, StorageError: 2; Ctrl-C: 130; Ray cluster gone, database: 1
        return exit_status(e, "autotune", mask=lambda text: mask_secrets(text, search.secrets),
                           failure=lambda e: str(e) if isinstance(e, ExecutorError) else database_error_line(e, storage))
    print(
        f"autotune: study {summary['study']!r}: {summary['completed']} completed, {summary['failed']} failed this run, "
        f"{summary['finished']} finished in total (all drivers"
        f"{'; %d still running in other drivers' % summary['running_elsewhere'] if summary.get('running_elsewhere') else ''}"
        f"{'; %d duplicate proposals skipped' % summary['duplicates_skipped'] if summary.get('duplicates_skipped') else ''}"
        f"{'; %d proposals computing what a measured trial computes skipped' % summary['same_work_skipped'] if summary.get('same_work_skipped') else ''}); "
        f"{summary['wall_s']:.1f} s"
        + (f"; stopped at the time limit ({space.budget.timeout:g} s): {summary['finished']} of "
           f"{space.budget.trials} trials" if summary.get("time_limit_stop") and summary["finished"] < space.budget.trials
           else "")
        + (f"; measurement overhead {overhead_text(summary)}" if summary["completed"] + summary["failed"] else ""),
        file=sys.stderr,
    )
    try:
        return end_of_run(search, args, summary)
    except KeyboardInterrupt as e:
        return exit_status(e, "autotune", message="interrupted during the confirmation; python -m autotune.export confirms again")



if __name__ == "__main__":
    sys.exit(main())

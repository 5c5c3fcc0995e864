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
``not_run``) and asked again, unless ``--allow-repeats``.

Several drivers
---------------
Drivers on other machines (each with its own Ray or local executor) may share one study in one
PostgreSQL database (SQLite for drivers on one machine). Each trial's budget slot is claimed in
the database in one locked transaction (`results.db.Database.claim_trial`): together they run
exactly ``--trials`` trials, never one parameter set twice, and each prints the study's true total.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import os
import re
import signal
import socket
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Optional

from patterns.errors import InputError, exit_status

from patterns.names import check_argv, check_study_name
from search_spaces.space import SearchSpace, SpaceError, check_overrides, load_space

if TYPE_CHECKING:
    from .trial import TrialResult

LEASE_SECONDS = 600.0  # a run on another host without a run heartbeat for this long: its driver is gone
MAX_DUPLICATE_ASKS = 200  # consecutive asks that only re-propose measured parameters: space exhausted
HEARTBEAT_SECONDS = 5  # Optuna's heartbeat_interval: the driver beats for each of its running trials
GRACE_SECONDS = 60  # Optuna's grace_period: a running trial without a beat for this long is stale
INTERRUPTED = "interrupted"


class UsageError(InputError):
    """Invalid input found before anything is written: exit status 2."""


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def driver_alive(run, now: dt.datetime) -> bool:
    """Whether the driver of ``run`` (an at_runs row) may still be working."""
    if run is None or run.ended_at is not None:
        return False
    if run.host == socket.gethostname():
        return run.pid != os.getpid() and _pid_alive(run.pid)
    return run.heartbeat_at is not None and (now - run.heartbeat_at).total_seconds() < LEASE_SECONDS


def sampler_seed(seed: Optional[int], n_trials: int, run_id: Optional[int]) -> Optional[int]:
    """The seed of one driver's sampler: the space's seed on a fresh study; on a study that already
    has trials (a resume, or another driver's study), a seed derived from (seed, number of trials,
    run id), so the sampler continues from the study instead of replaying the sequence it proposed
    at the first start (which re-proposed the parameters measured then)."""
    if seed is None or (n_trials == 0 and run_id is None):
        return seed
    return int(hashlib.sha256(f"{seed}:{n_trials}:{run_id}".encode()).hexdigest()[:8], 16)


def make_sampler(space: SearchSpace, seed: Optional[int] = None, *, use_space_seed: bool = True):
    import warnings

    import optuna

    cfg = space.sampler
    seed = cfg.seed if use_space_seed else seed

    def constraints_func(trial) -> list[float]:
        return list(trial.user_attrs.get("constraints", []))

    # Constraint values are written by the driver to the trial's system attribute "constraints"
    # (the list format that Optuna 4 and 5 both read). Optuna >= 5 samplers find them there by
    # themselves (and deprecate constraints_func); Optuna 4 samplers need constraints_func.
    new_api = hasattr(optuna.trial.Trial, "set_constraint")
    cons = constraints_func if (space.constraints and not new_api) else None
    if cfg.name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=seed, constraints_func=cons)
    if cfg.name == "tpe":
        with warnings.catch_warnings():  # group: the conditional (per-family) parameters, sampled jointly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(n_startup_trials=cfg.startup_trials, seed=seed,
                                              multivariate=True, group=True, constraints_func=cons)
    if cfg.name == "gp":  # Gaussian process, constrained log-EHVI (Optuna >= 4.2; needs torch)
        return optuna.samplers.GPSampler(n_startup_trials=cfg.startup_trials, seed=seed, constraints_func=cons)
    return optuna.samplers.RandomSampler(seed=seed)


def optuna_constraint_names(space: SearchSpace) -> list[str]:
    """The targets Optuna's constraint values stand for: every target but ``speedup``, which
    `results.verdict` judges on confirmed figures only (its step 1 admits a trial to a bucket's
    leaders on every other target); the speedup is an objective."""
    return [n for n in space.effective_targets().names() if n != "speedup"]


def bucket_view(space: SearchSpace, cells: list[Any]) -> tuple[list[float], dict[str, dict[str, Any]], Optional[int]]:
    """What Optuna records of one complete trial, from its (workload, bucket) cells (measurement
    dicts or at_measurements rows, each with its ``violations``: target -> violation, <= 0 met).

    Per bucket: the violation of each target is its worst over the bucket's workloads; the bucket
    is *feasible* when every target but speedup is met there - the trial is then a candidate of
    that bucket in `results.verdict` (step 1: the leaders, re-measured and judged on the speedup
    target there) - and ``meets_speedup`` says whether the search's own interval already clears
    the speedup target; its objectives are aggregated over the bucket's workloads as the trial's
    are over all cells (speedup, its interval's lower end and the memory ratios by geometric mean,
    sparsity by mean, accuracy by the worse value).

    Returns (constraints, buckets, constraint_bucket): the constraint values Optuna stores (in the
    order of `optuna_constraint_names`) are the violations at the trial's *least violating*
    bucket (smallest worst violation; ties to the shorter length), so a trial is feasible for
    Optuna - its samplers, ``study.best_trials``, ``optuna best-trials``, ``plot_pareto_front`` -
    exactly when it is a candidate of at least one bucket, and every trial the export chooses is
    feasible there; ``buckets`` maps str(L) to that bucket's objectives, violations and
    feasibility (the trial's user attribute ``buckets``)."""
    from results.aggregate import geomean

    def g(c: Any, k: str) -> Any:
        return c.get(k) if isinstance(c, dict) else getattr(c, k, None)

    all_names = space.effective_targets().names()
    names = optuna_constraint_names(space)
    by_bucket: dict[int, list[Any]] = {}
    for c in cells:
        by_bucket.setdefault(int(g(c, "bucket")), []).append(c)
    out: dict[str, dict[str, Any]] = {}
    best: Optional[tuple[float, int]] = None
    worse = min
    if space.accuracy_metric:
        from search_spaces.space import ACCURACY_METRIC_DIRECTIONS

        worse = min if ACCURACY_METRIC_DIRECTIONS[space.accuracy_metric] == "max" else max
    for L in sorted(by_bucket):
        cs = by_bucket[L]
        viol = {n: max(float((g(c, "violations") or {}).get(n, 0.0)) for c in cs) for n in all_names}
        worst = max((viol[n] for n in names), default=0.0)
        feasible = worst <= 0
        entry: dict[str, Any] = {"feasible": feasible, "meets_speedup": viol.get("speedup", 0.0) <= 0}
        for k in ("speedup", "speedup_lo", "memory_vs_sdpa", "memory_vs_naive"):
            entry[k] = geomean((g(c, k) for c in cs), f"{k} at L={L}", quiet=k == "speedup_lo").value
        entry["sparsity"] = sum(g(c, "sparsity") for c in cs) / len(cs)
        accs = [g(c, "accuracy_value") for c in cs if g(c, "accuracy_value") is not None]
        if space.accuracy_metric:
            entry[space.accuracy_metric] = worse(accs) if accs else None
        entry["workloads"] = sorted(str(g(c, "workload")) for c in cs)
        entry["violations"] = viol
        out[str(L)] = entry
        if best is None or worst < best[0]:
            best = (worst, L)
    if best is None:
        return [], out, None
    at = out[str(best[1])]["violations"]
    return [float(at[n]) for n in names], out, best[1]


def _seed(study: str, number: int) -> int:
    return int(hashlib.sha256(f"{study}:{number}".encode()).hexdigest()[:8], 16)


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


class Search:
    """One driver run over ``space`` (see module docstring)."""

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
                      "duplicates_skipped": 0, "compile_s": 0.0}
        self.compile_records: list[dict[str, Any]] = []  # every compile phase of this run's trials
        self.cells_by_trial: dict[int, list[dict[str, Any]]] = {}  # complete trials' cells (progress bar)
        self.sdpa_seen: dict[tuple, list[float]] = {}  # (workload, bucket) -> SDPA medians (noise warning)
        self.noisy: set[tuple] = set()
        self._stop_requested = False
        self.best: Optional[float] = None
        self.best_by_bucket: dict[int, float] = {}

    # -- setup -------------------------------------------------------------------------------
    def _open(self) -> None:
        import optuna

        from . import hardware
        from results.db import Database, create_optuna_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        from results import verdict  # noqa: F401  (at_confirmations is created / upgraded with our tables)

        self.db = Database(self.storage)  # a database from an older version gets the new columns
        engine_kwargs = {"connect_args": {"timeout": 60}} if self.storage.startswith("sqlite") else {}
        # Optuna's trial heartbeat: the driver beats for its running trials (record_heartbeat) and
        # fails the stale ones of any driver (fail_stale_trials), which calls _on_stale for each
        import warnings

        with warnings.catch_warnings():  # "experimental": the heartbeat arguments exist since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.ostorage = create_optuna_storage(self.storage, engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                                  grace_period=GRACE_SECONDS,
                                                  heartbeat_stale_trial_callback=self._on_stale)
        directions = self.space.directions()
        try:
            existing = optuna.load_study(study_name=self.study_name, storage=self.ostorage)
        except KeyError:
            existing = None
        if existing is not None:
            have = [d.name.lower() for d in existing.directions]
            if have != directions:
                raise UsageError(
                    f"study {self.study_name!r} exists with directions {have}, the space asks for {directions} "
                    f"(objectives {self.space.objectives}); use another --study"
                )
        self.study = optuna.create_study(study_name=self.study_name, storage=self.ostorage, directions=directions,
                                         sampler=make_sampler(self.space), load_if_exists=True)
        if existing is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from .trial import metric_names

                self.study.set_metric_names(metric_names(self.space))  # accuracy: named for its metric
        # our rows of a study deleted from Optuna's storage (optuna delete-study), or of an earlier
        # study of the same name, are removed before anything of this one is written
        from results.db import ensure_study_uid

        self.study_uid = ensure_study_uid(self.db.engine, self.study._study_id)
        gone = self.db.drop_orphans(self.study_name)
        if gone:
            self.log(f"removed {gone.text()} (left by a deleted study; never cited)")
        self.hardware = hardware.describe(self.space.device)
        self.run_id = self.db.start_run(
            study_name=self.study_name, host=socket.gethostname(), pid=os.getpid(),
            command_line=hardware.command_line(secrets=self.secrets), device=self.space.device, hardware=self.hardware,
            versions=hardware.package_versions(), git_revision=hardware.git_revision(),
            space_path=self.space.source, space=self.space.to_dict(), executor=self.executor_kind,
            optuna_study_id=self.study._study_id, optuna_study_uid=self.study_uid,
        )
        if existing is None:  # the space is stored once, in at_runs; the study names the run that holds it
            self.study.set_user_attr("space_run_id", self.run_id)
        n_trials = len(self.study.get_trials(deepcopy=False))
        if n_trials:  # continue from the study: never replay the sequence of an earlier start
            self.study.sampler = make_sampler(self.space, sampler_seed(self.space.sampler.seed, n_trials, self.run_id),
                                              use_space_seed=False)

    # -- resume ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Settle RUNNING trials left by dead drivers (see module docstring, "Resuming").

        Optuna's heartbeat decides for trials whose driver may still live: `fail_stale_trials`
        (called here and every few heartbeats by the loop) fails those without a beat for
        ``GRACE_SECONDS``, and `_on_stale` enqueues their retry. Our code remains for what
        Optuna cannot know: a trial whose results reached our tables before its driver died is
        completed from them (nothing measured twice); a trial of a driver known dead (its run
        ended, or a process of this host that no longer exists: a SIGKILL) is settled at once,
        without waiting out the grace period; a trial asked but never claimed (no heartbeat, no
        row) is settled by a driver that starts with no live peer."""
        from optuna.trial import TrialState

        from results.db import Run, utcnow

        now = utcnow()
        for rid in self.db.settle_dead_runs(lambda run: driver_alive(run, now), self.run_id):
            self.log(f"run {rid} had no live driver left: marked ended (status died)")
        from sqlalchemy import select

        with self.db.Session() as s:  # other drivers of this study still alive (dead ones were just ended)
            peers = s.scalars(select(Run.id).where(Run.study_name == self.study_name, Run.ended_at.is_(None),
                                                   Run.id != self.run_id)).all()
        for ft in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            row = self.db.trial(self.study_name, ft.number)
            if row is None and peers:
                # asked by a live driver that has not claimed it yet (ask, then claim): not ours to
                # settle; a trial whose driver died in between is settled by a start with no live peer
                continue
            if row is not None:
                with self.db.Session() as s:
                    run = s.get(Run, row.run_id)
                    alive = driver_alive(run, now)
                # results stored and not told for longer than the grace period: the tell was lost
                told_late = (row.state != "RUNNING" and row.finished_at is not None
                             and (now - row.finished_at).total_seconds() > GRACE_SECONDS)
                if alive and not told_late:
                    continue  # a live driver's trial: Optuna's heartbeat watches it (fail_stale_trials below)
            if row is not None and row.state == "COMPLETE" and row.objectives is not None:
                cells = self._cells_of(row.id)
                cons, buckets, at = bucket_view(self.space, cells) if cells else (row.constraints or [], None, None)
                self._tell(ft.number, row.objectives, cons or row.constraints or [], buckets, at)
                self.stats["recovered"] += 1
                self.log(f"trial {ft.number}: results were stored before the driver stopped; completed from them")
                continue
            if row is not None and row.state == "FAIL":
                self.study.tell(ft.number, state=TrialState.FAIL)
                continue
            if row is not None:
                self.db.mark_failed(self.study_name, ft.number, INTERRUPTED)
            self.ostorage.set_trial_user_attr(ft._trial_id, "fail_reason", INTERRUPTED)
            self.study.tell(ft.number, state=TrialState.FAIL)
            if ft.params:
                self.study.enqueue_trial(dict(ft.params), user_attrs={"retry_of": ft.number}, skip_if_exists=False)
            self.stats["retried"] += 1
            self.log(f"trial {ft.number} was interrupted (its driver is gone): marked failed, enqueued again")
        self.fail_stale()
        if not peers:  # a retry whose queue entry was lost (a driver died between tell and enqueue)
            queued = {ft.user_attrs.get("retry_of") for ft in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
            for row in self.db.pending_retries(self.study_name):
                if row.number not in queued and row.params:
                    self.study.enqueue_trial(dict(row.params), user_attrs={"retry_of": row.number}, skip_if_exists=False)
                    self.log(f"trial {row.number} ({row.reason}) had no retry queued: enqueued again")

    def fail_stale(self) -> None:
        """``optuna.storages.fail_stale_trials``: fail the running trials of this study (any
        driver's) whose heartbeat is older than ``GRACE_SECONDS``; `_on_stale` then settles each."""
        import warnings

        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def _on_stale(self, study, trial) -> None:
        """Optuna's ``heartbeat_stale_trial_callback``: ``trial`` (failed by `fail_stale_trials`:
        its driver stopped beating) is marked interrupted in our table and enqueued again, with
        ``retry_of``; its budget slot stays reserved for the retry."""
        # (Optuna has already finished the trial: its attributes can no longer be set; the reason
        # is in at_trials)
        row = self.db.trial(self.study_name, trial.number)
        if row is not None and row.state == "FAIL":  # its failure was recorded; only the tell was lost
            return
        if row is not None:  # running, or complete with the tell lost: Optuna holds it failed now
            self.db.mark_failed(self.study_name, trial.number, INTERRUPTED)
        if trial.params:
            self.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        self.stats["retried"] += 1
        self.log(f"trial {trial.number} was interrupted (no heartbeat from its driver for {GRACE_SECONDS} s): "
                 "marked failed, enqueued again")

    def _tell(self, number: int, values: list[float], constraints: list[float],
              buckets: Optional[dict[str, Any]] = None, constraint_bucket: Optional[int] = None) -> None:
        """Complete trial ``number`` in Optuna with its values; its constraint values go where
        Optuna's samplers, ``best_trials`` and plots read them (system attribute ``constraints``)
        and, with their names and the per-bucket view (`bucket_view`), into user attributes that
        ``optuna trials``, the dashboard and ``load_study`` show."""
        tid = self.ostorage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        if constraints:
            self.ostorage.set_trial_user_attr(tid, "constraints", list(constraints))
            self.ostorage.set_trial_user_attr(tid, "constraint_names", optuna_constraint_names(self.space))
            self.ostorage.set_trial_system_attr(tid, "constraints", list(constraints))
        if buckets is not None:
            from .trial import bucket_attrs

            for key, value in bucket_attrs(buckets).items():  # flat: one per bucket and metric
                self.ostorage.set_trial_user_attr(tid, key, value)
            self.ostorage.set_trial_user_attr(tid, "feasible_buckets",
                                              [int(L) for L, b in buckets.items() if b["feasible"]])
            self.ostorage.set_trial_user_attr(tid, "constraint_bucket", constraint_bucket)
        self.study.tell(number, values)

    def _cells_of(self, trial_row_id: int) -> list[Any]:
        from sqlalchemy import select

        from results.db import Measurement

        with self.db.Session() as s:
            return list(s.scalars(select(Measurement).where(Measurement.trial_id == trial_row_id)).all())

    def finished_count(self) -> int:
        """Trials of the study finished for good, counted in the database (all drivers)."""
        return self.db.count_finished(self.study_name)

    # -- one trial ---------------------------------------------------------------------------
    def _launch(self, executor) -> str:
        """Ask Optuna for a trial, claim its budget slot in the database and submit it. Returns
        "launched", "rejected" (invalid parameters: recorded failed), "budget" (the study's budget
        is taken, by this or another driver) or "duplicate" (the parameters are already measured or
        running; the asked trial is pruned unmeasured, its user attribute ``not_run`` says why)."""
        from optuna.trial import TrialState

        from kernels import KernelConfig
        from patterns import pattern_from_dict

        from results.db import utcnow
        from .trial import TrialRequest, suggest_params

        import warnings

        with warnings.catch_warnings():  # Optuna assumes study.optimize beats; this driver beats itself
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            trial = self.study.ask()
            params = suggest_params(trial, self.space)  # define-by-run: only the parameters in effect
        pattern, kernel = self.space.split_params(params)
        retry_of = trial.user_attrs.get("retry_of")
        invalid = None
        try:  # a sampled combination the pattern / kernel rejects is a failed trial, not a crash
            pattern = pattern_from_dict(pattern).to_dict()  # static or guided
            kernel = KernelConfig.from_dict(kernel).for_block(pattern["block_size"]).to_dict() if kernel is not None else None
        except (TypeError, ValueError) as e:
            invalid = f"invalid parameters: {e}"
        now = utcnow()
        status, other = self.db.claim_trial(dict(
            run_id=self.run_id, study_name=self.study_name, number=trial.number, optuna_trial_id=trial._trial_id,
            optuna_study_id=self.study._study_id, optuna_study_uid=self.study_uid,
            params=params, pattern=pattern, kernel=kernel, state="FAIL" if invalid else "RUNNING", reason=invalid,
            retry_of=retry_of, objective_names=list(self.space.objectives),
            constraint_names=optuna_constraint_names(self.space),
            started_at=now, finished_at=now if invalid else None,
        ), self.space.budget.trials, allow_repeats=self.allow_repeats)
        if status != "ok":
            why = "budget reached" if status == "budget" else f"duplicate of trial {other}"
            trial.set_user_attr("not_run", why)
            self.study.tell(trial, state=TrialState.PRUNED)
            if status == "duplicate":
                self.stats["duplicates_skipped"] += 1
                if retry_of is not None:
                    self.log(f"retry of trial {retry_of} skipped: its parameters were measured by trial {other}")
            return status
        if invalid:
            trial.set_user_attr("fail_reason", invalid)
            self.study.tell(trial, state=TrialState.FAIL)
            self.stats["failed"] += 1
            return "rejected"
        self.ostorage.record_heartbeat(trial._trial_id)  # from now on Optuna watches it (fail_stale_trials)
        req = TrialRequest(study=self.study_name, number=trial.number, params=params, pattern=pattern,
                           kernel=kernel, space=self.space.to_dict(), seed=_seed(self.study_name, trial.number),
                           deadline=self.deadline_epoch)
        self.trials[trial.number] = trial
        executor.submit(req.to_dict())
        return "launched"

    def _record(self, req: dict[str, Any], res: "TrialResult") -> bool:
        """Write one returned trial; False when it is to be run again (not finished)."""
        from optuna.trial import TrialState

        number = req["number"]
        trial = self.trials.pop(number)
        if self.ostorage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            # failed as stale meanwhile (this driver stopped beating for the grace period, e.g. a
            # database locked for that long): its retry is queued and measures it again
            self.log(f"trial {number}: dropped its result; the trial was failed as stale and is retried")
            return False
        self._account_timing(res)
        if res.retry:  # its worker's node was lost: failed with the reason, run again
            self._record_retry(trial, res)
            return False
        if res.ok:
            self._summarize(res)
        if res.ok:
            self._record_complete(trial, res)
        else:
            self._record_failed(trial, res)
        return True

    def _account_timing(self, res: "TrialResult") -> None:
        """Add a returned trial's stage times to the run's statistics (the overhead line)."""
        t = res.timing
        if t is None:
            return
        self.stats["trial_s"] += t.total_s
        self.stats["compile_s"] += getattr(t, "compile_s", 0.0)
        self.compile_records.extend(res.compiles or [])
        self.stats["measure_s"] += t.gate_s + t.candidate_s + t.baseline_s + t.accuracy_s
        self.stats["timed_s"] += t.timed_s
        self.stats["windows_s"] += t.candidate_s + t.baseline_s

    def _summarize(self, res: "TrialResult") -> None:
        """Objectives of a successful trial and its cells' judgement; a result that cannot be
        summarised (non-finite objectives) becomes a failed trial."""
        from .trial import summarize

        try:
            objs, _ = summarize(self.space, res)
            if any(not math.isfinite(v) for v in objs):
                raise ValueError(f"non-finite objective values {objs}")
            res.judge(self.space)
        except Exception as e:  # noqa: BLE001
            res.ok, res.reason = False, f"could not summarize: {type(e).__name__}: {e}"
            return
        res.objectives = objs

    def _record_complete(self, trial, res: "TrialResult") -> None:
        """Store a complete trial, tell Optuna, update the best-so-far."""
        # Optuna's constraint values: the least violating bucket's (bucket_view), so that a
        # trial the export can choose at some bucket is feasible for Optuna's tools too
        cons, buckets, cons_bucket = bucket_view(self.space, res.cells)
        res.conclude(res.objectives or [], cons)
        self.db.write_trial_result(self.study_name, res.number, res)
        self._tell(res.number, res.objectives, cons, buckets, cons_bucket)
        self.stats["completed"] += 1
        if "speedup" in self.space.objectives and res.feasible:
            sp = res.objectives[self.space.objectives.index("speedup")]
            self.best = sp if self.best is None else max(self.best, sp)
        self._update_best_by_bucket([c.to_dict() for c in res.cells], res.number)

    def _record_failed(self, trial, res: "TrialResult") -> None:
        from optuna.trial import TrialState

        res.reason = res.reason or "unknown failure"
        self.db.write_trial_result(self.study_name, res.number, res)
        trial.set_user_attr("fail_reason", res.reason)
        self.study.tell(trial, state=TrialState.FAIL)
        self.stats["failed"] += 1
        self.log(f"trial {res.number} failed: {res.reason.splitlines()[0][:300]}")

    def _record_retry(self, trial, res: "TrialResult") -> None:
        """A trial whose worker's node was lost: recorded failed with the reason, enqueued again."""
        from optuna.trial import TrialState

        res.reason = res.reason or "node lost"
        self.db.write_trial_result(self.study_name, res.number, res)
        trial.set_user_attr("fail_reason", res.reason)
        self.study.tell(trial, state=TrialState.FAIL)
        self.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": res.number}, skip_if_exists=False)
        self.stats["retried"] += 1
        self.log(f"trial {res.number} failed ({res.reason.splitlines()[0][:200]}): enqueued again")

    def _update_best_by_bucket(self, rows: list[dict[str, Any]], number: Optional[int] = None) -> None:
        """Feed a complete trial's cells to the progress bar's best-so-far (the leaders of
        `results.verdict`, the rule export and report use; unconfirmed until the end of the run)
        and to the baseline-noise watch."""
        if number is not None:
            self.cells_by_trial[number] = rows
        self._watch_noise(rows)
        from results.verdict import leaders

        targets = self.space.effective_targets()
        for bucket in sorted({r["bucket"] for r in rows}):
            lead = leaders(targets, self.cells_by_trial, bucket, 1)
            if lead and lead[0].speedup:
                self.best_by_bucket[bucket] = lead[0].speedup

    def _watch_noise(self, rows: list[dict[str, Any]]) -> None:
        """Warn once per shape when the SDPA baseline's median spreads more than 2x across trials."""
        for r in rows:
            if not r.get("sdpa_ms"):
                continue
            key = (r["workload"], r["bucket"])
            seen = self.sdpa_seen.setdefault(key, [])
            seen.append(r["sdpa_ms"])
            if key not in self.noisy and len(seen) > 1 and max(seen) > 2 * min(seen):
                self.noisy.add(key)
                self.log(f"warning: noisy machine: the SDPA baseline of {key[0]} at L={key[1]} ranged "
                         f"{min(seen):.3g}-{max(seen):.3g} ms over {len(seen)} trials (> 2x); single-trial speedups "
                         f"are unreliable here, the end-of-run confirmation re-measures the leaders")

    def _load_cells(self) -> None:
        """Cells of the study's complete trials from earlier runs (resume), for the best-so-far."""
        from results.verdict import load_study

        with self.db.Session() as s:
            data = load_study(s, self.study_name)
            s.expunge_all()
        for number, cells in data.cells_by_trial.items():
            self.cells_by_trial[number] = [{c: getattr(m, c) for c in m.__table__.columns.keys()} for m in cells]

    def best_text(self) -> str:
        if not self.best_by_bucket:
            return "-"
        return " ".join(f"L{b}:{v:.2f}x?" for b, v in sorted(self.best_by_bucket.items()))

    def _interrupt_running(self) -> None:
        """On Ctrl-C / SIGTERM: running trials are marked interrupted and enqueued again."""
        from optuna.trial import TrialState

        for number, trial in list(self.trials.items()):
            try:
                self.db.mark_failed(self.study_name, number, INTERRUPTED)
                trial.set_user_attr("fail_reason", INTERRUPTED)
                self.study.tell(trial, state=TrialState.FAIL)
                self.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": number}, skip_if_exists=False)
            except Exception as e:  # noqa: BLE001 - best effort on the way out
                self.log(f"could not settle trial {number}: {e}")
        self.trials.clear()

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """One driver run (module docstring): open the study and settle what earlier drivers left
        (`_begin`), start the workers (`_start_executor`), then launch and record trials until the
        budget or the timeout (`_loop`); the run is ended in the database whatever happens (`_end`)."""
        t_start = time.perf_counter()
        self.trials: dict[int, Any] = {}
        self._executor = self._bar = None
        self.db = self.run_id = None
        self._stop_requested = False
        handlers = self._install_signal_handlers()
        status = "failed"
        try:
            self._join_cluster()  # before anything is written: a failed join leaves no study, no run
            done0, budget, deadline = self._begin()
            if done0 >= budget:
                self.log(f"study {self.study_name!r} already has {done0} finished trials (budget {budget}); nothing to do "
                         f"(raise --trials above {done0} to add trials)")
                status = "finished"
                return self._summary(done0, t_start)
            self._start_executor(t_start, budget, done0)
            with bar_safe_stderr(self._bar):  # log lines, warnings and workers' output above the bar
                done = self._loop(deadline, done0)
            status = "finished"
            return self._summary(done, t_start)
        except KeyboardInterrupt:
            status = "interrupted"
            self._interrupt_running()
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
        self._open()
        self.recover()
        if self.warm_start is not None:  # the earlier study's leaders first (a new study only)
            from .warmstart import warm_start

            warm_start(self.study, self.space, self.warm_start[0], self.warm_start[1], log=self.log)
        budget = self.space.budget.trials
        timeout = self.space.budget.timeout
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        # the trials see it as epoch seconds (`autotune.trial.DeadlineReached`: cut at the timeout)
        self.deadline_epoch = None if timeout is None else time.time() + float(timeout)
        done0 = self.finished_count()
        self._load_cells()
        if done0 or self.stats["retried"]:
            from optuna.trial import TrialState

            retry = sum(1 for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                        if "retry_of" in t.user_attrs)
            self.log(f"resuming study {self.study_name!r}: {done0} finished trial(s) kept, "
                     f"{retry} interrupted trial(s) retried")
        return done0, budget, deadline

    def _start_executor(self, t_start: float, budget: int, done0: int) -> None:
        """Start the workers (an executor that cannot start is invalid input: `UsageError`) and
        the progress bar."""
        if self.space.device == "cpu":
            self._prepare_c_kernel()
        if self._executor is None:
            self._executor = self._make_executor()
        self.db.record_cluster(self.run_id, self._executor.cluster)
        self.stats["startup_s"] = time.perf_counter() - t_start
        try:  # again: starting Ray may have installed its own handler
            signal.signal(signal.SIGINT, self._on_int)
        except ValueError:
            pass
        executor = self._executor
        self.log(f"study {self.study_name!r}: {done0} trials finished, budget {budget}, "
                 f"{executor.workers} {executor.name} worker(s), storage {self._safe_url()}")
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=budget, initial=done0, desc=self.study_name, unit="trial", dynamic_ncols=True,
                             file=sys.stderr)

    def _prepare_c_kernel(self) -> None:
        """Load the fused C kernel in the driver before the workers start: on its first use on a
        machine it is compiled (seconds; `kernels.cpu_fused`, cached after), said so when it takes
        more than a second, instead of silence inside the first trials."""
        import threading

        from kernels import cpu_fused

        t0 = time.perf_counter()
        got: list[bool] = []
        load = threading.Thread(target=lambda: got.append(cpu_fused.available()), daemon=True)
        load.start()
        load.join(1.0)
        if load.is_alive():
            self.log("compiling the fused C kernel (first use on this machine; cached after) ...")
            load.join()
            ok = bool(got and got[0])
            self.log(f"fused C kernel {'compiled' if ok else 'not available'} in {time.perf_counter() - t0:.1f} s"
                     + ("" if ok else f": {cpu_fused.unavailable_reason()}"))

    def _join_cluster(self) -> None:
        """Join the Ray cluster named by ``--ray-address`` / ``$RAY_ADDRESS``, if any, before the
        study or the run is written: a join that fails leaves the database as it was."""
        from .executor import cluster_address

        target, where = cluster_address(self.ray_address)
        if self.executor_kind == "ray" and target is not None:
            try:
                import ray  # noqa: F401  (seconds: before the line below, which the probe follows at once)
            except ImportError:
                pass  # make_executor says so in one line
            self.log(f"joining the Ray cluster at {target} ({where}) ...")
            self._executor = self._make_executor()

    def _make_executor(self):
        """The executor (an executor that cannot start is invalid input: `UsageError`)."""
        from .executor import ExecutorError, cluster_address, make_executor

        if self.executor_kind == "ray" and cluster_address(self.ray_address)[0] is None:
            self.log(f"starting a local Ray instance ({self.num_cpus or os.cpu_count()} CPUs) ...")
        t0 = time.perf_counter()
        try:
            executor = make_executor(self.executor_kind, device=self.space.device, workers=self.workers,
                                     threads_per_worker=self.space.execution.threads_per_worker,
                                     address=self.ray_address, num_cpus=self.num_cpus)
        except ExecutorError as e:  # threads_per_worker beyond every node, an unreachable cluster, no ray
            raise UsageError(str(e) if e.standalone else f"{self.space.source}: {e}") from None
        if executor.cluster:
            c = executor.cluster
            self.log(f"Ray {c['ray']} ready in {time.perf_counter() - t0:.1f} s: {c['address']}, "
                     f"authentication {c['auth']}")
        return executor

    def _loop(self, deadline: Optional[float], done: int) -> int:
        """Launch trials while workers are free (`_fill`), record the returned ones, beat for the
        running ones (`_beat`), until nothing runs and nothing may start. Returns the finished count."""
        executor, bar = self._executor, self._bar
        state = {"budget_full": False, "dup_streak": 0, "last_hb": 0.0, "last_stale": time.monotonic()}
        while True:
            if self._stop_requested:
                raise KeyboardInterrupt
            done += self._fill(executor, deadline, state)
            if executor.running == 0:
                break
            for req, res in executor.poll(timeout=1.0):
                if self._record(req, res):
                    done += 1
                    if bar is not None:
                        bar.update(1)
                else:  # to be run again: its retry takes the slot it reserved
                    state["budget_full"] = False
            self._beat(state)
            if bar is not None:
                left = "-" if deadline is None else f"{max(0.0, deadline - time.monotonic()):.0f}s"
                bar.set_postfix(ok=self.stats["completed"], failed=self.stats["failed"], running=executor.running,
                                best=self.best_text(), left=left, refresh=False)
        return done

    def _fill(self, executor, deadline: Optional[float], state: dict[str, Any]) -> int:
        """Launch trials while a worker is free, the budget has room and time is left; returns the
        number of proposals rejected as invalid (finished at once)."""
        rejected = 0
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if out_of_time and not state["budget_full"]:
            self.stats["time_limit_stop"] = True  # the final summary says so (when the budget is not met)
        while not out_of_time and not state["budget_full"] and executor.running < executor.capacity:
            launch = "budget" if self._budget_taken() else self._launch(executor)
            if launch == "budget":
                state["budget_full"] = True
            elif launch == "duplicate":
                state["dup_streak"] += 1
                if state["dup_streak"] >= MAX_DUPLICATE_ASKS:
                    self.log(f"the sampler proposed {state['dup_streak']} already measured parameter sets in a row: "
                             "the space looks exhausted; stopping (--allow-repeats measures them again)")
                    state["budget_full"] = True
            else:
                state["dup_streak"] = 0
            if launch == "rejected":
                rejected += 1
                if self._bar is not None:
                    self._bar.update(1)
        return rejected

    def _budget_taken(self) -> bool:
        """The study's budget is taken (by this or another driver) and no retry waits in Optuna's
        queue: a trial asked now could only be stored pruned ("budget reached"), so none is asked
        and ``--trials N`` leaves N trials (drivers sharing a study may still race for a last slot)."""
        from optuna.trial import TrialState

        if self.db.budget_taken(self.study_name) < self.space.budget.trials:
            return False
        return not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    def _beat(self, state: dict[str, Any]) -> None:
        """Every ``HEARTBEAT_SECONDS``: the run's heartbeat and Optuna's for each running trial;
        every ``GRACE_SECONDS / 2``: fail the stale trials of drivers that stopped."""
        if time.monotonic() - state["last_hb"] <= HEARTBEAT_SECONDS:
            return
        self.db.heartbeat(self.run_id)
        for t in list(self.trials.values()):  # Optuna's trial heartbeat, one per running trial
            self.ostorage.record_heartbeat(t._trial_id)
        state["last_hb"] = time.monotonic()
        if time.monotonic() - state["last_stale"] > GRACE_SECONDS / 2:  # trials of drivers that stopped
            self.fail_stale()
            state["last_stale"] = time.monotonic()

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
                    study=self.study_name, run_id=self.run_id, best_speedup=self.best,
                    best_by_bucket=dict(self.best_by_bucket), best_text=self.best_text(),
                    compiles=study_compile_stats(self.compile_records), workers_used=getattr(self._executor, "workers", 1),
                    sdpa_spread={f"{w}@{L}": round(max(v) / min(v), 3) for (w, L), v in self.sdpa_seen.items()
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
        f"{'; %d duplicate proposals skipped' % summary['duplicates_skipped'] if summary.get('duplicates_skipped') else ''}); "
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


def overhead_text(summary: dict[str, Any]) -> str:
    """Share of the search's wall time spent outside the candidate and baseline timing."""
    wall = summary.get("wall_s") or 0.0
    if wall <= 0:
        return "-"
    timed = summary.get("timed_s", 0.0)
    windows = summary.get("windows_s", 0.0)
    return (f"{100 * (1 - timed / wall):.0f}% of wall time outside the timed calls "
            f"({100 * (1 - windows / wall):.0f}% outside the timing and memory windows)")


def _store_run_stats(search: "Search", st: dict[str, Any]) -> None:
    """`run_stats` onto the run's at_runs row (``stats``); a failure is logged, never raised."""
    from results.db import Database

    try:
        db = Database(search.storage)
        try:
            db.set_run_stats(search.run_id, st)
        finally:
            db.close()
    except Exception as e:  # noqa: BLE001 - the line above was printed anyway
        search.log(f"could not store the run's statistics: {e}")


def tuned_path(study: str) -> str:
    """Where the printed export command writes the study's tuned file (and the end of a run looks)."""
    return os.path.join("results", f"{study}.yaml")


def storage_option(storage: str, from_env: bool = False) -> tuple[str, Optional[str]]:
    """(the ``--storage`` option the printed commands carry, a note to print before them or None).
    The password never appears: a URL from ``$AUTOTUNE_STORAGE`` (``from_env``) or the default is
    left out (the commands read the same variable); a PostgreSQL URL with a password is printed
    without it (the driver takes it from ``PGPASSWORD`` or ``~/.pgpass``); any other URL with a
    password becomes ``--storage "$AUTOTUNE_STORAGE"``, which the note says to set."""
    import shlex

    from sqlalchemy.engine import URL, make_url

    from results.db import DEFAULT_STORAGE
    from results.storage import ENV_STORAGE

    if from_env or storage == DEFAULT_STORAGE:
        return "", None
    url = make_url(storage)
    if url.password is None:
        return f" --storage {shlex.quote(storage)}", None
    if url.get_backend_name() == "postgresql":
        bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database,
                          url.query).render_as_string(hide_password=False)
        return (f" --storage {shlex.quote(bare)}",
                f"the password is not printed: give it in PGPASSWORD or ~/.pgpass (or export {ENV_STORAGE}=<the full "
                f"URL> and leave --storage out)")
    return (f' --storage "${ENV_STORAGE}"',
            f"the password is not printed: export {ENV_STORAGE}=<the full --storage URL> before these commands")


def study_commands(study: str, storage: str, space: SearchSpace, from_env: bool = False) -> list[str]:
    """The export, accuracy and report commands for ``study`` (what the end of a run prints), with
    the storage as `storage_option` gives it: never a password. The accuracy command takes what
    it evaluates from the tuned file (the buckets, their chains and chain cap)."""
    import shlex

    st, _ = storage_option(storage, from_env)
    out = tuned_path(study)
    return [
        f"python -m autotune.export --study {shlex.quote(study)}{st} --out {shlex.quote(out)}",
        f"python -m autotune.accuracy --tuned {shlex.quote(out)}"
        + f" --json {shlex.quote(os.path.join('results', study + '_accuracy.json'))}",
        f"python -m autotune.report --study {shlex.quote(study)}{st} --out "
        f"{shlex.quote(os.path.join('results', study + '_REPORT.md'))}",
    ]


def record_verdict(storage: str, study: str, verdicts: list, log=None) -> None:
    """The verdict per bucket as the study's user attributes ``verdict.L<bucket>``: the words the
    search prints (`results.verdict.verdict_lines`, e.g. "deploy t#3: 1.92x over SDPA [1.80, 2.05]
    confirmed"), where Optuna's CLI, ``load_study`` and the dashboard show them next to
    ``best_trials``: the same choice the export writes."""
    import optuna

    from results.verdict import verdict_lines

    from .trial import ATTR_LIMIT

    doc = {f"verdict.L{v.bucket}": line.split(": ", 1)[-1][:ATTR_LIMIT]
           for v, line in zip(verdicts, verdict_lines(verdicts))}
    try:
        st = optuna.storages.RDBStorage(storage, skip_table_creation=True, skip_compatibility_check=True)
        try:
            s = optuna.load_study(study_name=study, storage=st)
            for key, line in doc.items():
                s.set_user_attr(key, line)
        finally:
            st.remove_session()
            st.engine.dispose()
    except Exception as e:  # noqa: BLE001 - the verdict is printed and exported anyway
        if log:
            log(f"could not record the verdict on the study: {e}")


def run_stats(summary: dict[str, Any], confirm_s: float) -> dict[str, Any]:
    """A run's rates and where its wall time went. Trials per minute: trials finished this run
    (complete or failed) over the search loop's wall time. Shares of the run's capacity (workers x
    the search's wall time, plus the confirmation's wall time, which runs alone in the driver):
    ``compiling`` (the trials' compile phases, `kernels.compile_cache`), ``measuring`` (gate,
    candidate and baseline timing, memory, accuracy), ``confirming`` (the end-of-run confirmation)
    and ``idle`` (the rest: start-up, sampling, database writes, workers waiting)."""
    wall = float(summary.get("wall_s") or 0.0)
    workers = int(summary.get("workers_used") or 1)
    n = int(summary.get("completed", 0)) + int(summary.get("failed", 0))
    capacity = workers * wall + confirm_s
    busy = {"compiling": float(summary.get("compile_s", 0.0)), "measuring": float(summary.get("measure_s", 0.0)),
            "confirming": confirm_s}
    busy["idle"] = max(0.0, capacity - sum(busy.values()))
    return {"trials": n, "search_wall_s": round(wall, 2), "confirm_s": round(confirm_s, 2), "workers": workers,
            "trials_per_min": round(60.0 * n / wall, 2) if wall > 0 else None,
            "share": {k: (round(v / capacity, 4) if capacity > 0 else None) for k, v in busy.items()},
            "compiles": summary.get("compiles"), "sdpa_spread": summary.get("sdpa_spread")}


def run_stats_text(st: dict[str, Any]) -> str:
    """One line of `run_stats`."""
    sh = st["share"]
    pct = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sh.items() if v is not None)
    c = st.get("compiles") or {}
    return (f"{st['trials']} trials, {st['trials_per_min'] or 0:.1f} trials/min; wall time: {pct}; "
            f"{c.get('compiled', 0)} launch configs compiled ({c.get('compiled_twice', 0)} twice, "
            f"{c.get('cache_loads', 0)} disk-cache loads)")


def end_of_run(search: "Search", args, summary: Optional[dict[str, Any]] = None) -> int:
    """Confirm the leaders of every bucket (`autotune.confirm.confirm`), print the verdict per
    bucket, the run's rates and phase shares (`run_stats`, also stored on its at_runs row) and the
    commands that export, check and report the study."""
    from .confirm import current_verdicts
    from results.verdict import verdict_lines

    log = search.log
    t0 = time.perf_counter()
    try:
        verdicts = current_verdicts(search.storage, search.study_name, log=log)
    except RuntimeError as e:
        log(f"confirmation not run: {e}")
        verdicts = []
    if summary is not None:
        st = run_stats(summary, time.perf_counter() - t0)
        log("run: " + run_stats_text(st))
        _store_run_stats(search, st)
    for line in verdict_lines(verdicts):
        log("verdict " + line)
    if not verdicts:
        log("verdict: no complete trial to decide on")
    else:
        record_verdict(search.storage, search.study_name, verdicts, log)
        deployed_file_lines(search, verdicts)
    from_env = getattr(args, "storage", None) is None and bool(os.environ.get("AUTOTUNE_STORAGE"))
    _, note = storage_option(search.storage, from_env)
    log("next:" + (f" ({note})" if note else ""))
    for c in study_commands(search.study_name, search.storage, search.space, from_env):  # no password printed
        print(f"  {c}", file=sys.stderr)
    return 0


def deployed_file_lines(search: "Search", verdicts: list) -> None:
    """Compare the verdicts with the tuned file on disk (the latest export's, else
    `tuned_path`; `results.export.file_status`) and say when it is out of date or missing."""
    from results.export import file_status, latest_out_path, load_live

    path = tuned_path(search.study_name)
    try:  # the latest export's file, else where the printed export command writes
        path = latest_out_path(search.study_name, search.storage) or path
        trials = load_live(search.study_name, search.storage).trials
        lines = file_status(path, verdicts, trials, search.study_name)
    except Exception as e:  # noqa: BLE001 - the verdict is printed anyway
        lines = [f"could not compare with the tuned file: {e}"]
    for line in lines:
        search.log(line)
    if not lines:
        search.log(f"{path} deploys exactly this verdict")


if __name__ == "__main__":
    sys.exit(main())

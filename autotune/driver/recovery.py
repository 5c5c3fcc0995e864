"""Recovery and heartbeats of the search driver (`autotune.search`, "Resuming"): Optuna's trial
heartbeat (the storage opened with ``heartbeat_interval`` and ``grace_period``, a beat for each
running trial, ``fail_stale_trials`` and its callback), the settling of trials whose driver is
known gone, and the interrupted trials of a stopped run, enqueued again."""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from typing import Any

from results.states import EndReason, TrialState as RowState  # ours, as stored (Optuna has its own TrialState)

from .optuna_view import bucket_view

LEASE_SECONDS = 600.0  # a run on another host without a run heartbeat for this long: its driver is gone
HEARTBEAT_SECONDS = 5  # Optuna's heartbeat_interval: the driver beats for each of its running trials
GRACE_SECONDS = 60  # Optuna's grace_period: a running trial without a beat for this long is stale
INTERRUPTED = EndReason.INTERRUPTED.text()  # the reason of a trial cut by an interruption


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



class Recovery:
    """Settles what stopped drivers left and keeps this driver's trials alive for Optuna: the
    heartbeat storage (`open_storage`), `recover` at start, `beat` from the loop, `on_stale` for
    each trial Optuna fails as stale, `interrupt_running` on Ctrl-C. Works on the driver's study,
    database and running trials (``driver``: the `autotune.search.Search` it serves)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def open_storage(self, storage: str):
        """Optuna's storage of ``storage`` with its trial heartbeat: the driver beats for its
        running trials (`beat`) and fails the stale ones of any driver (`fail_stale`), which calls
        `on_stale` for each."""
        import warnings

        import optuna

        from results.db import create_optuna_storage

        engine_kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
        with warnings.catch_warnings():  # "experimental": the heartbeat arguments exist since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return create_optuna_storage(storage, engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                         grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=self.on_stale)

    def recover(self) -> None:
        """Settle RUNNING trials left by dead drivers (`autotune.search`, "Resuming").

        Optuna's heartbeat decides for trials whose driver may still live: `fail_stale_trials`
        (called here and every few heartbeats by the loop) fails those without a beat for
        ``GRACE_SECONDS``, and `on_stale` enqueues their retry. Our code remains for what
        Optuna cannot know: a trial whose results reached our tables before its driver died is
        completed from them (nothing measured twice); a trial of a driver known dead (its run
        ended, or a process of this host that no longer exists: a SIGKILL) is settled at once,
        without waiting out the grace period; a trial asked but never claimed (no heartbeat, no
        row) is settled by a driver that starts with no live peer."""
        d = self.driver
        from optuna.trial import TrialState

        from results.db import Run, utcnow

        now = utcnow()
        for rid in d.db.settle_dead_runs(lambda run: driver_alive(run, now), d.run_id):
            d.log(f"run {rid} had no live driver left: marked ended (status died)")
        from sqlalchemy import select

        with d.db.Session() as s:  # other drivers of this study still alive (dead ones were just ended)
            peers = s.scalars(select(Run.id).where(Run.study_name == d.study_name, Run.ended_at.is_(None),
                                                   Run.id != d.run_id)).all()
        for ft in d.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            row = d.db.trial(d.study_name, ft.number)
            if row is None and peers:
                # asked by a live driver that has not claimed it yet (ask, then claim): not ours to
                # settle; a trial whose driver died in between is settled by a start with no live peer
                continue
            if row is not None:
                with d.db.Session() as s:
                    run = s.get(Run, row.run_id)
                    alive = driver_alive(run, now)
                # results stored and not told for longer than the grace period: the tell was lost
                told_late = (row.state != RowState.RUNNING and row.finished_at is not None
                             and (now - row.finished_at).total_seconds() > GRACE_SECONDS)
                if alive and not told_late:
                    continue  # a live driver's trial: Optuna's heartbeat watches it (fail_stale_trials below)
            if row is not None and row.state == RowState.COMPLETE and row.objectives is not None:
                cells = d.recorder.cells_of(row.id)
                cons, buckets, at = bucket_view(d.space, cells) if cells else (row.constraints or [], None, None)
                d.recorder.tell(ft.number, row.objectives, cons or row.constraints or [], buckets, at)
                d.stats["recovered"] += 1
                d.log(f"trial {ft.number}: results were stored before the driver stopped; completed from them")
                continue
            if row is not None and row.state == RowState.FAIL:
                d.study.tell(ft.number, state=TrialState.FAIL)
                continue
            if row is not None:
                d.db.mark_failed(d.study_name, ft.number, INTERRUPTED)
            d.ostorage.set_trial_user_attr(ft._trial_id, "fail_reason", INTERRUPTED)
            d.study.tell(ft.number, state=TrialState.FAIL)
            if ft.params:
                d.study.enqueue_trial(dict(ft.params), user_attrs={"retry_of": ft.number}, skip_if_exists=False)
            d.stats["retried"] += 1
            d.log(f"trial {ft.number} was interrupted (its driver is gone): marked failed, enqueued again")
        self.fail_stale()
        if not peers:  # a retry whose queue entry was lost (a driver died between tell and enqueue)
            queued = {ft.user_attrs.get("retry_of") for ft in d.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
            for row in d.db.pending_retries(d.study_name):
                if row.number not in queued and row.params:
                    d.study.enqueue_trial(dict(row.params), user_attrs={"retry_of": row.number}, skip_if_exists=False)
                    d.log(f"trial {row.number} ({row.reason}) had no retry queued: enqueued again")

    def fail_stale(self) -> None:
        """``optuna.storages.fail_stale_trials``: fail the running trials of this study (any
        driver's) whose heartbeat is older than ``GRACE_SECONDS``; `on_stale` then settles each."""
        d = self.driver
        import warnings

        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(d.study)

    def on_stale(self, study, trial) -> None:
        """Optuna's ``heartbeat_stale_trial_callback``: ``trial`` (failed by `fail_stale_trials`:
        its driver stopped beating) is marked interrupted in our table and enqueued again, with
        ``retry_of``; its budget slot stays reserved for the retry."""
        d = self.driver
        # (Optuna has already finished the trial: its attributes can no longer be set; the reason
        # is in at_trials)
        row = d.db.trial(d.study_name, trial.number)
        if row is not None and row.state == RowState.FAIL:  # its failure was recorded; only the tell was lost
            return
        if row is not None:  # running, or complete with the tell lost: Optuna holds it failed now
            d.db.mark_failed(d.study_name, trial.number, INTERRUPTED)
        if trial.params:
            d.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        d.stats["retried"] += 1
        d.log(f"trial {trial.number} was interrupted (no heartbeat from its driver for {GRACE_SECONDS} s): "
              "marked failed, enqueued again")

    def interrupt_running(self) -> None:
        """On Ctrl-C / SIGTERM: running trials are marked interrupted and enqueued again."""
        d = self.driver
        from optuna.trial import TrialState

        for number, trial in list(d.trials.items()):
            try:
                d.db.mark_failed(d.study_name, number, INTERRUPTED)
                trial.set_user_attr("fail_reason", INTERRUPTED)
                d.study.tell(trial, state=TrialState.FAIL)
                d.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": number}, skip_if_exists=False)
            except Exception as e:  # noqa: BLE001 - best effort on the way out
                d.log(f"could not settle trial {number}: {e}")
        d.trials.clear()

    def beat(self, state: dict[str, Any]) -> None:
        """Every ``HEARTBEAT_SECONDS``: the run's heartbeat and Optuna's for each running trial;
        every ``GRACE_SECONDS / 2``: fail the stale trials of drivers that stopped."""
        d = self.driver
        if time.monotonic() - state["last_hb"] <= HEARTBEAT_SECONDS:
            return
        d.db.heartbeat(d.run_id)
        for t in list(d.trials.values()):  # Optuna's trial heartbeat, one per running trial
            d.ostorage.record_heartbeat(t._trial_id)
        state["last_hb"] = time.monotonic()
        if time.monotonic() - state["last_stale"] > GRACE_SECONDS / 2:  # trials of drivers that stopped
            self.fail_stale()
            state["last_stale"] = time.monotonic()

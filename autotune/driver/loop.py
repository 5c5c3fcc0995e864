"""The search driver's loop (`autotune.search`, "Why plain Optuna ask/tell over Ray actors"): ask
Optuna for a trial, claim its budget slot in the database, submit it to a free worker, record what
comes back (`Recorder`), beat for the running trials (`Recovery.beat`), until the budget or the
timeout is reached and nothing runs."""

from __future__ import annotations

import time
from typing import Any, Optional

from results.states import TrialState as RowState  # ours, as stored (Optuna has its own TrialState)

from .optuna_view import optuna_constraint_names, trial_seed

MAX_DUPLICATE_ASKS = 200  # consecutive asks that only re-propose measured parameters: space exhausted


class Loop:
    """The launch-and-record loop of the driver ``driver`` (an `autotune.search.Search`: its study,
    database, executor, progress bar and running trials)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def run(self, deadline: Optional[float], done: int) -> int:
        """Launch trials while workers are free (`fill`), record the returned ones, beat for the
        running ones (`Recovery.beat`), until nothing runs and nothing may start. Returns the finished count."""
        d = self.driver
        executor, bar = d._executor, d._bar
        state = {"budget_full": False, "dup_streak": 0, "last_hb": 0.0, "last_stale": time.monotonic()}
        while True:
            if d._stop_requested:
                raise KeyboardInterrupt
            done += self.fill(executor, deadline, state)
            if executor.running == 0:
                break
            for req, res in executor.poll(timeout=1.0):
                if d.recorder.record(req, res):
                    done += 1
                    if bar is not None:
                        bar.update(1)
                else:  # to be run again: its retry takes the slot it reserved
                    state["budget_full"] = False
            d.recovery.beat(state)
            if bar is not None:
                left = "-" if deadline is None else f"{max(0.0, deadline - time.monotonic()):.0f}s"
                bar.set_postfix(ok=d.stats["completed"], failed=d.stats["failed"], running=executor.running,
                                best=d.recorder.best_text(), left=left, refresh=False)
        return done

    def fill(self, executor, deadline: Optional[float], state: dict[str, Any]) -> int:
        """Launch trials while a worker is free, the budget has room and time is left; returns the
        number of proposals rejected as invalid (finished at once)."""
        d = self.driver
        rejected = 0
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if out_of_time and not state["budget_full"]:
            d.stats["time_limit_stop"] = True  # the final summary says so (when the budget is not met)
        while not out_of_time and not state["budget_full"] and executor.running < executor.capacity:
            launch = "budget" if self.budget_taken() else self.launch(executor)
            if launch == "budget":
                state["budget_full"] = True
            elif launch == "duplicate":
                state["dup_streak"] += 1
                if state["dup_streak"] >= MAX_DUPLICATE_ASKS:
                    d.log(f"the sampler proposed {state['dup_streak']} already measured parameter sets in a row: "
                          "the space looks exhausted; stopping (--allow-repeats measures them again)")
                    state["budget_full"] = True
            else:
                state["dup_streak"] = 0
            if launch == "rejected":
                rejected += 1
                if d._bar is not None:
                    d._bar.update(1)
        return rejected

    def budget_taken(self) -> bool:
        """The study's budget is taken (by this or another driver) and no retry waits in Optuna's
        queue: a trial asked now could only be stored pruned ("budget reached"), so none is asked
        and ``--trials N`` leaves N trials (drivers sharing a study may still race for a last slot)."""
        d = self.driver
        from optuna.trial import TrialState

        if d.db.budget_taken(d.study_name) < d.space.budget.trials:
            return False
        return not d.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    def launch(self, executor) -> str:
        """Ask Optuna for a trial, claim its budget slot in the database and submit it. Returns
        "launched", "rejected" (invalid parameters: recorded failed), "budget" (the study's budget
        is taken, by this or another driver) or "duplicate" (the parameters, or a static pattern's layouts
        and launch config (`autotune.same_work`), are already measured or running; the asked trial is
        pruned unmeasured, its user attribute ``not_run`` says why)."""
        d = self.driver
        from optuna.trial import TrialState

        from kernels import KernelConfig
        from patterns import pattern_from_dict

        from results.db import utcnow
        from ..trial import TrialRequest, suggest_params

        import warnings

        with warnings.catch_warnings():  # Optuna assumes study.optimize beats; this driver beats itself
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            trial = d.study.ask()
            params = suggest_params(trial, d.space)  # define-by-run: only the parameters in effect
        pattern, kernel = d.space.split_params(params)
        retry_of = trial.user_attrs.get("retry_of")
        invalid = None
        try:  # a sampled combination the pattern / kernel rejects is a failed trial, not a crash
            pattern = pattern_from_dict(pattern).to_dict()  # static or guided
            kernel = KernelConfig.from_dict(kernel).for_block(pattern["block_size"]).to_dict() if kernel is not None else None
        except (TypeError, ValueError) as e:
            invalid = f"invalid parameters: {e}"
        now = utcnow()
        same_work = None
        if not invalid and not d.allow_repeats:  # a static pattern's twin computes the same (autotune.same_work)
            mine = d.work_keys.key(pattern, kernel)
            if mine is not None:
                def same_work(row, mine=mine) -> bool:
                    return d.work_keys.key(row.pattern, row.kernel) == mine
        status, other = d.db.claim_trial(dict(
            run_id=d.run_id, study_name=d.study_name, number=trial.number, optuna_trial_id=trial._trial_id,
            optuna_study_id=d.study._study_id, optuna_study_uid=d.study_uid,
            params=params, pattern=pattern, kernel=kernel,
            state=(RowState.FAIL if invalid else RowState.RUNNING).value, reason=invalid,
            retry_of=retry_of, objective_names=list(d.space.objectives),
            constraint_names=optuna_constraint_names(d.space),
            started_at=now, finished_at=now if invalid else None,
        ), d.space.budget.trials, allow_repeats=d.allow_repeats, same_work=same_work)
        if status != "ok":
            why = {"budget": "budget reached", "duplicate": f"duplicate of trial {other}",
                   "same_work": f"duplicate of trial {other}: the same layouts and launch config"}[status]
            trial.set_user_attr("not_run", why)
            if status == "same_work":
                trial.set_user_attr("same_work_as", other)
            d.study.tell(trial, state=TrialState.PRUNED)
            if status != "budget":
                d.stats["duplicates_skipped" if status == "duplicate" else "same_work_skipped"] += 1
                if retry_of is not None:
                    d.log(f"retry of trial {retry_of} skipped: trial {other} measured "
                          + ("its parameters" if status == "duplicate" else "the same layouts and launch config"))
                status = "duplicate"
            return status
        if invalid:
            trial.set_user_attr("fail_reason", invalid)
            d.study.tell(trial, state=TrialState.FAIL)
            d.stats["failed"] += 1
            return "rejected"
        d.ostorage.record_heartbeat(trial._trial_id)  # from now on Optuna watches it (fail_stale_trials)
        req = TrialRequest(study=d.study_name, number=trial.number, params=params, pattern=pattern,
                           kernel=kernel, space=None, seed=trial_seed(d.study_name, trial.number),
                           deadline=d.deadline_epoch)
        d.trials[trial.number] = trial
        executor.submit(req.to_dict())
        return "launched"

"""The re-measuring steps of the one verdict per bucket (`results.verdict`, steps 2 and 4).

`confirm` re-measures the leaders of every bucket together with SDPA - one interleaved loop per
workload, more rounds (``measure.confirm_*``) - stores the pass in ``at_confirmations``, decides on
it, then measures the chosen config once more alone against SDPA on fresh inputs (the hold-out,
``stage = "holdout"``) and decides again. `current_verdicts` is the study's verdict on its current
confirmation, confirming first when there is none. Both run trials (`autotune.trial.TrialRunner`)
in this process, on this machine; the rule itself, and everything that only reads the database,
is in `results.verdict`.
"""

from __future__ import annotations

from typing import Optional

from results.db import Confirmation
from results.verdict import BucketVerdict, decide, leaders, read_study, read_study_at
from search_spaces.space import SearchSpace

__all__ = ["confirm", "current_verdicts"]


def confirm(storage: str, study: str, *, log=None, threads: Optional[int] = None) -> list[BucketVerdict]:
    """Re-measure the leaders of every bucket together (module docstring, step 2), store the pass
    in ``at_confirmations``, and return the verdicts on it. Runs in this process, on this machine."""
    import torch

    from results.db import Database

    from . import hardware
    from .trial import TrialRunner

    log = log or (lambda msg: None)
    db = Database(storage)
    try:
        data = read_study(db, study)
        if data.space is None or not data.trials:
            return []
        space = SearchSpace.from_dict(data.space)
        targets = space.effective_targets()
        top = space.measure.confirm_top
        if space.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the study was measured on CUDA; confirm it on a machine with a CUDA device")
        runner = TrialRunner(threads=threads or space.execution.threads_per_worker)
        rows = []
        with db.Session() as s:
            from sqlalchemy import func, select

            last = s.scalar(select(func.max(Confirmation.confirm_id)))
        cid = (last or 0) + 1
        hw = hardware.describe(space.device)
        for L in data.buckets:
            lead = leaders(targets, data.cells_by_trial, L, top)
            if not lead:
                continue
            cands = [(c.trial, data.trials[c.trial].pattern, data.trials[c.trial].kernel) for c in lead]
            log(f"confirming L={L}: " + ", ".join(f"t#{c.trial} ({c.speedup:.2f}x)" for c in lead))
            for r in runner.confirm(space, L, cands, seed=cid * 7919 + L):
                rank = next(i for i, c in enumerate(lead) if c.trial == r["trial_number"])
                rows.append(Confirmation(study_name=study, confirm_id=cid, complete_trials=len(data.trials), bucket=L,
                                         rank=rank, hardware=hw, **r))
        data, verdicts = _store_and_decide(db, study, rows, targets, top)
        # step 4: the chosen config alone against SDPA on fresh inputs, figures free of the selection
        held = []
        for v in verdicts:
            if not v.deploy:
                continue
            t = data.trials[v.trial]
            log(f"hold-out re-measurement of the choice at L={v.bucket}: t#{v.trial}")
            for r in runner.confirm(space, v.bucket, [(v.trial, t.pattern, t.kernel)], seed=cid * 7919 + v.bucket + 104729):
                held.append(Confirmation(study_name=study, confirm_id=cid, complete_trials=len(data.trials),
                                         bucket=v.bucket, rank=0, hardware=hw, stage="holdout", **r))
        if not held:
            return verdicts
        return _store_and_decide(db, study, held, targets, top)[1]
    finally:
        db.close()


def _store_and_decide(db, study: str, rows: list, targets, top):
    """Store the new confirmation rows, reload the study and apply the rule: (study data, verdicts)."""
    with db.session() as s:
        for r in rows:
            s.add(r)
    data = read_study(db, study)
    return data, decide(targets, data.cells_by_trial, data.buckets, data.confirmations or [], top)


def current_verdicts(storage: str, study: str, *, log=None) -> list[BucketVerdict]:
    """The study's verdicts on its current confirmation, confirming first when there is none."""
    data = read_study_at(storage, study)
    if data.space is None or not data.trials:
        return []
    if data.confirmations is None:
        return confirm(storage, study, log=log)
    space = SearchSpace.from_dict(data.space)
    return decide(space.effective_targets(), data.cells_by_trial, data.buckets, data.confirmations,
                  space.measure.confirm_top)

"""The trial states and end reasons (`results.states`): values as stored, stored texts classified.

Databases written before the enums existed hold plain strings; they must read the same: the states
compare equal to the stored strings, every reason text the code has ever written is classified by
`EndReason.of`, and only the retried ones (interrupted, node lost) give their budget slot away
(`Database.claim_trial` on real SQLite).
"""

from __future__ import annotations

import pytest

from results.states import EndReason, TrialState


def test_states_are_the_stored_strings():
    assert [s.value for s in TrialState] == ["RUNNING", "COMPLETE", "FAIL"]
    assert TrialState("COMPLETE") is TrialState.COMPLETE and TrialState.FAIL == "FAIL"
    assert f"{TrialState.RUNNING}" == "RUNNING" and str(TrialState.FAIL) == "FAIL"
    assert TrialState.of_result(True) is TrialState.COMPLETE and TrialState.of_result(False) is TrialState.FAIL


# reason texts as the code before the enums wrote them (and still writes them)
OLD_TEXTS = [
    ("interrupted", EndReason.INTERRUPTED),
    ("interrupted: the search's timeout", EndReason.INTERRUPTED),
    ("node lost", EndReason.NODE_LOST),
    ("node lost: worker node 10.0.0.2 left the cluster during the trial (ActorDiedError)", EndReason.NODE_LOST),
    ("worker died: ActorDiedError: the actor died unexpectedly", EndReason.WORKER_DIED),
    ("gate failed: msa_row forward error 0.12 > 0.02 (L=64)", EndReason.GATE_FAILED),
    ("RuntimeError: out of memory: msa_row L=512 batch=4 at workloads.py:360", EndReason.OUT_OF_MEMORY),
    ("CompileFailed: compile failed: RuntimeError: out of resources", EndReason.COMPILE_FAILED),
    ("driver died: found gone by run 3 at 2026-01-01 00:00:00 UTC (host h, pid 1, ...)", EndReason.DRIVER_DIED),
    ("ValueError: bad block size at layout.py:12", EndReason.ERROR),
    ("could not summarize: KeyError: 'x'", EndReason.ERROR),
    ("interrupted (retry skipped: measured by trial 4)", EndReason.INTERRUPTED),
    (None, EndReason.ERROR),
    ("", EndReason.ERROR),
]


@pytest.mark.parametrize("text,kind", OLD_TEXTS)
def test_stored_reason_texts_are_classified(text, kind):
    assert EndReason.of(text) is kind
    assert EndReason.is_retried(text) == (kind in (EndReason.INTERRUPTED, EndReason.NODE_LOST))


def test_retried_only_at_the_start_of_the_text():
    """A retried kind is written only by the driver and executor, at the start: an exception whose
    message mentions it is the candidate's own failure and holds its slot."""
    assert not EndReason.is_retried("KeyError: interrupted")
    assert not EndReason.is_retried("RuntimeError: node lost somewhere")


def test_texts_written_match_the_old_ones():
    assert EndReason.GATE_FAILED.text("w forward error 1 > 0 (L=8)") == "gate failed: w forward error 1 > 0 (L=8)"
    assert EndReason.INTERRUPTED.text() == "interrupted" and EndReason.NODE_LOST.text(None) == "node lost"
    marked = EndReason.skip_retry("node lost: x", 7)
    assert marked == "node lost: x (retry skipped: measured by trial 7)"
    assert EndReason.retry_skipped(marked) and not EndReason.retry_skipped("node lost: x")
    assert not EndReason.retry_skipped(None)


def test_old_reason_strings_in_a_database_release_the_slot(tmp_path):
    """Rows written with the old literal strings ("FAIL", "interrupted", "node lost: ...") count
    in the budget exactly as before: retried reasons reserve a slot for their retry only."""
    from results.db import Database

    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    run = db.start_run(study_name="s", host="h", pid=1, command_line="c", device="cpu", hardware={}, versions={},
                       space_path="x", space={}, executor="local")

    def fields(n, x, **kw):
        return dict(run_id=run, study_name="s", number=n, optuna_trial_id=n, params={"x": x}, pattern={}, **kw)

    try:
        for n, reason in enumerate(["interrupted", "node lost: gone", "gate failed: w error 1 > 0 (L=8)"]):
            assert db.claim_trial(fields(n, n, state="FAIL", reason=reason), 10) == ("ok", None)
        assert db.budget_taken("s") == 3  # two reserved for their retries, one occupying
        assert [t.number for t in db.pending_retries("s")] == [0, 1]
        assert db.count_finished("s") == 1
        db.mark_failed("s", 2, "worker died: X: y")
        assert db.trial("s", 2).state == TrialState.FAIL == "FAIL"
    finally:
        db.close()

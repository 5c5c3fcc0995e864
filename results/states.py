"""The states of our trials and the reasons they end, as stored in ``at_trials.state`` / ``.reason``.

A leaf module (it imports nothing of the project): the trials, the executor, the search driver, the
store, the verdict and the report all name states and reasons through it, never as string literals.

`TrialState` - the ``at_trials.state`` column: RUNNING (claimed, measured now), COMPLETE, FAIL. The
values are the strings stored since the first schema version, so every database reads unchanged.

`EndReason` - why a trial failed (``at_trials.reason``) or a run ended (``at_runs.end_reason``). A
stored reason is free text that *starts* with one of these values, followed by ``": "`` and the
details (``"gate failed: msa_row forward error ..."``, ``"node lost: worker node ..."``); a bare
value (``"interrupted"``, ``"node lost"``) is stored too. `EndReason.of` classifies a stored text,
so no caller matches prefixes itself; `EndReason.text` writes one. Texts that start with none of
the values (an exception, ``"ValueError: ..."``) are `EndReason.ERROR`; for the worker-side kinds the
text may also follow the exception's name (``"RuntimeError: out of memory: ..."``).

Retried reasons (`EndReason.retried`): a trial interrupted by the search's stop or timeout, or whose
worker node was lost, was not measured to the end through no fault of its own; it is run again
(``retry_of``) and, until then, its budget slot is reserved for the retry. A retry found unneeded
(its parameters were measured meanwhile) gets the suffix of `EndReason.skip_retry`.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Optional

# a worker-side reason recorded through its exception: "<ExceptionName>: <reason>"
_EXCEPTION_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*: ")
_SKIPPED = "(retry skipped"


class TrialState(str, Enum):
    """``at_trials.state`` (values as stored)."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAIL = "FAIL"

    def __str__(self) -> str:  # the stored string in f-strings and str(), not "TrialState.FAIL"
        return self.value

    @classmethod
    def of_result(cls, ok: bool) -> "TrialState":
        """The state of a finished trial: COMPLETE when it measured every cell, else FAIL."""
        return cls.COMPLETE if ok else cls.FAIL


class EndReason(str, Enum):
    """The kind of a trial's failure or of a run's end; the value is the stored text's prefix."""

    INTERRUPTED = "interrupted"        # the search stopped or timed out during the trial (retried)
    NODE_LOST = "node lost"            # the worker's node left the Ray cluster (retried)
    WORKER_DIED = "worker died"        # the candidate took its worker process down
    GATE_FAILED = "gate failed"        # the candidate's error against the dense reference is too large
    OUT_OF_MEMORY = "out of memory"    # the candidate ran out of memory
    COMPILE_FAILED = "compile failed"  # its kernel did not compile
    DRIVER_DIED = "driver died"        # at_runs.end_reason: the next driver found the run's driver gone
    ERROR = "error"                    # anything else (an exception's text; no reason recorded); never a prefix

    def __str__(self) -> str:
        return self.value

    @property
    def retried(self) -> bool:
        """Whether a trial failed for this reason is run again (and holds no budget slot of its own)."""
        return self in (EndReason.INTERRUPTED, EndReason.NODE_LOST)

    def text(self, detail: Optional[str] = None) -> str:
        """The stored text: the value, then ``": detail"`` when given."""
        return self.value if not detail else f"{self.value}: {detail}"

    @classmethod
    def of(cls, text: Optional[str]) -> "EndReason":
        """The kind of the stored reason ``text`` (None or empty: ERROR). A retried kind is only
        recognised at the start of the text, as written by the driver and executor; the worker's
        kinds also after an exception's name (``"RuntimeError: out of memory: ..."``)."""
        text = text or ""
        for kind in cls:
            if kind is not cls.ERROR and text.startswith(kind.value):
                return kind
        m = _EXCEPTION_PREFIX.match(text)
        if m:
            rest = text[m.end():]
            for kind in (cls.WORKER_DIED, cls.GATE_FAILED, cls.OUT_OF_MEMORY, cls.COMPILE_FAILED):
                if rest.startswith(kind.value):
                    return kind
        return cls.ERROR

    @classmethod
    def is_retried(cls, text: Optional[str]) -> bool:
        """Whether the stored reason ``text`` is a retried one (`retried`)."""
        return cls.of(text).retried

    @staticmethod
    def skip_retry(text: Optional[str], measured_by: int) -> str:
        """``text`` marked: its retry is not needed, trial ``measured_by`` measured its parameters
        (the reserved budget slot is released)."""
        return f"{text} {_SKIPPED}: measured by trial {measured_by})"

    @staticmethod
    def retry_skipped(text: Optional[str]) -> bool:
        """Whether ``text`` carries the mark of `skip_retry`."""
        return _SKIPPED in (text or "")

"""The checks every value of a space file (and every command-line value that overrides one) goes
through: `SpaceChecker` raises `SpaceError` with one line ``FILE: KEY: problem``; `FlagChecker`
applies exactly the same rules to a command-line flag and raises `OverrideError` (``FLAG: problem``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

from patterns.errors import InputError
from patterns.names import name_problem

from .schema import MAX_TRIALS, MAX_WORKERS, SpaceError

#: ``int_within_limit(value, key, limit, low=1)``: ``value`` an integer in [low, limits[limit]]
#: (the limits of the file being parsed; `parse_space` makes one per file)
IntWithinLimit = Callable[..., int]


def short(v: Any) -> str:
    """repr of ``v`` cut to 60 characters (one-line messages)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def type_name(v: Any) -> str:
    """What a message calls the YAML type of ``v``."""
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(v), type(v).__name__
    ) if v is not None else "null"


class SpaceChecker:
    """The checks of one space file (``source``): each returns the value when it passes and raises
    `SpaceError` (``FILE: KEY: problem``) naming the key when it does not."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> None:
        raise SpaceError(self.source, key, problem)

    def mapping(self, v: Any, key: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(v, dict):
            self.fail(key, f"must be a mapping, got {type_name(v)}")
        for k in v:
            if not isinstance(k, str) or k not in allowed:
                self.fail(f"{key}.{k}" if key else str(k), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for r in required:
            if r not in v:
                self.fail(f"{key}.{r}" if key else r, "required key is missing")
        return v

    def section(self, data: dict, key: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        """An optional top-level section: absent or null is {}, anything else must be a mapping."""
        v = data.get(key)
        if v is None:
            v = {}
        return dict(self.mapping(v, key, allowed, required))

    def integer(self, v: Any, key: str, *, low: Optional[int] = None, high: Optional[int] = None,
                limit: Optional[str] = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, f"must be an integer, got {type_name(v)} {short(v)}")
        if low is not None and v < low:
            self.fail(key, f"must be >= {low}, got {short(v)}")
        if high is not None and v > high:
            raise_it = f" (raise limits.{limit} if this machine can)" if limit else ""
            self.fail(key, f"{short(v)} is above the limit {high}{raise_it}")
        return v

    def number(self, v: Any, key: str, *, low: Optional[float] = None) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(key, f"must be a number, got {type_name(v)} {short(v)}")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            self.fail(key, f"must be a finite number, got {short(v)}")
        if low is not None and f < low:
            self.fail(key, f"must be >= {low}, got {short(v)}")
        return f

    def name(self, v: Any, key: str, max_len: int) -> str:
        """A study or workload name under the one rule of `patterns.names` (printable, 1 to
        ``max_len`` characters; no control, invisible, bidi-control or separator character)."""
        if not isinstance(v, str):
            self.fail(key, f"must be a string, got {type_name(v)}")
        problem = name_problem(v, max_len)
        if problem is not None:
            self.fail(key, problem)
        return v

    def choice(self, v: Any, key: str, allowed: tuple) -> Any:
        if not isinstance(v, str):
            self.fail(key, f"must be a string, one of {', '.join(map(str, allowed))}; got {type_name(v)} {v!r}")
        if v not in allowed:
            self.fail(key, f"{v!r} is not one of {', '.join(map(str, allowed))}")
        return v

    def boolean(self, v: Any, key: str) -> bool:
        if not isinstance(v, bool):
            self.fail(key, f"must be true or false, got {type_name(v)} {v!r}")
        return v

    def param(self, v: Any, key: str, allowed: Optional[tuple], *, what: str, is_str: bool = False,
              high: Optional[int] = None, limit: Optional[str] = None) -> Any:
        """A searched parameter: a value, {choices: [...]} or {low, high[, step]}."""

        def check_value(x: Any, k: str) -> None:
            if is_str:
                if not isinstance(x, str):
                    self.fail(k, f"must be a string, got {type_name(x)} {short(x)}")
            else:
                self.integer(x, k, low=0, high=high, limit=limit)
            if allowed is not None and x not in allowed:
                self.fail(k, f"{x!r} is not supported by {what} (supported: {', '.join(map(str, allowed))})")

        if isinstance(v, dict):
            if "choices" in v:
                self.mapping(v, key, {"choices"})
                ch = v["choices"]
                if not isinstance(ch, list):
                    self.fail(f"{key}.choices", f"must be a list, got {type_name(ch)}")
                if not ch:
                    self.fail(f"{key}.choices", "empty range: no choices given")
                for i, x in enumerate(ch):
                    check_value(x, f"{key}.choices[{i}]")
                if len(set(ch)) != len(ch):
                    self.fail(f"{key}.choices", f"duplicate choices in {ch}")
                return {"choices": list(ch)}
            if is_str or allowed is not None:
                self.fail(key, "must be a value or {choices: [...]} (a discrete parameter)")
            self.mapping(v, key, {"low", "high", "step"}, ("low", "high"))
            lo = self.integer(v["low"], f"{key}.low", low=0, high=high, limit=limit)
            hi = self.integer(v["high"], f"{key}.high", low=0, high=high, limit=limit)
            step = self.integer(v.get("step", 1), f"{key}.step", low=1)
            if hi < lo:
                self.fail(key, f"empty range: low={lo} > high={hi}")
            if (hi - lo) % step:
                self.fail(key, f"high - low = {hi - lo} is not a multiple of step={step}")
            return {"low": lo, "high": hi, "step": step}
        check_value(v, key)
        return v


class OverrideError(InputError):
    """A command-line value refused by the rule of the file key it overrides; one line ``FLAG: problem``."""


class FlagChecker(SpaceChecker):
    """`SpaceChecker`'s checks for command-line values: the same rules, the flag named instead of the key."""

    def fail(self, key: str, problem: str) -> None:
        raise OverrideError(f"{key}: {problem}")


def check_overrides(*, trials: Any = None, timeout: Any = None, workers: Any = None) -> None:
    """``--trials``, ``--timeout`` and ``--workers`` under exactly the rules of ``budget.trials``,
    ``budget.timeout`` and ``execution.workers`` in the file (`BudgetSettings.parse`,
    `ExecutionSettings.parse`): integers in range, finite numbers."""
    check = FlagChecker("(command line)")
    if trials is not None:
        check.integer(trials, "--trials", low=1, high=MAX_TRIALS)
    if timeout is not None:
        check.number(timeout, "--timeout", low=1)
    if workers is not None:
        check.integer(workers, "--workers", low=1, high=MAX_WORKERS)

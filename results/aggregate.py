"""The one geometric mean of the project, and what it leaves out.

``geomean(xs, what=...)`` is exp(mean(log x)) over the values that have a logarithm: a value that
is None (missing: a baseline out of memory, a row from before a column existed), not a finite
number, or not positive is left out, and the result says so. It returns a `GeoMean` with the value
(None when nothing is left), the count used and every value left out with its position and why;
when something was left out it also logs one warning on the ``autotune`` logger naming ``what``,
so a mean over fewer cells than expected is never silent. Callers that must not warn (a value
expected to be missing) pass ``quiet=True`` and read ``dropped`` themselves.

``cell_field(cell, key)`` reads one field of a cell the same way whatever its form (a measurement
dict, a stored row), for the verdict and the export.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

__all__ = ["GeoMean", "cell_field", "geomean"]

log = logging.getLogger("autotune")


def cell_field(cell: Any, key: str, default: Any = None) -> Any:
    """A cell's field by name: a dict's entry or a row's attribute, ``default`` when it has none."""
    return cell.get(key, default) if isinstance(cell, dict) else getattr(cell, key, default)


@dataclass(frozen=True)
class GeoMean:
    value: Optional[float]  # exp(mean(log x)) over the values used; None when none is usable
    used: int  # how many values entered the mean
    dropped: tuple[tuple[int, Any, str], ...] = ()  # (position, value, why) of each value left out

    def note(self, what: str = "values") -> str:
        """'' when nothing was left out, else one line: what was left out and why."""
        if not self.dropped:
            return ""
        parts = ", ".join(f"#{i} {v!r} ({why})" for i, v, why in self.dropped)
        return f"geometric mean of {what} over {self.used} of {self.used + len(self.dropped)} values; left out: {parts}"


def _why(x: Any) -> Optional[str]:
    if x is None:
        return "missing"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "not a number"
    if not math.isfinite(x):
        return "not finite"
    if x <= 0:
        return "not positive"
    return None


def geomean(xs: Iterable[Any], what: str = "values", *, quiet: bool = False) -> GeoMean:
    """Geometric mean of the positive finite values of ``xs`` (module docstring)."""
    used: list[float] = []
    dropped: list[tuple[int, Any, str]] = []
    for i, x in enumerate(xs):
        why = _why(x)
        if why is None:
            used.append(float(x))
        else:
            dropped.append((i, x, why))
    value = math.exp(math.fsum(math.log(x) for x in used) / len(used)) if used else None
    g = GeoMean(value, len(used), tuple(dropped))
    if dropped and not quiet:
        log.warning(g.note(what))
    return g

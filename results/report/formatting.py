"""How the report writes a number, a citation and a table (shared by every section).

Missing or non-finite values print as an em dash; a citation lists the ids of the rows a number
comes from (``m#3,4``: ``at_measurements.id`` 3 and 4, the prefixes are listed in `results.report.build`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

MIB_FLOOR = 1.0  # memory ratios use max(baseline peak, 1 MiB), as at_measurements.memory_vs_* does
NOT_MEASURED = "not measured"


def f_ms(x: Optional[float]) -> str:
    """A time or a size to 4 significant digits."""
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def f_x(x: Optional[float]) -> str:
    """A ratio (speedup): two decimals, two significant digits under 0.1."""
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.2f}x" if abs(x) >= 0.1 else f"{x:.2g}x"


def f_pct(x: Optional[float]) -> str:
    """A share as a percentage with one decimal."""
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def f_num(x: Optional[float], nd: int = 3) -> str:
    """A plain number with ``nd`` decimals."""
    return "—" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def cite(prefix: str, ids: Iterable[Any]) -> str:
    """``prefix#id1,id2`` for the non-None ids, an em dash without any."""
    ids = [i for i in ids if i is not None]
    return f"{prefix}#" + ",".join(str(i) for i in ids) if ids else "—"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table (a ``|`` inside a cell escaped)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def geomean(xs: Iterable[Optional[float]], what: str = "cell values") -> Optional[float]:
    """`results.aggregate.geomean` (logs what it leaves out)."""
    from results.aggregate import geomean as aggregate

    return aggregate(xs, what).value


def accuracy_metrics(acc: Any) -> dict[str, float]:
    """The numeric metrics of an ``at_measurements.accuracy`` value (its ``metrics`` mapping, or
    the value itself); {} when it is not a mapping."""
    if not isinstance(acc, dict):
        return {}
    m = acc.get("metrics", acc)
    return {k: v for k, v in m.items() if isinstance(v, (int, float))}


def mask_command(text: str) -> str:
    """Command lines without passwords (also for rows written before they were masked)."""
    from results.storage import mask_secrets

    return mask_secrets(text or "")

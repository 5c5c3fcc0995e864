"""The declarative base every ``at_`` table is declared on, the tables' name prefix and the
timestamp default of their rows.

A leaf module: the tables of `results.db` and the benchmark tables of `results.bench_tables` both
declare on this `Base`, and `results.db` imports the benchmark tables by name to create them with
its own (``Base.metadata.create_all``), so neither table module imports the other in a circle.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import DeclarativeBase

__all__ = ["PREFIX", "Base", "utcnow"]

PREFIX = "at_"


def utcnow() -> dt.datetime:
    """Now, in UTC, without time zone (how every ``at_`` timestamp column stores it)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass

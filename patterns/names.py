"""The one rule for the names a user gives: study names (``--study``, ``--to-study``, a space's
``name``, which is its default study) and workload names.

A name is stored in database columns, printed in one-line messages, reports and file names, and
compared byte for byte by the next command that takes it. So it must be text that looks like what
it is: a string of 1 to ``max_len`` characters, not only spaces, every character printable in the
sense of ``str.isprintable`` - no control characters (Cc: NUL, tab, line feed, DEL, C1), no format
characters (Cf: zero-width space and joiners, bidi overrides and isolates, the byte-order mark),
no line or paragraph separators (Zl, Zp), no spaces other than U+0020 (Zs), no lone surrogates
(Cs: the trace of a command-line argument or file name that was not UTF-8), no private-use or
unassigned code points (Co, Cn). Two names that render alike then differ visibly.

`name_problem` says what is wrong (None: nothing); `check_study_name` raises `NameInputError`
(an `InputError`) with one line ``WHAT: problem``. `check_argv` refuses a command line whose
arguments are not all UTF-8 (a path or name given as raw bytes reaches Python as lone surrogates,
which no database, file or log can encode) before anything is created. This module is at the bottom of the layering
with `patterns.errors`: every command line and the space loader use the same rule.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Optional, Sequence

from .errors import InputError

__all__ = ["MAX_STUDY_NAME", "NameInputError", "name_problem", "check_study_name", "check_argv"]

#: study / space name: the database columns hold 256 characters
MAX_STUDY_NAME = 256


class NameInputError(InputError):
    """A name refused by `check_study_name`; ``str()`` is one line ``WHAT: problem``."""


def _describe(c: str) -> str:
    """``U+200B ZERO WIDTH SPACE`` (the code point and, where Unicode has one, its name)."""
    name = unicodedata.name(c, "") if not 0xD800 <= ord(c) <= 0xDFFF else ""
    return f"U+{ord(c):04X}" + (f" {name}" if name else "")


def name_problem(value: Any, max_len: int = MAX_STUDY_NAME) -> Optional[str]:
    """What is wrong with ``value`` as a name (module docstring), or None."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if len(value) > max_len:
        return f"{len(value)} characters: at most {max_len}"
    for i, c in enumerate(value):
        if c.isprintable():
            continue
        cat = unicodedata.category(c)
        where = f"{_describe(c)} at position {i}"
        if cat == "Cc":
            return f"must not contain control characters ({where})"
        if cat == "Cs":
            return f"must not contain a lone surrogate ({where}: the name was not UTF-8 text)"
        return f"must not contain invisible, bidi-control or separator characters ({where}, category {cat})"
    return None


def check_study_name(value: Any, what: str = "--study", max_len: int = MAX_STUDY_NAME) -> str:
    """``value`` if it is a valid study name, else `NameInputError` ``WHAT: problem (a study name
    is 1 to max_len printable characters)``."""
    problem = name_problem(value, max_len)
    if problem is not None:
        raise NameInputError(f"{what}: {problem} (a study name is 1 to {max_len} printable characters)")
    return value


def check_argv(argv: Sequence[str]) -> None:
    """Raise `NameInputError` ``FLAG: ...`` for the first argument holding a lone surrogate (the
    bytes of an argument that was not UTF-8); ``FLAG`` is the option it belongs to."""
    for i, arg in enumerate(argv):
        bad = next((j for j, c in enumerate(arg) if 0xD800 <= ord(c) <= 0xDFFF), None)
        if bad is None:
            continue
        if arg.startswith("--") and "=" in arg:
            flag = arg.split("=", 1)[0]
        elif i > 0 and argv[i - 1].startswith("-"):
            flag = argv[i - 1]
        else:
            flag = f"argument {i + 1}"
        raise NameInputError(f"{flag}: must not contain a lone surrogate ({_describe(arg[bad])} at position {bad}: "
                             "the argument was not UTF-8 text; rename the file or give UTF-8 text)")

"""The project's one error base class, and how every command line reports it.

`InputError` is what a user can fix: a malformed space, tuned, CSV or YAML file, a bad storage URL,
an unknown study, a bad flag. Its message is one line that names the file, field or flag and what
is wrong. Each stage defines its own subclass where it is raised (``SpaceError``,
``StorageError``, ``TunedFileError``, ...), so a caller can still catch one stage's errors;
a command line catches the base class once and reports it with `report_input_error`: the line on
stderr and exit status 2, nothing else (no traceback).

`InputError` subclasses ``ValueError``, so ``except ValueError`` and ``pytest.raises(ValueError)``
keep catching every one of them.

This module is at the bottom of the layering (``patterns``, which imports nothing of the project):
every package may import it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Optional, TextIO

__all__ = ["InputError", "EXIT_INPUT_ERROR", "error_line", "report_input_error", "exit_on_input_error"]

#: Exit status of a command line refused for bad input (argparse uses the same for bad flags).
EXIT_INPUT_ERROR = 2


class InputError(ValueError):
    """Bad input the user can fix; ``str(error)`` is the one line a command line prints."""


def error_line(exc: BaseException, prog: Optional[str] = None, message: Optional[str] = None) -> str:
    """``"PROG: error: MESSAGE"`` (``"error: MESSAGE"`` without ``prog``); ``message`` defaults to
    ``str(exc)`` (give it to print a masked or reworded text)."""
    text = str(exc) if message is None else message
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate (a non-UTF-8 file name) as \udcff
    return f"{prog}: error: {text}" if prog else f"error: {text}"


def report_input_error(exc: BaseException, prog: Optional[str] = None, *, message: Optional[str] = None,
                       file: Optional[TextIO] = None) -> int:
    """Print `error_line` to stderr (or ``file``) and return `EXIT_INPUT_ERROR`, for a ``main``
    that returns its exit status::

        except InputError as e:
            return report_input_error(e, "autotune.export")
    """
    print(error_line(exc, prog, message), file=sys.stderr if file is None else file)
    return EXIT_INPUT_ERROR


@contextlib.contextmanager
def exit_on_input_error(prog: Optional[str] = None) -> Iterator[None]:
    """Around a command line's body: an `InputError` prints `error_line` to stderr and exits with
    status 2 (``SystemExit``); other exceptions pass through unchanged::

        if __name__ == "__main__":
            with exit_on_input_error("python -m kernels.bench"):
                main()
    """
    try:
        yield
    except InputError as e:
        raise SystemExit(report_input_error(e, prog)) from None

"""The project's one error base class, and how every command line reports it.

`InputError` is what a user can fix: a malformed space, tuned, CSV or YAML file, a bad storage URL,
an unknown study, a bad flag. Its message is one line that names the file, field or flag and what
is wrong. Each stage defines its own subclass where it is raised (``SpaceError``,
``StorageError``, ``TunedFileError``, ...), so a caller can still catch one stage's errors;
a command line catches the base class once and reports it: the line on stderr and exit status 2,
nothing else (no traceback).

`exit_status` is the project's one mapping of how a command line stops to its exit status, used
by every command (through `run_command`, or `exit_on_input_error` around a command that returns no
status): bad input -> one line, 2; a failure that is not the input's (a database error: its
classes live in ``results``, above this layer, so the command passes its own ``failure``
recogniser) -> one line, 1; Ctrl-C -> 130; anything else is a bug and keeps its
traceback.

`InputError` subclasses ``ValueError``, so ``except ValueError`` and ``pytest.raises(ValueError)``
keep catching every one of them.

This module is at the bottom of the layering (``patterns``, which imports nothing of the project):
every package may import it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional, TextIO

__all__ = ["InputError", "EXIT_INPUT_ERROR", "EXIT_FAILURE", "EXIT_INTERRUPTED", "error_line", "report_input_error",
           "exit_status", "run_command", "exit_on_input_error"]

#: Exit status of a command line refused for bad input (argparse uses the same for bad flags).
EXIT_INPUT_ERROR = 2
#: Exit status of a command line stopped by a failure that is not its input's (a database error).
EXIT_FAILURE = 1
#: Exit status of a command line stopped by Ctrl-C (128 + SIGINT, the shells' convention).
EXIT_INTERRUPTED = 130

#: Recognises a failure that is not the input's: its one line (no password in it), else None.
Failure = Callable[[BaseException], Optional[str]]


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


def _no_failure(exc: BaseException) -> Optional[str]:
    return None


def exit_status(exc: BaseException, prog: Optional[str] = None, *, failure: Failure = _no_failure,
                mask: Callable[[str], str] = str, message: Optional[str] = None) -> int:
    """The exit status of a command line stopped by ``exc``, after its one line on stderr: an
    `InputError` -> ``PROG: error: TEXT``, 2; a ``KeyboardInterrupt`` -> 130, silent (the command
    says what it left behind) unless ``message`` is given (``PROG: MESSAGE``); an exception that
    ``failure`` gives a line for -> ``PROG: error: LINE``, 1. Any other exception (``SystemExit``
    included) is raised again. ``mask`` rewrites the printed text (hiding passwords); ``message``
    replaces it. Called in a command's ``except BaseException`` clause::

        except BaseException as e:
            return exit_status(e, "autotune.export", failure=lambda e: database_error_line(e, url))
    """
    if isinstance(exc, InputError):
        return report_input_error(exc, prog, message=mask(str(exc) if message is None else message))
    if isinstance(exc, KeyboardInterrupt):
        if message is not None:
            print(f"{prog}: {message}" if prog else message, file=sys.stderr)
        return EXIT_INTERRUPTED
    line = failure(exc) if isinstance(exc, Exception) else None
    if line is None:
        raise exc
    print(error_line(exc, prog, mask(line if message is None else message)), file=sys.stderr)
    return EXIT_FAILURE


def run_command(body: Callable[[], Optional[int]], prog: Optional[str] = None, *, failure: Failure = _no_failure,
                mask: Callable[[str], str] = str) -> int:
    """``body()``'s exit status (None -> 0), or `exit_status` of what stopped it."""
    try:
        return body() or 0
    except BaseException as e:  # noqa: BLE001 - the one mapping; what it does not map is raised again
        return exit_status(e, prog, failure=failure, mask=mask)


@contextlib.contextmanager
def exit_on_input_error(prog: Optional[str] = None) -> Iterator[None]:
    """Around the body of a command line that returns no status: what `exit_status` maps (bad input:
    2, Ctrl-C: 130) exits with its status (``SystemExit``); other exceptions pass through::

        if __name__ == "__main__":
            with exit_on_input_error("python -m kernels.bench"):
                main()
    """
    try:
        yield
    except (InputError, KeyboardInterrupt) as e:
        raise SystemExit(exit_status(e, prog)) from None

"""One front door for the project's commands: ``sparse-autotune COMMAND [OPTIONS]``.

``sparse-autotune`` is the console script an install puts on the ``PATH`` (``[project.scripts]``
of ``pyproject.toml``); without installing, ``python -m autotune.cli COMMAND ...`` is the same.
Each command runs the ``main(argv)`` of its module with the same flags as the module's own
``python -m`` form, which keeps working:

    sparse-autotune search --space search_spaces/cpu.yaml   = python -m autotune.search --space ...
    sparse-autotune export --study NAME                     = python -m autotune.export --study NAME
    sparse-autotune bench --quick                           = python -m kernels.bench --quick

``sparse-autotune COMMAND --help`` prints the command's own flags. A command's module is imported
only when it runs (``bench`` loads torch, ``ingest`` does not). Every command stops with the one
exit-status mapping of `patterns.errors.exit_status`: 0 done; 2 bad input (one line on stderr,
also an unknown command); 1 a failure that is not the input's (a database error, one line);
130 Ctrl-C.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

from patterns.errors import InputError, exit_status, run_command

__all__ = ["Command", "COMMANDS", "PROG", "main"]

PROG = "sparse-autotune"


@dataclass(frozen=True)
class Command:
    """A subcommand: ``module:function`` is its ``main(argv)``; ``summary`` is its line in the help."""

    module: str
    function: str
    summary: str

    @property
    def python_m(self) -> str:
        """The command's own ``python -m`` form."""
        return f"python -m {self.module.removesuffix('.__main__')}"


COMMANDS: dict[str, Command] = {
    "search": Command("autotune.search", "main", "run or resume a study (trials measured on this machine or a Ray cluster)"),
    "export": Command("autotune.export", "main", "write a study's chosen pattern per length bucket (the tuned file)"),
    "report": Command("autotune.report.__main__", "main", "write a study's Markdown report with its figures"),
    "accuracy": Command("autotune.accuracy.__main__", "run", "check patterns or a tuned file on protein structures"),
    "ingest": Command("autotune.ingest", "main", "load benchmark CSVs into the results database"),
    "copy-study": Command("autotune.copy_study", "main", "copy a study with its measurements to another database"),
    "upgrade": Command("autotune.upgrade", "main", "upgrade a results database to this code's schema"),
    "bench": Command("kernels.bench", "main", "benchmark the attention backends into a CSV"),
    "evoformer-bench": Command("autotune.evoformer.bench", "main", "benchmark a whole EvoFormer block into a CSV"),
}


def usage() -> str:
    """The front door's help: the commands, one line each, with their ``python -m`` forms."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [OPTIONS]   ({PROG} COMMAND --help: the command's options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {c.summary} ({c.python_m})" for name, c in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``argv[0]``'s command on the rest of ``argv`` (default ``sys.argv[1:]``); its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        got = f"unknown command {argv[0]!r}" if argv else "no command given"
        return exit_status(InputError(f"{got}; the commands: {', '.join(COMMANDS)} ({PROG} --help)"), PROG)
    command = COMMANDS[argv[0]]
    run = getattr(importlib.import_module(command.module), command.function)
    try:  # the benchmarks' main returns its rows, the others their exit status
        return run_command(lambda: _status(run(argv[1:])), f"{PROG} {argv[0]}")
    except SystemExit as e:  # argparse's --help (0) or bad flag (2, its message printed): as a status
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        raise


def _status(result: object) -> int:
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())

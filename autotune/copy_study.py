"""Copy a study with its measurements to another database:
``python -m autotune.copy_study --study NAME --from URL --to URL [--to-study NAME]``.

``optuna.copy_study`` copies Optuna's side of a study (trials, values, parameters, attributes)
and nothing of ours, so export and report at the destination would see no measurement. This
command copies both: Optuna's study through ``optuna.copy_study``, then, in one transaction, our
rows of the study - ``at_runs``, ``at_trials`` (tied to the destination's Optuna study and trial
ids), ``at_measurements``, ``at_confirmations`` and ``at_tuned`` - so that the export and the
report give the same answer at the destination (a confirmation stays current: it covered the
same trials). Any pair of databases works, SQLite to PostgreSQL included (moving a study off a
laptop onto a shared server).

Only the rows tied to Optuna's study are copied (`results.db.LiveStudy`): rows left by a deleted
study of the same name stay behind. The source is only read. Refused with one line and exit status
2, with nothing written: a bad URL, a source without the study, a study with trials still running
(copy it when no driver is running on it), a destination that already holds a study of that name.
If copying our rows fails after Optuna's study was created at the destination, that study is
deleted again, so a failed copy leaves nothing behind. The copying is `results.copy_study`'s; this
module is the command line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from patterns.errors import run_command
from patterns.names import check_argv

__all__ = ["main"]

PROG = "autotune.copy_study"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autotune.copy_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True, help="study to copy")
    p.add_argument("--from", dest="src", required=True, help="source: SQLAlchemy URL or SQLite file")
    p.add_argument("--to", dest="dst", required=True, help="destination: SQLAlchemy URL or SQLite file")
    p.add_argument("--to-study", help="name at the destination (default: the same)")
    args = p.parse_args(argv)
    from results.storage import database_error_line

    return run_command(lambda: _copy(args, argv), PROG, failure=lambda e: database_error_line(e, args.dst))


def _copy(args: argparse.Namespace, argv: Optional[list[str]]) -> int:
    """Resolve both URLs (refusing a copy onto itself), copy, and say what was copied."""
    from results.copy_study import CopyError, copy_study
    from results.storage import StorageError, mask_url, resolve_storage

    try:
        check_argv(sys.argv[1:] if argv is None else argv)  # not UTF-8: nothing could store it
        src = resolve_storage(args.src, "read").url
    except StorageError as e:
        raise CopyError(f"--from: {e}") from None
    try:
        dst = resolve_storage(args.dst, "write").url
    except StorageError as e:
        raise CopyError(f"--to: {e}") from None
    if src == dst and (args.to_study or args.study) == args.study:
        raise CopyError("--to: the same database and study name as --from (use --to-study NAME)")
    r = copy_study(args.study, src, dst, args.to_study)
    print(f"{PROG}: copied study {r.study!r} from {mask_url(src)} to {mask_url(dst)} as {r.to_study!r}: "
          f"{r.trials} Optuna trial(s), {r.trial_rows} trial row(s), {r.measurements} measurement(s), {r.runs} run(s), "
          f"{r.confirmations} confirmation row(s), {r.exports} export row(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

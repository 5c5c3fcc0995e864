"""``python -m autotune.report [--storage URL] [--out FILE] [options]``.

Options: ``--study NAME`` (default: the study of the latest search run), ``--out FILE`` (default
``results/REPORT.md``), ``--plots-dir DIR`` (default ``<out stem>_files`` next to the report),
``--storage`` (default the search's; a plain path is a SQLite file). The targets are the study's
own (the space's ``targets`` section), the same the search and the export used: the report takes
no thresholds of its own. Exit status: 0 written; 2 the database is missing or empty or the study
is unknown, or ``--out`` / ``--plots-dir`` cannot be written (a folder, a device, a FIFO, a path below
a file, ``/proc``: one line on stderr, nothing written). The report replaces only a regular file,
atomically, and writes through a link (`patterns.output`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from patterns.errors import InputError, run_command
from patterns.output import check_output_path

from results.artifacts import ARTIFACTS_HELP
from results.storage import STORAGE_HELP

PROG = "autotune.report"


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m autotune.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    p.add_argument("--out", default=os.path.join("results", "REPORT.md"), help="Markdown report (default results/REPORT.md)")
    p.add_argument("--study", default=None, help="study to report (default: the latest run's study)")
    p.add_argument("--plots-dir", default=None, help="where the PNGs go (default <out stem>_files/)")
    p.add_argument("--artifacts", default=None, help=ARTIFACTS_HELP)
    args = p.parse_args(argv)
    return run_command(lambda: _report(args, argv), PROG)


def _report(args: argparse.Namespace, argv: list[str]) -> int:
    """Read the study (`results.report.load`), write the report and its figures, and link both to
    the study in Optuna's artifact store."""
    from patterns.names import check_argv, check_study_name
    from results.artifacts import artifact_dir, upload_and_say
    from results.report import ReportError, build_report, load
    from results.storage import database_error_line, resolve_storage

    check_argv(argv)
    if args.study is not None:
        check_study_name(args.study, "--study")
    check_output_path(args.out)  # a folder, a device, /proc, ...: refused before anything is read or drawn
    plots_dir = args.plots_dir or str(Path(args.out).with_name(Path(args.out).stem + "_files"))
    check_output_path(os.path.join(plots_dir, "figure.png"))
    storage = resolve_storage(args.storage, "read")
    artifacts = artifact_dir(args.artifacts, args.out)
    try:
        data = load(storage.url, args.study)
    except InputError:  # ReportError, StorageError, ...: as they are
        raise
    except (ValueError, TypeError) as e:  # a stored JSON cell that does not decode (hand-edited database)
        raise ReportError(f"cannot read --storage {storage.masked}: a stored value is corrupted "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    except Exception as e:  # noqa: BLE001 - a corrupted database file (a damaged page): one line, exit 2
        line = database_error_line(e, storage.url)
        if line is None:
            raise
        raise ReportError(f"cannot read --storage: {line} (a damaged database file?)") from None
    text, figures = build_report(data, args.out, args.plots_dir, argv=argv)  # OutputPathError (a full disk): one line
    print(f"{PROG}: wrote {args.out} ({len(text.splitlines())} lines, {len(figures)} figure(s))", file=sys.stderr)
    if data.study is not None:  # the report and its figures, linked to the study it reports
        upload_and_say(PROG, storage.url, data.study, [args.out, *map(str, figures)], artifacts)
    return 0


if __name__ == "__main__":
    sys.exit(main())

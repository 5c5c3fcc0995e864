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

from patterns.errors import InputError, report_input_error
from patterns.output import check_output_path

from results.storage import STORAGE_HELP


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m autotune.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    p.add_argument("--out", default=os.path.join("results", "REPORT.md"), help="Markdown report (default results/REPORT.md)")
    p.add_argument("--study", default=None, help="study to report (default: the latest run's study)")
    p.add_argument("--plots-dir", default=None, help="where the PNGs go (default <out stem>_files/)")
    args = p.parse_args(argv)
    from results.report.build import build_report
    from results.report.data import load
    from results.storage import resolve_storage

    try:
        check_output_path(args.out)  # a folder, a device, /proc, ...: refused before anything is read or drawn
        plots_dir = args.plots_dir or str(Path(args.out).with_name(Path(args.out).stem + "_files"))
        check_output_path(os.path.join(plots_dir, "figure.png"))
        storage = resolve_storage(args.storage, "read")
        data = load(storage.url, args.study)
    except InputError as e:  # ReportError, StorageError, OutputPathError, ...
        return report_input_error(e, "autotune.report")
    except (ValueError, TypeError) as e:  # a stored JSON cell that does not decode (hand-edited database)
        print(f"autotune.report: error: cannot read --storage {storage.masked}: a stored value is corrupted "
              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})", file=sys.stderr)
        return 2
    try:
        text, figures = build_report(data, args.out, args.plots_dir, argv=argv)
    except InputError as e:  # OutputPathError: the disk filled up, ...
        return report_input_error(e, "autotune.report")
    print(f"autotune.report: wrote {args.out} ({len(text.splitlines())} lines, {len(figures)} figure(s))", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

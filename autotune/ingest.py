"""Load benchmark CSVs into the results database: ``python -m autotune.ingest``.

    python -m autotune.ingest --storage sqlite:///results/autotune.db --kernel-csv benchmarks/results/cpu-2cores.csv \\
        [--evoformer-csv benchmarks/results/evoformer-cpu.csv] [--command "python -m kernels.bench ..."]

``--kernel-csv`` is a CSV of ``python -m kernels.bench``, ``--evoformer-csv`` one of ``python -m
autotune.evoformer.bench`` (each option may be repeated; at least one file is needed). Each file
becomes one ``at_bench_runs`` row and its rows ``at_kernel_bench`` / ``at_evoformer_bench`` rows
(`results.bench_tables`), written in one transaction per file. ``--command`` records how the CSV
was produced (the benchmarks do not write their command line into the file).

Every file is read and checked before anything is written: a missing required column, a value
that is not a number where one is expected, a per-file column (device, dtype, ...) that changes
within the file or a file without data rows is an error naming the file, line and column, and
nothing is written (exit status 2). A file whose content (SHA-256) was already ingested as the
same kind is skipped unless ``--force``. The reading and writing are `results.ingest`'s; this
module is the command line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from patterns.errors import run_command

from results.storage import STORAGE_HELP

__all__ = ["main"]

PROG = "autotune.ingest"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autotune.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    p.add_argument("--kernel-csv", action="append", default=[], help="CSV of python -m kernels.bench (repeatable)")
    p.add_argument("--evoformer-csv", action="append", default=[],
                   help="CSV of python -m autotune.evoformer.bench (repeatable)")
    p.add_argument("--command", default=None, help="the command line that produced the CSV(s), recorded with them")
    p.add_argument("--force", action="store_true", help="ingest a file again even if its content is already there")
    args = p.parse_args(argv)
    from results.storage import database_error_line

    files = [(f, "kernel") for f in args.kernel_csv] + [(f, "evoformer") for f in args.evoformer_csv]
    if not files:
        p.error("give at least one --kernel-csv or --evoformer-csv")
    where = [args.storage or ""]  # the database URL once resolved: its password is masked in a database error
    return run_command(lambda: _ingest(args, files, where), PROG, failure=lambda e: database_error_line(e, where[0]))


def _ingest(args: argparse.Namespace, files: list[tuple[str, str]], where: list[str]) -> int:
    """Check every file and the database URL, then write each file in its own transaction."""
    from results.db import Database
    from results.ingest import ingest_file, parse_csv
    from results.storage import mask_secrets, resolve_storage

    for f, kind in files:  # check every file and the database URL before writing any
        parse_csv(f, kind)
    where[0] = storage = resolve_storage(args.storage, "write").url
    db = Database(storage)  # creates the at_ tables, bench tables included
    try:
        for f, kind in files:
            rid = ingest_file(db, f, kind, command=mask_secrets(args.command) if args.command else None,
                              force=args.force)
            if rid is None:
                print(f"{PROG}: {f}: already ingested as {kind} (same content); skipped (--force to add again)",
                      file=sys.stderr)
            else:
                print(f"{PROG}: {f}: {kind} benchmark -> at_bench_runs id {rid}", file=sys.stderr)
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

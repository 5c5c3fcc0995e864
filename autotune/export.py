"""Export a study's chosen config per bucket: ``python -m autotune.export --study NAME [--out FILE]``.

Options: ``--storage URL`` (default ``$AUTOTUNE_STORAGE``, else ``sqlite:///results/autotune.db``;
a plain file path is read as a SQLite file), ``--out FILE`` (default ``results/<study>.yaml``;
written by `patterns.output.write_output`: only a regular file is replaced, atomically, a link is
written through, anything else is refused with one line before any work).

Choice rule: the one rule of `results.verdict` (also behind the search's verdict and the
report): per bucket, the study's leaders (COMPLETE trials meeting every non-speedup target at
every workload there, by geometric-mean paired speedup over SDPA) are re-measured together with
the baseline; the chosen config is the confirmed leader with the highest confirmed geometric-mean
speedup whose confirmed interval clears the speedup target at every workload and that meets every
other target of the space; its exported speedups are those of a hold-out re-measurement of the
chosen config alone against SDPA (free of the selection's upward bias), which must clear the
speedup target too. If the study's latest confirmation does not cover its current trials
(or there is none), the export runs it first, on this machine. A bucket without a choice is left
out of the file, listed under ``infeasible_buckets`` and with its reason under ``not_exported``
(a deployment runs dense attention there, see `kernels.tuned`). While a search is still measuring
the study (trials RUNNING under a driver that is alive), the export refuses with "N trials still
running; export again when the search ends" (exit status 2): nothing is confirmed or written.
The file names the machine it was tuned on (``device``, ``device_name``, ``dtype``) and, per
bucket, the ``heads`` and ``head_dims`` measured there; `kernels.load_tuned` checks them where the file is used (format 2; format 1
files, without these, are still read). Exit status 2 with one line if the database
or the study does not exist (the line lists the studies that do), or if no bucket has a choice.

The file is read by `kernels.load_tuned`; each choice is also recorded in ``at_tuned``. The
reading, the rule and the writing are `results.export`'s; this module adds the confirmation on this
machine (`autotune.confirm`) and the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

from patterns.errors import exit_status
from patterns.output import check_output_path

from results.storage import STORAGE_HELP
from results.artifacts import ARTIFACTS_HELP
from results.export import RULE, ExportError, _shapes, document, load_live, open_study, write  # noqa: F401

__all__ = ["choose", "export", "main", "ExportError", "RULE"]


def choose(study: str, storage: str, *, log=None) -> dict[str, Any]:
    """The export document for ``study`` (raises ExportError); confirms first when the study has no
    current confirmation (on this machine)."""
    from results.db import utcnow

    from .confirm import confirm
    from .search import driver_alive

    log = log or (lambda msg: print(f"autotune.export: {msg}", file=sys.stderr))
    now = utcnow()
    # a search still measuring the study: refused (one line), nothing confirmed or written
    data = open_study(study, storage, log=log, alive=lambda run: driver_alive(run, now))
    if data.confirmations is None:
        log("the study's leaders have no current confirmation; confirming them on this machine")
        try:
            confirm(storage, study, log=log)
        except RuntimeError as e:
            raise ExportError(f"study {study!r}: cannot confirm: {e}") from None
        data = load_live(study, storage)
    return document(study, data)


def export(study: str, storage: str, out: str, log=None) -> dict[str, Any]:
    """Choose (`choose`) and write the tuned file ``out`` and the ``at_tuned`` rows. ``out`` is
    checked first (`patterns.output.check_output_path`: a folder, a device, a FIFO or a place where
    no file can be created is refused before anything is measured or written)."""
    check_output_path(out)
    doc = choose(study, storage, log=log)
    write(doc, storage, out)
    return doc


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autotune.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True)
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    p.add_argument("--out", default=None, help="output YAML (default results/<study>.yaml)")
    p.add_argument("--artifacts", default=None, help=ARTIFACTS_HELP)
    args = p.parse_args(argv)
    from patterns.names import check_argv, check_study_name
    from results.artifacts import artifact_dir, upload_and_say
    from results.storage import database_error_line, resolve_storage

    out = args.out or os.path.join("results", f"{args.study}.yaml")
    try:
        check_argv(sys.argv[1:] if argv is None else argv)
        check_study_name(args.study, "--study")
        check_output_path(out)  # before the storage is opened: a refused --out changes nothing
        artifacts = artifact_dir(args.artifacts, out)
        storage = resolve_storage(args.storage, "write").url  # export records its choice in at_tuned
        doc = export(args.study, storage, out)
    except BaseException as e:  # noqa: BLE001 - ExportError, StorageError (also another schema version): 2; database: 1
        return exit_status(e, "autotune.export", failure=lambda e: database_error_line(e, args.storage or ""))
    for b in doc["buckets"]:
        lo, hi = b["speedup_interval"]
        tie = f", tied with {', '.join(f't#{t}' for t in b['tied_with'])}" if b["tied_with"] else ""
        print(f"L={b['seq_len']}: trial {b['source']['trial']} {b['pattern']} speedup {b['speedup_geomean']}x "
              f"[{lo}, {hi}] {'hold-out' if b.get('speedup_from') == 'holdout' else 'confirmed'}{tie}", file=sys.stderr)
    for L, why in doc["not_exported"].items():
        print(f"autotune.export: L={L} not exported: {why}", file=sys.stderr)
    print(f"autotune.export: wrote {out}", file=sys.stderr)
    upload_and_say("autotune.export", storage, args.study, [out], artifacts)
    return 0


if __name__ == "__main__":
    sys.exit(main())

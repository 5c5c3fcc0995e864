"""Export a study's best config per bucket: ``python -m autotune.export --study NAME --out FILE``.

Options: ``--storage URL`` (default ``$AUTOTUNE_STORAGE``, else ``sqlite:///results/autotune.db``), ``--out FILE`` (default
``tuned/<study>.yaml``).

Choice rule, per bucket: among the study's COMPLETE trials whose measurements at that bucket meet
every constraint of the space at every workload (the per-cell ``feasible`` flag in
``at_measurements``: speedup, memory and accuracy at this bucket), take the one with the highest
geometric-mean speedup over the workloads at that bucket; ties go to the lower geometric-mean
peak memory, then to the earlier trial. A bucket with no feasible trial is left out of the file and
listed under ``infeasible_buckets`` (a deployment then uses the next larger bucket, or the largest,
see `patterns.tuned`). Exit status 2 with one line if the database or the study does not exist, or
if no bucket has a feasible trial.

The file is read by `patterns.load_tuned`; each choice is also recorded in ``at_tuned``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

RULE = ("per bucket: the COMPLETE trial meeting every constraint at every workload of that bucket with the "
        "highest geometric-mean speedup over the workloads (ties: lower geometric-mean peak memory, then "
        "the earlier trial)")


class ExportError(Exception):
    pass


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no &anchors / *aliases for repeated mappings (e.g. the hardware)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _geomean(xs: list[Optional[float]]) -> float:
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else 0.0


def choose(study: str, storage: str) -> dict[str, Any]:
    """The export document for ``study`` (raises ExportError)."""
    from sqlalchemy import inspect, select

    from .db import Database, Measurement, Run, TrialRow

    path = _sqlite_path(storage)
    if path is not None and not os.path.isfile(path):
        raise ExportError(f"--storage: no database file {path}")
    db = Database(storage, create=False)
    try:
        if not inspect(db.engine).has_table(TrialRow.__tablename__):
            raise ExportError(f"study {study!r}: no autotune tables in {_safe(storage)}")
        with db.Session() as s:
            trials = s.scalars(select(TrialRow).where(TrialRow.study_name == study)).all()
            if not trials:
                raise ExportError(f"study {study!r} does not exist in {_safe(storage)} (no trial recorded)")
            complete = [t for t in trials if t.state == "COMPLETE"]
            ms = s.scalars(
                select(Measurement).join(TrialRow).where(TrialRow.study_name == study, TrialRow.state == "COMPLETE")
            ).all()
            runs = {r.id: r for r in s.scalars(select(Run).where(Run.study_name == study)).all()}
            by_trial: dict[int, dict[int, list[Measurement]]] = {}
            for m in ms:
                by_trial.setdefault(m.trial_id, {}).setdefault(m.bucket, []).append(m)
            buckets = sorted({m.bucket for m in ms})
            space = None
            for r in sorted(runs.values(), key=lambda r: r.id, reverse=True):
                space = r.space
                break
            out_buckets, infeasible = [], []
            for L in buckets:
                best, best_key = None, None
                for t in complete:
                    cells = by_trial.get(t.id, {}).get(L)
                    if not cells or not all(c.feasible for c in cells):
                        continue
                    key = (-_geomean([c.speedup for c in cells]), _geomean([max(c.peak_mib, 1e-6) for c in cells]), t.number)
                    if best_key is None or key < best_key:
                        best, best_key = t, key
                if best is None:
                    infeasible.append(L)
                    continue
                cells = sorted(by_trial[best.id][L], key=lambda c: c.workload)
                acc = cells[0].accuracy or {}
                run = runs.get(best.run_id)
                out_buckets.append({
                    "seq_len": L,
                    "pattern": dict(best.pattern),
                    "kernel": dict(best.kernel) if best.kernel else None,
                    "source": {"study": study, "trial": best.number, "run_id": best.run_id},
                    "sparsity": round(cells[0].sparsity, 6),
                    "speedup": {c.workload: _r(c.speedup) for c in cells},
                    "speedup_geomean": _r(-best_key[0]),
                    "time_ms": {c.workload: _r(c.time_ms) for c in cells},
                    "sdpa_ms": {c.workload: _r(c.sdpa_ms) for c in cells},
                    "peak_mib": {c.workload: _r(c.peak_mib) for c in cells},
                    "sdpa_peak_mib": {c.workload: _r(c.sdpa_peak_mib) for c in cells},
                    "naive_peak_mib": {c.workload: _r(c.naive_peak_mib) for c in cells},
                    "memory_vs_sdpa": {c.workload: _r(c.memory_vs_sdpa) for c in cells},
                    "memory_vs_naive": {c.workload: _r(c.memory_vs_naive) for c in cells},
                    "accuracy": {k: _r(v) for k, v in (acc.get("metrics") or {}).items()},
                    "accuracy_extrapolated": acc.get("extrapolated"),
                    "hardware": (run.hardware if run else None),
                })
            if not out_buckets:
                raise ExportError(
                    f"study {study!r} has no feasible trial at any bucket ({len(complete)} complete of {len(trials)})"
                )
            first_run = runs.get(out_buckets[0]["source"]["run_id"])
            return {
                "format": 1,
                "study": study,
                "rule": RULE,
                "device": space.get("device") if space else None,
                "backend": space.get("backend") if space else None,
                "dtype": space.get("dtype") if space else None,
                "mode": space.get("mode") if space else None,
                "workloads": space.get("workloads") if space else None,
                "constraints": space.get("constraints") if space else None,
                "hardware": first_run.hardware if first_run else None,
                "versions": first_run.versions if first_run else None,
                "git_revision": first_run.git_revision if first_run else None,
                "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "infeasible_buckets": infeasible,
                "buckets": out_buckets,
            }
    finally:
        db.close()


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else float(f"{x:.6g}")


def _sqlite_path(url: str) -> Optional[str]:
    from .storage import sqlite_file

    return sqlite_file(url)


def _safe(url: str) -> str:
    from .storage import mask_url

    return mask_url(url)


def export(study: str, storage: str, out: str) -> dict[str, Any]:
    from .db import Database, Tuned

    doc = choose(study, storage)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out) + ".tmp")
    tmp.write_text(f"# Tuned sparse attention patterns, exported from study {study!r}.\n"
                   f"# Rule: {RULE}.\n# Read with patterns.load_tuned(path).\n"
                   + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=110))
    os.replace(tmp, out)
    db = Database(storage)
    try:
        with db.session() as s:
            for b in doc["buckets"]:
                s.add(Tuned(study_name=study, bucket=b["seq_len"], trial_number=b["source"]["trial"], pattern=b["pattern"],
                            kernel=b["kernel"], speedup=b["speedup"], peak_mib=b["peak_mib"], accuracy=b["accuracy"],
                            hardware=b["hardware"], rule=RULE, out_path=str(out)))
    finally:
        db.close()
    return doc


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autotune.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True)
    p.add_argument("--storage", default=None, help="SQLAlchemy URL or SQLite file (default $AUTOTUNE_STORAGE, "
                   "else sqlite:///results/autotune.db)")
    p.add_argument("--out", default=None, help="output YAML (default tuned/<study>.yaml)")
    args = p.parse_args(argv)
    from .storage import StorageError, database_error_line, resolve_storage

    out = args.out or os.path.join("tuned", f"{args.study}.yaml")
    try:
        storage = resolve_storage(args.storage, "write").url  # export records its choice in at_tuned
        doc = export(args.study, storage, out)
    except (ExportError, StorageError) as e:
        print(f"autotune.export: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a database error: one line, no password
        line = database_error_line(e, args.storage or "")
        if line is None:
            raise
        print(f"autotune.export: error: {line}", file=sys.stderr)
        return 1
    for b in doc["buckets"]:
        print(f"L={b['seq_len']}: trial {b['source']['trial']} {b['pattern']} speedup {b['speedup_geomean']}x",
              file=sys.stderr)
    if doc["infeasible_buckets"]:
        print(f"autotune.export: no feasible trial at bucket(s) {doc['infeasible_buckets']} (left out)", file=sys.stderr)
    print(f"autotune.export: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

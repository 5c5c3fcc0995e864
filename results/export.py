"""Export a study's chosen config per bucket: ``python -m autotune.export --study NAME [--out FILE]``.

Options: ``--storage URL`` (default ``$AUTOTUNE_STORAGE``, else ``sqlite:///results/autotune.db``;
a plain file path is read as a SQLite file), ``--out FILE`` (default ``results/<study>.yaml``).

Choice rule: the one rule of `autotune.verdict` (also behind the search's verdict and the
report): per bucket, the study's leaders (COMPLETE trials meeting every non-speedup target at
every workload there, by geometric-mean paired speedup over SDPA) are re-measured together with
the baseline; the chosen config is the confirmed leader with the highest confirmed geometric-mean
speedup whose confirmed interval clears the speedup target at every workload and that meets every
other target of the space; its exported speedups are those of a hold-out re-measurement of the
chosen config alone against SDPA (free of the selection's upward bias), which must clear the
speedup target too. If the study's latest confirmation does not cover its current trials
(or there is none), the export runs it first, on this machine. A bucket without a choice is left
out of the file, listed under ``infeasible_buckets`` and with its reason under ``not_exported``
(a deployment runs dense attention there, see `patterns.tuned`). The file names the machine it was
tuned on (``device``, ``device_name``, ``dtype``) and, per bucket, the ``heads`` and ``head_dims``
measured there; `patterns.load_tuned` checks them where the file is used (format 2; format 1
files, without these, are still read). Exit status 2 with one line if the database
or the study does not exist (the line lists the studies that do), or if no bucket has a choice.

The file is read by `patterns.load_tuned`; each choice is also recorded in ``at_tuned``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from patterns.tuned import FORMAT

RULE = ("per bucket (autotune.verdict): the confirmed leader - re-measured interleaved with SDPA and the other "
        "leaders - with the highest confirmed geometric-mean speedup over the workloads whose interval clears the "
        "speedup target and that meets every other target at every workload (ties: lower geometric-mean peak "
        "memory, then the earlier trial); its speedups are re-measured once more, alone against SDPA (hold-out: "
        "free of the selection's upward bias), and must clear the speedup target there too")


class ExportError(Exception):
    pass


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no &anchors / *aliases for repeated mappings (e.g. the hardware)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _studies(db) -> list[str]:
    from sqlalchemy import select

    from .db import TrialRow

    with db.Session() as s:
        return sorted(set(s.scalars(select(TrialRow.study_name).distinct()).all()))


def _check_live(db, study: str, storage: str, studies: list[str]) -> None:
    """Refuse a study that Optuna's storage does not hold: its rows would cite trials that do not
    exist (a study removed with ``optuna delete-study`` leaves our tables behind)."""
    live = db.live_study(study)
    if not live.has_optuna:
        raise ExportError(f"study {study!r}: {_safe(storage)} holds no Optuna study storage, so its trials "
                          "cannot be checked to exist; export from the database the search wrote")
    if not live.exists:
        from .db import live_study

        with db.Session() as s:
            alive = [n for n in studies if live_study(s, n).exists]
        raise ExportError(f"study {study!r} is not in Optuna's storage in {_safe(storage)} (deleted with optuna "
                          f"delete-study?); its leftover rows are not exported "
                          f"(studies there: {', '.join(alive) if alive else 'none'})")


def _load_live(db, study: str):
    """`autotune.verdict.load_study`, restricted to the trials Optuna's study holds now."""
    from .db import find_orphans, restrict_study_data
    from .verdict import load_study

    with db.Session() as s:
        orphans = find_orphans(s, study)
        data = load_study(s, study)
        s.expunge_all()
    return restrict_study_data(data, orphans)


def _clean(d: Optional[dict]) -> Optional[dict]:
    return None if d is None else {k: v for k, v in d.items() if v is not None}


def _g(c: Any, k: str) -> Any:
    return c.get(k) if isinstance(c, dict) else getattr(c, k, None)


def choose(study: str, storage: str, *, log=None) -> dict[str, Any]:
    """The export document for ``study`` (raises ExportError); confirms first when needed."""
    from sqlalchemy import inspect

    from .db import Database, TrialRow
    from .space import SearchSpace
    from .verdict import confirm, decide, memory_ratio

    log = log or (lambda msg: print(f"autotune.export: {msg}", file=sys.stderr))
    path = _sqlite_path(storage)
    if path is not None and not os.path.isfile(path):
        raise ExportError(f"--storage: no database file {path}")
    db = Database(storage, create=False)
    try:
        if not inspect(db.engine).has_table(TrialRow.__tablename__):
            raise ExportError(f"study {study!r}: no autotune tables in {_safe(storage)}")
        studies = _studies(db)
        if study not in studies:
            raise ExportError(f"study {study!r} does not exist in {_safe(storage)} "
                              f"(studies there: {', '.join(studies) if studies else 'none'})")
        _check_live(db, study, storage, studies)
        gone = db.drop_orphans(study)  # rows of an earlier study of this name: never cited
        if gone:
            log(f"removed {gone.text()} (left by a deleted study)")
        data = _load_live(db, study)
    finally:
        db.close()
    if not data.trials:
        raise ExportError(f"study {study!r} has no complete trial ({data.n_trials} recorded)")
    space = SearchSpace.from_dict(data.space)
    targets = space.effective_targets()
    top = int(space.measure.get("confirm_top", 3))
    if data.confirmations is None:
        log("the study's leaders have no current confirmation; confirming them on this machine")
        try:
            confirm(storage, study, log=log)
        except RuntimeError as e:
            raise ExportError(f"study {study!r}: cannot confirm: {e}") from None
        db = Database(storage, create=False)
        try:
            data = _load_live(db, study)
        finally:
            db.close()
    verdicts = decide(targets, data.cells_by_trial, data.buckets, data.confirmations or [], top)
    runs = {r.id: r for r in data.runs}
    floor = targets.memory_floor_mib
    out_buckets, not_exported = [], {}
    for v in verdicts:
        if not v.deploy:
            not_exported[v.bucket] = v.why
            continue
        t = data.trials[v.trial]
        cells = v.cells
        acc = _g(cells[0], "accuracy") or {}
        run = runs.get(t.run_id)
        lengths = acc.get("lengths") or []
        sb = targets.bound("speedup")
        shapes = _shapes(space, v.bucket)
        out_buckets.append({
            "seq_len": v.bucket,
            "heads": shapes["heads"],
            "head_dims": shapes["head_dims"],
            "pattern": dict(t.pattern),
            "kernel": dict(t.kernel) if t.kernel else None,
            "source": {"study": study, "trial": t.number, "run_id": t.run_id,
                       "confirmation": sorted({_g(c, "confirmation_id") for c in cells if _g(c, "confirmation_id")})},
            "sparsity": round(_g(cells[0], "sparsity"), 6),
            "speedup": {_g(c, "workload"): {"median": _r(_g(c, "speedup")), "lo": _r(_g(c, "speedup_lo")),
                                            "hi": _r(_g(c, "speedup_hi")), "repeats": _g(c, "repeats")} for c in cells},
            "speedup_geomean": _r(v.speedup),
            "speedup_interval": [_r(v.lo), _r(v.hi)],
            "speedup_from": "holdout" if v.holdout else "confirmation",
            "speedup_min": sb.min if sb is not None else None,
            "tied_with": list(v.tied_with),
            "time_ms": {_g(c, "workload"): _r(_g(c, "time_ms")) for c in cells},
            "sdpa_ms": {_g(c, "workload"): _r(_g(c, "sdpa_ms")) for c in cells},
            "peak_mib": {_g(c, "workload"): _r(_g(c, "peak_mib")) for c in cells},
            "sdpa_peak_mib": {_g(c, "workload"): _r(_g(c, "sdpa_peak_mib")) for c in cells},
            "naive_peak_mib": {_g(c, "workload"): _r(_g(c, "naive_peak_mib")) for c in cells},
            "memory_vs_naive": {_g(c, "workload"): _r(memory_ratio(_g(c, "peak_mib"), _g(c, "naive_peak_mib"), floor))
                                for c in cells},
            "memory_vs_sdpa": {_g(c, "workload"): _r(memory_ratio(_g(c, "peak_mib"), _g(c, "sdpa_peak_mib"), floor))
                               for c in cells},
            "accuracy": {k: _r(x) for k, x in (acc.get("metrics") or {}).items()},
            "accuracy_chains": {"n": acc.get("n_chains"), "lengths": [min(lengths), max(lengths)] if lengths else None,
                                "sparsity": _r(acc.get("chain_sparsity")), "max_chains": acc.get("max_chains")},
            "accuracy_extrapolated": bool(v.extrapolated),
            "hardware": (run.hardware if run else None),
        })
    if not out_buckets:
        raise ExportError(f"study {study!r} has no feasible trial at any bucket ({len(data.trials)} complete of "
                          f"{data.n_trials}): " + "; ".join(f"L={L}: {w}" for L, w in not_exported.items()))
    first_run = runs.get(out_buckets[0]["source"]["run_id"])
    sd = space.to_dict()
    hw = first_run.hardware if first_run else None
    return {
        "format": FORMAT,
        "study": study,
        "rule": RULE,
        "device": sd.get("device"),
        "device_name": (hw or {}).get("device_name"),
        "backend": sd.get("backend"),
        "dtype": sd.get("dtype"),
        "mode": sd.get("mode"),
        "workloads": [_clean(w) for w in sd.get("workloads") or []],
        "targets": {"bounds": [_clean(b) for b in targets.to_dict()["bounds"]],
                    "memory_floor_mib": targets.memory_floor_mib, "confidence": targets.confidence,
                    "source": targets.source},
        "hardware": first_run.hardware if first_run else None,
        "versions": first_run.versions if first_run else None,
        "git_revision": first_run.git_revision if first_run else None,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "infeasible_buckets": sorted(not_exported),
        "not_exported": {int(L): w for L, w in sorted(not_exported.items())},
        "buckets": out_buckets,
    }


def _shapes(space, bucket: int) -> dict[str, list[int]]:
    """Heads and head dims of the attention the space measured at ``bucket`` (every workload that
    applies there; an EvoFormer workload contributes its MSA and its triangle attention heads)."""
    heads: set[int] = set()
    dims: set[int] = set()
    for w in space.workloads:
        if not w.applies(bucket):
            continue
        heads.add(int(w.heads))
        if getattr(w, "pair_heads", None):
            heads.add(int(w.pair_heads))
        dims.add(int(w.head_dim))
    return {"heads": sorted(heads), "head_dims": sorted(dims)}


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else float(f"{x:.6g}")


def _sqlite_path(url: str) -> Optional[str]:
    from .storage import sqlite_file

    return sqlite_file(url)


def _safe(url: str) -> str:
    from .storage import mask_url

    return mask_url(url)


def export(study: str, storage: str, out: str, log=None) -> dict[str, Any]:
    from .db import Database, Tuned

    doc = choose(study, storage, log=log)
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
                            kernel=b["kernel"], speedup={w: x["median"] for w, x in b["speedup"].items()},
                            peak_mib=b["peak_mib"], accuracy=b["accuracy"],
                            hardware=b["hardware"], rule=RULE, out_path=str(out)))
    finally:
        db.close()
    return doc


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autotune.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True)
    p.add_argument("--storage", default=None, help="SQLAlchemy URL or SQLite file (default $AUTOTUNE_STORAGE, "
                   "else sqlite:///results/autotune.db)")
    p.add_argument("--out", default=None, help="output YAML (default results/<study>.yaml)")
    args = p.parse_args(argv)
    from .storage import StorageError, database_error_line, resolve_storage

    out = args.out or os.path.join("results", f"{args.study}.yaml")
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
        lo, hi = b["speedup_interval"]
        tie = f", tied with {', '.join(f't#{t}' for t in b['tied_with'])}" if b["tied_with"] else ""
        print(f"L={b['seq_len']}: trial {b['source']['trial']} {b['pattern']} speedup {b['speedup_geomean']}x "
              f"[{lo}, {hi}] {'hold-out' if b.get('speedup_from') == 'holdout' else 'confirmed'}{tie}", file=sys.stderr)
    for L, why in doc["not_exported"].items():
        print(f"autotune.export: L={L} not exported: {why}", file=sys.stderr)
    print(f"autotune.export: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

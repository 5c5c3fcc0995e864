"""Benchmark CSVs into the results database (behind ``python -m autotune.ingest``, whose docstring
says what the command checks and refuses).

`parse_csv` reads and checks one CSV of ``python -m kernels.bench`` (kind ``kernel``) or of
``python -m autotune.evoformer.bench`` (kind ``evoformer``) against the column mapping of
`results.bench_tables`, raising `IngestError` with the file, line and column of the first problem;
`ingest_file` writes one checked file as one ``at_bench_runs`` row and its rows in one
transaction, skipping content (SHA-256) already ingested as the same kind unless ``force``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Optional

from patterns.errors import InputError

from .bench_tables import KINDS, BenchRun

__all__ = ["IngestError", "parse_csv", "ingest_file"]


class IngestError(InputError):
    """A CSV that cannot be ingested; nothing was written."""


def _convert(value: str, typ: type, where: str) -> Any:
    v = value.strip()
    if typ is str:
        return v
    if v == "":
        return None
    try:
        if typ is int:
            f = float(v)
            if not f.is_integer():
                raise ValueError
            return int(f)
        f = float(v)
    except ValueError:
        raise IngestError(f"{where}: cannot read {value!r} as {'an integer' if typ is int else 'a number'}") from None
    return None if math.isnan(f) else f


def parse_csv(path: str | os.PathLike, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(per-file fields, row dicts keyed by table attribute, with ``csv_line``) of one CSV file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    run_cols, row_cols, _ = KINDS[kind]
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c, (_, _, req) in {**run_cols, **row_cols}.items() if req and c not in header]
        if missing:
            raise IngestError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
                              f"(a {kind} benchmark CSV has {', '.join(list(run_cols) + list(row_cols))})")
        run: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        for rec in reader:
            line = reader.line_num
            if None in rec:
                raise IngestError(f"{path}: line {line}: more values than columns")
            row: dict[str, Any] = {"csv_line": line}
            for col, (attr, typ, req) in row_cols.items():
                where = f"{path}: line {line}: column {col!r}"
                raw = rec.get(col)
                if raw is None:  # optional column absent from the header, or a short line
                    if col in header:
                        raise IngestError(f"{where}: value missing (fewer values than columns)")
                    row[attr] = None
                    continue
                val = _convert(raw, typ, where)
                if req and typ is int and val is None:
                    raise IngestError(f"{where}: empty")
                if req and typ is str and val == "":
                    raise IngestError(f"{where}: empty")
                row[attr] = val
            if row.get("status") == "ok":
                time_col = "ms" if kind == "kernel" else "median_ms"
                if row.get(time_col) is None:
                    raise IngestError(f"{path}: line {line}: column {time_col!r}: empty or NaN in a row whose status is 'ok'")
            for col, (attr, typ, req) in run_cols.items():
                if col not in header:
                    continue
                val = _convert(rec[col] if rec[col] is not None else "", typ, f"{path}: line {line}: column {col!r}")
                if req and val in (None, ""):
                    raise IngestError(f"{path}: line {line}: column {col!r}: empty")
                if attr in run and run[attr] != val:
                    raise IngestError(f"{path}: line {line}: column {col!r}: {val!r} differs from {run[attr]!r} on an "
                                      f"earlier line (one file must hold one device / dtype / version set)")
                run[attr] = val
            rows.append(row)
    if not rows:
        raise IngestError(f"{path}: no data rows")
    return run, rows


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ingest_file(db, path: str | os.PathLike, kind: str, *, command: Optional[str] = None,
                force: bool = False) -> Optional[int]:
    """Ingest one CSV in one transaction; returns the new ``at_bench_runs`` id, or None when the
    same content was already ingested as ``kind`` (and not ``force``). Raises IngestError."""
    from sqlalchemy import select

    run, rows = parse_csv(path, kind)
    path = Path(path)
    digest = _sha256(path)
    _, _, model = KINDS[kind]
    with db.session() as s:
        if not force:
            prev = s.scalar(select(BenchRun).where(BenchRun.kind == kind, BenchRun.source_sha256 == digest))
            if prev is not None:
                return None
        versions = {k: run.pop(k) for k in ("torch", "triton") if k in run}
        br = BenchRun(
            kind=kind, device=run.get("device"), dtype=run.get("dtype"), threads=run.get("threads"),
            versions=versions or None, command=command, source_path=str(path), source_sha256=digest,
            measured_at=dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).replace(tzinfo=None),
            n_rows=len(rows),
        )
        s.add(br)
        s.flush()
        s.add_all(model(bench_run_id=br.id, **r) for r in rows)
        return br.id

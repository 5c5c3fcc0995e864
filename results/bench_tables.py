"""Benchmark tables: the CSVs of ``kernels.bench`` and ``autotune.evoformer.bench`` in the results database.

The two benchmarks write CSV files (they stay importable without sqlalchemy); ``python -m
autotune.ingest`` loads them into these tables, on the same declarative ``Base`` as `results.db`
(so ``Base.metadata.create_all`` creates them with the others), and ``python -m autotune.report``
reads them from there.

Schema (one row per ...):

``at_bench_runs`` - one ingested CSV file
    id PK, kind (kernel | evoformer), device, dtype, threads, versions (JSON: torch, triton as the
    CSV records them), command (how the CSV was produced, from ``--command``), source_path,
    source_sha256 (the same file is not ingested twice), measured_at (the file's modification
    time, UTC), ingested_at, n_rows.

``at_kernel_bench`` - one CSV row of ``kernels.bench``: one (workload, L, batch, sparsity, pass, backend)
    id PK, bench_run_id FK -> at_bench_runs, csv_line (line number in the file, header = 1), and the
    CSV columns (see ``KERNEL_COLUMNS``).

``at_evoformer_bench`` - one CSV row of ``autotune.evoformer.bench``: one (L, mode, checkpoint, variant)
    id PK, bench_run_id FK -> at_bench_runs, csv_line, and the CSV columns (``EVOFORMER_COLUMNS``).

The CSV column -> table column mapping (name, type, required) is kept here, in ``KERNEL_COLUMNS``,
``EVOFORMER_COLUMNS`` and the ``*_RUN_COLUMNS`` (per-file columns, constant within one file).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import PREFIX, Base, utcnow

# CSV column -> (attribute, type, required). "required" columns must be in the header; values may be
# empty only in float columns (a row whose status is not "ok" has no time). Types: str, int, float.
KERNEL_RUN_COLUMNS: dict[str, tuple[str, type, bool]] = {
    "device": ("device", str, True),
    "dtype": ("dtype", str, True),
    "threads": ("threads", int, False),
    "torch": ("torch", str, False),
    "triton": ("triton", str, False),
}
KERNEL_COLUMNS: dict[str, tuple[str, type, bool]] = {
    "workload": ("workload", str, True),
    "L": ("seq_len", int, True),
    "batch": ("batch", int, True),
    "heads": ("heads", int, True),
    "head_dim": ("head_dim", int, True),
    "block_size": ("block_size", int, True),
    "window": ("window", int, False),
    "num_global": ("num_global", int, False),
    "stride": ("stride", int, False),
    "sparsity_target": ("sparsity_target", float, True),
    "sparsity_actual": ("sparsity_actual", float, True),
    "pass": ("pass_", str, True),
    "backend": ("backend", str, True),
    "status": ("status", str, True),
    "ms": ("ms", float, True),
    "mib": ("mib", float, True),
    "speedup_vs_sdpa": ("speedup_vs_sdpa", float, False),
    "speedup_vs_flex": ("speedup_vs_flex", float, False),
    "kernel_config": ("kernel_config", str, False),
    # since the guided family and the one measurement layer (absent from older CSVs: NULL)
    "family": ("family", str, False),
    "pool": ("pool", str, False),
    "build_ms": ("build_ms", float, False),
    "build_share": ("build_share", float, False),
    "timer": ("timer", str, False),
    "memory_method": ("memory_method", str, False),
}
EVOFORMER_RUN_COLUMNS: dict[str, tuple[str, type, bool]] = {
    "device": ("device", str, True),
    "dtype": ("dtype", str, True),
    "threads": ("threads", int, False),
}
EVOFORMER_COLUMNS: dict[str, tuple[str, type, bool]] = {
    "L": ("seq_len", int, True),
    "depth": ("depth", int, True),
    "mode": ("mode", str, True),
    # none | block | modules for fwd+bwd rows (schema version 4; absent from older CSVs and empty for
    # fwd rows: NULL, no checkpointing)
    "checkpoint": ("checkpoint", str, False),
    "variant": ("variant", str, True),
    "family": ("family", str, False),  # static | guided (absent from older CSVs: NULL)
    "pattern": ("pattern", str, False),
    "sparsity": ("sparsity", float, True),
    "status": ("status", str, True),
    "median_ms": ("median_ms", float, True),
    "min_ms": ("min_ms", float, False),  # older CSVs only (EVOFORMER_LEGACY)
    "p10_ms": ("p10_ms", float, False),
    "p90_ms": ("p90_ms", float, False),
    "rounds": ("rounds", int, False),
    "peak_mib": ("peak_mib", float, True),
    "speedup_vs_sdpa": ("speedup_vs_sdpa", float, False),
    "speedup_lo": ("speedup_lo", float, False),  # the 95% interval of the paired speedup over SDPA
    "speedup_hi": ("speedup_hi", float, False),
    "speedup_vs_naive": ("speedup_vs_naive", float, False),
    "attn3_share": ("attn3_share", float, False),
    "attn4_share": ("attn4_share", float, False),
    "core_share": ("core_share", float, False),
    "max_len": ("max_len", int, False),
    "mem_budget_gib": ("mem_budget_gib", float, False),
    "timer": ("timer", str, False),  # absent from older CSVs: NULL
    "memory_method": ("memory_method", str, False),
}


# columns that older EvoFormer benchmark CSVs have and today's benchmark no longer writes
EVOFORMER_LEGACY = frozenset({"min_ms"})


class BenchRun(Base):
    __tablename__ = PREFIX + "bench_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    device: Mapped[str] = mapped_column(String(256))
    dtype: Mapped[str] = mapped_column(String(32))
    threads: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    versions: Mapped[Any] = mapped_column(JSON, nullable=True)
    command: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    source_path: Mapped[str] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64), index=True)
    measured_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    n_rows: Mapped[int] = mapped_column(Integer)


class KernelBenchRow(Base):
    __tablename__ = PREFIX + "kernel_bench"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bench_run_id: Mapped[int] = mapped_column(ForeignKey(PREFIX + "bench_runs.id"), index=True)
    csv_line: Mapped[int] = mapped_column(Integer)
    workload: Mapped[str] = mapped_column(String(32))
    seq_len: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    heads: Mapped[int] = mapped_column(Integer)
    head_dim: Mapped[int] = mapped_column(Integer)
    block_size: Mapped[int] = mapped_column(Integer)
    window: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    num_global: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    stride: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    sparsity_target: Mapped[float] = mapped_column(Float)
    sparsity_actual: Mapped[float] = mapped_column(Float)
    pass_: Mapped[str] = mapped_column("pass", String(16))
    backend: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(64))
    ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    mib: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_vs_sdpa: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_vs_flex: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    kernel_config: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    family: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    pool: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    build_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    build_share: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    timer: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    memory_method: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)


class EvoformerBenchRow(Base):
    __tablename__ = PREFIX + "evoformer_bench"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bench_run_id: Mapped[int] = mapped_column(ForeignKey(PREFIX + "bench_runs.id"), index=True)
    csv_line: Mapped[int] = mapped_column(Integer)
    seq_len: Mapped[int] = mapped_column(Integer)
    depth: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    checkpoint: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    variant: Mapped[str] = mapped_column(String(64))
    family: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    pattern: Mapped[Optional[str]] = mapped_column(String(128), nullable=True)
    sparsity: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(64))
    median_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    min_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    p10_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    p90_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    rounds: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    peak_mib: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_vs_sdpa: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_lo: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_hi: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_vs_naive: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    attn3_share: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    attn4_share: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    core_share: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    max_len: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    mem_budget_gib: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    timer: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    memory_method: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)


# kind -> (per-file columns, per-row columns, row model)
KINDS: dict[str, tuple[dict, dict, type]] = {
    "kernel": (KERNEL_RUN_COLUMNS, KERNEL_COLUMNS, KernelBenchRow),
    "evoformer": (EVOFORMER_RUN_COLUMNS, EVOFORMER_COLUMNS, EvoformerBenchRow),
}

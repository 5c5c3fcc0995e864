"""Our tables (the ``at_`` models of the results database) and the schema version they are.

The columns of each table are described in `results.db`'s docstring. Every model declares on the
leaf `results.base.Base`; the benchmark tables of `results.bench_tables` are imported here by name,
so that creating ``Base.metadata`` (`results.schema.create_schema`) creates them with these: the
registration is this module's import list, nothing registers itself by side effect elsewhere.

``SCHEMA_VERSION`` is the version of these tables; ``UNVERSIONED`` the version of a database written
before the ``at_schema`` row existed (`results.schema.schema_version`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import PREFIX, Base, utcnow
from .bench_tables import BenchRun, EvoformerBenchRow, KernelBenchRow  # noqa: F401  (created with the tables below)
from .states import TrialState

# The version of the schema this code reads and writes (`results.db`). Version 1: databases
# written before the version row existed. Version 2: the at_schema row. Version 3: at_runs.cluster.
# Version 4: at_evoformer_bench.checkpoint (activation checkpointing of a training pass).
SCHEMA_VERSION = 4
UNVERSIONED = 1


class Run(Base):
    __tablename__ = PREFIX + "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(32), default="running")
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    command_line: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(String(16))
    hardware: Mapped[Any] = mapped_column(JSON)
    versions: Mapped[Any] = mapped_column(JSON)
    git_revision: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    space_path: Mapped[str] = mapped_column(Text)
    space: Mapped[Any] = mapped_column(JSON)
    executor: Mapped[str] = mapped_column(String(32))
    end_reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    optuna_study_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    optuna_study_uid: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    cluster: Mapped[Any] = mapped_column(JSON, nullable=True)
    stats: Mapped[Any] = mapped_column(JSON, nullable=True)  # the run's phases and rates (autotune.search.run_stats)


class TrialRow(Base):
    __tablename__ = PREFIX + "trials"
    __table_args__ = (UniqueConstraint("study_name", "number", name=PREFIX + "trials_study_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey(PREFIX + "runs.id"), index=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    number: Mapped[int] = mapped_column(Integer)
    optuna_trial_id: Mapped[int] = mapped_column(Integer)
    optuna_study_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    optuna_study_uid: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    params: Mapped[Any] = mapped_column(JSON)
    pattern: Mapped[Any] = mapped_column(JSON)
    kernel: Mapped[Any] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=TrialState.RUNNING.value)
    reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    retry_of: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    objectives: Mapped[Any] = mapped_column(JSON, nullable=True)
    objective_names: Mapped[Any] = mapped_column(JSON, nullable=True)
    constraints: Mapped[Any] = mapped_column(JSON, nullable=True)
    constraint_names: Mapped[Any] = mapped_column(JSON, nullable=True)
    feasible: Mapped[Optional[bool]] = mapped_column(Boolean, nullable=True)
    gate: Mapped[Any] = mapped_column(JSON, nullable=True)
    timing: Mapped[Any] = mapped_column(JSON, nullable=True)
    worker: Mapped[Any] = mapped_column(JSON, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    lease_until: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    measurements: Mapped[list["Measurement"]] = relationship(back_populates="trial", cascade="all, delete-orphan")


class Measurement(Base):
    __tablename__ = PREFIX + "measurements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey(PREFIX + "trials.id"), index=True)
    workload: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    bucket: Mapped[int] = mapped_column(Integer, index=True)
    batch: Mapped[int] = mapped_column(Integer)
    heads: Mapped[int] = mapped_column(Integer)
    head_dim: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))
    sparsity: Mapped[float] = mapped_column(Float)
    time_ms: Mapped[float] = mapped_column(Float)
    time_p10_ms: Mapped[float] = mapped_column(Float)
    time_p90_ms: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    peak_mib: Mapped[float] = mapped_column(Float)
    memory_method: Mapped[str] = mapped_column(String(32))
    sdpa_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    sdpa_p10_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    sdpa_p90_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    sdpa_peak_mib: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    naive_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    naive_peak_mib: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    # paired timing (kernels.measure.time_paired): the speedup's confidence interval, its achieved
    # level and why the loop stopped (converged | max_repeats | time_cap); repeats = rounds
    speedup_lo: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_hi: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    speedup_level: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    timing_stop: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    speedup_naive: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    memory_vs_sdpa: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    memory_vs_naive: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    accuracy: Mapped[Any] = mapped_column(JSON, nullable=True)
    accuracy_metric: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    accuracy_value: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    violations: Mapped[Any] = mapped_column(JSON, nullable=True)
    feasible: Mapped[bool] = mapped_column(Boolean)
    trial: Mapped[TrialRow] = relationship(back_populates="measurements")


class Tuned(Base):
    __tablename__ = PREFIX + "tuned"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    bucket: Mapped[int] = mapped_column(Integer)
    trial_number: Mapped[int] = mapped_column(Integer)
    pattern: Mapped[Any] = mapped_column(JSON)
    kernel: Mapped[Any] = mapped_column(JSON, nullable=True)
    speedup: Mapped[Any] = mapped_column(JSON)
    peak_mib: Mapped[Any] = mapped_column(JSON)
    accuracy: Mapped[Any] = mapped_column(JSON, nullable=True)
    hardware: Mapped[Any] = mapped_column(JSON, nullable=True)
    rule: Mapped[str] = mapped_column(Text)
    out_path: Mapped[str] = mapped_column(Text)
    exported_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Confirmation(Base):
    """``at_confirmations``: one (confirmation pass, bucket, workload, trial) re-measurement.

    confirm_id groups one pass; complete_trials is the number of COMPLETE trials of the study when
    it ran (a later trial makes the pass stale); speedup / speedup_lo / speedup_hi the paired
    estimate and its interval at ``level``; repeats the rounds; time_ms / sdpa_ms the medians of the
    candidate and of SDPA in the same loop; stop why the loop ended; hardware the machine; stage
    None for the leaders' joint re-measurement, ``"holdout"`` for the chosen config's own one."""

    __tablename__ = "at_confirmations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_name: Mapped[str] = mapped_column(String(256), index=True)
    confirm_id: Mapped[int] = mapped_column(Integer, index=True)
    complete_trials: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[int] = mapped_column(Integer)
    workload: Mapped[str] = mapped_column(String(64))
    trial_number: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)  # rank among the bucket's leaders before confirmation
    speedup: Mapped[float] = mapped_column(Float)
    speedup_lo: Mapped[float] = mapped_column(Float)
    speedup_hi: Mapped[float] = mapped_column(Float)
    level: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    time_ms: Mapped[float] = mapped_column(Float)
    sdpa_ms: Mapped[float] = mapped_column(Float)
    stop: Mapped[str] = mapped_column(String(32))
    hardware: Mapped[Any] = mapped_column(JSON, nullable=True)
    stage: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)  # None: confirmation; "holdout"
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SchemaVersion(Base):
    """``at_schema``: one row (id 1), the schema version of the database and when it was written."""

    __tablename__ = PREFIX + "schema"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    written_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


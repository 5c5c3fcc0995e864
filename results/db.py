"""The results database: one SQLAlchemy URL holds Optuna's study storage and our own tables.

``--storage`` (checked by `results.storage`; default ``sqlite:///results/autotune.db``; PostgreSQL
works the same with ``postgresql+psycopg://user@host/db``) is given both to ``optuna.storages.RDBStorage``
(its own ``studies`` / ``trials`` / ... tables) and to the SQLAlchemy 2.0 models below, whose
tables all start with ``at_``. Only the search driver writes; workers return results.

Schema (one row per ...):

``at_runs`` - one invocation of ``python -m autotune.search``
    id PK, study_name, started_at, ended_at (NULL while running or after a crash),
    heartbeat_at (refreshed by the live driver), status (running | finished | interrupted | failed),
    host, pid, command_line, device, hardware (JSON: device/GPU or CPU model, driver, CUDA, cores),
    versions (JSON: python, torch, triton, optuna, ray, sqlalchemy, ...), git_revision,
    space_path, space (JSON: the validated space, after command-line overrides), executor,
    end_reason (why a run ended other than by its driver: "driver died: ..." when the next driver
    found it dead; status "died"), optuna_study_id, optuna_study_uid (the Optuna study it ran),
    cluster (JSON, schema version 3: the Ray cluster the run's workers ran on - address, where the
    address came from, Ray version, authentication mode; NULL for the local executor).

Ties to Optuna. Every at_runs / at_trials row records the Optuna study it belongs to: its id and
its identity token (the study's system attribute ``autotune:uid``, `ensure_study_uid`; SQLite
reuses the ids of deleted studies and trials, the token is deleted with the study); at_trials
also the Optuna trial id. A row whose study no longer holds that trial is an orphan
(`LiveStudy`, `find_orphans`): export and report never cite it, and the search, the export and
``python -m autotune.copy_study`` remove or leave it behind (`Database.drop_orphans`).

``at_trials`` - one Optuna trial (unique per (study_name, number))
    id PK, run_id FK -> at_runs (the run that measured it), study_name, number (Optuna's trial
    number), optuna_trial_id, params (JSON, flat ``pattern.x`` / ``kernel.x``), pattern (JSON,
    PatternConfig.to_dict()), kernel (JSON KernelConfig.to_dict() or NULL), state (RUNNING |
    COMPLETE | FAIL), reason (why it failed: "gate failed: ...", "out of memory: ...", an exception,
    "worker died: ...", "interrupted"), retry_of (number of the interrupted trial it re-runs),
    objectives (JSON list, order of the space's objectives), objective_names (JSON list),
    constraints (JSON list, <= 0 feasible, worst over cells), constraint_names (JSON list),
    feasible (all constraints <= 0), gate (JSON: gate errors and tolerances), timing (JSON: seconds
    in gate / candidate / baselines / accuracy / total), worker (JSON: host, pid),
    started_at, finished_at, lease_until (no longer written: Optuna's trial heartbeat replaced it),
    optuna_study_id and optuna_study_uid (the Optuna study the row belongs to, `LiveStudy`).

``at_measurements`` - one (trial, workload, bucket)
    id PK, trial_id FK -> at_trials, workload, kind (msa_row | triangle | evoformer), bucket (L), batch, heads,
    head_dim, dtype, mode (fwd | fwd+bwd), sparsity, time_ms (median), time_p10_ms, time_p90_ms,
    repeats, peak_mib (above the inputs), memory_method (cuda_allocator | rss_hwm | rss_sampled),
    sdpa_ms, sdpa_p10_ms, sdpa_p90_ms, sdpa_peak_mib, naive_ms, naive_peak_mib (NULL: the baseline
    ran out of memory), speedup (median of the per-round ratios sdpa / candidate of the paired,
    interleaved timing), speedup_lo / speedup_hi / speedup_level (its confidence interval and
    achieved level), timing_stop (converged | max_repeats | time_cap), speedup_naive, memory_vs_sdpa,
    memory_vs_naive (peak / max(baseline peak, 1 MiB)), accuracy (JSON: all metrics of
    evaluate_pattern at this bucket, n_chains, extrapolated, note), accuracy_metric,
    accuracy_value, violations (JSON: constraint name -> violation at this cell), feasible.

``at_tuned`` - one exported (study, bucket) choice
    id PK, study_name, bucket, trial_number, pattern (JSON), kernel (JSON), speedup (JSON per
    workload), peak_mib (JSON per workload), accuracy (JSON), hardware (JSON), rule, out_path,
    exported_at.

``at_confirmations`` - one re-measurement of a bucket's leader (`Confirmation`, written by
    ``autotune.confirm``, read by the rule of `results.verdict`).

``at_bench_runs``, ``at_kernel_bench``, ``at_evoformer_bench`` - ingested benchmark CSVs
    (`results.bench_tables`).

``at_schema`` - one row: the schema version the database was written with (`SchemaVersion`).

Schema version. ``SCHEMA_VERSION`` is the version of the tables above; a new database gets the row
when its tables are created. Opening a database checks it before anything is written
(`check_schema`): an older one (version 1 = a database written before the version row existed:
our tables, no ``at_schema``) is refused with one line naming the command that upgrades it
(``python -m autotune.upgrade --storage URL``, `upgrade_schema`), a newer one with one line saying
that this code is too old for it (`SchemaError`, exit status 2 in every command).

Another application's database. A database that has tables but neither Optuna's
(`OPTUNA_SCHEMA_TABLES`) nor ours (``at_schema``, or at_ tables with our columns: written before the
version row) is refused with one line before anything is written (`refuse_foreign`, called before
our tables or Optuna's are created and when a database is opened), and `upgrade_schema` changes
only a database whose at_ tables are ours.

All of one trial's writes (its at_trials row update and its at_measurements rows) happen in one
transaction (`Database.record_result`).

Concurrency. Several drivers may share one database (and one study). Schema creation is safe when
they start at once on a fresh database (`create_schema`: under a PostgreSQL advisory lock, and
retried when SQLite reports a concurrent creation). A trial's slot in the study's budget is claimed
atomically (`Database.claim_trial`): the count of the study's occupying trials and the insert of
the new row happen in one transaction that holds the study's write lock (SQLite: the database
write lock, taken by the transaction's first statement; PostgreSQL: a transaction-level advisory
lock on the study name), so drivers sharing a study never exceed its budget and never measure a
parameter set that is already measured or running. A database's schema changes only through
`upgrade_schema` (its version row says which steps it has had).

Where it lives. This module is the face: every name above is importable from it, defined in
`results.tables` (the models and ``SCHEMA_VERSION``), `results.schema` (creation, version checks,
upgrades, foreign databases), `results.store` (`Database`), `results.ties` (`LiveStudy`,
`Orphans`) and `results.states` (`TrialState`, `EndReason`: the states and reasons stored).
"""

from .base import PREFIX, Base, utcnow  # noqa: F401
from .bench_tables import BenchRun, EvoformerBenchRow, KernelBenchRow  # noqa: F401
from .schema import (  # noqa: F401
    OPTUNA_SCHEMA_TABLES,
    SCHEMA_LOCK,
    UPGRADE_COMMAND,
    UPGRADES,
    ForeignDatabaseError,
    SchemaError,
    check_schema,
    create_optuna_storage,
    create_schema,
    foreign_tables,
    make_engine,
    refuse_foreign,
    retry_creation,
    schema_lock,
    schema_version,
    upgrade_schema,
)
from .states import EndReason, TrialState  # noqa: F401
from .storage import DEFAULT_STORAGE, StorageError, mask_url  # noqa: F401
from .store import Database  # noqa: F401
from .tables import (  # noqa: F401
    SCHEMA_VERSION,
    UNVERSIONED,
    Confirmation,
    Measurement,
    Run,
    SchemaVersion,
    TrialRow,
    Tuned,
)
from .ties import OPTUNA_TABLES, UID_KEY, LiveStudy, Orphans, ensure_study_uid, find_orphans, live_study  # noqa: F401

# at_trials.reason of trials that were not measured to the end and are run again (a retry row
# takes their place in the budget): they occupy no budget slot. Classify a stored reason with
# `EndReason.of`; this tuple is kept for code that names it.
RETRIED_REASONS = tuple(r.value for r in EndReason if r.retried)

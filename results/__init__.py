"""The results layer: everything that reads or writes the results database, and nothing that measures.

- `results.storage`: ``--storage`` values to checked database URLs, the one default
  (``DEFAULT_STORAGE``), password masking;
- `results.db`: the schema (``at_`` tables, its version row) and the store the search writes
  through (`Database`), the ties to Optuna's study, the schema upgrade; a face over
  `results.tables`, `results.schema`, `results.store` and `results.ties`;
- `results.states`: the trial states and end reasons as stored (`TrialState`, `EndReason`);
- `results.base`: the declarative base every ``at_`` table is declared on;
- `results.bench_tables` and `results.ingest`: benchmark CSVs in the database;
- `results.verdict`: the one best-per-bucket rule (search progress bar, export, report) and the
  study's data it reads, without orphan rows;
- `results.export`: the tuned-file writer; `results.report`: the report;
- `results.copy_study`: a study with its rows to another database;
- `results.aggregate`: the one geometric mean.

It builds on `search_spaces`, `kernels` and `patterns` and imports nothing of `autotune`: the
steps that measure (confirmation, trials) and the command lines are there. The folder is also the
default place of the databases, tuned files and reports of one's own runs (not tracked by git).
"""

"""``python -m autotune.report``: the report command (``sparse-autotune report``), in ``__main__``.
The report itself (reading the database, the verdicts, tables and figures) is `results.report`."""

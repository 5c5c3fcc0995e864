"""The report (built here, run as ``python -m autotune.report --storage URL --out results/REPORT.md``).

Built from the results database alone (the study's ``at_runs`` / ``at_trials`` /
``at_measurements`` / ``at_confirmations`` / ``at_tuned`` rows and the benchmark CSVs loaded by
``python -m autotune.ingest``): an executive summary, the verdict per length bucket (the one rule
of `results.verdict` on the study's own targets, as the search and the export apply it), the
attention, memory, EvoFormer and accuracy tables, the targets with pass / fail and their
baselines, noise warnings, provenance (hardware, versions, dates, commands) and PNG figures.
Every number cites the rows it comes from.
"""

from .build import build_report
from .decision import decide
from .data import ReportData, ReportError, load

__all__ = ["build_report", "decide", "load", "ReportData", "ReportError"]

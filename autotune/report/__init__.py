"""The report: ``python -m autotune.report --storage URL --out REPORT.md``.

Built from the results database alone (the study's ``at_runs`` / ``at_trials`` /
``at_measurements`` / ``at_tuned`` rows and the benchmark CSVs loaded by ``python -m
autotune.ingest``): an executive summary, a recommendation per length bucket computed from the data
and the targets (`autotune.report.targets`), the attention, memory, EvoFormer and accuracy tables,
the targets with pass / fail and their baselines, provenance (hardware, versions, dates,
commands) and PNG figures. Every number cites the rows it comes from.
"""

from .build import build_report, decide
from .data import ReportData, ReportError, load
from .targets import Targets, load_targets

__all__ = ["build_report", "decide", "load", "load_targets", "ReportData", "ReportError", "Targets", "main"]


def main(argv=None) -> int:
    from .__main__ import main as _main

    return _main(argv)

"""``python -m autotune.report``: the report command. The report itself (reading the database, the
verdicts, tables and figures) is `results.report`; this package is its command line."""

from results.report import ReportData, ReportError, build_report, decide, load

__all__ = ["build_report", "decide", "load", "ReportData", "ReportError", "main"]


def main(argv=None) -> int:
    from .__main__ import main as _main

    return _main(argv)

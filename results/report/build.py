"""Build the Markdown report (and its PNG figures) from a `ReportData`.

Every number comes from a database row and is cited next to it: ``m#`` = ``at_measurements.id``,
``t#`` = trial number of the study (``at_trials.number``), ``tu#`` = ``at_tuned.id``, ``run#`` =
``at_runs.id``, ``kb#`` = ``at_kernel_bench.id``, ``eb#`` = ``at_evoformer_bench.id``, ``bench#`` =
``at_bench_runs.id``. Derived numbers (ratios, reductions) are computed from the cited rows with
the formula stated beside them.

Recommendation rule, per length bucket: the one rule of `results.verdict` (the same function
the search's verdict and the export call), on the study's targets (the space's ``targets`` section
over the per-device defaults, stored with every run): the bucket's leaders re-measured together
with SDPA (``at_confirmations``), the confirmed leader with the highest geometric-mean speedup
whose interval clears the speedup target and that meets every other target at every workload.
Without a current confirmation (a trial finished after it, or none) the bucket is undecided and
the report says which command confirms (the export). The report never measures and never
re-decides with other thresholds: the report, the search and the export cannot disagree. The
tuned file on disk (the latest export's ``at_tuned.out_path``, else ``results/<study>.yaml``) is
compared with the verdict (`results.export.file_status`): a missing file, or one with other
layouts, launch configs, verdicts or provisional marks, is said to be out of date. A verdict reached
while the noise check fired is marked provisional, and every caveat is the one
`results.verdict.caveats` gives (the search and the tuned file carry the same).

Memory: the headline is the reduction against naive attention (materialised logits, what
OpenFold's default attention computes); against SDPA (already flash-style) only the
no-regression bound, both on max(peak, floor) / max(baseline peak, floor) with the targets'
resolution floor (`Targets.memory_floor_mib`).

The report is cut along those lines: `results.report.data` reads the rows, `results.report.decision`
gives the verdict per bucket, `results.report.context` holds what every section reads and writes,
the sections live in `results.report.summary` (title and executive summary), `results.report.study`
(recommendation, targets, accuracy, trade-off, layouts), `results.report.benchmarks` (attention
kernels, memory, EvoFormer block) and `results.report.provenance` (runs, benchmarks, exports,
sources), the figures in `results.report.plots`. This module puts them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from patterns.output import write_output

from .benchmarks import attention, evoformer, memory
from .context import Page, ReportContext
from .data import ReportData
from .provenance import provenance, sources
from .study import accuracy, bucket_points, layouts, pareto_section, recommendations, targets_section
from .summary import header, summary

Section = Callable[[ReportContext, Page], None]

# the body, in the order it is written; the head (title, summary) comes first but is written last,
# as the summary lists every section found not measured
BODY: tuple[Section, ...] = (recommendations, targets_section, attention, memory, evoformer, accuracy,
                             pareto_section, layouts, provenance, sources)
HEAD: tuple[Section, ...] = (header, summary)


def render(ctx: ReportContext) -> tuple[str, list[Path]]:
    """(the Markdown text, the figures written): the body sections, then the head above them."""
    page = Page(ctx.out)
    for section in BODY:
        section(ctx, page)
    body, page.lines = page.lines, []
    for section in HEAD:
        section(ctx, page)
    return "\n".join(page.lines + body).rstrip() + "\n", page.figures


class Report:
    """The report of ``data`` to be written at ``out`` with its figures in ``plots_dir``:
    `build` renders the text; ``decisions`` and ``figures`` are the verdicts shown and the figures
    written, `bucket_points` the Pareto figure's points."""

    def __init__(self, data: ReportData, out: Path, plots_dir: Path, argv: Optional[list[str]] = None):
        self.ctx = ReportContext.of(data, out, plots_dir, argv)
        self.figures: list[Path] = []

    @property
    def decisions(self) -> list[Any]:
        return self.ctx.decisions

    def build(self) -> str:
        text, self.figures = render(self.ctx)
        return text

    def bucket_points(self) -> dict[int, list[dict[str, Any]]]:
        return bucket_points(self.ctx)


def build_report(data: ReportData, out: Path, plots_dir: Optional[Path] = None,
                 argv: Optional[list[str]] = None) -> tuple[str, list[Path]]:
    """Write the report to ``out`` and its figures to ``plots_dir`` (default ``<out stem>_files``)."""
    out = Path(out)
    plots_dir = Path(plots_dir) if plots_dir else out.with_name(out.stem + "_files")
    text, figures = render(ReportContext.of(data, out, plots_dir, argv))
    write_output(out, text)  # only a regular file is replaced, atomically (patterns.output)
    return text, figures

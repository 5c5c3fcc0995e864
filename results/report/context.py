"""What every section of the report reads (`ReportContext`: the loaded data and what is derived
from it once) and writes to (`Page`: the Markdown lines, the sections found not measured, the
figures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .data import ReportData
from .decision import Decision, decide, deployed_file, noisy_shapes
from .formatting import MIB_FLOOR, NOT_MEASURED


@dataclass(frozen=True)
class ReportContext:
    """The study's data with its targets (the space's ``targets`` section, None without a study),
    the memory floor, the noisy shapes, the verdict per bucket and the tuned file's status, the
    report's path, the figures' folder and the command line that asked for it."""
    data: ReportData
    out: Path
    plots_dir: Path
    argv: Optional[list[str]]
    targets: Any
    floor: float
    noisy: list[tuple[str, int, float, float, int]]
    decisions: list[Decision]
    tuned_file: Optional[str]
    stale: list[str]

    @classmethod
    def of(cls, data: ReportData, out: Path, plots_dir: Path, argv: Optional[list[str]] = None) -> "ReportContext":
        """Derive the targets, noise, verdicts and tuned-file status from ``data``."""
        targets = data.study_data.targets() if data.study_data is not None and data.study_data.space else None
        decisions = decide(data, targets)
        tuned_file, stale = deployed_file(data, decisions)
        return cls(data, out, plots_dir, argv, targets,
                   targets.memory_floor_mib if targets is not None else MIB_FLOOR,
                   noisy_shapes(data), decisions, tuned_file, stale)


@dataclass
class Page:
    """The report being written: its lines, what was not measured (the summary lists it) and the
    figures written (their paths are linked relative to the report at ``out``)."""
    out: Path
    lines: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def w(self, *lines: str) -> None:
        self.lines.extend(lines)

    def fig(self, path: Path, alt: str) -> None:
        self.figures.append(path)
        try:
            rel = path.resolve().relative_to(self.out.resolve().parent)
        except ValueError:
            rel = path.resolve()
        self.w(f"![{alt}]({rel.as_posix()})", "")

    def not_measured(self, what: str, hint: str) -> None:
        self.absent.append(what)
        self.w(f"**{what}: {NOT_MEASURED}.** {hint}", "")

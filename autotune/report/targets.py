"""Deployment targets of the report, with the baseline each one is measured against.

Defaults: speedup >= 1.2x over dense SDPA and memory reduction >= 30% against SDPA, at every
workload of a bucket, and the study's own constraints (accuracy among them) met. A YAML file
(``--targets FILE``) may set any of the keys of `Targets`; command-line flags override it:

    speedup: 1.2              # candidate median time vs the baseline's, per workload
    speedup_baseline: sdpa    # sdpa | naive
    memory_reduction: 0.30    # 1 - peak / baseline peak (a fraction; 30 is read as 30%)
    memory_baseline: sdpa     # sdpa | naive
    accuracy_metric: contact_recall_long   # optional extra accuracy floor (default: only the
    accuracy_min: 0.25                     #   study's constraints, i.e. the per-cell feasible flag)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Optional

from .data import ReportError

BASELINES = ("sdpa", "naive")
ACCURACY_METRICS = ("contact_recall_short", "contact_recall_medium", "contact_recall_long", "attention_mass_recall")
BASELINE_NAMES = {"sdpa": "dense SDPA (scaled_dot_product_attention, same process)",
                  "naive": "naive attention (materialised softmax(QK^T/sqrt(d) + bias) V)"}


@dataclass(frozen=True)
class Targets:
    speedup: float = 1.2
    speedup_baseline: str = "sdpa"
    memory_reduction: float = 0.30
    memory_baseline: str = "sdpa"
    accuracy_metric: Optional[str] = None
    accuracy_min: Optional[float] = None

    def validated(self, source: str = "targets") -> "Targets":
        t = self
        if not isinstance(t.speedup, (int, float)) or t.speedup <= 0:
            raise ReportError(f"{source}: speedup must be a positive number, got {t.speedup!r}")
        if not isinstance(t.memory_reduction, (int, float)) or not (0 <= t.memory_reduction < 100):
            raise ReportError(f"{source}: memory_reduction must be a fraction in [0, 1) (or a percent), "
                              f"got {t.memory_reduction!r}")
        if t.memory_reduction >= 1:
            t = replace(t, memory_reduction=t.memory_reduction / 100.0)
        for k in ("speedup_baseline", "memory_baseline"):
            if getattr(t, k) not in BASELINES:
                raise ReportError(f"{source}: {k} must be one of {', '.join(BASELINES)}, got {getattr(t, k)!r}")
        if t.accuracy_metric is not None and t.accuracy_metric not in ACCURACY_METRICS:
            raise ReportError(f"{source}: accuracy_metric must be one of {', '.join(ACCURACY_METRICS)}, "
                              f"got {t.accuracy_metric!r}")
        if (t.accuracy_min is None) != (t.accuracy_metric is None):
            if t.accuracy_metric is None:
                t = replace(t, accuracy_metric="contact_recall_long")
            else:
                raise ReportError(f"{source}: accuracy_metric needs accuracy_min")
        return t


def load_targets(path: Optional[str], **overrides: Any) -> Targets:
    """Targets from the defaults, then ``path`` (YAML), then the non-None ``overrides``."""
    t = Targets()
    if path:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ReportError(f"--targets: no such file {path}")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ReportError(f"--targets {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(doc, dict):
            raise ReportError(f"--targets {path}: expected a mapping of target names to values")
        known = {f.name for f in fields(Targets)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ReportError(f"--targets {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        t = replace(t, **doc)
        t = t.validated(f"--targets {path}")
    t = replace(t, **{k: v for k, v in overrides.items() if v is not None})
    return t.validated("targets")

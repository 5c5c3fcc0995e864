"""The objectives, one record each: everything the search, the verdict and the report say of one.

An `Objective` names a quantity a space may optimise (``objectives``) and, when it has a
``target`` rule, bound (``targets`` / the older ``constraints``). Each reader derives its list
from `OBJECTIVE_TABLE` instead of keeping its own:

* the space file's vocabulary and Optuna's directions (`search_spaces.schema.OBJECTIVES`,
  `SearchSpace.directions`), the targets a space may name and their order (`TARGET_NAMES`), the
  admissible range of each bound (`BOUND_RANGES`);
* a trial's objective values (``autotune.trial.summarize``: the cells' ``measured`` values
  aggregated by ``aggregate`` over all cells) and its per-bucket view
  (``autotune.driver.optuna_view.bucket_view``: the same aggregation over one bucket's cells);
* the verdict's cell values (``results.verdict.cell_values``: ``target`` at each cell, memory
  readings floored at the study's resolution);
* Optuna's metric names (``autotune.trial.metric_names``) and the report's text
  (``results.report.targets.describe``: ``against`` and ``source``, formatted with the study's
  ``floor`` and ``confidence``);
* the default targets per device (``defaults``; `search_spaces.targets.TARGET_DEFAULTS`, which a
  space's ``targets`` section overrides).

The accuracy objective (``per_metric``) takes its direction, its Optuna name and its values from
the space's accuracy metric, one of `ACCURACY_METRIC_TABLE` (the one list of the metrics: the space
file's vocabulary, the bounds a target may set on them, and the metrics ``autotune.accuracy``
computes all read it); its value is the worst bucket's.
Adding an objective is adding a record here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from kernels.baselines import BASELINES, NAIVE, SDPA

#: a cell's field by name (a measurement dict, a stored row or a `CellMeasurement`)
Getter = Callable[[str], Any]
#: (low, high, low open, high open, what the quantity is): the admissible range of a bound
BoundRange = tuple[float, float, bool, bool, str]

#: what the report calls each baseline (the one vocabulary: `kernels.baselines`)
SDPA_TEXT = BASELINES[SDPA].text
NAIVE_TEXT = BASELINES[NAIVE].text


def memory_ratio(peak: Optional[float], base: Optional[float], floor: float) -> Optional[float]:
    """max(peak, floor) / max(baseline peak, floor): readings under the resolution floor count as
    the floor (MiB)."""
    if peak is None or base is None:
        return None
    return max(peak, floor) / max(base, floor, 1e-9)


def _speedup_target(c: Getter, floor: float) -> Optional[float]:
    """The lower end of the cell's speedup interval when it has one (``speedup_lo``)."""
    lo = c("speedup_lo")
    return lo if lo is not None else c("speedup")


def _naive_target(c: Getter, floor: float) -> Optional[float]:
    """A reduction against naive attention is only resolvable when naive's peak is above the
    floor; below it the value is missing (neutral, like a baseline out of memory)."""
    return memory_ratio(c("peak_mib"), c("naive_peak_mib"), floor) if (c("naive_peak_mib") or 0.0) >= floor else None


def _sdpa_target(c: Getter, floor: float) -> Optional[float]:
    return memory_ratio(c("peak_mib"), c("sdpa_peak_mib"), floor)


def _field(name: str) -> Callable[[Getter], Any]:
    return lambda c: c(name)


_RATIO: BoundRange = (0.0, math.inf, True, True, "a ratio")


@dataclass(frozen=True)
class Objective:
    """One objective.

    ``direction``: ``max`` or ``min`` (``per_metric``: the accuracy metric's). ``aggregate``: how a
    trial's (or a bucket's) value comes from its cells' ``measured`` values - ``geomean`` (the
    geometric mean; ``missing`` when no cell has one), ``mean``, or ``worst`` (``per_metric``: the
    worst bucket's accuracy). ``companions``: further cell fields aggregated the same way in the
    per-bucket view (``speedup_lo``). ``target``: the quantity a target bounds at one cell (given
    the study's memory floor in MiB); None: not a target. ``target_rank``: its place among the
    targets (stored bound order). ``bound``: what values a bound may take. ``against`` /
    ``source``: the report's text (``{floor}`` and ``{confidence}`` filled from the study)."""

    name: str
    direction: str
    aggregate: str = "geomean"
    missing: Optional[float] = None
    measured: Optional[Callable[[Getter], Any]] = None
    companions: tuple[str, ...] = ()
    target: Optional[Callable[[Getter, float], Optional[float]]] = None
    target_rank: int = 0
    bound: Optional[BoundRange] = None
    defaults: Optional[dict[str, dict[str, float]]] = None
    against: str = "—"
    source: str = "—"
    per_metric: bool = False

    def measure(self, c: Getter) -> Any:
        """The cell's measured value of this objective (default: its field of the same name)."""
        return (self.measured or _field(self.name))(c)


@dataclass(frozen=True)
class AccuracyMetric:
    """One accuracy metric ``autotune.accuracy`` computes on the protein chains of a bucket.

    ``direction``: ``max`` (higher is better) or ``min``. ``bound``: what values a target on it may
    take. ``meaning``: what it measures (``autotune.accuracy`` documents how, and the contact ranges).
    ``default``: its default target on every device (None: none)."""

    name: str
    direction: str
    bound: BoundRange
    meaning: str
    default: Optional[dict[str, float]] = None


_FRACTION: BoundRange = (0.0, 1.0, False, False, "a fraction")

# The default targets (``defaults`` of the records below, as data). Speedup: the lower end of the
# paired confidence interval against dense SDPA must clear it (CPU: no regression; GPU: a 10% gain,
# what justifies a custom kernel). Memory: the headline is the reduction against materialised
# (naive) attention, what OpenFold's default attention allocates (at least 50%); against SDPA,
# already flash-style, only a no-regression bound, on readings floored at the measurement's
# resolution (`search_spaces.targets.DEVICE_SETTINGS`). Accuracy, from the packaged chains (all
# chains of each bucket, each at its own length; buckets 256 / 512 / 1024): a pure block diagonal
# of 128-residue blocks keeps long-range contact recall 0.69 / 0.46 / 0.28 at output relative error
# 0.42 / 0.62 / 0.69; a 64-residue local window on 64-blocks 0.83 / 0.59 / 0.40 at 0.28 / 0.46 /
# 0.56, a 128-residue window 0.97 / 0.79 / 0.61 at 0.10 / 0.31 / 0.44. Recall >= 0.5 with error
# <= 0.5 keeps the layouts that see at least half of the long-range contacts a structure module
# needs and whose attention output stays within half its magnitude of dense, and rejects every
# block diagonal past L = 256 (benchmarks/README.md, "Accuracy floors").

ACCURACY_METRIC_TABLE: tuple[AccuracyMetric, ...] = (
    AccuracyMetric("contact_recall_short", "max", _FRACTION, "kept / all short-range contacts"),
    AccuracyMetric("contact_recall_medium", "max", _FRACTION, "kept / all medium-range contacts"),
    AccuracyMetric("contact_recall_long", "max", _FRACTION, "kept / all long-range contacts", default={"min": 0.5}),
    AccuracyMetric("attention_mass_recall", "max", _FRACTION, "share of dense softmax mass on computed pairs"),
    AccuracyMetric("output_rel_error", "min", (0.0, math.inf, False, True, "a relative error"),
                   "relative error of the sparse attention output against dense", default={"max": 0.5}),
)
#: accuracy metric name -> "max" / "min", in the table's order
ACCURACY_METRIC_DIRECTIONS: dict[str, str] = {m.name: m.direction for m in ACCURACY_METRIC_TABLE}


OBJECTIVE_TABLE: tuple[Objective, ...] = (
    Objective("speedup", "max", "geomean", missing=0.0, companions=("speedup_lo",), target=_speedup_target,
              target_rank=0, bound=_RATIO, defaults={"cpu": {"min": 1.0}, "cuda": {"min": 1.1}}, against=SDPA_TEXT,
              source="lower end of the paired {confidence:.0%} interval (median of per-round ratios, candidate and "
                     "SDPA interleaved), confirmed figures (at_confirmations), every workload"),
    Objective("memory_vs_sdpa", "min", "geomean", missing=1e9, target=_sdpa_target, target_rank=2, bound=_RATIO,
              defaults={"cpu": {"max": 1.25}, "cuda": {"max": 1.1}}, against=SDPA_TEXT,
              source="max(peak, {floor}) / max(SDPA peak, {floor}): no-regression bound, every workload"),
    Objective("memory_vs_naive", "min", "geomean", missing=1e9, target=_naive_target, target_rank=1, bound=_RATIO,
              defaults={"cpu": {"max": 0.5}, "cuda": {"max": 0.5}}, against=NAIVE_TEXT, source="max(peak, {floor}) / max(naive peak, {floor}), every workload"),
    Objective("sparsity", "max", "mean", target=lambda c, floor: c("sparsity"), target_rank=3,
              bound=(0.0, 1.0, False, True, "a fraction of the pairs"), against="the dense layout",
              source="layout sparsity at the bucket length (at_measurements.sparsity)"),
    Objective("accuracy", "max", "worst", per_metric=True,
              against="contacts and dense attention on the protein set",
              source="at_measurements.accuracy: chains of the bucket, each at its own length"),
)
OBJECTIVE_BY_NAME: dict[str, Objective] = {o.name: o for o in OBJECTIVE_TABLE}
#: the objectives a target may bound at every cell, in the stored order of the bounds
TARGET_OBJECTIVES: tuple[Objective, ...] = tuple(sorted((o for o in OBJECTIVE_TABLE if o.target is not None),
                                                        key=lambda o: o.target_rank))
TARGET_NAMES: tuple[str, ...] = tuple(o.name for o in TARGET_OBJECTIVES)
#: what each bounded quantity can be: the objectives' bounds, then the accuracy metrics'
BOUND_RANGES: dict[str, BoundRange] = {**{o.name: o.bound for o in OBJECTIVE_TABLE if o.bound is not None},
                                       **{m.name: m.bound for m in ACCURACY_METRIC_TABLE}}

"""Targets: the one place the search constraints, the export rule and the report read.

`Targets` holds the deployment targets of a study (per-device defaults, `TARGET_DEFAULTS`: each
objective's from its record, with a space's ``targets`` section over them); `parse_targets` validates that section and folds an older
space's ``constraints`` section into it, once, when the space is parsed or read back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .objectives import ACCURACY_METRIC_DIRECTIONS, ACCURACY_METRIC_TABLE, BOUND_RANGES, TARGET_NAMES, TARGET_OBJECTIVES

if TYPE_CHECKING:
    from .checks import SpaceChecker


# TARGET_NAMES: the objectives with a target rule, in the stored order of the bounds
# (`search_spaces.objectives`). Each objective's default target is in its record (``defaults``; the
# accuracy metrics' in theirs, ``default``); what is no objective's is here, per device: the memory
# readings' resolution floor (`memory_floor_mib`: CPU resident-set readings move by a few MiB with
# the allocator, the CUDA allocator is byte-exact), the speedup interval's confidence level, and the
# cap on the accuracy chains (None: all).
DEVICE_SETTINGS: dict[str, dict[str, Any]] = {
    "cpu": {"memory_floor_mib": 8.0, "confidence": 0.95, "max_chains": None},
    "cuda": {"memory_floor_mib": 1.0, "confidence": 0.95, "max_chains": None},
}


def _device_defaults(device: str) -> dict[str, Any]:
    """The default targets of ``device`` (the CPU's for an unknown one): each objective's and each
    accuracy metric's default bound from its record, with the device's settings."""
    dev = device if device in DEVICE_SETTINGS else "cpu"
    spec: dict[str, Any] = {o.name: dict(o.defaults[dev]) for o in TARGET_OBJECTIVES
                            if o.defaults and dev in o.defaults}
    spec.update(DEVICE_SETTINGS[dev])
    spec["accuracy"] = {m.name: dict(m.default) for m in ACCURACY_METRIC_TABLE if m.default}
    return spec


#: device -> the default targets, as the ``targets`` section of a space would give them
TARGET_DEFAULTS: dict[str, dict[str, Any]] = {d: _device_defaults(d) for d in DEVICE_SETTINGS}


@dataclass(frozen=True)
class Bound:
    """One target: ``name`` is a `TARGET_NAMES` entry or ``accuracy.<metric>`` (``accuracy`` for the
    single accuracy constraint of an older space, with its ``metric``); <= 0 violation is met."""

    name: str
    min: Optional[float] = None
    max: Optional[float] = None
    metric: Optional[str] = None  # accuracy bounds: the metric (default: from the name)

    @property
    def accuracy_metric(self) -> Optional[str]:
        if not self.name.startswith("accuracy"):
            return None
        return self.metric or self.name.split(".", 1)[1]

    def violation(self, value: Optional[float]) -> float:
        """Optuna convention (<= 0 met). A missing value is neutral for speedup and memory (a
        baseline that ran out of memory) and infinitely bad for accuracy."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return 1e9 if self.name.startswith("accuracy") else 0.0
        v = -math.inf
        if self.min is not None:
            v = max(v, self.min - value)
        if self.max is not None:
            v = max(v, value - self.max)
        return float(v)

    def text(self) -> str:
        parts = ([f">= {self.min:g}"] if self.min is not None else []) + ([f"<= {self.max:g}"] if self.max is not None else [])
        return f"{self.name} " + " and ".join(parts)


@dataclass(frozen=True)
class Targets:
    """Deployment targets of a study; every check is made at every workload of a bucket.

    ``speedup`` bounds the lower end of the paired confidence interval (level ``confidence``) of
    the speedup over dense SDPA; ``memory_vs_naive`` / ``memory_vs_sdpa`` bound
    max(peak, floor) / max(baseline peak, floor) with ``floor = memory_floor_mib``; ``sparsity`` the
    layout's sparsity at the bucket; ``accuracy.<metric>`` the accuracy metric on the chains of
    the bucket (``max_chains`` caps them). ``source``: ``defaults:<device>``, ``targets`` (the
    space's section over the defaults) or ``constraints`` (an older space's constraints alone)."""

    bounds: tuple[Bound, ...]
    memory_floor_mib: float
    confidence: float = 0.95
    max_chains: Optional[int] = None
    source: str = "defaults"

    def bound(self, name: str) -> Optional[Bound]:
        return next((b for b in self.bounds if b.name == name), None)

    def names(self) -> list[str]:
        return [b.name for b in self.bounds]

    def accuracy_metrics(self) -> list[str]:
        return [b.accuracy_metric for b in self.bounds if b.accuracy_metric]

    def to_dict(self) -> dict[str, Any]:
        return {"bounds": [{"name": b.name, "min": b.min, "max": b.max, "metric": b.metric} for b in self.bounds],
                "memory_floor_mib": self.memory_floor_mib, "confidence": self.confidence,
                "max_chains": self.max_chains, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Targets":
        return cls(bounds=tuple(Bound(**b) for b in d["bounds"]), memory_floor_mib=float(d["memory_floor_mib"]),
                   confidence=float(d.get("confidence", 0.95)), max_chains=d.get("max_chains"),
                   source=d.get("source", "defaults"))


def _targets_from_spec(spec: dict[str, Any], source: str) -> Targets:
    bounds = [Bound(n, spec[n].get("min"), spec[n].get("max")) for n in TARGET_NAMES if spec.get(n)]
    bounds += [Bound(f"accuracy.{m}", b.get("min"), b.get("max")) for m, b in (spec.get("accuracy") or {}).items()]
    if spec.get("legacy_accuracy"):
        m, b = spec["legacy_accuracy"]
        bounds.append(Bound("accuracy", b.get("min"), b.get("max"), metric=m))
    return Targets(tuple(bounds), float(spec["memory_floor_mib"]), float(spec.get("confidence", 0.95)),
                   spec.get("max_chains"), source)


def default_targets(device: str) -> Targets:
    """The per-device default targets (`TARGET_DEFAULTS`)."""
    return _targets_from_spec(_device_defaults(device), f"defaults:{device}")


#: a quantity with no record (not reached: targets name objectives and accuracy metrics only)
_FRACTION_RANGE = (0.0, 1.0, False, False, "a fraction")


def check_bound(check: SpaceChecker, key: str, quantity: str, lo: Optional[float], hi: Optional[float]) -> None:
    """A target or constraint on ``quantity`` (a `TARGET_NAMES` entry or an accuracy metric): each
    given bound within what the quantity can be (`BOUND_RANGES`: the objectives' and accuracy
    metrics' records), and ``min <= max``."""
    a, b, a_open, b_open, what = BOUND_RANGES.get(quantity, _FRACTION_RANGE)
    for side, v in (("min", lo), ("max", hi)):
        if v is None:
            continue
        if v < a or (a_open and v == a) or v > b or (b_open and v == b):
            span = f"{'(' if a_open else '['}{a:g}, {b:g}{')' if b_open else ']'}"
            check.fail(f"{key}.{side}", f"must be in {span} ({quantity} is {what}), got {v!r}")
    if lo is not None and hi is not None and hi < lo:
        check.fail(key, f"empty range: min={lo} > max={hi}")


def parse_targets(check: SpaceChecker, raw: Any, device: str, constraints: list["Constraint"], acc_metric: Optional[str],
                  acc_chains: Optional[int]) -> Targets:
    """The space's targets: the device defaults, overridden by the ``targets`` section and then by
    the ``constraints`` section (the same quantities). A space with ``constraints`` and no
    ``targets`` section (the older form) is held to exactly its constraints."""
    base = _device_defaults(device)
    if raw is None and constraints:
        spec: dict[str, Any] = {"memory_floor_mib": base["memory_floor_mib"], "confidence": base["confidence"],
                                "max_chains": acc_chains, "accuracy": {}}
        source = "constraints"
    elif raw is None:
        return default_targets(device)
    else:
        spec, source = base, "targets"
        check.mapping(raw, "targets", set(TARGET_NAMES) | {"accuracy", "memory_floor_mib", "confidence", "max_chains"})
        for k, v in raw.items():
            key = f"targets.{k}"
            if k in TARGET_NAMES:
                if v is None:
                    spec[k] = None
                    continue
                check.mapping(v, key, {"min", "max"})
                spec[k] = {b: check.number(v[b], f"{key}.{b}") for b in ("min", "max") if v.get(b) is not None}
                if not spec[k]:
                    check.fail(key, "give min or max (or null to drop the target)")
                check_bound(check, key, k, spec[k].get("min"), spec[k].get("max"))
            elif k == "accuracy":
                if v is None:
                    spec["accuracy"] = {}
                    continue
                check.mapping(v, key, set(ACCURACY_METRIC_DIRECTIONS))
                acc = {}
                for m, b in v.items():
                    if b is None:
                        continue
                    check.mapping(b, f"{key}.{m}", {"min", "max"})
                    acc[m] = {x: check.number(b[x], f"{key}.{m}.{x}") for x in ("min", "max") if b.get(x) is not None}
                    if not acc[m]:
                        check.fail(f"{key}.{m}", "give min or max (or null to drop the target)")
                    check_bound(check, f"{key}.{m}", m, acc[m].get("min"), acc[m].get("max"))
                spec["accuracy"] = acc
            elif k == "memory_floor_mib":
                spec[k] = check.number(v, key, low=0)
            elif k == "confidence":
                c = check.number(v, key, low=0)
                if not 0.5 <= c < 1:
                    check.fail(key, f"must be in [0.5, 1), got {v!r}")
                spec[k] = c
            else:
                spec[k] = None if v is None else check.integer(v, key, low=1)
    for c in constraints:  # the constraints section names the same quantities; it wins
        if c.name == "accuracy":
            if acc_metric is not None and source == "constraints":
                spec["legacy_accuracy"] = (acc_metric, {"min": c.min, "max": c.max})
            elif acc_metric is not None:
                spec.setdefault("accuracy", {})[acc_metric] = {"min": c.min, "max": c.max}
            if acc_chains is not None:
                spec["max_chains"] = acc_chains
        else:
            spec[c.name] = {"min": c.min, "max": c.max}
    return _targets_from_spec(spec, source)


def targets_accuracy_metric(data: dict[str, Any]) -> Optional[str]:
    """The first accuracy metric of a ``targets`` section (names the accuracy objective when the
    constraints section does not)."""
    acc = (data.get("targets") or {}).get("accuracy") if isinstance(data.get("targets"), dict) else None
    if isinstance(acc, dict):
        for m in acc:
            if m in ACCURACY_METRIC_DIRECTIONS:
                return m
    return None


@dataclass(frozen=True)
class Constraint:
    name: str  # one of CONSTRAINT_NAMES
    min: Optional[float] = None
    max: Optional[float] = None

    def violation(self, value: Optional[float]) -> float:
        """Optuna convention: <= 0 feasible. A missing value (e.g. baseline out of memory) is
        neutral for memory ratios and speedup (0), and infinitely bad for accuracy."""
        return Bound(self.name, self.min, self.max).violation(value)

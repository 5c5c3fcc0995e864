"""`SearchSpace`: a validated space file as one record (what `parse_space` returns), with what the
search asks of it (Optuna distributions, fixed values, grids, objective directions, command-line
overrides) and its stored form (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from .checks import OverrideError, SpaceChecker, check_overrides
from .limits import check_fits
from .objectives import OBJECTIVE_BY_NAME
from .schema import ACCURACY_METRIC_DIRECTIONS, DEVICES, OBJECTIVES, Choices, IntRange, ParamSpace, family_params
from .settings import BudgetSettings, ExecutionSettings, GateSettings, MeasureSettings, SamplerSettings
from .targets import Constraint, Targets, parse_targets
from .workloads import Workload


@dataclass
class SearchSpace:
    """A validated space file (see `search_spaces.space` for its keys); ``raw`` is the file's data."""

    source: str
    name: str
    device: str
    backend: str
    dtype: str
    mode: str
    buckets: list[int]
    pattern: ParamSpace
    kernel: Optional[ParamSpace]
    workloads: list[Workload]
    objectives: list[str]
    constraints: list[Constraint]
    accuracy_metric: Optional[str]
    accuracy_max_chains: Optional[int]
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    #: the one set of deployment targets (see `Targets`): parsed with the file (`parse_space`); for
    #: a space stored before targets existed, its constraints folded once, when it is read back
    targets: Optional[Targets] = None
    accuracy_noise: float = 4.0  # Angstrom: the degraded structure a guided candidate is scored with

    def __post_init__(self) -> None:
        """Fold an older space's ``constraints`` into `targets` (or take the per-device defaults
        when it had none), so that every reader sees only `targets`."""
        if self.targets is None:
            self.targets = parse_targets(SpaceChecker(self.source), None, self.device, list(self.constraints),
                                         self.accuracy_metric, self.accuracy_max_chains)

    def effective_targets(self) -> Targets:
        """`targets` (never None once the space is built; see `__post_init__`)."""
        return self.targets

    # -- Optuna ----------------------------------------------------------------------------
    def _groups(self) -> tuple[tuple[str, ParamSpace], ...]:
        return (("pattern", self.pattern), ("kernel", self.kernel or ParamSpace()))

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of the searched parameters (fixed values are not searched).
        Names: ``pattern.<field>`` and ``kernel.<field>``."""
        import optuna.distributions as od

        out: dict[str, Any] = {}
        for group, specs in self._groups():
            for key, spec in specs.items():
                if isinstance(spec, Choices) and len(spec.values) > 1:
                    out[f"{group}.{key}"] = od.CategoricalDistribution(list(spec.values))
                elif isinstance(spec, IntRange) and spec.high > spec.low:
                    out[f"{group}.{key}"] = od.IntDistribution(spec.low, spec.high, step=spec.step)
        return out

    def fixed(self) -> dict[str, Any]:
        """Parameters with a single value."""
        out: dict[str, Any] = {}
        for group, specs in self._groups():
            for key, spec in specs.items():
                if isinstance(spec, Choices):
                    if len(spec.values) == 1:
                        out[f"{group}.{key}"] = spec.values[0]
                elif isinstance(spec, IntRange):
                    if spec.high == spec.low:
                        out[f"{group}.{key}"] = spec.low
                else:
                    out[f"{group}.{key}"] = spec
        return out

    def grid(self) -> list[dict[str, Any]]:
        """Every parameter combination (for exhaustive baselines on small spaces)."""
        import itertools

        axes: list[tuple[str, list]] = []
        for name, dist in self.distributions().items():
            if hasattr(dist, "choices"):
                axes.append((name, list(dist.choices)))
            else:
                axes.append((name, list(range(dist.low, dist.high + 1, dist.step))))
        fixed = self.fixed()
        return [dict(fixed, **dict(zip([a[0] for a in axes], combo))) for combo in itertools.product(*[a[1] for a in axes])]

    def split_params(self, params: dict[str, Any]) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
        """(pattern dict, kernel dict or None) from flat ``group.field`` params (+ fixed ones)."""
        allp = dict(self.fixed(), **params)
        pattern = {k.split(".", 1)[1]: v for k, v in allp.items() if k.startswith("pattern.")}
        pattern = family_params(pattern)
        kernel = {k.split(".", 1)[1]: v for k, v in allp.items() if k.startswith("kernel.")}
        return pattern, (kernel if self.kernel is not None else None)

    def directions(self) -> list[str]:
        out = []
        for o in self.objectives:
            if OBJECTIVE_BY_NAME[o].per_metric:
                d = ACCURACY_METRIC_DIRECTIONS[self.accuracy_metric or "contact_recall_long"]
            else:
                d = OBJECTIVES[o]
            out.append("maximize" if d == "max" else "minimize")
        return out

    def constraint_names(self) -> list[str]:
        return [c.name for c in self.constraints]

    def override(self, *, trials: Optional[int] = None, timeout: Optional[float] = None, device: Optional[str] = None) -> "SearchSpace":
        """The space with the command line's values; they follow the file's rules (`check_overrides`)
        and a new device has its memory checked again (`check_fits`)."""
        check_overrides(trials=trials, timeout=timeout)
        if device is not None and device not in DEVICES:
            raise OverrideError(f"--device: {device!r} is not one of {', '.join(DEVICES)}")
        new = copy.copy(self)
        if trials is not None:
            new.budget = replace(new.budget, trials=int(trials))
        if timeout is not None:
            new.budget = replace(new.budget, timeout=float(timeout))
        if device is not None:
            new.device = device
            check_fits(new)
        return new

    def to_dict(self) -> dict[str, Any]:
        """The validated space as plain data (stored with each run)."""
        return {
            "source": self.source, "name": self.name, "device": self.device, "backend": self.backend,
            "dtype": self.dtype, "mode": self.mode, "buckets": list(self.buckets),
            "pattern": self.pattern.to_dict(), "kernel": None if self.kernel is None else self.kernel.to_dict(),
            "workloads": [w.to_dict() for w in self.workloads], "objectives": list(self.objectives),
            "constraints": [{"name": c.name, "min": c.min, "max": c.max} for c in self.constraints],
            "accuracy_metric": self.accuracy_metric, "accuracy_max_chains": self.accuracy_max_chains,
            "accuracy_noise": self.accuracy_noise,
            "sampler": self.sampler.to_dict(), "budget": self.budget.to_dict(), "measure": self.measure.to_dict(),
            "gate": self.gate.to_dict(), "execution": self.execution.to_dict(),
            "targets": self.effective_targets().to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        """Inverse of `to_dict` (used by workers: the driver ships the validated space; and by the
        export and report, on the space stored with a run)."""
        d = dict(d)
        d["pattern"] = ParamSpace.from_dict(d["pattern"])
        d["kernel"] = None if d.get("kernel") is None else ParamSpace.from_dict(d["kernel"])
        d["workloads"] = [Workload.from_dict(w) for w in d["workloads"]]
        d["constraints"] = [Constraint(**c) for c in d["constraints"]]
        d["targets"] = Targets.from_dict(d["targets"]) if d.get("targets") else None
        for key, section in (("sampler", SamplerSettings), ("budget", BudgetSettings), ("measure", MeasureSettings),
                             ("gate", GateSettings), ("execution", ExecutionSettings)):
            d[key] = section.from_dict(d.get(key))
        return cls(**d)

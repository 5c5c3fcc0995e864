"""The settings sections of a space file: one frozen record each (``sampler`` `SamplerSettings`,
``budget`` `BudgetSettings`, ``measure`` `MeasureSettings`, ``gate`` `GateSettings`, ``execution``
`ExecutionSettings`), defaults in the field definitions, each validated by its own ``parse``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from .schema import (MAX_REPEATS, MAX_SEED, MAX_THREADS, MAX_TRIALS, MAX_WARMUP, MAX_WORKERS, SAMPLERS, Section,
                     field_names)

if TYPE_CHECKING:
    from .checks import IntWithinLimit, SpaceChecker


@dataclass(frozen=True)
class SamplerSettings(Section):
    """``sampler``: the Optuna sampler. Unset numbers take the sampler's defaults
    (`POPULATION_DEFAULT`, `STARTUP_DEFAULT`); ``seed`` None is unseeded."""

    # the default: the winner of the sampler replay (benchmarks/search_efficiency.py)
    name: str = "local"  # nsga2 | tpe | gp | random | local
    seed: Optional[int] = None
    population_size: Optional[int] = None  # nsga2
    n_startup_trials: Optional[int] = None  # tpe, gp, local (its own default: 4)

    KEYS: ClassVar[tuple[str, ...]] = ("name", "seed", "population_size", "n_startup_trials")
    POPULATION_DEFAULT: ClassVar[int] = 16
    STARTUP_DEFAULT: ClassVar[int] = 10
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ("seed", "population_size", "n_startup_trials")

    @property
    def population(self) -> int:
        return self.POPULATION_DEFAULT if self.population_size is None else self.population_size

    @property
    def startup_trials(self) -> int:
        return self.STARTUP_DEFAULT if self.n_startup_trials is None else self.n_startup_trials

    @classmethod
    def parse(cls, check: SpaceChecker, data: dict[str, Any]) -> "SamplerSettings":
        sampler = check.section(data, "sampler", set(cls.KEYS))
        if data.get("sampler") is None:
            sampler = {"name": cls.name}
        check.mapping(sampler, "sampler", set(cls.KEYS), ("name",))
        check.choice(sampler["name"], "sampler.name", SAMPLERS)
        for k, (lo_k, hi_k) in {"seed": (0, MAX_SEED), "population_size": (2, 100_000),
                                "n_startup_trials": (1, MAX_TRIALS)}.items():
            if k in sampler and sampler[k] is not None:
                check.integer(sampler[k], f"sampler.{k}", low=lo_k, high=hi_k)
        return cls(**sampler)


@dataclass(frozen=True)
class BudgetSettings(Section):
    """``budget``: ``trials`` in total (finished trials of the study count), ``timeout`` seconds
    after which no new trial starts (None: no limit)."""

    trials: int = 32
    timeout: Optional[float] = None

    @classmethod
    def parse(cls, check: SpaceChecker, data: dict[str, Any]) -> "BudgetSettings":
        budget = check.section(data, "budget", {"trials", "timeout"})
        trials = cls.trials if budget.get("trials") is None else budget["trials"]
        check.integer(trials, "budget.trials", low=1, high=MAX_TRIALS)
        timeout = None if budget.get("timeout") is None else check.number(budget["timeout"], "budget.timeout", low=1)
        return cls(trials=trials, timeout=timeout)


@dataclass(frozen=True)
class MeasureSettings(Section):
    """``measure`` (see `kernels.measure.time_paired`): ``warmup`` untimed rounds, ``repeats``
    minimum and ``max_repeats`` maximum timed rounds, ``rel_width`` the interval half-width
    (fraction of the speedup) at which timing stops early, ``time_cap_s`` seconds of timed calls
    per (workload, bucket); ``confirm_*`` the same for the confirmation of the top ``confirm_top``
    candidates per bucket."""

    warmup: int = 2
    repeats: int = 7
    max_repeats: int = 41
    rel_width: float = 0.05
    time_cap_s: float = 3.0
    confirm_top: int = 3
    confirm_repeats: int = 21
    confirm_max_repeats: int = 81
    confirm_time_cap_s: float = 20.0

    @classmethod
    def parse(cls, check: SpaceChecker, raw: Any) -> "MeasureSettings":
        """``max_repeats`` is at least ``repeats`` (and, when only ``repeats`` is given, at least
        the default); the same for ``confirm_max_repeats``."""
        measure = {**MEASURE_DEFAULTS, **(raw or {})}
        check.mapping(measure, "measure", MEASURE_KEYS)
        check.integer(measure["warmup"], "measure.warmup", low=0, high=MAX_WARMUP)
        for k in ("repeats", "max_repeats", "confirm_top", "confirm_repeats", "confirm_max_repeats"):
            check.integer(measure[k], f"measure.{k}", low=1, high=MAX_REPEATS)
        for k in ("rel_width", "time_cap_s", "confirm_time_cap_s"):
            check.number(measure[k], f"measure.{k}", low=0)
        if raw and "repeats" in raw and "max_repeats" not in raw:
            measure["max_repeats"] = max(measure["repeats"], MEASURE_DEFAULTS["max_repeats"])
        measure["max_repeats"] = max(measure["max_repeats"], measure["repeats"])
        measure["confirm_max_repeats"] = max(measure["confirm_max_repeats"], measure["confirm_repeats"])
        return cls(**measure)

    def paired_kwargs(self, level: float, confirm: bool = False) -> dict[str, Any]:
        """Keyword arguments of `kernels.measure.time_paired` for a trial, or (``confirm``) for
        the confirmation of a bucket's leaders; ``level`` is the interval's confidence."""
        if confirm:
            return dict(warmup=self.warmup, repeats=self.confirm_repeats, max_repeats=self.confirm_max_repeats,
                        rel_width=self.rel_width, time_cap_s=self.confirm_time_cap_s, level=level)
        return dict(warmup=self.warmup, repeats=self.repeats, max_repeats=self.max_repeats, rel_width=self.rel_width,
                    time_cap_s=self.time_cap_s, level=level)


@dataclass(frozen=True)
class GateSettings(Section):
    """``gate``: the correctness gate's shape (``seq_len`` residues, ``batch`` rows or MSA
    sequences) and its tolerances, relative to max |reference|; None takes the dtype's default
    (`autotune.trial.DEFAULT_TOL`), 0 is an exact comparison."""

    seq_len: int = 200
    batch: int = 2
    fwd_tol: Optional[float] = None
    bwd_tol: Optional[float] = None

    @classmethod
    def parse(cls, check: SpaceChecker, data: dict[str, Any], int_within_limit: IntWithinLimit) -> "GateSettings":
        gate = {**cls().to_dict(), **check.section(data, "gate", set(field_names(cls)))}
        int_within_limit(gate["seq_len"], "gate.seq_len", "max_seq_len")
        int_within_limit(gate["batch"], "gate.batch", "max_batch")
        for k in ("fwd_tol", "bwd_tol"):
            if gate[k] is not None:  # 0 is kept: an exact comparison
                gate[k] = check.number(gate[k], f"gate.{k}", low=0)
        return cls(**gate)

    def tolerances(self, default: tuple[float, float]) -> tuple[float, float]:
        """(forward, backward) tolerance: the space's where given (0 included), else ``default``."""
        return (default[0] if self.fwd_tol is None else self.fwd_tol,
                default[1] if self.bwd_tol is None else self.bwd_tol)


@dataclass(frozen=True)
class ExecutionSettings(Section):
    """``execution``: CPU spaces run ``workers`` actors (None: the CPUs // threads) with
    ``threads_per_worker`` intra-op threads each; GPU spaces one actor per GPU."""

    workers: Optional[int] = None
    threads_per_worker: int = 1

    @classmethod
    def parse(cls, check: SpaceChecker, data: dict[str, Any]) -> "ExecutionSettings":
        execution = {**cls().to_dict(), **check.section(data, "execution", set(field_names(cls)))}
        if execution["workers"] is not None:
            check.integer(execution["workers"], "execution.workers", low=1, high=MAX_WORKERS)
        if execution["threads_per_worker"] is None:
            execution["threads_per_worker"] = cls.threads_per_worker
        check.integer(execution["threads_per_worker"], "execution.threads_per_worker", low=1, high=MAX_THREADS)
        return cls(**execution)


MEASURE_KEYS = set(field_names(MeasureSettings))
MEASURE_DEFAULTS = MeasureSettings().to_dict()

"""Search-space files: load a YAML file, validate every key, and turn it into Optuna distributions.

A space file has these top-level keys (all validated; an unknown key, a wrong type, an empty range
or a block size the kernels do not support raises `SpaceError`, whose message is one line
``FILE: KEY: problem``):

    name: protein-gpu               # free text
    device: cuda                    # cuda | cpu (the CLI's --device overrides)
    backend: triton                 # candidate backend: triton | cpu | flex | reference | dense
    dtype: bfloat16                 # float32 | bfloat16 | float16
    mode: fwd                       # fwd | fwd+bwd
    buckets: [256, 512, 1024]       # sequence-length buckets, residues
    pattern:                        # PatternConfig fields; each a value, {choices: [...]} or
      block_size: {choices: [32, 64, 128]}    #   {low: a, high: b[, step: s]} (integers)
      window: {low: 0, high: 256, step: 32}
      num_global: {choices: [0, 16, 32]}
      stride: {low: 0, high: 8}
      global_placement: {choices: [first, spread]}   # optional (default "first")
      family: {choices: [static, guided]}   # optional (default static); guided = patterns.GuidedConfig:
      keep: {choices: [0.25, 0.5]}  #   fraction of key blocks kept per row (needed when guided may be
      pool: {choices: [max, logsumexp]}   #   sampled), pool and spread optional; window/num_global are
      spread: {choices: [row, layout]}    #   its forced blocks; stride only for static (required then)
    kernel:                         # optional; KernelConfig fields, same forms. Tiles larger than
      block_m: {choices: [32, 64]}  #   the layout block are clipped to it (KernelConfig.for_block)
      block_n: {choices: [32, 64]}
      num_warps: {choices: [4, 8]}
      num_stages: {choices: [1, 2, 3]}
    workloads:                      # one or more AlphaFold2 attention shapes
      - name: row                   # msa_row: batch = tokens // L (at least 1, at most max_batch)
        kind: msa_row
        heads: 8
        head_dim: 32
        tokens: 32768
        bias: true                  # pair bias [1, H, L, L]
      - name: tri                   # triangle: batch = min(L, max_batch)
        kind: triangle
        heads: 4
        head_dim: 32
        max_batch: 128
        bias: true
      - name: evo                   # evoformer: one whole EvoformerBlock (AF2 Alg. 6), the trial's
        kind: evoformer             #   pattern on MSA row and both triangle attentions; vs the
        msa_depth: 128              #   same block with dense SDPA / naive attention. N_seq (required)
        c_m: 256                    # optional, AF2 defaults: c_m 256, c_z 128, heads 8 (MSA
        c_z: 128                    #   attention), pair_heads 4 (triangle attention), head_dim 32,
        max_len: 2048               #   c_hidden_opm 32, c_hidden_mul 128; buckets > max_len skipped
    objectives:                     # what Optuna optimises (multi-objective); direction implied
      - speedup                     #   speedup (max), memory_vs_sdpa (min), memory_vs_naive (min),
      - memory_vs_sdpa              #   sparsity (max), accuracy (the metric's own direction)
    constraints:                    # each checked at every (workload, bucket)
      speedup: {min: 1.0}
      memory_vs_sdpa: {max: 4.0}
      memory_vs_naive: {max: 1.0}
      accuracy: {metric: contact_recall_long, min: 0.2, max_chains: 8}   # noise: 4 (A; guided candidates
    sampler: {name: nsga2, seed: 0, population_size: 16}   # nsga2 | tpe | random
    budget: {trials: 64, timeout: 3600}                     # timeout in seconds
    measure: {warmup: 3, repeats: 10}
    gate: {seq_len: 200, batch: 2, fwd_tol: 0.03, bwd_tol: 0.05}
    execution: {workers: 2, threads_per_worker: 1}          # CPU trials; GPU: one actor per GPU
    limits: {max_seq_len: 65536}    # optional: raise a machine limit (see LIMITS)

Every number must be finite (``.nan`` / ``.inf`` are rejected), every section a mapping, and the
values within what a machine can run (`LIMITS`, each raisable in the ``limits`` section): buckets,
window, global tokens and the gate length at most ``max_seq_len``; heads, head_dim, tokens and
batches within their limits; and per (workload, bucket) the inputs (q, k, v, output and the pair
bias; for an EvoFormer block the MSA and pair activations) at most ``max_input_gib`` (default: this
machine's physical memory for device cpu, the GPU's memory for cuda when one is visible).
``threads_per_worker`` is checked against the CPUs the executor sees when it starts.

A guided candidate's layout is chosen from each workload's pair bias inside every timed call (its
construction counts in the candidate's time); its accuracy is measured with layouts chosen from
the chains' structures degraded by ``accuracy_noise`` Angstrom of noise (top-level key, or
``constraints.accuracy.noise`` in a space without a targets section; default 4).

Each section becomes a frozen record with its defaults in the field definitions (`parse_space`
validates each in one place, step by step): ``sampler`` `SamplerSettings`, ``budget``
`BudgetSettings`, ``measure`` `MeasureSettings`, ``gate`` `GateSettings`, ``execution``
`ExecutionSettings`; ``pattern`` and ``kernel`` a `ParamSpace` (name -> `Choices`, `IntRange` or a
fixed value, in the file's order); each workload the `Workload` record of its kind
(`WORKLOAD_TYPES`: `AttentionWorkload`, `EvoformerWorkload`). `SearchSpace.to_dict` is what every
run stores (JSON, with the run); `SearchSpace.from_dict` reads it back, also from a database written
by an older version (missing keys take the defaults).

Aggregation of a trial's objectives over its (workload, bucket) cells: speedup and memory ratios
by geometric mean, sparsity by mean, accuracy by its worst bucket. Optuna's constraint values
(<= 0 is feasible) are the violations of every target but speedup at the trial's least violating
bucket (`autotune.search.bucket_view`), so a trial is feasible for the sampler when it is a
candidate of at least one bucket; the verdict judges the speedup target on confirmed figures.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Optional

from kernels import backends
from kernels.config import KERNEL_STAGES, KERNEL_TILES, KERNEL_WARPS
from patterns.config import GLOBAL_PLACEMENTS, SUPPORTED_BLOCK_SIZES
from patterns.errors import InputError
from patterns.guided import GUIDED_POOLS, GUIDED_SPREADS, PATTERN_FAMILIES
from patterns.names import name_problem
from patterns.safeyaml import YAMLInputError, load_yaml_file

__all__ = [
    "SpaceError",
    "OverrideError",
    "check_overrides",
    "check_fits",
    "check_bound",
    "SearchSpace",
    "Workload",
    "AttentionWorkload",
    "EvoformerWorkload",
    "WORKLOAD_TYPES",
    "ParamSpace",
    "Choices",
    "IntRange",
    "SamplerSettings",
    "BudgetSettings",
    "MeasureSettings",
    "GateSettings",
    "ExecutionSettings",
    "Constraint",
    "load_space",
    "parse_space",
    "OBJECTIVES",
    "ACCURACY_METRIC_DIRECTIONS",
    "Targets",
    "Bound",
    "TARGET_DEFAULTS",
    "default_targets",
]

# Known accuracy metrics (names and directions of autotune.accuracy.ACCURACY_METRICS); validation
# does not import the accuracy package (it loads protein data), the trial does.
ACCURACY_METRIC_DIRECTIONS: dict[str, str] = {
    "contact_recall_short": "max",
    "contact_recall_medium": "max",
    "contact_recall_long": "max",
    "attention_mass_recall": "max",
    "output_rel_error": "min",
}
OBJECTIVES: dict[str, str] = {
    "speedup": "max",
    "memory_vs_sdpa": "min",
    "memory_vs_naive": "min",
    "sparsity": "max",
    "accuracy": "max",  # replaced by the metric's direction
}
CONSTRAINT_NAMES = ("speedup", "memory_vs_sdpa", "memory_vs_naive", "sparsity", "accuracy")
BACKENDS = backends.names()  # the registered backends (kernels.backends)
DTYPES = ("float32", "bfloat16", "float16")
MODES = ("fwd", "fwd+bwd")
DEVICES = ("cuda", "cpu")
SAMPLERS = ("nsga2", "tpe", "gp", "random")
# The keys of a workload entry and their defaults are its record class's (`WORKLOAD_TYPES`): an
# EvoFormer workload times one whole block, its attention dims default to AlphaFold2's.

TOP_KEYS = {
    "name", "device", "backend", "dtype", "mode", "buckets", "pattern", "kernel", "workloads",
    "objectives", "constraints", "targets", "accuracy_noise", "sampler", "budget", "measure", "gate", "execution",
    "limits",
}
# What one machine can run, as data: each may be raised (or lowered) in the space's ``limits``
# section. max_input_gib None = this machine's memory (see `_machine_memory_gib`).
LIMITS: dict[str, Any] = {
    "max_seq_len": 65536,      # residues: buckets, window, num_global, gate.seq_len
    "max_heads": 128,
    "max_head_dim": 256,
    "max_tokens": 1 << 24,     # msa_row tokens (batch x L)
    "max_batch": 65536,        # max_batch, msa_depth, gate.batch
    "max_channels": 4096,      # EvoFormer c_m, c_z, c_hidden_*
    "max_input_gib": None,
}
# Fixed sanity bounds (not machine limits): beyond them a value is a typo.
MAX_TRIALS = 1_000_000
MAX_WARMUP = 1000
MAX_REPEATS = 10_000
MAX_WORKERS = 4096
MAX_THREADS = 1024
MAX_NAME = 256      # study / space name: the database columns hold 256 characters
MAX_WORKLOAD_NAME = 64
MAX_SEED = 2**32 - 1  # numpy's seed range
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
REQUIRED_TOP = ("buckets", "pattern", "workloads", "objectives")

PATTERN_PARAMS: dict[str, tuple] = {
    "block_size": SUPPORTED_BLOCK_SIZES,
    "window": None,
    "num_global": None,
    "stride": None,
    "global_placement": GLOBAL_PLACEMENTS,
    # guided patterns (patterns.GuidedConfig); "family" picks static or guided per trial
    "family": PATTERN_FAMILIES,
    "keep": None,
    "pool": GUIDED_POOLS,
    "spread": GUIDED_SPREADS,
}
#: pattern keys that only one family uses (dropped from the other family's trial parameters)
GUIDED_ONLY_PARAMS = ("keep", "pool", "spread")
STATIC_ONLY_PARAMS = ("stride", "global_placement")
KERNEL_PARAMS: dict[str, tuple] = {
    "block_m": KERNEL_TILES,
    "block_n": KERNEL_TILES,
    "num_warps": KERNEL_WARPS,
    "num_stages": KERNEL_STAGES,
}


class SpaceError(InputError):
    """An invalid search-space file; ``str()`` is one line: ``FILE: KEY: problem``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


# ------------------------------------------------------------------------------------------------
# searched parameters: a fixed value, a list of choices or an integer range


@dataclass(frozen=True)
class Choices:
    """``{choices: [...]}``: Optuna samples one of ``values`` (categorical)."""

    values: tuple

    def to_data(self) -> dict[str, Any]:
        return {"choices": list(self.values)}


@dataclass(frozen=True)
class IntRange:
    """``{low: a, high: b[, step: s]}``: an integer in [low, high] on the grid low + k * step."""

    low: int
    high: int
    step: int = 1

    def to_data(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "step": self.step}


def _spec_to_data(spec: Any) -> Any:
    return spec.to_data() if isinstance(spec, (Choices, IntRange)) else spec


def _spec_from_data(d: Any) -> Any:
    """The stored form of one parameter (`_spec_to_data`) back to its spec."""
    if isinstance(d, dict) and "choices" in d:
        return Choices(tuple(d["choices"]))
    if isinstance(d, dict):
        return IntRange(int(d["low"]), int(d["high"]), int(d.get("step", 1)))
    return d


@dataclass(frozen=True)
class ParamSpace:
    """The ``pattern`` or ``kernel`` section: parameter name -> `Choices`, `IntRange` or a fixed
    value, in the file's order (the order Optuna is asked in, so a seed proposes the same trials).
    Parameters that are not given take `patterns.PatternConfig` / `kernels.KernelConfig` defaults."""

    params: tuple[tuple[str, Any], ...] = ()

    def items(self) -> list[tuple[str, Any]]:
        return list(self.params)

    def keys(self) -> list[str]:
        return [k for k, _ in self.params]

    def get(self, key: str, default: Any = None) -> Any:
        return next((v for k, v in self.params if k == key), default)

    def __getitem__(self, key: str) -> Any:
        for k, v in self.params:
            if k == key:
                return v
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.params)

    def __len__(self) -> int:
        return len(self.params)

    def to_dict(self) -> dict[str, Any]:
        return {k: _spec_to_data(v) for k, v in self.params}

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> "ParamSpace":
        return cls(tuple((k, _spec_from_data(v)) for k, v in (d or {}).items()))


# ------------------------------------------------------------------------------------------------
# the settings sections: one frozen record each, defaults in the field definitions


def _field_names(cls_or_obj: Any) -> tuple[str, ...]:
    """The dataclass fields (class variables left out)."""
    return tuple(f.name for f in fields(cls_or_obj))


class _Section:
    """Shared by the settings records: plain data for storage (`to_dict` / `from_dict`: a space is
    stored as JSON with each run, and read back by workers, the export and the report)."""

    #: optional fields left out of `to_dict` while unset (stored only when the file gave them)
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _field_names(self)
                if not (k in self._OMIT_NONE and getattr(self, k) is None)}

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]):
        """A stored section; keys this version no longer has are dropped, missing ones take the
        field defaults (a space stored by an older version loads)."""
        names = _field_names(cls)
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass(frozen=True)
class SamplerSettings(_Section):
    """``sampler``: the Optuna sampler. Unset numbers take the sampler's defaults
    (`POPULATION_DEFAULT`, `STARTUP_DEFAULT`); ``seed`` None is unseeded."""

    # the default: the winner of the sampler replay (benchmarks/search_efficiency.py)
    name: str = "random"  # nsga2 | tpe | gp | random
    seed: Optional[int] = None
    population_size: Optional[int] = None  # nsga2
    n_startup_trials: Optional[int] = None  # tpe

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
    def parse(cls, V: "_V", data: dict[str, Any]) -> "SamplerSettings":
        sampler = V.section(data, "sampler", set(cls.KEYS))
        if data.get("sampler") is None:
            sampler = {"name": cls.name}
        V.mapping(sampler, "sampler", set(cls.KEYS), ("name",))
        V.choice(sampler["name"], "sampler.name", SAMPLERS)
        for k, (lo_k, hi_k) in {"seed": (0, MAX_SEED), "population_size": (2, 100_000),
                                "n_startup_trials": (1, MAX_TRIALS)}.items():
            if k in sampler and sampler[k] is not None:
                V.integer(sampler[k], f"sampler.{k}", low=lo_k, high=hi_k)
        return cls(**sampler)


@dataclass(frozen=True)
class BudgetSettings(_Section):
    """``budget``: ``trials`` in total (finished trials of the study count), ``timeout`` seconds
    after which no new trial starts (None: no limit)."""

    trials: int = 32
    timeout: Optional[float] = None

    @classmethod
    def parse(cls, V: "_V", data: dict[str, Any]) -> "BudgetSettings":
        budget = V.section(data, "budget", {"trials", "timeout"})
        trials = cls.trials if budget.get("trials") is None else budget["trials"]
        V.integer(trials, "budget.trials", low=1, high=MAX_TRIALS)
        timeout = None if budget.get("timeout") is None else V.number(budget["timeout"], "budget.timeout", low=1)
        return cls(trials=trials, timeout=timeout)


@dataclass(frozen=True)
class MeasureSettings(_Section):
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
    def parse(cls, V: "_V", raw: Any) -> "MeasureSettings":
        """``max_repeats`` is at least ``repeats`` (and, when only ``repeats`` is given, at least
        the default); the same for ``confirm_max_repeats``."""
        measure = {**MEASURE_DEFAULTS, **(raw or {})}
        V.mapping(measure, "measure", MEASURE_KEYS)
        V.integer(measure["warmup"], "measure.warmup", low=0, high=MAX_WARMUP)
        for k in ("repeats", "max_repeats", "confirm_top", "confirm_repeats", "confirm_max_repeats"):
            V.integer(measure[k], f"measure.{k}", low=1, high=MAX_REPEATS)
        for k in ("rel_width", "time_cap_s", "confirm_time_cap_s"):
            V.number(measure[k], f"measure.{k}", low=0)
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
class GateSettings(_Section):
    """``gate``: the correctness gate's shape (``seq_len`` residues, ``batch`` rows or MSA
    sequences) and its tolerances, relative to max |reference|; None takes the dtype's default
    (`autotune.trial.DEFAULT_TOL`), 0 is an exact comparison."""

    seq_len: int = 200
    batch: int = 2
    fwd_tol: Optional[float] = None
    bwd_tol: Optional[float] = None

    @classmethod
    def parse(cls, V: "_V", data: dict[str, Any], lim_int) -> "GateSettings":
        gate = {**cls().to_dict(), **V.section(data, "gate", set(_field_names(cls)))}
        lim_int(gate["seq_len"], "gate.seq_len", "max_seq_len")
        lim_int(gate["batch"], "gate.batch", "max_batch")
        for k in ("fwd_tol", "bwd_tol"):
            if gate[k] is not None:  # 0 is kept: an exact comparison
                gate[k] = V.number(gate[k], f"gate.{k}", low=0)
        return cls(**gate)

    def tolerances(self, default: tuple[float, float]) -> tuple[float, float]:
        """(forward, backward) tolerance: the space's where given (0 included), else ``default``."""
        return (default[0] if self.fwd_tol is None else self.fwd_tol,
                default[1] if self.bwd_tol is None else self.bwd_tol)


@dataclass(frozen=True)
class ExecutionSettings(_Section):
    """``execution``: CPU spaces run ``workers`` actors (None: the CPUs // threads) with
    ``threads_per_worker`` intra-op threads each; GPU spaces one actor per GPU."""

    workers: Optional[int] = None
    threads_per_worker: int = 1

    @classmethod
    def parse(cls, V: "_V", data: dict[str, Any]) -> "ExecutionSettings":
        execution = {**cls().to_dict(), **V.section(data, "execution", set(_field_names(cls)))}
        if execution["workers"] is not None:
            V.integer(execution["workers"], "execution.workers", low=1, high=MAX_WORKERS)
        if execution["threads_per_worker"] is None:
            execution["threads_per_worker"] = cls.threads_per_worker
        V.integer(execution["threads_per_worker"], "execution.threads_per_worker", low=1, high=MAX_THREADS)
        return cls(**execution)


# ------------------------------------------------------------------------------------------------
# workloads: one record class per kind (what the file gives; what a trial does with it is
# `autotune.workloads`)

#: a workload as stored (at_runs.space, the tuned file): every kind's keys, None where not its own
STORED_WORKLOAD_KEYS = ("name", "kind", "heads", "head_dim", "bias", "tokens", "max_batch", "msa_depth", "c_m", "c_z",
                        "pair_heads", "c_hidden_opm", "c_hidden_mul", "max_len")


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One ``workloads`` entry: a measured shape. ``heads`` / ``head_dim`` are the attention's
    (an EvoFormer block's: its MSA attention's). Subclasses, one per family of kinds
    (`WORKLOAD_TYPES`), add their keys, their batch rule and their input size."""

    name: str
    kind: str
    heads: int
    head_dim: int
    bias: bool = True

    #: the YAML keys an entry of this class may have
    KEYS: ClassVar[frozenset[str]] = frozenset()

    def applies(self, seq_len: int) -> bool:
        """Whether this workload is measured at bucket ``seq_len``."""
        return True

    def batch(self, seq_len: int) -> int:
        raise NotImplementedError

    def input_gib(self, seq_len: int, dtype: str) -> float:
        raise NotImplementedError

    def gate_gib(self, seq_len: int, batch: int, dtype: str) -> float:
        """GiB the correctness gate takes at ``seq_len`` residues and ``batch`` rows."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The stored form (`STORED_WORKLOAD_KEYS`, the same for every kind)."""
        return {k: getattr(self, k, None) for k in STORED_WORKLOAD_KEYS}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Workload":
        """A stored workload (`to_dict`) back to the record of its kind."""
        cls = WORKLOAD_TYPES[d["kind"]]
        names = _field_names(cls)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class AttentionWorkload(Workload):
    """``msa_row`` (batch = tokens // L, at least 1) or ``triangle`` (batch = L) attention with
    an optional pair bias [1, H, L, L]; ``max_batch`` caps the batch."""

    tokens: Optional[int] = None  # msa_row: batch = tokens // L
    max_batch: Optional[int] = None

    KEYS: ClassVar[frozenset[str]] = frozenset({"name", "kind", "heads", "head_dim", "bias", "tokens", "max_batch"})

    def batch(self, seq_len: int) -> int:
        if self.kind == "msa_row":
            b = max(1, (seq_len if self.tokens is None else self.tokens) // seq_len)
        else:
            b = seq_len
        if self.max_batch is not None:
            b = min(b, self.max_batch)
        return max(1, b)

    def input_gib(self, seq_len: int, dtype: str) -> float:
        """q, k, v, out [B, H, L, D] and the pair bias [1, H, L, L]."""
        L = seq_len
        return (4.0 * self.batch(L) * self.heads * L * self.head_dim + (self.heads * L * L if self.bias else 0)) \
            * DTYPE_BYTES[dtype] / 2**30

    def gate_gib(self, seq_len: int, batch: int, dtype: str) -> float:
        """q, k, v, out [batch, H, L, D] and the bias, plus the dense reference's float32 scores
        [batch, H, L, L] (the gate compares against materialised attention)."""
        L = seq_len
        return ((4.0 * batch * self.heads * L * self.head_dim + (self.heads * L * L if self.bias else 0))
                * DTYPE_BYTES[dtype] + 4.0 * batch * self.heads * L * L) / 2**30

    @classmethod
    def parse(cls, V: "_V", w: dict[str, Any], key: str, kind: str, lim_int, buckets: list[int]) -> "AttentionWorkload":
        for k in w:
            if k not in cls.KEYS:
                V.fail(f"{key}.{k}", f"only for kind evoformer (allowed for {kind}: {', '.join(sorted(cls.KEYS))})")
        for r in ("heads", "head_dim"):
            if r not in w:
                V.fail(f"{key}.{r}", "required key is missing")
        return cls(
            name=w["name"],
            kind=kind,
            heads=lim_int(w["heads"], f"{key}.heads", "max_heads"),
            head_dim=lim_int(w["head_dim"], f"{key}.head_dim", "max_head_dim"),
            bias=V.boolean(w.get("bias", True), f"{key}.bias"),
            tokens=None if w.get("tokens") is None else lim_int(w["tokens"], f"{key}.tokens", "max_tokens"),
            max_batch=None if w.get("max_batch") is None else lim_int(w["max_batch"], f"{key}.max_batch", "max_batch"),
        )


@dataclass(frozen=True, kw_only=True)
class EvoformerWorkload(Workload):
    """``evoformer``: one whole EvoformerBlock (AF2 Alg. 6) with AlphaFold2's dims by default;
    its batch is the MSA depth N_seq, its attentions always have their pair bias, and buckets above
    ``max_len`` are not measured."""

    heads: int = 8  # MSA attention heads
    head_dim: int = 32  # MSA and triangle attention head dim
    msa_depth: int  # N_seq
    c_m: int = 256
    c_z: int = 128
    pair_heads: int = 4  # triangle attention heads
    c_hidden_opm: int = 32
    c_hidden_mul: int = 128
    max_len: Optional[int] = None

    KEYS: ClassVar[frozenset[str]] = frozenset({"name", "kind", "msa_depth", "c_m", "c_z", "heads", "pair_heads",
                                                "head_dim", "c_hidden_opm", "c_hidden_mul", "max_len"})
    DIMS: ClassVar[tuple[str, ...]] = ("c_m", "c_z", "heads", "pair_heads", "head_dim", "c_hidden_opm", "c_hidden_mul")

    def applies(self, seq_len: int) -> bool:
        return self.max_len is None or seq_len <= self.max_len

    def batch(self, seq_len: int) -> int:
        return self.msa_depth

    def input_gib(self, seq_len: int, dtype: str) -> float:
        """The MSA [N_seq, L, c_m] and pair [L, L, c_z] activations, counted four times (input,
        output, gradient-free intermediates)."""
        L = seq_len
        return 4.0 * (self.msa_depth * L * self.c_m + L * L * self.c_z) * DTYPE_BYTES[dtype] / 2**30

    def gate_gib(self, seq_len: int, batch: int, dtype: str) -> float:
        """The activations at ``batch`` MSA rows (`input_gib`), plus the float32 scores of the
        naive oracle: MSA row attention [batch, H, L, L] and triangle attention [L, H_pair, L, L]."""
        L = seq_len
        return (4.0 * (batch * L * self.c_m + L * L * self.c_z) * DTYPE_BYTES[dtype]
                + 4.0 * (batch * self.heads * L * L + self.pair_heads * L * L * L)) / 2**30

    def block_kwargs(self) -> dict[str, int]:
        """``EvoformerBlock`` constructor arguments."""
        return dict(c_m=self.c_m, c_z=self.c_z, c_hidden_msa_att=self.head_dim, no_heads_msa=self.heads,
                    c_hidden_pair_att=self.head_dim, no_heads_pair=self.pair_heads,
                    c_hidden_opm=self.c_hidden_opm, c_hidden_mul=self.c_hidden_mul)

    @classmethod
    def parse(cls, V: "_V", w: dict[str, Any], key: str, kind: str, lim_int, buckets: list[int]) -> "EvoformerWorkload":
        for k in w:
            if k not in cls.KEYS:
                V.fail(f"{key}.{k}", f"not a key of kind evoformer (allowed: {', '.join(sorted(cls.KEYS))})")
        if "msa_depth" not in w:
            V.fail(f"{key}.msa_depth", "required key is missing (kind evoformer)")
        lim_of = {"heads": "max_heads", "pair_heads": "max_heads", "head_dim": "max_head_dim"}
        dims = {k: lim_int(w.get(k, cls.__dataclass_fields__[k].default), f"{key}.{k}", lim_of.get(k, "max_channels"))
                for k in cls.DIMS}
        max_len = None if w.get("max_len") is None else V.integer(w["max_len"], f"{key}.max_len", low=1)
        if max_len is not None and not any(b <= max_len for b in buckets):
            V.fail(f"{key}.max_len", f"{max_len} is below every bucket ({', '.join(map(str, buckets))}): "
                                     "the workload would never be measured")
        return cls(name=w["name"], kind=kind, msa_depth=lim_int(w["msa_depth"], f"{key}.msa_depth", "max_batch"),
                   max_len=max_len, **dims)


#: workload kind -> its record class (the parser's and the stored form's dispatch)
WORKLOAD_TYPES: dict[str, type[Workload]] = {"msa_row": AttentionWorkload, "triangle": AttentionWorkload,
                                             "evoformer": EvoformerWorkload}
WORKLOAD_KINDS = tuple(WORKLOAD_TYPES)


@dataclass(frozen=True)
class Constraint:
    name: str  # one of CONSTRAINT_NAMES
    min: Optional[float] = None
    max: Optional[float] = None

    def violation(self, value: Optional[float]) -> float:
        """Optuna convention: <= 0 feasible. A missing value (e.g. baseline out of memory) is
        neutral for memory ratios and speedup (0), and infinitely bad for accuracy."""
        return Bound(self.name, self.min, self.max).violation(value)


@dataclass
class SearchSpace:
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
    targets: Optional["Targets"] = None  # the one set of deployment targets (see `Targets`)
    accuracy_noise: float = 4.0  # Angstrom: the degraded structure a guided candidate is scored with

    def effective_targets(self) -> "Targets":
        """The space's targets; for a space stored before targets existed, its constraints (or the
        per-device defaults when it had none)."""
        if self.targets is not None:
            return self.targets
        return parse_targets(_V(self.source), None, self.device, list(self.constraints), self.accuracy_metric,
                             self.accuracy_max_chains)

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
        pattern = _family_params(pattern)
        kernel = {k.split(".", 1)[1]: v for k, v in allp.items() if k.startswith("kernel.")}
        return pattern, (kernel if self.kernel is not None else None)

    def directions(self) -> list[str]:
        out = []
        for o in self.objectives:
            if o == "accuracy":
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



# ------------------------------------------------------------------------------------------------
# validation helpers


def _family_params(pattern: dict[str, Any]) -> dict[str, Any]:
    """A trial's pattern parameters for its family: a guided trial drops the static-only keys
    (stride, global_placement) and keeps ``family: guided``; a static trial drops the guided-only
    keys and the family key (so static patterns are stored exactly as before)."""
    if pattern.get("family", "static") == "guided":
        return {k: v for k, v in pattern.items() if k not in STATIC_ONLY_PARAMS}
    return {k: v for k, v in pattern.items() if k not in GUIDED_ONLY_PARAMS and k != "family"}


def _fraction_param(V: "_V", v: Any, key: str) -> Any:
    """pattern.keep: a fraction in (0, 1] or {choices: [fractions]} (not a range: Optuna samples
    the listed values)."""
    def frac(x: Any, k: str) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not (math.isfinite(x) and 0.0 < x <= 1.0):
            V.fail(k, f"must be a fraction in (0, 1], got {_type_name(x)} {x!r}")
        return float(x)

    if isinstance(v, dict):
        V.mapping(v, key, {"choices"}, ("choices",))
        ch = v["choices"]
        if not isinstance(ch, list) or not ch:
            V.fail(f"{key}.choices", "must be a non-empty list of fractions")
        out = [frac(x, f"{key}.choices[{i}]") for i, x in enumerate(ch)]
        if len(set(out)) != len(out):
            V.fail(f"{key}.choices", f"duplicate choices in {ch}")
        return {"choices": out}
    return frac(v, key)


def _check_families(V: "_V", pattern: dict[str, Any]) -> None:
    """Each family the space may sample has the keys it needs: static needs stride, guided keep."""
    spec = pattern.get("family", "static")
    fams = spec["choices"] if isinstance(spec, dict) and "choices" in spec else [spec]
    if "static" in fams and "stride" not in pattern:
        V.fail("pattern.stride", "required key is missing (static patterns need it)")
    if "guided" in fams and "keep" not in pattern:
        V.fail("pattern.keep", "required key is missing (guided patterns need it: the fraction of key blocks kept)")


def _short(v: Any) -> str:
    """repr of ``v`` cut to 60 characters (one-line messages)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _machine_memory_gib(device: str) -> Optional[float]:
    """Physical memory of this machine (device cpu) or of GPU 0 (cuda, when visible), in GiB."""
    try:
        if device == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 2**30
    except (ValueError, OSError, AttributeError, RuntimeError):
        pass
    return None


def input_gib(w: "Workload", seq_len: int, dtype: str) -> float:
    """GiB of one (workload, bucket)'s inputs and output (`Workload.input_gib` of its kind)."""
    return w.input_gib(seq_len, dtype)


def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(v), type(v).__name__
    ) if v is not None else "null"


class _V:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> None:
        raise SpaceError(self.source, key, problem)

    def mapping(self, v: Any, key: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(v, dict):
            self.fail(key, f"must be a mapping, got {_type_name(v)}")
        for k in v:
            if not isinstance(k, str) or k not in allowed:
                self.fail(f"{key}.{k}" if key else str(k), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for r in required:
            if r not in v:
                self.fail(f"{key}.{r}" if key else r, "required key is missing")
        return v

    def section(self, data: dict, key: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        """An optional top-level section: absent or null is {}, anything else must be a mapping."""
        v = data.get(key)
        if v is None:
            v = {}
        return dict(self.mapping(v, key, allowed, required))

    def integer(self, v: Any, key: str, *, low: Optional[int] = None, high: Optional[int] = None,
                limit: Optional[str] = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, f"must be an integer, got {_type_name(v)} {_short(v)}")
        if low is not None and v < low:
            self.fail(key, f"must be >= {low}, got {_short(v)}")
        if high is not None and v > high:
            raise_it = f" (raise limits.{limit} if this machine can)" if limit else ""
            self.fail(key, f"{_short(v)} is above the limit {high}{raise_it}")
        return v

    def number(self, v: Any, key: str, *, low: Optional[float] = None) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(key, f"must be a number, got {_type_name(v)} {_short(v)}")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            self.fail(key, f"must be a finite number, got {_short(v)}")
        if low is not None and f < low:
            self.fail(key, f"must be >= {low}, got {_short(v)}")
        return f

    def name(self, v: Any, key: str, max_len: int) -> str:
        """A study or workload name under the one rule of `patterns.names` (printable, 1 to
        ``max_len`` characters; no control, invisible, bidi-control or separator character)."""
        if not isinstance(v, str):
            self.fail(key, f"must be a string, got {_type_name(v)}")
        problem = name_problem(v, max_len)
        if problem is not None:
            self.fail(key, problem)
        return v

    def choice(self, v: Any, key: str, allowed: tuple) -> Any:
        if not isinstance(v, str):
            self.fail(key, f"must be a string, one of {', '.join(map(str, allowed))}; got {_type_name(v)} {v!r}")
        if v not in allowed:
            self.fail(key, f"{v!r} is not one of {', '.join(map(str, allowed))}")
        return v

    def boolean(self, v: Any, key: str) -> bool:
        if not isinstance(v, bool):
            self.fail(key, f"must be true or false, got {_type_name(v)} {v!r}")
        return v

    def param(self, v: Any, key: str, allowed: Optional[tuple], *, what: str, is_str: bool = False,
              high: Optional[int] = None, limit: Optional[str] = None) -> Any:
        """A searched parameter: a value, {choices: [...]} or {low, high[, step]}."""

        def check_value(x: Any, k: str) -> None:
            if is_str:
                if not isinstance(x, str):
                    self.fail(k, f"must be a string, got {_type_name(x)} {_short(x)}")
            else:
                self.integer(x, k, low=0, high=high, limit=limit)
            if allowed is not None and x not in allowed:
                self.fail(k, f"{x!r} is not supported by {what} (supported: {', '.join(map(str, allowed))})")

        if isinstance(v, dict):
            if "choices" in v:
                self.mapping(v, key, {"choices"})
                ch = v["choices"]
                if not isinstance(ch, list):
                    self.fail(f"{key}.choices", f"must be a list, got {_type_name(ch)}")
                if not ch:
                    self.fail(f"{key}.choices", "empty range: no choices given")
                for i, x in enumerate(ch):
                    check_value(x, f"{key}.choices[{i}]")
                if len(set(ch)) != len(ch):
                    self.fail(f"{key}.choices", f"duplicate choices in {ch}")
                return {"choices": list(ch)}
            if is_str or allowed is not None:
                self.fail(key, "must be a value or {choices: [...]} (a discrete parameter)")
            self.mapping(v, key, {"low", "high", "step"}, ("low", "high"))
            lo = self.integer(v["low"], f"{key}.low", low=0, high=high, limit=limit)
            hi = self.integer(v["high"], f"{key}.high", low=0, high=high, limit=limit)
            step = self.integer(v.get("step", 1), f"{key}.step", low=1)
            if hi < lo:
                self.fail(key, f"empty range: low={lo} > high={hi}")
            if (hi - lo) % step:
                self.fail(key, f"high - low = {hi - lo} is not a multiple of step={step}")
            return {"low": lo, "high": hi, "step": step}
        check_value(v, key)
        return v


# ------------------------------------------------------------------------------------------------
# targets: the one place the search constraints, the export rule and the report read

TARGET_NAMES = ("speedup", "memory_vs_naive", "memory_vs_sdpa", "sparsity")
# Per-device defaults, as data. Speedup: the lower end of the paired confidence interval against
# dense SDPA must clear it (CPU: no regression; GPU: a 10% gain, what justifies a custom kernel).
# Memory: the headline is the reduction against materialised (naive) attention, what OpenFold's
# default attention allocates (at least 50%); against SDPA, already flash-style, only a
# no-regression bound, on readings floored at the measurement's resolution (`memory_floor_mib`: CPU
# resident-set readings move by a few MiB with the allocator, the CUDA allocator is byte-exact).
# Accuracy, from the packaged chains (all chains of each bucket, each at its own length; buckets
# 256 / 512 / 1024): a pure block diagonal of 128-residue blocks keeps long-range contact recall
# 0.69 / 0.46 / 0.28 at output relative error 0.42 / 0.62 / 0.69; a 64-residue local window on
# 64-blocks 0.83 / 0.59 / 0.40 at 0.28 / 0.46 / 0.56, a 128-residue window 0.97 / 0.79 / 0.61 at
# 0.10 / 0.31 / 0.44. Recall >= 0.5 with error <= 0.5 keeps the layouts that see at least half of
# the long-range contacts a structure module needs and whose attention output stays within half
# its magnitude of dense, and rejects every block diagonal past L = 256 (benchmarks/README.md,
# "Accuracy floors").
TARGET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"speedup": {"min": 1.0}, "memory_vs_naive": {"max": 0.5}, "memory_vs_sdpa": {"max": 1.25},
            "memory_floor_mib": 8.0, "confidence": 0.95, "max_chains": None,
            "accuracy": {"contact_recall_long": {"min": 0.5}, "output_rel_error": {"max": 0.5}}},
    "cuda": {"speedup": {"min": 1.1}, "memory_vs_naive": {"max": 0.5}, "memory_vs_sdpa": {"max": 1.1},
             "memory_floor_mib": 1.0, "confidence": 0.95, "max_chains": None,
             "accuracy": {"contact_recall_long": {"min": 0.5}, "output_rel_error": {"max": 0.5}}},
}


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
    return _targets_from_spec(copy.deepcopy(TARGET_DEFAULTS.get(device, TARGET_DEFAULTS["cpu"])), f"defaults:{device}")


#: what each bounded quantity can be: ratios (speedup, memory) are > 0, a sparsity is a fraction of the
#: pairs in [0, 1), recalls are fractions in [0, 1], an error is >= 0
_BOUND_RANGES: dict[str, tuple[float, float, bool, bool, str]] = {  # low, high, low open, high open, what
    "speedup": (0.0, math.inf, True, True, "a ratio"),
    "memory_vs_sdpa": (0.0, math.inf, True, True, "a ratio"),
    "memory_vs_naive": (0.0, math.inf, True, True, "a ratio"),
    "sparsity": (0.0, 1.0, False, True, "a fraction of the pairs"),
    "output_rel_error": (0.0, math.inf, False, True, "a relative error"),
}
_RECALL_RANGE = (0.0, 1.0, False, False, "a fraction")


def check_bound(V: "_V", key: str, quantity: str, lo: Optional[float], hi: Optional[float]) -> None:
    """A target or constraint on ``quantity`` (a `TARGET_NAMES` entry or an accuracy metric): each
    given bound within what the quantity can be (`_BOUND_RANGES`), and ``min <= max``."""
    a, b, a_open, b_open, what = _BOUND_RANGES.get(quantity, _RECALL_RANGE)
    for side, v in (("min", lo), ("max", hi)):
        if v is None:
            continue
        if v < a or (a_open and v == a) or v > b or (b_open and v == b):
            span = f"{'(' if a_open else '['}{a:g}, {b:g}{')' if b_open else ']'}"
            V.fail(f"{key}.{side}", f"must be in {span} ({quantity} is {what}), got {v!r}")
    if lo is not None and hi is not None and hi < lo:
        V.fail(key, f"empty range: min={lo} > max={hi}")


def parse_targets(V: "_V", raw: Any, device: str, constraints: list["Constraint"], acc_metric: Optional[str],
                  acc_chains: Optional[int]) -> Targets:
    """The space's targets: the device defaults, overridden by the ``targets`` section and then by
    the ``constraints`` section (the same quantities). A space with ``constraints`` and no
    ``targets`` section (the older form) is held to exactly its constraints."""
    base = copy.deepcopy(TARGET_DEFAULTS.get(device, TARGET_DEFAULTS["cpu"]))
    if raw is None and constraints:
        spec: dict[str, Any] = {"memory_floor_mib": base["memory_floor_mib"], "confidence": base["confidence"],
                                "max_chains": acc_chains, "accuracy": {}}
        source = "constraints"
    elif raw is None:
        return default_targets(device)
    else:
        spec, source = base, "targets"
        V.mapping(raw, "targets", set(TARGET_NAMES) | {"accuracy", "memory_floor_mib", "confidence", "max_chains"})
        for k, v in raw.items():
            key = f"targets.{k}"
            if k in TARGET_NAMES:
                if v is None:
                    spec[k] = None
                    continue
                V.mapping(v, key, {"min", "max"})
                spec[k] = {b: V.number(v[b], f"{key}.{b}") for b in ("min", "max") if v.get(b) is not None}
                if not spec[k]:
                    V.fail(key, "give min or max (or null to drop the target)")
                check_bound(V, key, k, spec[k].get("min"), spec[k].get("max"))
            elif k == "accuracy":
                if v is None:
                    spec["accuracy"] = {}
                    continue
                V.mapping(v, key, set(ACCURACY_METRIC_DIRECTIONS))
                acc = {}
                for m, b in v.items():
                    if b is None:
                        continue
                    V.mapping(b, f"{key}.{m}", {"min", "max"})
                    acc[m] = {x: V.number(b[x], f"{key}.{m}.{x}") for x in ("min", "max") if b.get(x) is not None}
                    if not acc[m]:
                        V.fail(f"{key}.{m}", "give min or max (or null to drop the target)")
                    check_bound(V, f"{key}.{m}", m, acc[m].get("min"), acc[m].get("max"))
                spec["accuracy"] = acc
            elif k == "memory_floor_mib":
                spec[k] = V.number(v, key, low=0)
            elif k == "confidence":
                c = V.number(v, key, low=0)
                if not 0.5 <= c < 1:
                    V.fail(key, f"must be in [0.5, 1), got {v!r}")
                spec[k] = c
            else:
                spec[k] = None if v is None else V.integer(v, key, low=1)
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


def _targets_accuracy_metric(data: dict[str, Any]) -> Optional[str]:
    """The first accuracy metric of a ``targets`` section (names the accuracy objective when the
    constraints section does not)."""
    acc = (data.get("targets") or {}).get("accuracy") if isinstance(data.get("targets"), dict) else None
    if isinstance(acc, dict):
        for m in acc:
            if m in ACCURACY_METRIC_DIRECTIONS:
                return m
    return None


MEASURE_KEYS = set(_field_names(MeasureSettings))
MEASURE_DEFAULTS = MeasureSettings().to_dict()


def _parse_measure(V: "_V", raw: Any) -> MeasureSettings:
    """The ``measure`` section (`MeasureSettings.parse`)."""
    return MeasureSettings.parse(V, raw)


# ---- parse_space, step by step (each step validates one part of the file, in the file's order of
# checks, so a file with several errors always names the same first one)


def _check_file(V: "_V", data: Any) -> dict[str, Any]:
    """The file is a mapping of known sections with the required ones present."""
    if data is None:
        V.fail("(file)", "the file is empty")
    if not isinstance(data, dict):
        V.fail("(file)", f"must be a mapping of sections (buckets, pattern, ...), got {_type_name(data)}")
    V.mapping(data, "", TOP_KEYS, REQUIRED_TOP)
    return data


def _parse_limits(V: "_V", data: dict[str, Any], device: str) -> dict[str, Any]:
    """`LIMITS` with the file's ``limits`` over them; ``max_input_gib`` unset is this machine's memory."""
    lim_in = V.section(data, "limits", set(LIMITS))
    limits = dict(LIMITS)
    for k, v in lim_in.items():
        if v is None:
            continue
        limits[k] = V.number(v, f"limits.{k}", low=1e-3) if k == "max_input_gib" else V.integer(v, f"limits.{k}", low=1)
    if limits["max_input_gib"] is None:
        limits["max_input_gib"] = _machine_memory_gib(device)
    return limits


def _parse_buckets(V: "_V", data: dict[str, Any], lim_int) -> list[int]:
    """Distinct sequence lengths within ``max_seq_len``, sorted."""
    buckets = data["buckets"]
    if not isinstance(buckets, list):
        V.fail("buckets", f"must be a list of sequence lengths, got {_type_name(buckets)}")
    if not buckets:
        V.fail("buckets", "empty range: no bucket given")
    for i, b in enumerate(buckets):
        lim_int(b, f"buckets[{i}]", "max_seq_len")
    if len(set(buckets)) != len(buckets):
        V.fail("buckets", f"duplicate buckets in {_short(buckets)}")
    return sorted(buckets)


def _parse_pattern(V: "_V", raw: Any, max_L: int) -> ParamSpace:
    """The ``pattern`` section: PatternConfig / GuidedConfig fields, each a value or a searched spec."""
    pat = V.mapping(raw, "pattern", set(PATTERN_PARAMS), ("block_size", "window", "num_global"))
    pattern: dict[str, Any] = {}
    for k, v in pat.items():
        if k == "keep":
            pattern[k] = _fraction_param(V, v, "pattern.keep")
            continue
        pattern[k] = V.param(
            v, f"pattern.{k}", PATTERN_PARAMS[k], what="the kernels" if k == "block_size" else "PatternConfig",
            is_str=(k in ("global_placement", "family", "pool", "spread")),
            high=None if k in ("global_placement", "family", "pool", "spread") else max_L, limit="max_seq_len",
        )
    _check_families(V, pattern)
    return ParamSpace.from_dict(pattern)


def _parse_kernel(V: "_V", raw: Any) -> Optional[ParamSpace]:
    """The optional ``kernel`` section: KernelConfig fields."""
    if raw is None:
        return None
    ker = V.mapping(raw, "kernel", set(KERNEL_PARAMS))
    return ParamSpace.from_dict({k: V.param(v, f"kernel.{k}", KERNEL_PARAMS[k], what="the Triton kernel")
                                 for k, v in ker.items()})


def _parse_workloads(V: "_V", data: dict[str, Any], buckets: list[int], lim_int) -> list[Workload]:
    """Each entry by the record class of its kind (`WORKLOAD_TYPES`); names unique."""
    wl = data["workloads"]
    if not isinstance(wl, list):
        V.fail("workloads", f"must be a list, got {_type_name(wl)}")
    if not wl:
        V.fail("workloads", "empty range: no workload given")
    all_keys = set().union(*(t.KEYS for t in WORKLOAD_TYPES.values()))
    workloads = []
    for i, w in enumerate(wl):
        key = f"workloads[{i}]"
        V.mapping(w, key, all_keys, ("name", "kind"))
        V.name(w["name"], f"{key}.name", MAX_WORKLOAD_NAME)
        kind = V.choice(w["kind"], f"{key}.kind", WORKLOAD_KINDS)
        workloads.append(WORKLOAD_TYPES[kind].parse(V, w, key, kind, lim_int, buckets))
    if len({w.name for w in workloads}) != len(workloads):
        V.fail("workloads", "workload names must be unique")
    return workloads


def _check_inputs_fit(V: "_V", workloads: list[Workload], buckets: list[int], limits: dict[str, Any],
                      dtype: str) -> None:
    """Per (workload, bucket): the batch within ``max_batch`` and the inputs within ``max_input_gib``."""
    if limits["max_input_gib"] is None:
        return
    for i, w in enumerate(workloads):
        for b in buckets:
            if not w.applies(b):
                continue
            if w.batch(b) > limits["max_batch"]:  # an EvoFormer's batch (msa_depth) was checked when parsed
                V.fail(f"workloads[{i}]", f"batch {w.batch(b)} at bucket {b} is above the limit "
                       f"{limits['max_batch']} (set max_batch, or raise limits.max_batch)")
            gib = w.input_gib(b, dtype)
            if gib > limits["max_input_gib"]:
                V.fail(f"workloads[{i}]",
                       f"inputs of {w.name} at bucket {b} take {gib:.3g} GiB, above the {limits['max_input_gib']:.3g} GiB "
                       "this machine has (lower tokens/max_batch/buckets, or raise limits.max_input_gib)")


def _check_gate_fits(V: "_V", workloads: list[Workload], gate: "GateSettings", limits: dict[str, Any],
                     dtype: str) -> None:
    """The correctness gate (``gate.seq_len`` x ``gate.batch``, every workload) within ``max_input_gib``."""
    if limits["max_input_gib"] is None:
        return
    for w in workloads:
        gib = w.gate_gib(gate.seq_len, gate.batch, dtype)
        if gib > limits["max_input_gib"]:
            V.fail("gate", f"the correctness gate of {w.name} at seq_len {gate.seq_len}, batch {gate.batch} takes "
                           f"{gib:.3g} GiB (inputs and the dense reference's scores), above the "
                           f"{limits['max_input_gib']:.3g} GiB this machine has (lower gate.seq_len or gate.batch, "
                           "or raise limits.max_input_gib)")


def check_fits(space: "SearchSpace") -> None:
    """Every (workload, bucket)'s inputs and the gate within the memory of the space's device (the
    file's ``limits`` over this machine's); run again after a command line changes the device."""
    V = _V(space.source)
    limits = _parse_limits(V, space.raw or {}, space.device)
    _check_inputs_fit(V, space.workloads, space.buckets, limits, space.dtype)
    _check_gate_fits(V, space.workloads, space.gate, limits, space.dtype)


class OverrideError(InputError):
    """A command-line value refused by the rule of the file key it overrides; one line ``FLAG: problem``."""


class _FlagV(_V):
    """`_V`'s checks for command-line values: the same rules, the flag named instead of the key."""

    def fail(self, key: str, problem: str) -> None:
        raise OverrideError(f"{key}: {problem}")


def check_overrides(*, trials: Any = None, timeout: Any = None, workers: Any = None) -> None:
    """``--trials``, ``--timeout`` and ``--workers`` under exactly the rules of ``budget.trials``,
    ``budget.timeout`` and ``execution.workers`` in the file (`BudgetSettings.parse`,
    `ExecutionSettings.parse`): integers in range, finite numbers."""
    V = _FlagV("(command line)")
    if trials is not None:
        V.integer(trials, "--trials", low=1, high=MAX_TRIALS)
    if timeout is not None:
        V.number(timeout, "--timeout", low=1)
    if workers is not None:
        V.integer(workers, "--workers", low=1, high=MAX_WORKERS)


def _parse_noise(V: "_V", v: Any, key: str) -> float:
    """Angstrom of noise of the degraded structure guided candidates are scored with."""
    noise = V.number(v, key, low=0.0)
    if not math.isfinite(noise) or noise > 100.0:
        V.fail(key, f"must be a finite number of Angstrom in [0, 100], got {noise!r}")
    return noise


@dataclass(frozen=True)
class _Accuracy:
    """What the ``constraints.accuracy`` entry and ``accuracy_noise`` say (parse step result)."""

    metric: Optional[str] = None
    max_chains: Optional[int] = None
    noise: float = 4.0


def _parse_constraints(V: "_V", data: dict[str, Any]) -> tuple[list[Constraint], _Accuracy]:
    """The ``constraints`` section (its accuracy entry may name the accuracy metric) and the
    top-level ``accuracy_noise`` (it wins over ``constraints.accuracy.noise``)."""
    constraints: list[Constraint] = []
    acc = _Accuracy()
    cons = V.section(data, "constraints", set(CONSTRAINT_NAMES))
    for cname, spec in cons.items():
        key = f"constraints.{cname}"
        if cname == "accuracy":
            V.mapping(spec, key, {"metric", "min", "max", "max_chains", "noise"}, ("metric",))
            acc = replace(acc, metric=V.choice(spec["metric"], f"{key}.metric", tuple(ACCURACY_METRIC_DIRECTIONS)))
            if spec.get("max_chains") is not None:
                acc = replace(acc, max_chains=V.integer(spec["max_chains"], f"{key}.max_chains", low=1))
            if spec.get("noise") is not None:
                acc = replace(acc, noise=_parse_noise(V, spec["noise"], f"{key}.noise"))
        else:
            V.mapping(spec, key, {"min", "max"})
        lo = None if spec.get("min") is None else V.number(spec["min"], f"{key}.min")
        hi = None if spec.get("max") is None else V.number(spec["max"], f"{key}.max")
        if lo is None and hi is None:
            if cname == "accuracy":
                V.fail(key, "give min (or max for output_rel_error)")
            V.fail(key, "give min or max")
        check_bound(V, key, acc.metric if cname == "accuracy" else cname, lo, hi)
        constraints.append(Constraint(cname, lo, hi))
    if data.get("accuracy_noise") is not None:
        acc = replace(acc, noise=_parse_noise(V, data["accuracy_noise"], "accuracy_noise"))
    return constraints, acc


def _parse_objectives(V: "_V", data: dict[str, Any], acc_metric: Optional[str]) -> tuple[list[str], Optional[str]]:
    """Distinct known objectives, and the accuracy metric (from the constraints, else the first
    of the ``targets`` section); ``accuracy`` needs one."""
    objs = data["objectives"]
    if not isinstance(objs, list):
        V.fail("objectives", f"must be a list, got {_type_name(objs)}")
    if not objs:
        V.fail("objectives", "empty range: no objective given")
    for i, o in enumerate(objs):
        V.choice(o, f"objectives[{i}]", tuple(OBJECTIVES))
    if len(set(objs)) != len(objs):
        V.fail("objectives", f"duplicate objectives in {objs}")
    if acc_metric is None:
        acc_metric = _targets_accuracy_metric(data)
    if "accuracy" in objs and acc_metric is None:
        V.fail("objectives", "'accuracy' needs constraints.accuracy.metric")
    return list(objs), acc_metric


def parse_space(data: Any, source: str = "<space>") -> SearchSpace:
    """Validate the parsed YAML ``data`` (see module docstring); raise `SpaceError`.

    The whole input is checked before anything else happens: sections, types, finiteness, ranges
    and the machine limits (`LIMITS`, raisable in ``limits``)."""
    V = _V(source)
    data = _check_file(V, data)
    name = V.name(data.get("name", Path(source).stem), "name", MAX_NAME)
    device = V.choice(data.get("device", "cuda"), "device", DEVICES)
    backend = V.choice(data.get("backend", backends.auto_backend(device)), "backend", BACKENDS)
    dtype = V.choice(data.get("dtype", "bfloat16" if device == "cuda" else "float32"), "dtype", DTYPES)
    mode = V.choice(data.get("mode", "fwd"), "mode", MODES)
    limits = _parse_limits(V, data, device)

    def lim_int(v: Any, key: str, limit: str, low: int = 1) -> int:
        return V.integer(v, key, low=low, high=limits[limit], limit=limit)

    buckets = _parse_buckets(V, data, lim_int)
    pattern = _parse_pattern(V, data["pattern"], limits["max_seq_len"])
    kernel = _parse_kernel(V, data.get("kernel"))
    workloads = _parse_workloads(V, data, buckets, lim_int)
    _check_inputs_fit(V, workloads, buckets, limits, dtype)
    constraints, acc = _parse_constraints(V, data)  # before objectives: the accuracy metric may be named here
    objectives, acc_metric = _parse_objectives(V, data, acc.metric)
    sampler = SamplerSettings.parse(V, data)
    budget = BudgetSettings.parse(V, data)
    measure = MeasureSettings.parse(V, V.section(data, "measure", MEASURE_KEYS))
    gate = GateSettings.parse(V, data, lim_int)
    _check_gate_fits(V, workloads, gate, limits, dtype)
    execution = ExecutionSettings.parse(V, data)
    return SearchSpace(
        source=source, name=name, device=device, backend=backend, dtype=dtype, mode=mode, buckets=buckets,
        pattern=pattern, kernel=kernel, workloads=workloads, objectives=objectives, constraints=constraints,
        accuracy_metric=acc_metric, accuracy_max_chains=acc.max_chains, accuracy_noise=acc.noise, sampler=sampler,
        budget=budget, measure=measure, gate=gate, execution=execution, raw=data,
        targets=parse_targets(V, data.get("targets"), device, constraints, acc_metric, acc.max_chains),
    )



def find_space(name: str | Path) -> Path:
    """The space file ``name`` names: the path itself when it exists, else the file of that name in
    the packaged ``search_spaces/`` folder (``protein.yaml``, or ``protein`` with ``.yaml`` added).
    Raises `SpaceError` saying where it looked and which spaces are there."""
    p = Path(name)
    if p.exists():
        return p
    here = Path(__file__).resolve().parent
    tries = [here / p.name] + ([here / (p.name + ".yaml")] if p.suffix not in (".yaml", ".yml") else [])
    if p.name != str(name):  # a path into some folder: only there
        raise SpaceError(str(name), "(file)", "no such file")
    for c in tries:
        if c.is_file():
            return c
    known = ", ".join(sorted(f.stem for f in here.glob("*.yaml")))
    raise SpaceError(str(name), "(file)", f"no such file here nor in the packaged spaces ({here}{os.sep}: {known})")


def load_space(path: str | Path) -> SearchSpace:
    """Read (`patterns.safeyaml`: UTF-8 only, no duplicate keys, bounded aliases and depth) and
    validate a space file; raise `SpaceError` (one line naming file, key, problem). ``path`` may
    also name a packaged space (`find_space`: ``protein`` or ``protein.yaml``)."""
    path = find_space(path)
    source = str(path)
    try:
        data = load_yaml_file(path, source)
    except YAMLInputError as e:
        raise SpaceError(source, e.where, e.problem) from None
    return parse_space(data, source)

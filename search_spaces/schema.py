"""The search-space file's vocabulary and its searched parameters (the schema the parser checks).

What a space file may name, as data: the objectives (from their records, `search_spaces.objectives`)
and accuracy metrics with their directions,
the backends, dtypes, modes, devices and samplers, the top-level keys, the machine limits
(`LIMITS`, each raisable in a file's ``limits`` section) and the fixed sanity bounds, the pattern
and kernel parameters with their supported values (the fields of the config dataclasses). Then the error every bad file raises
(`SpaceError`), the forms of a searched parameter (`Choices`, `IntRange`, a fixed value) and the
``pattern`` / ``kernel`` sections built from them (`ParamSpace`), and the base of the settings
records (`Section`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Optional, get_args, get_origin, get_type_hints

from kernels import backends
from kernels.config import KERNEL_STAGES, KERNEL_TILES, KERNEL_WARPS, KernelConfig
from patterns.config import SUPPORTED_BLOCK_SIZES, PatternConfig
from patterns.errors import InputError
from patterns.guided import PATTERN_FAMILIES, GuidedConfig

# ACCURACY_METRIC_DIRECTIONS: the accuracy metrics a space may name, with their directions, from
# `search_spaces.objectives.ACCURACY_METRIC_TABLE`, the one list (``autotune.accuracy`` computes
# exactly those).
from .objectives import ACCURACY_METRIC_DIRECTIONS, OBJECTIVE_TABLE  # noqa: F401 (re-exported)
#: objective name -> direction, from the records (`search_spaces.objectives`; accuracy: replaced by
#: its metric's direction); the older ``constraints`` section may bound any of them
OBJECTIVES: dict[str, str] = {o.name: o.direction for o in OBJECTIVE_TABLE}
CONSTRAINT_NAMES = tuple(OBJECTIVES)
BACKENDS = backends.names()  # the registered backends (kernels.backends)
DTYPES = ("float32", "bfloat16", "float16")
MODES = ("fwd", "fwd+bwd")
DEVICES = ("cuda", "cpu")
SAMPLERS = ("nsga2", "tpe", "gp", "random", "local")
# The keys of a workload entry and their defaults are its record class's (`WORKLOAD_TYPES`): an
# EvoFormer workload times one whole block, its attention dims default to AlphaFold2's.

TOP_KEYS = {
    "name", "device", "backend", "dtype", "mode", "buckets", "pattern", "kernel", "workloads",
    "objectives", "constraints", "targets", "accuracy_noise", "sampler", "budget", "measure", "gate", "execution",
    "limits",
}
# What one machine can run, as data: each may be raised (or lowered) in the space's ``limits``
# section. max_input_gib None = this machine's memory (see `search_spaces.limits.machine_memory_gib`).
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

# The pattern parameters are the fields of the pattern configs (`patterns.PatternConfig`, then the
# guided-only fields of `patterns.GuidedConfig`), each with its supported values: a ``Literal``
# field's choices, the kernels' block sizes, or None (an integer, or the guided ``keep`` fraction).
#: GuidedConfig fields a space does not search: ``mass`` (the alternative to ``keep``) and
#: ``global_placement`` (a guided trial keeps the default placement of its forced globals)
GUIDED_UNSEARCHED = ("mass", "global_placement")
#: supported values that no annotation states
_PARAM_VALUES: dict[str, tuple] = {"block_size": SUPPORTED_BLOCK_SIZES, "family": PATTERN_FAMILIES}


def _config_params(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Optional[tuple]]:
    """Field name -> supported values (a ``Literal``'s choices, `_PARAM_VALUES`, else None)."""
    hints = get_type_hints(cls)
    return {f.name: _PARAM_VALUES.get(f.name, get_args(hints[f.name]) if get_origin(hints[f.name]) is Literal else None)
            for f in fields(cls) if f.name not in skip}


_STATIC_PARAMS = _config_params(PatternConfig)
_GUIDED_PARAMS = _config_params(GuidedConfig, GUIDED_UNSEARCHED)
# "family" picks static or guided per trial
PATTERN_PARAMS: dict[str, Optional[tuple]] = {**_STATIC_PARAMS, "family": PATTERN_FAMILIES,
                                              **{k: v for k, v in _GUIDED_PARAMS.items() if k not in _STATIC_PARAMS}}
#: pattern keys that only one family uses (dropped from the other family's trial parameters)
GUIDED_ONLY_PARAMS = tuple(k for k in _GUIDED_PARAMS if k not in _STATIC_PARAMS)
STATIC_ONLY_PARAMS = tuple(k for k in _STATIC_PARAMS if k not in _GUIDED_PARAMS)
#: pattern keys whose values are names (the others are numbers)
STRING_PARAMS = tuple(k for k, v in PATTERN_PARAMS.items() if v is not None and all(isinstance(x, str) for x in v))
# The kernel parameters are the fields of `kernels.KernelConfig` with their supported values;
# ``rows_per_cta`` (the eager inference launch's batching, unmeasured on a GPU) is not searched.
KERNEL_UNSEARCHED = ("rows_per_cta",)
_KERNEL_VALUES: dict[str, tuple] = {"block_m": KERNEL_TILES, "block_n": KERNEL_TILES, "num_warps": KERNEL_WARPS,
                                    "num_stages": KERNEL_STAGES}
KERNEL_PARAMS: dict[str, tuple] = {f.name: _KERNEL_VALUES[f.name] for f in fields(KernelConfig)
                                   if f.name not in KERNEL_UNSEARCHED}


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


def family_params(pattern: dict[str, Any]) -> dict[str, Any]:
    """A trial's pattern parameters for its family: a guided trial drops the static-only keys
    (stride, global_placement) and keeps ``family: guided``; a static trial drops the guided-only
    keys and the family key (so static patterns are stored exactly as before)."""
    if pattern.get("family", "static") == "guided":
        return {k: v for k, v in pattern.items() if k not in STATIC_ONLY_PARAMS}
    return {k: v for k, v in pattern.items() if k not in GUIDED_ONLY_PARAMS and k != "family"}


# ------------------------------------------------------------------------------------------------
# the base of the settings records (`search_spaces.settings`): one frozen record per section,
# defaults in the field definitions


def field_names(cls_or_obj: Any) -> tuple[str, ...]:
    """The dataclass fields (class variables left out)."""
    return tuple(f.name for f in fields(cls_or_obj))


class Section:
    """Shared by the settings records: plain data for storage (`to_dict` / `from_dict`: a space is
    stored as JSON with each run, and read back by workers, the export and the report)."""

    #: optional fields left out of `to_dict` while unset (stored only when the file gave them)
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in field_names(self)
                if not (k in self._OMIT_NONE and getattr(self, k) is None)}

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]):
        """A stored section; keys this version no longer has are dropped, missing ones take the
        field defaults (a space stored by an older version loads)."""
        names = field_names(cls)
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

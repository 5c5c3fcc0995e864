"""`parse_space`: a space file's data validated step by step into a `SearchSpace` (each step one
part of the file, in the file's order of checks, so a file with several errors always names the
same first one); `load_space` reads the file first, `find_space` finds a packaged one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from kernels import backends
from patterns.safeyaml import YAMLInputError, load_yaml_file

from .checks import IntWithinLimit, SpaceChecker, short, type_name
from .limits import check_gate_fits, check_inputs_fit, parse_limits
from .schema import (ACCURACY_METRIC_DIRECTIONS, BACKENDS, CONSTRAINT_NAMES, DEVICES, DTYPES, KERNEL_PARAMS,
                     MAX_NAME, MAX_WORKLOAD_NAME, MODES, OBJECTIVES, PATTERN_PARAMS, REQUIRED_TOP, STRING_PARAMS, TOP_KEYS,
                     ParamSpace, SpaceError)
from .search_space import SearchSpace
from .settings import MEASURE_KEYS, BudgetSettings, ExecutionSettings, GateSettings, MeasureSettings, SamplerSettings
from .targets import Constraint, check_bound, parse_targets, targets_accuracy_metric
from .workloads import WORKLOAD_KINDS, WORKLOAD_TYPES, Workload


def _fraction_param(check: SpaceChecker, v: Any, key: str) -> Any:
    """pattern.keep: a fraction in (0, 1] or {choices: [fractions]} (not a range: Optuna samples
    the listed values)."""
    def frac(x: Any, k: str) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not (math.isfinite(x) and 0.0 < x <= 1.0):
            check.fail(k, f"must be a fraction in (0, 1], got {type_name(x)} {x!r}")
        return float(x)

    if isinstance(v, dict):
        check.mapping(v, key, {"choices"}, ("choices",))
        ch = v["choices"]
        if not isinstance(ch, list) or not ch:
            check.fail(f"{key}.choices", "must be a non-empty list of fractions")
        out = [frac(x, f"{key}.choices[{i}]") for i, x in enumerate(ch)]
        if len(set(out)) != len(out):
            check.fail(f"{key}.choices", f"duplicate choices in {ch}")
        return {"choices": out}
    return frac(v, key)


def _check_families(check: SpaceChecker, pattern: dict[str, Any]) -> None:
    """Each family the space may sample has the keys it needs: static needs stride, guided keep."""
    spec = pattern.get("family", "static")
    fams = spec["choices"] if isinstance(spec, dict) and "choices" in spec else [spec]
    if "static" in fams and "stride" not in pattern:
        check.fail("pattern.stride", "required key is missing (static patterns need it)")
    if "guided" in fams and "keep" not in pattern:
        check.fail("pattern.keep", "required key is missing (guided patterns need it: the fraction of key blocks kept)")


# ---- parse_space, step by step (each step validates one part of the file, in the file's order of
# checks, so a file with several errors always names the same first one)


def _check_file(check: SpaceChecker, data: Any) -> dict[str, Any]:
    """The file is a mapping of known sections with the required ones present."""
    if data is None:
        check.fail("(file)", "the file is empty")
    if not isinstance(data, dict):
        check.fail("(file)", f"must be a mapping of sections (buckets, pattern, ...), got {type_name(data)}")
    check.mapping(data, "", TOP_KEYS, REQUIRED_TOP)
    return data


def _parse_buckets(check: SpaceChecker, data: dict[str, Any], int_within_limit: IntWithinLimit) -> list[int]:
    """Distinct sequence lengths within ``max_seq_len``, sorted."""
    buckets = data["buckets"]
    if not isinstance(buckets, list):
        check.fail("buckets", f"must be a list of sequence lengths, got {type_name(buckets)}")
    if not buckets:
        check.fail("buckets", "empty range: no bucket given")
    for i, b in enumerate(buckets):
        int_within_limit(b, f"buckets[{i}]", "max_seq_len")
    if len(set(buckets)) != len(buckets):
        check.fail("buckets", f"duplicate buckets in {short(buckets)}")
    return sorted(buckets)


def _parse_pattern(check: SpaceChecker, raw: Any, max_L: int) -> ParamSpace:
    """The ``pattern`` section: PatternConfig / GuidedConfig fields, each a value or a searched spec."""
    pat = check.mapping(raw, "pattern", set(PATTERN_PARAMS), ("block_size", "window", "num_global"))
    pattern: dict[str, Any] = {}
    for k, v in pat.items():
        if k == "keep":
            pattern[k] = _fraction_param(check, v, "pattern.keep")
            continue
        pattern[k] = check.param(
            v, f"pattern.{k}", PATTERN_PARAMS[k], what="the kernels" if k == "block_size" else "PatternConfig",
            is_str=k in STRING_PARAMS, high=None if k in STRING_PARAMS else max_L, limit="max_seq_len",
        )
    _check_families(check, pattern)
    return ParamSpace.from_dict(pattern)


def _parse_kernel(check: SpaceChecker, raw: Any) -> Optional[ParamSpace]:
    """The optional ``kernel`` section: KernelConfig fields."""
    if raw is None:
        return None
    ker = check.mapping(raw, "kernel", set(KERNEL_PARAMS))
    return ParamSpace.from_dict({k: check.param(v, f"kernel.{k}", KERNEL_PARAMS[k], what="the Triton kernel")
                                 for k, v in ker.items()})


def _parse_workloads(check: SpaceChecker, data: dict[str, Any], buckets: list[int],
                     int_within_limit: IntWithinLimit) -> list[Workload]:
    """Each entry by the record class of its kind (`WORKLOAD_TYPES`); names unique."""
    wl = data["workloads"]
    if not isinstance(wl, list):
        check.fail("workloads", f"must be a list, got {type_name(wl)}")
    if not wl:
        check.fail("workloads", "empty range: no workload given")
    all_keys = set().union(*(t.KEYS for t in WORKLOAD_TYPES.values()))
    workloads = []
    for i, w in enumerate(wl):
        key = f"workloads[{i}]"
        check.mapping(w, key, all_keys, ("name", "kind"))
        check.name(w["name"], f"{key}.name", MAX_WORKLOAD_NAME)
        kind = check.choice(w["kind"], f"{key}.kind", WORKLOAD_KINDS)
        workloads.append(WORKLOAD_TYPES[kind].parse(check, w, key, kind, int_within_limit, buckets))
    if len({w.name for w in workloads}) != len(workloads):
        check.fail("workloads", "workload names must be unique")
    return workloads


def _parse_noise(check: SpaceChecker, v: Any, key: str) -> float:
    """Angstrom of noise of the degraded structure guided candidates are scored with."""
    noise = check.number(v, key, low=0.0)
    if not math.isfinite(noise) or noise > 100.0:
        check.fail(key, f"must be a finite number of Angstrom in [0, 100], got {noise!r}")
    return noise


@dataclass(frozen=True)
class _Accuracy:
    """What the ``constraints.accuracy`` entry and ``accuracy_noise`` say (parse step result)."""

    metric: Optional[str] = None
    max_chains: Optional[int] = None
    noise: float = 4.0


def _parse_constraints(check: SpaceChecker, data: dict[str, Any]) -> tuple[list[Constraint], _Accuracy]:
    """The ``constraints`` section (its accuracy entry may name the accuracy metric) and the
    top-level ``accuracy_noise`` (it wins over ``constraints.accuracy.noise``)."""
    constraints: list[Constraint] = []
    acc = _Accuracy()
    cons = check.section(data, "constraints", set(CONSTRAINT_NAMES))
    for cname, spec in cons.items():
        key = f"constraints.{cname}"
        if cname == "accuracy":
            check.mapping(spec, key, {"metric", "min", "max", "max_chains", "noise"}, ("metric",))
            acc = replace(acc, metric=check.choice(spec["metric"], f"{key}.metric", tuple(ACCURACY_METRIC_DIRECTIONS)))
            if spec.get("max_chains") is not None:
                acc = replace(acc, max_chains=check.integer(spec["max_chains"], f"{key}.max_chains", low=1))
            if spec.get("noise") is not None:
                acc = replace(acc, noise=_parse_noise(check, spec["noise"], f"{key}.noise"))
        else:
            check.mapping(spec, key, {"min", "max"})
        lo = None if spec.get("min") is None else check.number(spec["min"], f"{key}.min")
        hi = None if spec.get("max") is None else check.number(spec["max"], f"{key}.max")
        if lo is None and hi is None:
            if cname == "accuracy":
                check.fail(key, "give min (or max for output_rel_error)")
            check.fail(key, "give min or max")
        check_bound(check, key, acc.metric if cname == "accuracy" else cname, lo, hi)
        constraints.append(Constraint(cname, lo, hi))
    if data.get("accuracy_noise") is not None:
        acc = replace(acc, noise=_parse_noise(check, data["accuracy_noise"], "accuracy_noise"))
    return constraints, acc


def _parse_objectives(check: SpaceChecker, data: dict[str, Any], acc_metric: Optional[str]) -> tuple[list[str], Optional[str]]:
    """Distinct known objectives, and the accuracy metric (from the constraints, else the first
    of the ``targets`` section); ``accuracy`` needs one."""
    objs = data["objectives"]
    if not isinstance(objs, list):
        check.fail("objectives", f"must be a list, got {type_name(objs)}")
    if not objs:
        check.fail("objectives", "empty range: no objective given")
    for i, o in enumerate(objs):
        check.choice(o, f"objectives[{i}]", tuple(OBJECTIVES))
    if len(set(objs)) != len(objs):
        check.fail("objectives", f"duplicate objectives in {objs}")
    if acc_metric is None:
        acc_metric = targets_accuracy_metric(data)
    if "accuracy" in objs and acc_metric is None:
        check.fail("objectives", "'accuracy' needs constraints.accuracy.metric")
    return list(objs), acc_metric


def parse_space(data: Any, source: str = "<space>") -> SearchSpace:
    """Validate the parsed YAML ``data`` (see module docstring); raise `SpaceError`.

    The whole input is checked before anything else happens: sections, types, finiteness, ranges
    and the machine limits (`LIMITS`, raisable in ``limits``)."""
    check = SpaceChecker(source)
    data = _check_file(check, data)
    name = check.name(data.get("name", Path(source).stem), "name", MAX_NAME)
    device = check.choice(data.get("device", "cuda"), "device", DEVICES)
    backend = check.choice(data.get("backend", backends.auto_backend(device)), "backend", BACKENDS)
    dtype = check.choice(data.get("dtype", "bfloat16" if device == "cuda" else "float32"), "dtype", DTYPES)
    mode = check.choice(data.get("mode", "fwd"), "mode", MODES)
    limits = parse_limits(check, data, device)

    def int_within_limit(v: Any, key: str, limit: str, low: int = 1) -> int:
        return check.integer(v, key, low=low, high=limits[limit], limit=limit)

    buckets = _parse_buckets(check, data, int_within_limit)
    pattern = _parse_pattern(check, data["pattern"], limits["max_seq_len"])
    kernel = _parse_kernel(check, data.get("kernel"))
    workloads = _parse_workloads(check, data, buckets, int_within_limit)
    check_inputs_fit(check, workloads, buckets, limits, dtype)
    constraints, acc = _parse_constraints(check, data)  # before objectives: the accuracy metric may be named here
    objectives, acc_metric = _parse_objectives(check, data, acc.metric)
    sampler = SamplerSettings.parse(check, data)
    budget = BudgetSettings.parse(check, data)
    measure = MeasureSettings.parse(check, check.section(data, "measure", MEASURE_KEYS))
    gate = GateSettings.parse(check, data, int_within_limit)
    check_gate_fits(check, workloads, gate, limits, dtype)
    execution = ExecutionSettings.parse(check, data)
    return SearchSpace(
        source=source, name=name, device=device, backend=backend, dtype=dtype, mode=mode, buckets=buckets,
        pattern=pattern, kernel=kernel, workloads=workloads, objectives=objectives, constraints=constraints,
        accuracy_metric=acc_metric, accuracy_max_chains=acc.max_chains, accuracy_noise=acc.noise, sampler=sampler,
        budget=budget, measure=measure, gate=gate, execution=execution, raw=data,
        targets=parse_targets(check, data.get("targets"), device, constraints, acc_metric, acc.max_chains),
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

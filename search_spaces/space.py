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
    kernel:                         # optional; KernelConfig fields, same forms. Forward tiles larger
      block_m: {choices: [32, 64]}  #   than the layout block run as coarse tiles (KernelConfig.for_block)
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
    sampler: {name: nsga2, seed: 0, population_size: 16}   # local | nsga2 | tpe | gp | random (default: local)
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

This module is the schema's face: it re-exports the names of the modules the schema is cut into,
one part of the file each (each module imports its siblings, never this face):

- `search_spaces.schema`: the vocabulary (objectives, accuracy metrics, backends, dtypes, keys),
  the machine limits and sanity bounds, `SpaceError`, the searched parameters (`Choices`,
  `IntRange`, `ParamSpace`);
- `search_spaces.checks`: the value checks (`SpaceChecker`), the same rules for command-line flags
  (`check_overrides`, `OverrideError`);
- `search_spaces.settings`: the settings records (sampler, budget, measure, gate, execution);
- `search_spaces.workloads`: the workload records (`WORKLOAD_TYPES`);
- `search_spaces.targets`: `Targets` and their defaults, the ``targets`` section and the older
  ``constraints`` folded into it;
- `search_spaces.limits`: the ``limits`` section and the memory checks (`check_fits`);
- `search_spaces.search_space`: `SearchSpace`, the validated record and its stored form;
- `search_spaces.parse`: `parse_space`, `load_space`, `find_space`.
"""

from __future__ import annotations

# The names of `__all__`, and every other public name of the schema (constants included), as before.
from .checks import OverrideError, check_overrides
from .limits import check_fits
from .parse import find_space, load_space, parse_space
from .schema import (ACCURACY_METRIC_DIRECTIONS, BACKENDS, CONSTRAINT_NAMES, DEVICES, DTYPE_BYTES, DTYPES,
                     GUIDED_ONLY_PARAMS, KERNEL_PARAMS, LIMITS, MAX_NAME, MAX_REPEATS, MAX_SEED, MAX_THREADS,
                     MAX_TRIALS, MAX_WARMUP, MAX_WORKERS, MAX_WORKLOAD_NAME, MODES, OBJECTIVES, PATTERN_PARAMS,
                     REQUIRED_TOP, SAMPLERS, STATIC_ONLY_PARAMS, TOP_KEYS, Choices, IntRange, ParamSpace, SpaceError)
from .search_space import SearchSpace
from .settings import (MEASURE_DEFAULTS, MEASURE_KEYS, BudgetSettings, ExecutionSettings, GateSettings,
                       MeasureSettings, SamplerSettings)
from .targets import (TARGET_DEFAULTS, TARGET_NAMES, Bound, Constraint, Targets, check_bound, default_targets,
                      parse_targets)
from .workloads import (STORED_WORKLOAD_KEYS, WORKLOAD_KINDS, WORKLOAD_TYPES, AttentionWorkload, EvoformerWorkload,
                        Workload, input_gib)

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

"""Benchmark one EvoFormer block: naive vs dense SDPA vs block-sparse attention.

    python -m autotune.evoformer.bench                       # CPU: depth 16, L = 64, 128, 256
    python -m autotune.evoformer.bench --lengths 256 512 1024 2048 --max-len   # GPU (bf16, depth 128)
    python -m autotune.evoformer.bench --tuned tuned.yaml    # sparse with the tuner's patterns

What is measured, per (L, pass, variant):

* ``median_ms`` (``p10_ms``, ``p90_ms``, ``rounds``): the variants of one (L, pass) timed
  interleaved, round by round (``kernels.measure.time_paired``: CUDA events on CUDA,
  ``time.perf_counter`` on a CPU; the ``timer`` column names which), after one probe pass each
  (out of memory or a missing backend gives the status instead). ``speedup_vs_sdpa`` is the
  median of the per-round ratios t(SDPA) / t(variant), ``speedup_lo`` / ``speedup_hi`` its 95%
  order-statistics interval. Passes (`autotune.evoformer.timed_pass.block_pass`): ``fwd`` (under
  ``torch.no_grad``, inference) and ``fwd+bwd`` (a training step without optimizer: forward, then
  backward of the sum of both outputs into the parameter gradients).
* ``peak_mib``: peak memory above what was allocated before the run (parameters and inputs), in a
  separate cold run after the timing (``kernels.measure.peak_memory``, after ``gc.collect()``;
  the ``memory_method`` column names the method). CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``. CPU: the process's resident-set high-water mark above the resident
  set just before the run (after glibc ``malloc_trim(0)``); it counts allocator caching.
* Out of memory (``kernels.measure.is_oom``) gives the status ``oom``; a variant whose backend is
  not available here ``unavailable: <error>``.
* Attention share, measured by timing the same block with attention removed:
  ``attn3_share`` = 1 - t(block with MSA row and both triangle attention modules replaced by
  zero-output no-ops) / t(variant); ``attn4_share`` the same with MSA column attention removed too;
  ``core_share`` = 1 - t(block whose four attention cores return v: projections, gating and bias
  kept) / t(variant), i.e. the most any attention kernel could save. These bound what sparse
  attention can do to the block (Amdahl).
* ``checkpoint`` (``--checkpoint none block modules``): the activation checkpointing of the
  ``fwd+bwd`` pass (`autotune.evoformer.timed_pass`: ``block`` is one block of a stack trained with
  OpenFold's ``blocks_per_ckpt=1``, ``modules`` checkpoints each residual update); each one given
  is its own group of paired rows. Empty for ``fwd`` rows.
* ``max_len`` (``--max-len``, rows with status ``max_len``, or ``max_len_capped`` when the probe's
  time cap stopped it: then a lower bound): the largest L whose pass runs without running out of
  memory and with a peak within ``--mem-budget-gib`` GiB (GPU default 80; on a CPU a small budget,
  a dry run of the logic), one row per (pass, checkpointing, variant); ``L`` and ``peak_mib`` are
  that length and its peak. Found by doubling from ``--max-len-start`` then bisection to
  ``--max-len-step`` (`autotune.evoformer.max_len`; GPU 1024, 256, up to 16384), or over the
  explicit ``--max-len-steps``; ``--max-len-time-cap`` seconds for the whole probe.

Variants: ``naive`` (OpenFold's materialised softmax), ``sdpa`` (dense, contiguous bias: the fair
dense baseline), ``guided@s`` (guided patterns keeping 1 - s of the key blocks, chosen per call
from each module's pair bias), and ``sparse`` with (a) given PatternConfigs, (b) a ``--tuned`` file
(``kernels.load_tuned``), or (c) by default, for each target sparsity, the local + one
global block + strided pattern whose layout at that L is closest to the target. Sparse patterns
apply to MSA row and both triangle attentions; column attention stays dense SDPA.

Writes a CSV (default ``benchmarks/results/evoformer-<device>.csv`` under the working directory, or a
time-stamped name beside it when that file exists) and a Markdown summary beside it, and prints it. ``run_evoformer_bench(...)`` returns the rows as dicts. Its steps:
`_settings` (defaults by device), then per length `_bench_length`: per pass the reference timings
of the attention share (`_share_baselines`) and the rows of every variant (`_mode_rows`: probe, paired
timing, `_row`), then the max-L rows (`_max_len_rows`).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from kernels.baselines import NAIVE, SDPA
from kernels.measure import Timing, is_oom, measure_time, peak_memory, percentile, release_memory, time_paired, timer_method
from patterns import GuidedConfig, PatternConfig, pattern_for_sparsity, pattern_label
from patterns.output import check_output_path, write_output

from models.evoformer import EvoformerAttention, EvoformerBlock, cached_layout
from .max_len import ProbeResult, check_probe, pass_fits, probe_max_len
from .timed_pass import CHECKPOINTS, PASS_MODES, block_pass

__all__ = ["run_evoformer_bench", "sparsity_pattern", "default_block_size", "device_tag", "format_table", "main"]

SMALL_DIMS = dict(c_m=64, c_z=32, c_hidden_msa_att=16, no_heads_msa=4, c_hidden_pair_att=16, no_heads_pair=2,
                  c_hidden_opm=16, c_hidden_mul=32)
CSV_FIELDS = [
    "device", "dtype", "threads", "L", "depth", "mode", "checkpoint", "variant", "family", "pattern", "sparsity", "status",
    "median_ms", "p10_ms", "p90_ms", "rounds", "peak_mib", "speedup_vs_sdpa", "speedup_lo", "speedup_hi",
    "speedup_vs_naive", "attn3_share", "attn4_share", "core_share", "max_len", "mem_budget_gib", "timer",
    "memory_method",
]
DEFAULT_KINDS: tuple[str, ...] = (NAIVE, SDPA, "sparse", "guided")


# ---- patterns --------------------------------------------------------------------------------------


def default_block_size(seq_len: int) -> int:
    """The largest of 64, 32, 16 that still gives at least 8 block rows (16 for short chains)."""
    for bs in (64, 32):
        if seq_len // bs >= 8:
            return bs
    return 16


def sparsity_pattern(target: float, seq_len: int, block_size: Optional[int] = None) -> PatternConfig:
    """The local band + (one global block) + strided pattern closest to ``target`` sparsity at
    ``seq_len`` (`patterns.pattern_for_sparsity` with ``rule="band"``; block size by length)."""
    return pattern_for_sparsity(seq_len, target, block_size or default_block_size(seq_len), rule="band")


def parse_pattern(text: str) -> PatternConfig:
    """'block_size,window,num_global,stride' -> PatternConfig."""
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"pattern must be block_size,window,num_global,stride; got {text!r}")
    return PatternConfig(*parts)


# ---- measurement -----------------------------------------------------------------------------------


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    return re.sub(r"[^a-z0-9]+", "-", name.replace("nvidia", "")).strip("-") or "cuda"


def _peak_mib(fn: Callable[[], None], device: torch.device) -> tuple[float, str]:
    """(peak memory above the current allocation while ``fn`` runs once in MiB, method)
    (``kernels.measure.peak_memory``). The layout cache is emptied first, so the run is a cold
    call that counts the workspaces a sparse backend allocates per layout and keeps."""
    cached_layout.cache_clear()
    release_memory(device)
    res = peak_memory(fn, device=device)
    return res.mib, res.method


@contextmanager
def _without_attention_modules(block: EvoformerBlock, include_col: bool):
    """Replace attention modules by zero-output no-ops (their residual adds 0)."""
    mods = [block.msa_att_row, block.pair_stack.tri_att_start, block.pair_stack.tri_att_end]
    if include_col:
        mods.append(block.msa_att_col)
    for mod in mods:
        mod.forward = lambda x, *args, **kwargs: torch.zeros_like(x)
    try:
        yield
    finally:
        for mod in mods:
            del mod.forward


# ---- the benchmark -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One attention variant of the block: ``make(L)`` gives a fresh ``EvoformerAttention`` at length
    L (a target-sparsity pattern is re-chosen per length), ``pattern(L)`` the pattern it uses there."""

    name: str
    family: str  # "dense" | "static" | "guided"
    make: Callable[[int], EvoformerAttention]
    pattern: Callable[[int], Any] = lambda L: None
    target: float = 0.0  # target sparsity (guided: 1 - keep)

    def sparsity(self, L: int) -> float:
        """The layout's sparsity at L (static), the target (guided: chosen per call), 0 (dense)."""
        cfg = self.pattern(L)
        if isinstance(cfg, PatternConfig):
            return round(cached_layout(cfg, L).sparsity, 4)
        return self.target


def _guided_config(target: float, L: int, block_size: Optional[int]) -> GuidedConfig:
    """A guided pattern keeping ``1 - target`` of the key blocks per row, chosen by max pooling of
    each module's own pair bias (`patterns.guided`)."""
    return GuidedConfig(block_size or default_block_size(L), keep=round(1.0 - target, 4), pool="max")


def _variants(st: "BenchSettings") -> list[Variant]:
    """The variants of ``st.kinds``: naive and sdpa (dense), static patterns (given, tuned, or one per
    target sparsity) and guided patterns (one per target sparsity)."""
    out: list[Variant] = []
    be, bs = st.sparse_backend, st.block_size
    for kind in st.kinds:
        if kind in (NAIVE, SDPA):
            out.append(Variant(kind, "dense", lambda L, k=kind: EvoformerAttention.uniform(k)))
        elif kind == "sparse":
            if st.tuned is not None:
                out.append(Variant("sparse[tuned]", "static", lambda L: EvoformerAttention.sparse(st.tuned, be),
                                   lambda L: st.tuned.config_for(L)))
            for cfg in st.patterns or ():
                out.append(Variant(f"sparse[{pattern_label(cfg, missing='')}]", "static",
                                   lambda L, c=cfg: EvoformerAttention.sparse(c, be), lambda L, c=cfg: c))
            if st.tuned is None and not st.patterns:
                for t in st.sparsities:
                    out.append(Variant(f"sparse@{t:g}", "static",
                                       lambda L, t=t: EvoformerAttention.sparse(sparsity_pattern(t, L, bs), be),
                                       lambda L, t=t: sparsity_pattern(t, L, bs), t))
        elif kind == "guided":
            for t in st.sparsities:
                out.append(Variant(f"guided@{t:g}", "guided",
                                   lambda L, t=t: EvoformerAttention.sparse(_guided_config(t, L, bs), be),
                                   lambda L, t=t: _guided_config(t, L, bs), t))
        else:
            raise ValueError(f"unknown variant kind {kind!r}; use naive, sdpa, sparse, guided")
    return out


def _inputs(L: int, st: "BenchSettings") -> tuple[torch.Tensor, torch.Tensor]:
    """The MSA [depth, L, c_m] and pair [L, L, c_z] inputs at length L, drawn from ``seed + L``."""
    gen = torch.Generator(device="cpu").manual_seed(st.seed + L)
    m = torch.randn(st.depth, L, st.dims["c_m"], generator=gen).to(device=st.device, dtype=st.dtype)
    z = torch.randn(L, L, st.dims["c_z"], generator=gen).to(device=st.device, dtype=st.dtype)
    return m, z


def _pass_at(block: EvoformerBlock, variant: Variant, mode: str, checkpoint: str,
             st: "BenchSettings") -> Callable[[int], Callable[[], None]]:
    """L -> the ``mode`` pass of the block with the variant's attention at L, on fresh inputs."""
    def make(L: int) -> Callable[[], None]:
        block.set_attention(variant.make(L))
        m, z = _inputs(L, st)
        return block_pass(block, m, z, mode, checkpoint)
    return make


def max_len(block: EvoformerBlock, variant: Variant, mode: str, st: "BenchSettings", checkpoint: str = "none",
            deadline: Optional[float] = None) -> ProbeResult:
    """The largest L at which one ``mode`` pass of the variant fits the memory budget
    (`autotune.evoformer.max_len.pass_fits`): over ``st.max_len_steps`` (ascending, stopping at the
    first that does not fit) when given, else by doubling and bisection (`probe_max_len`)."""
    fits = pass_fits(_pass_at(block, variant, mode, checkpoint, st), st.mem_budget_gib, st.device, st.peak_fn)
    if not st.max_len_steps:
        return probe_max_len(fits, start=st.max_len_start, step=st.max_len_step, limit=st.max_len_limit,
                             deadline=deadline, log=st.log)
    best, peak_at, tried = 0, float("nan"), []
    for L in st.max_len_steps:
        if deadline is not None and time.perf_counter() > deadline:
            return ProbeResult(best, peak_at, False, tuple(tried))
        ok, peak = fits(L)
        tried.append((L, ok, peak))
        st.log(f"  max-len {mode} {variant.name}: L={L} {'fits' if ok else 'does not fit'} ({peak:.0f} MiB)")
        if not ok:
            break
        best, peak_at = L, peak
    return ProbeResult(best, peak_at, True, tuple(tried))


@dataclass
class BenchSettings:
    """The resolved arguments of one `run_evoformer_bench` call (defaults filled in by `_settings`)."""

    device: torch.device
    dtype: torch.dtype
    depth: int
    lengths: list[int]
    dims: dict
    kinds: Sequence[str]
    patterns: Optional[Sequence[PatternConfig]]
    sparsities: Sequence[float]
    tuned: Any
    sparse_backend: str
    block_size: Optional[int]
    modes: Sequence[str]
    warmup: int
    repeats: int
    max_repeats: int
    time_cap_s: float
    measure_share: bool
    measure_memory: bool
    find_max_len: bool
    max_len_steps: list[int]
    mem_budget_gib: float
    naive_max_len: int
    seed: int
    verbose: bool
    checkpoints: Sequence[str] = ("none",)
    peak_fn: Callable = peak_memory  # (fn, device=) -> (bytes, method): injectable for tests
    max_len_start: int = 0
    max_len_step: int = 0
    max_len_limit: int = 0
    max_len_time_cap_s: Optional[float] = None

    @property
    def tag(self) -> str:
        return device_tag(self.device)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr, flush=True)


def _settings(lengths, depth, device, dtype, dims, tuned, modes, max_len_steps, mem_budget_gib, **rest) -> BenchSettings:
    """Defaults by device: CUDA (bf16, depth 128, L = 256..2048, a max-L probe from 1024 in steps of
    256 up to 16384 in 80 GiB) or CPU (float32, depth 16, L = 64..256, from 64 in steps of 16 up to
    512 in 0.25 GiB: a dry run of the logic); a ``tuned`` path is loaded; an unknown mode or
    checkpointing is a ValueError."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if isinstance(tuned, (str, os.PathLike)):
        from kernels.tuned import load_tuned

        tuned = load_tuned(tuned)
    for mode in modes:
        if mode not in PASS_MODES:
            raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")
    for ck in rest.get("checkpoints", ("none",)):
        if ck not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {ck!r}")
    probe = dict(max_len_start=(1024, 64), max_len_step=(256, 16), max_len_limit=(16384, 512))
    for key, (gpu, cpu) in probe.items():
        rest[key] = int(rest.get(key) or (gpu if on_gpu else cpu))
    if rest.get("find_max_len") and not max_len_steps:
        check_probe(rest["max_len_start"], rest["max_len_step"], rest["max_len_limit"])
    return BenchSettings(
        device=device, dtype=dtype or (torch.bfloat16 if on_gpu else torch.float32), depth=depth or (128 if on_gpu else 16),
        lengths=list(lengths or ((256, 512, 1024, 2048) if on_gpu else (64, 128, 256))),
        dims={**dict(c_m=256, c_z=128), **(dims or {})}, tuned=tuned, modes=modes,
        max_len_steps=sorted(max_len_steps or ()),
        mem_budget_gib=float(mem_budget_gib if mem_budget_gib is not None else (80.0 if on_gpu else 0.25)), **rest,
    )


def _status_of(exc: BaseException, st: BenchSettings, label: str) -> str:
    """``oom`` or ``unavailable: <error>`` (NotImplementedError / ImportError: a backend this machine
    lacks) for a failed pass; any other error is raised again."""
    release_memory(st.device)
    if is_oom(exc):
        st.log(f"  {label}: out of memory")
        return "oom"
    if isinstance(exc, (NotImplementedError, ImportError)):
        st.log(f"  {label}: unavailable ({exc})")
        return f"unavailable: {type(exc).__name__}"
    raise exc


def _timed(fn: Callable[[], None], st: BenchSettings, label: str) -> tuple[str, Optional[Timing]]:
    """(status, timing) of ``fn`` on its own (`kernels.measure.measure_time`): ``ok`` or `_status_of`."""
    try:
        return "ok", measure_time(fn, device=st.device, warmup=st.warmup, repeats=st.repeats)
    except Exception as exc:  # noqa: BLE001
        return _status_of(exc, st, label), None


def _share_baselines(block: EvoformerBlock, fn: Callable[[], None], st: BenchSettings, where: str) -> dict[str, float]:
    """Median times (ms) of the SDPA block without its row and triangle attentions (``attn3``),
    without all four (``attn4``), and with identity attention cores (``core``); NaN if one fails."""
    base: dict[str, float] = {}
    block.set_attention(SDPA)
    for key, col in (("attn3", False), ("attn4", True)):
        with _without_attention_modules(block, col):
            _, t = _timed(fn, st, f"{where} no-{key}")
        base[key] = t.median_ms if t else float("nan")
    block.set_attention("identity")
    _, t = _timed(fn, st, f"{where} identity-core")
    base["core"] = t.median_ms if t else float("nan")
    return base


def _probe(block: EvoformerBlock, attention: EvoformerAttention, fn: Callable[[], None], st: BenchSettings,
           label: str) -> str:
    """One pass (`kernels.measure.measure_time` of one call, synchronised): ``ok``, or `_status_of`
    its error."""
    block.set_attention(attention)
    try:
        measure_time(fn, device=st.device, warmup=0, repeats=1)
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return _status_of(exc, st, label)


def _paired(block: EvoformerBlock, fn: Callable[[], None], runnable: dict[str, EvoformerAttention],
            st: BenchSettings) -> tuple[dict[str, list[float]], dict]:
    """(per-call times of every runnable variant, their speedup estimates over sdpa) from
    `kernels.measure.time_paired`: the variants interleaved round by round (each call first sets its
    variant's attention, a host-side assignment); a lone variant is timed on its own."""
    def call(att: EvoformerAttention) -> Callable[[], None]:
        def run() -> None:
            block.set_attention(att)
            fn()
        return run

    if len(runnable) < 2:
        name, att = next(iter(runnable.items()))
        return {name: list(measure_time(call(att), device=st.device, warmup=st.warmup, repeats=st.repeats).times_ms)}, {}
    baseline = SDPA if SDPA in runnable else next(iter(runnable))
    res = time_paired({n: call(a) for n, a in runnable.items()}, baseline=baseline, device=st.device,
                      warmup=st.warmup, repeats=st.repeats, max_repeats=st.max_repeats, time_cap_s=st.time_cap_s)
    return res.times_ms, (res.ratios if baseline == SDPA else {})


def _mode_rows(block: EvoformerBlock, m, z, L: int, mode: str, variants: list[Variant], st: BenchSettings,
               checkpoint: str = "none") -> list[dict]:
    """The rows of every variant for one (L, mode, checkpointing): a probe pass each, then paired
    timing of those that ran, then each one's peak memory."""
    fn = block_pass(block, m, z, mode, checkpoint)
    where = f"L={L} {mode}" + ("" if checkpoint == "none" else f" ckpt={checkpoint}")
    base = _share_baselines(block, fn, st, where) if st.measure_share else {}
    atts = {v.name: v.make(L) for v in variants}
    status = {}
    for v in variants:
        skip = v.name == NAIVE and L > st.naive_max_len
        status[v.name] = "skipped: naive_max_len" if skip else _probe(block, atts[v.name], fn, st, f"{where} {v.name}")
    runnable = {n: a for n, a in atts.items() if status[n] == "ok"}
    times, ratios = _paired(block, fn, runnable, st) if runnable else ({}, {})
    rows = [_row(block, fn, v, L, mode, status[v.name], times.get(v.name), ratios.get(v.name), base, st)
            for v in variants]
    for r in rows:
        r["checkpoint"] = checkpoint if mode == "fwd+bwd" else ""
    naive = next((r["median_ms"] for r in rows if r["variant"] == NAIVE), float("nan"))
    for r in rows:
        r["speedup_vs_naive"] = naive / r["median_ms"]
    return rows


def _row(block, fn, v: Variant, L: int, mode: str, status: str, times, ratio, base: dict, st: BenchSettings) -> dict:
    """One CSV row (module docstring). Peak memory is taken on a fresh attention (a cold call: its
    layout and the backend's per-layout workspaces are allocated inside the measured run)."""
    nan = float("nan")
    med = percentile(times, 50) if times else nan
    peak, mem_method = nan, ""
    if status == "ok" and st.measure_memory:
        block.set_attention(v.make(L))
        try:
            peak, mem_method = _peak_mib(fn, st.device)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            release_memory(st.device)
    if v.name == SDPA and times:
        sp = (1.0, 1.0, 1.0)
    else:
        sp = (ratio.point, ratio.lo, ratio.hi) if ratio else (nan, nan, nan)
    share = {k: (1 - base[k] / med if st.measure_share else nan) for k in ("attn3", "attn4", "core")}
    row = {
        "device": st.tag, "dtype": str(st.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "L": L, "depth": st.depth, "mode": mode, "variant": v.name, "family": v.family,
        "pattern": pattern_label(v.pattern(L), missing=""), "sparsity": v.sparsity(L), "status": status,
        "median_ms": med, "p10_ms": percentile(times, 10) if times else nan,
        "p90_ms": percentile(times, 90) if times else nan, "rounds": len(times) if times else 0, "peak_mib": peak,
        "speedup_vs_sdpa": sp[0], "speedup_lo": sp[1], "speedup_hi": sp[2],
        "attn3_share": share["attn3"], "attn4_share": share["attn4"], "core_share": share["core"], "max_len": "",
        "mem_budget_gib": "", "timer": timer_method(st.device), "memory_method": mem_method,
    }
    st.log(f"  L={L} {mode} {v.name}: {med:.2f} ms ({status}), {sp[0]:.2f}x sdpa, {peak:.1f} MiB")
    return row


def _bench_length(block: EvoformerBlock, L: int, st: BenchSettings) -> list[dict]:
    """Every (mode, variant) row at length L, on inputs drawn from ``seed + L``; speedups are paired
    ratios within one mode."""
    m, z = _inputs(L, st)
    variants = _variants(st)
    rows: list[dict] = []
    for mode in st.modes:
        for ck in _checkpoints(mode, st):
            rows.extend(_mode_rows(block, m, z, L, mode, variants, st, ck))
    return rows


def _checkpoints(mode: str, st: BenchSettings) -> Sequence[str]:
    """The checkpointings a ``mode`` pass is run with: those asked for (fwd+bwd), none (fwd)."""
    return st.checkpoints if mode == "fwd+bwd" else ("none",)


def _max_len_rows(block: EvoformerBlock, st: BenchSettings) -> list[dict]:
    """One ``max_len`` row per (mode, checkpointing, variant), naive left out: the largest L whose
    pass fits the memory budget (`max_len`), within ``st.max_len_time_cap_s`` for all of them (each
    probe gets an equal share of what is left)."""
    jobs = [(mode, ck, v) for mode in st.modes for ck in _checkpoints(mode, st) for v in _variants(st)
            if v.name != NAIVE]
    t0 = time.perf_counter()
    rows = []
    for i, (mode, ck, v) in enumerate(jobs):
        deadline = None
        if st.max_len_time_cap_s is not None:
            left = st.max_len_time_cap_s - (time.perf_counter() - t0)
            deadline = time.perf_counter() + left / (len(jobs) - i)
        st.log(f"max-len {mode} ckpt={ck} {v.name}")
        res = max_len(block, v, mode, st, ck, deadline)
        at = res.max_len or st.max_len_start
        rows.append({
            "device": st.tag, "dtype": str(st.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "L": res.max_len, "depth": st.depth, "mode": mode, "checkpoint": ck if mode == "fwd+bwd" else "",
            "variant": v.name, "family": v.family, "pattern": pattern_label(v.pattern(at), missing=""),
            "sparsity": v.sparsity(at), "status": "max_len" if res.complete else "max_len_capped",
            "peak_mib": res.peak_mib, "max_len": res.max_len, "mem_budget_gib": st.mem_budget_gib,
            "memory_method": "",
        })
    return rows


def default_csv_path(tag: str, directory: Path = Path("benchmarks") / "results") -> Path:
    """``evoformer-<device>.csv`` in ``directory``, or, when that file exists (committed results),
    ``evoformer-<device>-<UTC time>.csv`` beside it: a run without ``--out`` never overwrites."""
    path = directory / f"evoformer-{tag}.csv"
    if path.exists():
        path = directory / f"evoformer-{tag}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.csv"
    return path


def run_evoformer_bench(
    lengths: Optional[Iterable[int]] = None,
    depth: Optional[int] = None,
    *,
    dims: Optional[dict] = None,
    kinds: Sequence[str] = DEFAULT_KINDS,
    patterns: Optional[Sequence[PatternConfig]] = None,
    sparsities: Sequence[float] = (0.5, 0.75, 0.9),
    tuned: Any = None,
    sparse_backend: str = "auto",
    block_size: Optional[int] = None,
    modes: Sequence[str] = ("fwd", "fwd+bwd"),
    warmup: int = 2,
    repeats: int = 5,
    max_repeats: int = 15,
    time_cap_s: float = 3.0,
    dtype: Optional[torch.dtype] = None,
    device: Optional[str | torch.device] = None,
    measure_share: bool = True,
    measure_memory: bool = True,
    find_max_len: bool = False,
    max_len_steps: Optional[Sequence[int]] = None,
    mem_budget_gib: Optional[float] = None,
    checkpoints: Sequence[str] = ("none",),
    max_len_start: Optional[int] = None,
    max_len_step: Optional[int] = None,
    max_len_limit: Optional[int] = None,
    max_len_time_cap_s: Optional[float] = None,
    peak_fn: Callable = peak_memory,
    naive_max_len: int = 1 << 30,
    time_budget_s: Optional[float] = None,
    csv_path: Any = None,
    seed: int = 0,
    verbose: bool = False,
) -> list[dict]:
    """Benchmark one EvoFormer block; returns one dict per (L, mode, variant) (keys: ``CSV_FIELDS``),
    then (``find_max_len``) one ``max_len`` row per (mode, variant).

    Defaults: CUDA if available (bf16, depth 128, L = 256, 512, 1024, 2048), else CPU (float32,
    depth 16, L = 64, 128, 256); AlphaFold2 dims (``dims`` overrides ``EvoformerBlock`` kwargs).
    ``tuned``: a TunedPatterns or a path for ``kernels.load_tuned``. ``csv_path``: None writes
    `default_csv_path` (never over an existing file), False writes nothing; a Markdown summary goes
    beside the CSV. ``time_budget_s``: no new length is started after that many seconds.
    ``checkpoints``: the activation checkpointings of the fwd+bwd pass (`timed_pass.CHECKPOINTS`).
    ``max_len_*``: the max-L probe (module docstring); ``peak_fn``: its peak-memory measurement
    (``kernels.measure.peak_memory``; injectable)."""
    st = _settings(lengths, depth, device, dtype, dims, tuned, modes, max_len_steps, mem_budget_gib, kinds=kinds,
                   patterns=patterns, sparsities=sparsities, sparse_backend=sparse_backend, block_size=block_size,
                   warmup=warmup, repeats=repeats, max_repeats=max(repeats, max_repeats), time_cap_s=time_cap_s,
                   measure_share=measure_share, measure_memory=measure_memory, find_max_len=find_max_len,
                   naive_max_len=naive_max_len, seed=seed, verbose=verbose, checkpoints=tuple(checkpoints),
                   peak_fn=peak_fn, max_len_start=max_len_start, max_len_step=max_len_step,
                   max_len_limit=max_len_limit, max_len_time_cap_s=max_len_time_cap_s)
    torch.manual_seed(seed)
    block = EvoformerBlock(**st.dims).to(device=st.device, dtype=st.dtype)
    path = None if csv_path is False else (Path(csv_path) if csv_path else default_csv_path(st.tag))
    if path is not None:
        check_output_path(path)  # a folder, a device, /proc, ...: refused before any measurement
    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        for L in st.lengths:
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                st.log(f"time budget of {time_budget_s:g} s spent: L={L} and longer not run")
                break
            rows.extend(_bench_length(block, L, st))
            release_memory(st.device)
            if path is not None:  # rewritten after every length, so partial results survive
                _write_csv(path, rows)
        if st.find_max_len:
            rows.extend(_max_len_rows(block, st))
    finally:
        block.set_attention(None)
        if path is not None and rows:
            _write_csv(path, rows)
            path.with_suffix(".md").write_text(summary_markdown(rows))
            st.log(f"wrote {path} and {path.with_suffix('.md')}")
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    """All rows to ``path``, atomically (`patterns.output.write_output`: never a half-written CSV,
    only a regular file replaced)."""
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_output(path, f.getvalue())


def _share(x: Any) -> str:
    """A share as a percentage; '-' where it was not measured (``--no-share``: NaN or empty)."""
    return "-" if x is None or x == "" or x != x else f"{x:.0%}"


def _pass_label(r: dict) -> str:
    """The pass of a row with its checkpointing: ``fwd``, ``fwd+bwd``, ``fwd+bwd ckpt=block``."""
    ck = r.get("checkpoint") or "none"
    return r["mode"] if ck == "none" else f"{r['mode']} ckpt={ck}"


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the timed rows (speedup over SDPA: median of paired ratios [95% interval])."""
    head = ("| L | pass | variant | pattern | sparsity | ms | peak MiB | vs SDPA [interval] | attn share (row+tri / +col / core) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r["status"].startswith("max_len"):
            continue
        ms = f"{r['median_ms']:.1f}" if r["status"] == "ok" else r["status"]
        lines.append(
            f"| {r['L']} | {_pass_label(r)} | {r['variant']} | {r['pattern'] or '-'} | {r['sparsity']:.2f} | {ms} | "
            f"{r['peak_mib']:.0f} | {r['speedup_vs_sdpa']:.2f}x [{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}] | "
            f"{_share(r['attn3_share'])} / {_share(r['attn4_share'])} / {_share(r['core_share'])} |"
        )
    return "\n".join(lines)


def summary_markdown(rows: list[dict]) -> str:
    """The short summary written beside the CSV: machine and shapes, the timed table, the max-L table."""
    r0 = next((r for r in rows if not r["status"].startswith("max_len")), rows[0] if rows else {})
    out = [f"# EvoFormer block: {r0.get('device')} {r0.get('dtype')}, {r0.get('threads')} threads, "
           f"MSA depth {r0.get('depth')}", "",
           "Times: medians of interleaved rounds (`kernels.measure.time_paired`); speedup over dense SDPA: the "
           "median of the per-round ratios with its 95% order-statistics interval.", "", format_table(rows)]
    ml = [r for r in rows if r["status"].startswith("max_len")]
    if ml:
        out += ["", f"Largest L of one pass within {ml[0]['mem_budget_gib']:g} GiB (0: not even the smallest; "
                "'>=': the probe's time cap stopped it):", "",
                "| pass | checkpoint | variant | pattern at that L | max L | peak MiB |", "|---|---|---|---|---|---|"]
        out += [f"| {r['mode']} | {r.get('checkpoint') or '-'} | {r['variant']} | {r['pattern'] or '-'} | "
                f"{'' if r['status'] == 'max_len' else '>='}{r['max_len']} | {r['peak_mib']:.0f} |" for r in ml]
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m autotune.evoformer.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default: GPU 256..2048, CPU 64 128 256)")
    p.add_argument("--depth", type=int, help="MSA depth N_seq (default: GPU 128, CPU 16)")
    p.add_argument("--dims", choices=("af2", "small"), default="af2", help="AlphaFold2 dims or a small model")
    p.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=list(DEFAULT_KINDS))
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.9], help="target sparsities")
    p.add_argument("--pattern", type=parse_pattern, action="append", help="block_size,window,num_global,stride (repeatable)")
    p.add_argument("--tuned", help="tuned pattern file (kernels.load_tuned)")
    p.add_argument("--backend", default="auto", help="kernels.sparse_attention backend for the sparse variants")
    p.add_argument("--block-size", type=int, help="block size of the target-sparsity patterns (default by L)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: GPU bfloat16, CPU float32")
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="paired rounds at least")
    p.add_argument("--max-repeats", type=int, default=15, help="paired rounds at most")
    p.add_argument("--time-cap", type=float, default=3.0, help="seconds of timed calls per (L, pass) before stopping")
    p.add_argument("--time-budget", type=float, help="start no new length after this many seconds")
    p.add_argument("--naive-max-len", type=int, default=1 << 30, help="skip the naive variant above this L")
    p.add_argument("--no-share", action="store_true", help="skip the attention-share timings")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--checkpoint", nargs="+", default=["none"], choices=list(CHECKPOINTS),
                   help="activation checkpointing of the fwd+bwd pass, each its own rows (default: none)")
    p.add_argument("--max-len", action="store_true", help="probe the largest L whose pass fits --mem-budget-gib")
    p.add_argument("--max-len-start", type=int, help="first L of the probe's doubling (default: GPU 1024, CPU 64)")
    p.add_argument("--max-len-step", type=int, help="the probe's resolution (default: GPU 256, CPU 16)")
    p.add_argument("--max-len-limit", type=int, help="largest L the probe tries (default: GPU 16384, CPU 512)")
    p.add_argument("--max-len-time-cap", type=float, help="seconds for the whole probe (then lower bounds)")
    p.add_argument("--max-len-steps", type=int, nargs="+", help="explicit lengths to try instead of the probe")
    p.add_argument("--mem-budget-gib", "--mem-budget", dest="mem_budget", type=float,
                   help="GiB for --max-len (default: GPU 80, CPU 0.25)")
    p.add_argument("--out", help="CSV path (default benchmarks/results/evoformer-<device>.csv, or a new timestamped "
                                 "name beside it when that exists); a .md summary is written beside it")
    a = p.parse_args(argv)
    rows = run_evoformer_bench(
        a.lengths, a.depth, dims=SMALL_DIMS if a.dims == "small" else None, kinds=a.kinds, patterns=a.pattern,
        sparsities=a.sparsity, tuned=a.tuned, sparse_backend=a.backend, block_size=a.block_size, modes=a.modes,
        warmup=a.warmup, repeats=a.repeats, max_repeats=a.max_repeats, time_cap_s=a.time_cap,
        dtype=getattr(torch, a.dtype) if a.dtype else None, device=a.device, measure_share=not a.no_share,
        measure_memory=not a.no_memory, find_max_len=a.max_len, max_len_steps=a.max_len_steps,
        mem_budget_gib=a.mem_budget, checkpoints=a.checkpoint, max_len_start=a.max_len_start,
        max_len_step=a.max_len_step, max_len_limit=a.max_len_limit, max_len_time_cap_s=a.max_len_time_cap,
        naive_max_len=a.naive_max_len, time_budget_s=a.time_budget, csv_path=a.out,
        verbose=True,
    )
    print(summary_markdown(rows))
    return rows


if __name__ == "__main__":
    from patterns.errors import exit_on_input_error

    with exit_on_input_error("python -m autotune.evoformer.bench"):  # bad input: one line, exit status 2
        main()

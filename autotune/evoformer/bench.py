"""Benchmark one EvoFormer block: naive vs dense SDPA vs block-sparse attention.

    python -m autotune.evoformer.bench                       # CPU: depth 16, L = 64, 128, 256
    python -m autotune.evoformer.bench --lengths 256 512 1024 2048 --max-len   # GPU (bf16, depth 128)
    python -m autotune.evoformer.bench --tuned tuned.yaml    # sparse with the tuner's patterns

What is measured, per (L, pass, variant):

* ``median_ms``: median time of ``repeats`` runs after ``warmup`` runs, timed by the one timer of
  ``kernels.measure`` (``measure_time``: CUDA events per run on CUDA, ``time.perf_counter`` on a
  CPU; the ``timer`` column names which). Passes (`autotune.evoformer.timed_pass.block_pass`):
  ``fwd`` (under ``torch.no_grad``, inference) and ``fwd+bwd`` (forward, then backward of the sum
  of both outputs into the parameter gradients).
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
* ``max_len`` (GPU, ``--max-len``): the largest L, doubling from the largest benchmarked length,
  at which the variant's pass still runs without running out of memory.

Variants: ``naive`` (OpenFold's materialised softmax), ``sdpa`` (dense, contiguous bias: the fair
dense baseline), and ``sparse`` with (a) given PatternConfigs, (b) a ``--tuned`` file
(``kernels.load_tuned``), or (c) by default, for each target sparsity, the local + one
global block + strided pattern whose layout at that L is closest to the target. Sparse patterns
apply to MSA row and both triangle attentions; column attention stays dense SDPA.

Writes a CSV (default ``benchmarks/results/evoformer-<device>.csv`` under the working directory)
and prints a table. ``run_evoformer_bench(...)`` returns the rows as dicts. Its steps:
`_settings` (defaults by device), then per length `_bench_length`: per pass the reference timings
of the attention share (`_share_baselines`) and one row per variant (`_variant_row`).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from kernels.measure import Timing, is_oom, measure_time, peak_memory, release_memory, timer_method
from patterns import PatternConfig, build_layout, pattern_for_sparsity, pattern_label

from models.evoformer import EvoformerAttention, EvoformerBlock, cached_layout
from .timed_pass import PASS_MODES, block_pass

__all__ = ["run_evoformer_bench", "sparsity_pattern", "default_block_size", "device_tag", "format_table", "main"]

SMALL_DIMS = dict(c_m=64, c_z=32, c_hidden_msa_att=16, no_heads_msa=4, c_hidden_pair_att=16, no_heads_pair=2,
                  c_hidden_opm=16, c_hidden_mul=32)
CSV_FIELDS = [
    "device", "dtype", "threads", "L", "depth", "mode", "variant", "pattern", "sparsity", "status",
    "median_ms", "min_ms", "peak_mib", "speedup_vs_sdpa", "speedup_vs_naive",
    "attn3_share", "attn4_share", "core_share", "max_len", "timer", "memory_method",
]


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


def _variants(kinds: Sequence[str], L: int, patterns, sparsities, tuned, backend: str, block_size):
    """(name, EvoformerAttention, pattern) for each variant at length L."""
    out = []
    for kind in kinds:
        if kind in ("naive", "sdpa"):
            out.append((kind, EvoformerAttention.uniform(kind), None))
        elif kind == "sparse":
            if tuned is not None:
                out.append(("sparse[tuned]", EvoformerAttention.sparse(tuned, backend), tuned.config_for(L)))
            for cfg in patterns or ():
                out.append((f"sparse[{pattern_label(cfg, missing='')}]", EvoformerAttention.sparse(cfg, backend), cfg))
            if tuned is None and not patterns:
                for s in sparsities:
                    cfg = sparsity_pattern(s, L, block_size)
                    out.append((f"sparse@{s:g}", EvoformerAttention.sparse(cfg, backend), cfg))
        else:
            raise ValueError(f"unknown variant kind {kind!r}; use naive, sdpa, sparse")
    return out


def _max_len(block, attention, start_L: int, depth: int, dims: dict, mode: str, dtype, device, limit: int) -> int:
    """Largest L (doubling from start_L) at which one pass runs without OOM; 0 if even start_L fails."""
    block.set_attention(attention)
    best, L = 0, start_L
    while L <= limit:
        try:
            m = torch.randn(depth, L, dims["c_m"], dtype=dtype, device=device)
            z = torch.randn(L, L, dims["c_z"], dtype=dtype, device=device)
            block_pass(block, m, z, mode)()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = L
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            break
        finally:
            m = z = None
            release_memory(device)
        L *= 2
    return best


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
    measure_share: bool
    measure_memory: bool
    find_max_len: bool
    max_len_limit: int
    seed: int
    verbose: bool

    @property
    def tag(self) -> str:
        return device_tag(self.device)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr, flush=True)


def _settings(lengths, depth, device, dtype, dims, tuned, modes, **rest) -> BenchSettings:
    """Defaults by device: CUDA (bf16, depth 128, L = 256..2048) or CPU (float32, depth 16, L = 64..256);
    a ``tuned`` path is loaded; an unknown mode is a ValueError."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if isinstance(tuned, (str, os.PathLike)):
        from kernels.tuned import load_tuned

        tuned = load_tuned(tuned)
    for mode in modes:
        if mode not in PASS_MODES:
            raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")
    return BenchSettings(
        device=device, dtype=dtype or (torch.bfloat16 if on_gpu else torch.float32), depth=depth or (128 if on_gpu else 16),
        lengths=list(lengths or ((256, 512, 1024, 2048) if on_gpu else (64, 128, 256))),
        dims={**dict(c_m=256, c_z=128), **(dims or {})}, tuned=tuned, modes=modes, **rest,
    )


def _timed(fn: Callable[[], None], st: BenchSettings, label: str) -> tuple[str, Optional[Timing]]:
    """(status, timing) of ``fn``: ``ok``, ``oom`` (out of memory) or ``unavailable: <error>``
    (NotImplementedError / ImportError: a backend this machine lacks); any other error is raised."""
    try:
        return "ok", measure_time(fn, device=st.device, warmup=st.warmup, repeats=st.repeats)
    except Exception as exc:  # noqa: BLE001
        release_memory(st.device)
        if is_oom(exc):
            st.log(f"  {label}: out of memory")
            return "oom", None
        if isinstance(exc, (NotImplementedError, ImportError)):
            st.log(f"  {label}: unavailable ({exc})")
            return f"unavailable: {type(exc).__name__}", None
        raise


def _share_baselines(block: EvoformerBlock, fn: Callable[[], None], st: BenchSettings, where: str) -> dict[str, float]:
    """Median times (ms) of the SDPA block without its row and triangle attentions (``attn3``),
    without all four (``attn4``), and with identity attention cores (``core``); NaN if one fails."""
    base: dict[str, float] = {}
    block.set_attention("sdpa")
    for key, col in (("attn3", False), ("attn4", True)):
        with _without_attention_modules(block, col):
            _, t = _timed(fn, st, f"{where} no-{key}")
        base[key] = t.median_ms if t else float("nan")
    block.set_attention("identity")
    _, t = _timed(fn, st, f"{where} identity-core")
    base["core"] = t.median_ms if t else float("nan")
    return base


def _variant_row(block: EvoformerBlock, fn: Callable[[], None], variant, L: int, mode: str, base: dict,
                 st: BenchSettings) -> dict:
    """Time one variant's pass (and its peak memory, maximum length); its CSV row without speedups."""
    name, attention, cfg = variant
    block.set_attention(attention)
    status, t = _timed(fn, st, f"L={L} {mode} {name}")
    med = t.median_ms if t else float("nan")
    peak, mem_method = float("nan"), ""
    if status == "ok" and st.measure_memory:
        try:
            peak, mem_method = _peak_mib(fn, st.device)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            release_memory(st.device)
    share = {k: (1 - base[k] / med if st.measure_share else float("nan")) for k in ("attn3", "attn4", "core")}
    row = {
        "device": st.tag, "dtype": str(st.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "L": L, "depth": st.depth, "mode": mode, "variant": name, "pattern": pattern_label(cfg, missing=""),
        "sparsity": round(cached_layout(cfg, L).sparsity, 4) if cfg is not None else 0.0,
        "status": status, "median_ms": med, "min_ms": t.min_ms if t else float("nan"), "peak_mib": peak,
        "attn3_share": share["attn3"], "attn4_share": share["attn4"], "core_share": share["core"], "max_len": "",
        "timer": timer_method(st.device), "memory_method": mem_method,
    }
    if st.find_max_len and st.device.type == "cuda":
        row["max_len"] = _max_len(block, attention, max(st.lengths), st.depth, st.dims, mode, st.dtype, st.device,
                                  st.max_len_limit)
    st.log(f"  L={L} {mode} {name}: {med:.2f} ms, {peak:.1f} MiB")
    return row


def _bench_length(block: EvoformerBlock, L: int, st: BenchSettings) -> list[dict]:
    """Every (mode, variant) row at length L, on inputs drawn from ``seed + L``; speedups are ratios
    of the medians within one mode."""
    gen = torch.Generator(device="cpu").manual_seed(st.seed + L)
    m = torch.randn(st.depth, L, st.dims["c_m"], generator=gen).to(device=st.device, dtype=st.dtype)
    z = torch.randn(L, L, st.dims["c_z"], generator=gen).to(device=st.device, dtype=st.dtype)
    variants = _variants(st.kinds, L, st.patterns, st.sparsities, st.tuned, st.sparse_backend, st.block_size)
    rows: list[dict] = []
    for mode in st.modes:
        fn = block_pass(block, m, z, mode)
        base = _share_baselines(block, fn, st, f"L={L} {mode}") if st.measure_share else {}
        mode_rows = [_variant_row(block, fn, v, L, mode, base, st) for v in variants]
        ref = {r["variant"]: r["median_ms"] for r in mode_rows}
        for r in mode_rows:
            r["speedup_vs_sdpa"] = ref.get("sdpa", float("nan")) / r["median_ms"]
            r["speedup_vs_naive"] = ref.get("naive", float("nan")) / r["median_ms"]
        rows.extend(mode_rows)
    return rows


def run_evoformer_bench(
    lengths: Optional[Iterable[int]] = None,
    depth: Optional[int] = None,
    *,
    dims: Optional[dict] = None,
    kinds: Sequence[str] = ("naive", "sdpa", "sparse"),
    patterns: Optional[Sequence[PatternConfig]] = None,
    sparsities: Sequence[float] = (0.5, 0.75, 0.9),
    tuned: Any = None,
    sparse_backend: str = "auto",
    block_size: Optional[int] = None,
    modes: Sequence[str] = ("fwd", "fwd+bwd"),
    warmup: int = 2,
    repeats: int = 5,
    dtype: Optional[torch.dtype] = None,
    device: Optional[str | torch.device] = None,
    measure_share: bool = True,
    measure_memory: bool = True,
    find_max_len: bool = False,
    max_len_limit: int = 16384,
    csv_path: Any = None,
    seed: int = 0,
    verbose: bool = False,
) -> list[dict]:
    """Benchmark one EvoFormer block; returns one dict per (L, mode, variant) (keys: ``CSV_FIELDS``).

    Defaults: CUDA if available (bf16, depth 128, L = 256, 512, 1024, 2048), else CPU (float32,
    depth 16, L = 64, 128, 256); AlphaFold2 dims (``dims`` overrides ``EvoformerBlock`` kwargs).
    ``tuned``: a TunedPatterns or a path for ``kernels.load_tuned``. ``csv_path``: None
    writes ``benchmarks/results/evoformer-<device>.csv``, False writes nothing.
    """
    st = _settings(lengths, depth, device, dtype, dims, tuned, modes, kinds=kinds, patterns=patterns,
                   sparsities=sparsities, sparse_backend=sparse_backend, block_size=block_size, warmup=warmup,
                   repeats=repeats, measure_share=measure_share, measure_memory=measure_memory,
                   find_max_len=find_max_len, max_len_limit=max_len_limit, seed=seed, verbose=verbose)
    torch.manual_seed(seed)
    block = EvoformerBlock(**st.dims).to(device=st.device, dtype=st.dtype)
    path = None
    if csv_path is not False:
        path = Path(csv_path) if csv_path else Path("benchmarks") / "results" / f"evoformer-{st.tag}.csv"
    rows: list[dict] = []
    try:
        for L in st.lengths:
            rows.extend(_bench_length(block, L, st))
            release_memory(st.device)
            if path is not None:  # rewritten after every length, so partial results survive
                _write_csv(path, rows)
    finally:
        block.set_attention(None)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the rows."""
    head = ("| L | pass | variant | pattern | sparsity | ms | peak MiB | vs SDPA | attn share (row+tri / +col / core) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ms = f"{r['median_ms']:.1f}" if r["status"] == "ok" else r["status"]
        lines.append(
            f"| {r['L']} | {r['mode']} | {r['variant']} | {r['pattern'] or '-'} | {r['sparsity']:.2f} | {ms} | "
            f"{r['peak_mib']:.0f} | {r['speedup_vs_sdpa']:.2f}x | "
            f"{r['attn3_share']:.0%} / {r['attn4_share']:.0%} / {r['core_share']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m autotune.evoformer.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default: GPU 256..2048, CPU 64 128 256)")
    p.add_argument("--depth", type=int, help="MSA depth N_seq (default: GPU 128, CPU 16)")
    p.add_argument("--dims", choices=("af2", "small"), default="af2", help="AlphaFold2 dims or a small model")
    p.add_argument("--kinds", nargs="+", default=["naive", "sdpa", "sparse"], choices=["naive", "sdpa", "sparse"])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.9], help="target sparsities")
    p.add_argument("--pattern", type=parse_pattern, action="append", help="block_size,window,num_global,stride (repeatable)")
    p.add_argument("--tuned", help="tuned pattern file (kernels.load_tuned)")
    p.add_argument("--backend", default="auto", help="kernels.sparse_attention backend for the sparse variants")
    p.add_argument("--block-size", type=int, help="block size of the target-sparsity patterns (default by L)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: GPU bfloat16, CPU float32")
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-share", action="store_true", help="skip the attention-share timings")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--max-len", action="store_true", help="GPU: doubling search for the largest L that fits")
    p.add_argument("--out", help="CSV path (default benchmarks/results/evoformer-<device>.csv)")
    a = p.parse_args(argv)
    rows = run_evoformer_bench(
        a.lengths, a.depth, dims=SMALL_DIMS if a.dims == "small" else None, kinds=a.kinds, patterns=a.pattern,
        sparsities=a.sparsity, tuned=a.tuned, sparse_backend=a.backend, block_size=a.block_size, modes=a.modes,
        warmup=a.warmup, repeats=a.repeats, dtype=getattr(torch, a.dtype) if a.dtype else None, device=a.device,
        measure_share=not a.no_share, measure_memory=not a.no_memory, find_max_len=a.max_len, csv_path=a.out,
        verbose=True,
    )
    r0 = rows[0] if rows else {}
    print(f"EvoFormer block, {r0.get('device')} {r0.get('dtype')}, {r0.get('threads')} threads, MSA depth {r0.get('depth')}")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    from patterns.errors import exit_on_input_error

    with exit_on_input_error("python -m autotune.evoformer.bench"):  # bad input: one line, exit status 2
        main()

"""Benchmark of the attention backends on the two AlphaFold2 EvoFormer workloads: ``python -m kernels.bench``.

Workloads (head dim 32, pair bias shared over the batch; shapes and batch rule from the one
registry, `kernels.workloads.BENCH_WORKLOADS`):

* ``row``: MSA row attention with pair bias: batch = 32768 // L MSA rows (GPU), 8 heads, bias [1, 8, L, L];
* ``tri``: triangle attention (starting node): batch = L rows, 4 heads, bias [1, 4, L, L].

Backends, timed in one process on the same inputs and layout:

* ``sdpa``   dense ``scaled_dot_product_attention`` with the contiguous bias (the baseline: computes
             all L x L pairs whatever the sparsity);
* ``flex``   FlexAttention with a BlockMask from the layout (CUDA: fwd and fwd+bwd; CPU: fwd only);
* ``triton`` (CUDA) / ``cpu`` (CPU): this project's block-sparse kernel;
* ``naive``  the materialised reference (``kernels.reference``), only where its estimated memory fits.

Layout families (``--families``, default ``static``):

* ``static``: the sparsity levels come from ``patterns.sparsity.pattern_for_sparsity`` (block
  size 64), one layout per case, built before timing;
* ``guided``: ``GuidedConfig(64, keep=1 - target, pool=...)`` (``--pools``, default ``max``), the
  key blocks chosen per head from the case's pair bias (`patterns.guided`, built on the bias's
  device). Every timed call of a sparse backend builds the layout from the bias first, as a model
  does on each forward, so the construction is counted in its time; the build alone is timed too
  (``build_ms``, median of a loop of builds, so with warm caches) and ``build_share`` =
  build_ms / ms is its share of the timed call.

The actual layout sparsity is printed and stored (for guided, that of the layout chosen from the
benchmark's bias, mean over heads). Correctness gate: before a backend is timed its output on the
same layout is compared with the reference (on the benchmark inputs, or on their first batch
element when the reference would be too big); the error is max |out - ref| / max |ref| against
the dtype's forward tolerance (``kernels.measure.TOLERANCES``); a mismatch marks the row FAIL and
skips timing.

Timing and memory come from the one measurement layer, ``kernels.measure``: ``measure_time``
(medians of ``--reps`` calls after ``--warmup``; CUDA events per call on CUDA, ``time.perf_counter``
on a CPU; the ``timer`` column names which) and ``peak_memory`` ("MiB" column: peak above what was
allocated before one cold call, on a new layout object so that per-layout workspaces count; CUDA
allocator statistics, or the CPU resident-set high-water mark; the ``memory_method`` column names
which). Both count everything the call allocates (outputs, intermediates, autograd buffers,
gradients for fwd+bwd).

Cases run in priority order: the cases the speed targets name (row L=4096, tri L=2048, then L=512)
first, so that ``--time-budget`` or a timeout only ever cuts the others. The CSV is rewritten,
complete, after every case (a run stopped part-way keeps every finished case).

The CSV (``results/bench/<device>.csv`` under the current folder by default, `default_out`: a run
never overwrites the committed results of ``benchmarks/results/`` unless ``--out`` names them;
device = ``torch.cuda.get_device_name()`` or ``cpu-<N>cores``) holds one row per (workload, L, batch, sparsity, family, pool, pass, backend)
with the device, dtype, torch/triton versions, times, memory, the timer and memory methods and
the speedups over sdpa and flex (ratios of the ms columns of the same case).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from patterns import BlockLayout, GuidedConfig, PatternConfig, build_layout
from patterns.guided import GUIDED_POOLS, PATTERN_FAMILIES
from patterns.output import check_output_path, write_output
from patterns.sparsity import pattern_for_sparsity

from . import backends as registry
from .baselines import NAIVE, SDPA
from .config import KernelConfig
from .plans import clear_plan_caches
from .dense import dense_attention
from .measure import measure_time, peak_memory, relative_error, release_memory, timer_method, tolerance
from .reference import reference_attention
from .workloads import BENCH_WORKLOADS, HEAD_DIM

BLOCK_SIZE = 64
WORKLOADS = BENCH_WORKLOADS  # name -> shape (heads, head dim, batch rule)
GPU_LENGTHS = {"row": (512, 1024, 2048, 4096), "tri": (512, 1024, 2048)}
CPU_LENGTHS = {"row": (1024, 2048, 4096), "tri": (256,)}
SPARSITIES = (0, 50, 75, 90)
DTYPES = ("bfloat16", "float16", "float32", "float64")
BACKENDS = (SDPA, "flex", "triton", "cpu", NAIVE)  # in the order they run
RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"

CSV_FIELDS = [
    "device", "dtype", "torch", "triton", "threads", "workload", "L", "batch", "heads", "head_dim",
    "block_size", "window", "num_global", "stride", "sparsity_target", "sparsity_actual", "pass",
    "backend", "status", "ms", "mib", "speedup_vs_sdpa", "speedup_vs_flex", "kernel_config",
    "family", "pool", "build_ms", "build_share", "timer", "memory_method",
]

# (workload, L) measured first: the speed targets are stated at row L=4096, tri L=2048 and L=512.
PRIORITY: tuple[tuple[str, int], ...] = (("row", 4096), ("tri", 2048), ("row", 512), ("tri", 512))

# Launch configs the benchmark tries for the Triton kernel (each one gated for correctness first);
# the fastest forward config is then used for every pass of that case and written to the CSV.
# All of them divide the benchmark's 64-wide layout blocks and are offered by candidate_configs
# (fit an sm_90 block's shared memory, no register spills in the offline compile report).
TRITON_SWEEP: tuple[KernelConfig, ...] = (
    KernelConfig(64, 64, 4, 2),
    KernelConfig(64, 64, 4, 3),
    KernelConfig(64, 64, 8, 3),
    KernelConfig(64, 32, 4, 3),
)


# ---- environment ---------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{os.cpu_count() or 1}cores"


def _file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip("-") or "device"


def _triton_version() -> str:
    try:
        import triton  # noqa: PLC0415  (only for the version string)

        return triton.__version__
    except Exception:
        return "n/a"


def default_batch(workload: str, L: int, device: torch.device) -> int:
    """The workload's batch at L on ``device`` (`kernels.workloads.AttentionShape.batch`)."""
    return WORKLOADS[workload].batch(L, device.type)


# ---- measurement ---------------------------------------------------------------------------------
def time_ms(fn: Callable[[], None], device: torch.device, reps: int, warmup: int) -> float:
    """Median time of ``fn`` in ms over ``reps`` calls after ``warmup`` (``kernels.measure.measure_time``:
    CUDA events on CUDA, perf_counter on a CPU)."""
    return measure_time(fn, device=device, warmup=warmup, repeats=reps).median_ms


def peak_mib(fn: Callable[[], None], device: torch.device) -> tuple[float, str]:
    """(peak memory of one call of ``fn`` above what was allocated before it in MiB, method)
    (``kernels.measure.peak_memory``: CUDA allocator statistics, or the CPU resident-set
    high-water mark)."""
    res = peak_memory(fn, device=device)
    return res.mib, res.method


# ---- backends ------------------------------------------------------------------------------------
def _run_backend(name: str, q, k, v, layout, bias, **kernel):
    """One call of ``name``: ``sdpa`` (the dense baseline, no layout), ``naive`` (the materialised
    reference), or a registered sparse backend through the registry (`kernels.backends`)."""
    if name == SDPA:
        return dense_attention(q, k, v, None, bias)
    if name == NAIVE:
        return reference_attention(q, k, v, layout, bias)
    return registry.get(name).run(q, k, v, layout, bias, scale=None, config=kernel.get("config"))


def check_backend(name: str, q, k, v, layout, bias, max_ref_elems: int, **kernel) -> tuple[bool, str]:
    """Compare ``name`` with the reference on the same layout: max |out - ref| / max |ref| against
    the dtype's forward tolerance (``kernels.measure.tolerance``). The batch is cut to one element
    when the materialised reference would exceed ``max_ref_elems`` logits."""
    B, H, L, _ = q.shape
    if B * H * L * L > max_ref_elems:
        q, k, v = q[:1], k[:1], v[:1]
        if bias is not None and bias.shape[0] > 1:
            bias = bias[:1]
    with torch.no_grad():
        try:
            out = _run_backend(name, q, k, v, layout, bias, **kernel)
        except Exception as exc:  # noqa: BLE001 - reported as FAIL
            return False, f"error: {type(exc).__name__}: {exc}"[:300]
        ref = reference_attention(q, k, v, None if name == SDPA else layout, bias)
        err = relative_error(out, ref)
    tol = tolerance(q.dtype).fwd
    return err <= tol, f"max rel err {err:.2e} (tol {tol:.0e})"


def _config_text(cfg: Optional[KernelConfig]) -> str:
    return "" if cfg is None else f"{cfg.block_m}x{cfg.block_n}/w{cfg.num_warps}/s{cfg.num_stages}"


def _pick_triton_config(q, k, v, layout, bias, args, device) -> tuple[bool, str, dict]:
    """Gate every launch config of ``args.triton_configs`` that fits the layout block, time the
    forward pass of those that pass (on the case's layout, for a guided case the one chosen from
    the bias, built once), and return the fastest (ok, gate message, {"config": cfg})."""
    best: Optional[tuple[float, KernelConfig, str]] = None
    failed = []
    for cfg in args.triton_configs:
        if not cfg.fits(layout.block_size):
            continue
        ok, msg = check_backend("triton", q, k, v, layout, bias, args.gate_max_elems, config=cfg)
        if not ok:
            failed.append(f"{_config_text(cfg)}: {msg}")
            continue

        def fn(cfg=cfg):
            with torch.no_grad():
                _run_backend("triton", q, k, v, layout, bias, config=cfg)

        ms = time_ms(fn, device, max(1, args.reps // 2), args.warmup)
        print(f"    triton  config {_config_text(cfg):16s} fwd {ms:10.3f} ms", flush=True)
        if best is None or ms < best[0]:
            best = (ms, cfg, msg)
    if best is None:
        return False, "; ".join(failed) or "no launch config fits the block size", {}
    note = f"{best[2]}; fastest of {len(args.triton_configs)} launch configs"
    if failed:
        note += f"; FAILED gate: {'; '.join(failed)}"
    return True, note, {"config": best[1]}


@dataclass
class Case:
    """One benchmark configuration: a workload at one length, batch and target sparsity (percent),
    with a static layout or a guided one (``pool``: the guided config's pooling)."""

    workload: str
    L: int
    batch: int
    target: int
    family: str = "static"
    pool: str = ""


@dataclass
class CaseLayout:
    """The layout side of a case. ``layout`` is the static layout, or the guided layout chosen from
    the benchmark's bias (the gate's and the recorded sparsity's); ``for_call(signal, cold)`` is the
    layout a timed call runs on: the fixed layout (``cold``: a new object of it, without cached
    plans or workspaces), or for a guided case a layout built from ``signal`` in that call
    (``cold``: with a workspace of its own)."""

    config: Union[PatternConfig, GuidedConfig]
    layout: BlockLayout
    guided: bool

    def for_call(self, signal: Optional[torch.Tensor], cold: bool = False):
        if self.guided:
            return build_layout(self.config, self.layout.seq_len, signal=signal, workspace={} if cold else None)
        return self.layout.fresh() if cold else self.layout


def _backends(device: torch.device, selected: Optional[list[str]]) -> list[str]:
    if selected is not None:  # explicit choice (triton on a CPU runs under TRITON_INTERPRET=1)
        return [n for n in BACKENDS if n in selected]
    return [SDPA, "flex", registry.auto_backend(device), NAIVE]


def case_layout(case: Case, bias: torch.Tensor) -> CaseLayout:
    """The static pattern closest to the case's target sparsity, or the guided config keeping
    ``1 - target`` of the key blocks, built from ``bias`` (on its device)."""
    if case.family == "guided":
        cfg = GuidedConfig(BLOCK_SIZE, keep=1.0 - case.target / 100.0, pool=case.pool)
        with torch.no_grad():
            return CaseLayout(cfg, build_layout(cfg, case.L, signal=bias), True)
    cfg = pattern_for_sparsity(case.L, case.target / 100.0, block_size=BLOCK_SIZE)
    return CaseLayout(cfg, build_layout(cfg, case.L), False)


def _case_inputs(case: Case, heads: int, device, dtype):
    """q, k, v [batch, heads, L, 32] and the pair bias [1, heads, L, L], seeded by (L, target)."""
    gen = torch.Generator(device="cpu").manual_seed(1234 + case.L + case.target)
    q, k, v = (torch.randn(case.batch, heads, case.L, HEAD_DIM, generator=gen).to(device=device, dtype=dtype)
               for _ in range(3))
    bias = torch.randn(1, heads, case.L, case.L, generator=gen).to(device=device, dtype=dtype)
    return q, k, v, bias


def _pass_fn(name: str, p: str, inputs, lay: CaseLayout, cold: bool, kernel: dict) -> Callable[[], None]:
    """One call of backend ``name`` in pass ``p`` (``fwd`` under no_grad; ``fwdbwd``: forward, then
    backward into q, k, v and the bias); a guided case builds its layout from the bias inside it,
    except for ``sdpa``, the dense baseline, which reads no layout."""
    q, k, v, bias = inputs
    layout_of = (lambda signal: lay.layout) if name == SDPA else (lambda signal: lay.for_call(signal, cold))
    if p == "fwd":
        def fwd():
            with torch.no_grad():
                _run_backend(name, q, k, v, layout_of(bias), bias, **kernel)
        return fwd
    qg, kg, vg, bg = (t.detach().requires_grad_(True) for t in (q, k, v, bias))
    grad = torch.randn_like(q)

    def fwd_bwd():
        out = _run_backend(name, qg, kg, vg, layout_of(bg.detach()), bg, **kernel)
        torch.autograd.backward(out, grad, inputs=[qg, kg, vg, bg])
        qg.grad = kg.grad = vg.grad = bg.grad = None
    return fwd_bwd


def _build_ms(lay: CaseLayout, bias: torch.Tensor, args) -> Optional[float]:
    """Median time of building the guided layout from the bias alone (its compact index included);
    None for a static case."""
    if not lay.guided:
        return None

    def build():
        with torch.no_grad():
            lay.for_call(bias).kv_counts
    return time_ms(build, args.device, args.reps, args.warmup)


def _gate(name: str, inputs, lay: CaseLayout, args, device) -> tuple[bool, str, dict]:
    """The correctness gate of backend ``name`` (for triton with several launch configs: the
    sweep, which also picks the fastest config): (ok, message, kernel kwargs)."""
    q, k, v, bias = inputs
    if name == "triton" and len(args.triton_configs) > 1:
        return _pick_triton_config(q, k, v, lay.layout, bias, args, device)
    kernel = {"config": args.triton_configs[0]} if name == "triton" and args.triton_configs else {}
    ok, msg = check_backend(name, q, k, v, lay.layout, bias, args.gate_max_elems, **kernel)
    return ok, msg, kernel


def _measure_pass(name: str, p: str, inputs, lay: CaseLayout, kernel: dict, build_ms, args, device, msg) -> dict:
    """Time and peak memory of one (backend, pass): the CSV columns it fills."""
    try:
        ms = time_ms(_pass_fn(name, p, inputs, lay, False, kernel), device, args.reps, args.warmup)
        # memory of a cold call on a new layout object: workspaces a backend allocates once per
        # layout and keeps (the cpu backend's K^T tiles) are counted
        clear_plan_caches()  # a cold call: no backend plan kept from the timed calls
        mib, mem_method = peak_mib(_pass_fn(name, p, inputs, lay, True, kernel), device)
    except Exception as exc:  # noqa: BLE001 - one failing backend must not stop the run
        print(f"    {name:7s} {p:6s} error {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        return {"status": f"error: {type(exc).__name__}"}
    row = {"status": "ok", "ms": round(ms, 4), "mib": round(mib, 1), "memory_method": mem_method}
    build = ""
    if build_ms is not None and name != SDPA:  # sdpa ignores the layout: nothing is built
        row.update(build_ms=round(build_ms, 4), build_share=round(build_ms / ms, 4) if ms > 0 else "")
        build = f", build {build_ms:.3f} ms = {build_ms / ms:.1%}" if ms > 0 else ""
    print(f"    {name:7s} {p:6s} {ms:10.3f} ms {mib:9.1f} MiB  ({msg}{build})", flush=True)
    return row


def run_case(case: Case, args, device, dtype, backends, rows, t_start) -> None:
    """Gate, time and measure every backend and pass of one case; appends one row per (pass, backend)."""
    heads = WORKLOADS[case.workload].heads
    L, B = case.L, case.batch
    inputs = _case_inputs(case, heads, device, dtype)
    lay = case_layout(case, inputs[3])
    cfg = lay.config
    base = {
        "device": args.device_name, "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
        "triton": args.triton_version, "threads": torch.get_num_threads(), "workload": case.workload,
        "L": L, "batch": B, "heads": heads, "head_dim": HEAD_DIM, "block_size": BLOCK_SIZE,
        "window": cfg.window, "num_global": cfg.num_global, "stride": getattr(cfg, "stride", ""),
        "sparsity_target": case.target / 100.0, "sparsity_actual": round(lay.layout.sparsity, 4),
        "family": case.family, "pool": case.pool, "timer": timer_method(device),
    }
    what = (f"guided pool={case.pool} keep={cfg.keep:g}" if lay.guided else
            f"{cfg.window=}, {cfg.num_global=}, {cfg.stride=}")
    print(f"[{time.perf_counter() - t_start:7.1f}s] {case.workload} L={L} batch={B} target={case.target}% "
          f"actual={lay.layout.sparsity:.3f} ({what})", flush=True)
    build_ms = _build_ms(lay, inputs[3], args)
    for name in backends:
        if name == NAIVE and B * heads * L * L * 4 * 4 > args.naive_max_bytes:
            rows.extend({**base, "pass": p, "backend": name, "status": "skip (memory)"} for p in args.passes)
            continue
        ok, msg, kernel = _gate(name, inputs, lay, args, device)
        if not ok:
            print(f"    {name:7s} FAIL {msg}", flush=True)
            rows.extend({**base, "pass": p, "backend": name, "status": "FAIL"} for p in args.passes)
            continue
        for p in args.passes:
            if p == "fwdbwd" and name not in (SDPA, NAIVE) and not registry.get(name).supports_grad(device):
                continue  # a backend without gradients on this device (FlexAttention on CPU)
            if p == "fwdbwd" and name == "flex" and inputs[0].shape[0] * inputs[0].shape[1] * inputs[0].shape[2] ** 2 >= FLEX_BWD_MAX_SCORES:
                # FlexAttention's backward with a bias gradient over B*H*L*L >= 2^31 scores hit an
                # illegal memory access on an H200 (torch 2.11, triangle attention at L = 2048), which
                # poisons the CUDA context for every later case: recorded as not run
                rows.append({**base, "pass": p, "backend": name,
                             "status": "skipped: flex backward over >= 2^31 scores (illegal memory access seen)"})
                print(f"    {name:7s} {p:6s} skipped (B*H*L*L >= 2^31: FlexAttention's backward crashed there)", flush=True)
                continue
            row = {**base, "pass": p, "backend": name, "kernel_config": _config_text(kernel.get("config"))}
            row.update(_measure_pass(name, p, inputs, lay, kernel, build_ms, args, device, msg))
            rows.append(row)
        if device.type == "cuda":
            release_memory(device)


FLEX_BWD_MAX_SCORES = 2 ** 31


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_X = ms(X) / ms(row) within the same (workload, L, batch, sparsity, family, pool, pass)."""
    key = lambda r: (r["workload"], r["L"], r["batch"], r["sparsity_target"], r.get("family", "static"),  # noqa: E731
                     r.get("pool", ""), r["pass"])
    ms_of: dict = {}
    for r in rows:
        if r.get("status") == "ok":
            ms_of[(key(r), r["backend"])] = float(r["ms"])
    for r in rows:
        for other in (SDPA, "flex"):
            ref = ms_of.get((key(r), other))
            mine = float(r["ms"]) if r.get("status") == "ok" else None
            r[f"speedup_vs_{other}"] = round(ref / mine, 3) if ref and mine else ""


def print_table(rows: list[dict]) -> None:
    """The rows as a text table; guided rows add their family, pool and build share."""
    guided = any(r.get("family") == "guided" for r in rows)
    hdr = ("workload", "L", "batch", "sparsity", "pass", "backend", "ms", "MiB", "x sdpa", "x flex")
    if guided:
        hdr += ("family", "pool", "build")
    print("\n" + "  ".join(f"{h:>9s}" for h in hdr))
    for r in rows:
        ms = f"{float(r['ms']):.3f}" if r.get("status") == "ok" else r.get("status", "")
        mib = f"{float(r['mib']):.1f}" if r.get("status") == "ok" else ""
        vals = (r["workload"], r["L"], r["batch"], f"{r['sparsity_actual']:.3f}", r["pass"], r["backend"], ms, mib,
                r.get("speedup_vs_sdpa", ""), r.get("speedup_vs_flex", ""))
        if guided:
            share = r.get("build_share", "")
            vals += (r.get("family", ""), r.get("pool", ""), f"{share:.1%}" if isinstance(share, float) else "")
        print("  ".join(f"{str(x)[:13]:>9s}" for x in vals))


def _parse_configs(p: argparse.ArgumentParser, text: Optional[str], device: torch.device) -> list[KernelConfig]:
    """'64x64/w4/s2,128x64/w8/s3' -> KernelConfigs; 'sweep' -> TRITON_SWEEP; None -> the sweep on
    CUDA, [] (the kernel's default config) elsewhere."""
    if text is None:
        return list(TRITON_SWEEP) if device.type == "cuda" else []
    if text == "sweep":
        return list(TRITON_SWEEP)
    out = []
    for item in (t for t in text.split(",") if t):
        m = re.fullmatch(r"(\d+)x(\d+)/w(\d+)/s(\d+)", item.strip())
        if not m:
            p.error(f"--triton-configs: {item!r} is not BMxBN/wW/sS (e.g. 64x64/w4/s2)")
        try:
            out.append(KernelConfig(*(int(g) for g in m.groups())))
        except ValueError as exc:
            p.error(f"--triton-configs: {exc}")
    return out


def _int_list(p: argparse.ArgumentParser, opt: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        p.error(f"{opt}: {text!r} is not a comma list of integers")


def _choices(p: argparse.ArgumentParser, opt: str, text: str, allowed) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    for x in items:
        if x not in allowed:
            p.error(f"{opt}: unknown {x!r}; choose from {','.join(allowed)}")
    if not items:
        p.error(f"{opt}: empty")
    return items


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 | float64 (default: bf16 on CUDA, float32 on CPU)")
    p.add_argument("--workloads", default="row,tri")
    p.add_argument("--lengths", default=None, help="comma list (default: GPU 512..4096, tri up to 2048; CPU row 1024,2048,4096, tri 256)")
    p.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)), help="percent, comma list")
    p.add_argument("--families", default="static",
                   help="layout families, comma list of static,guided (guided: blocks chosen from the bias in every call)")
    p.add_argument("--pools", default="max", help=f"pooling of the guided layouts, comma list of {','.join(GUIDED_POOLS)}")
    p.add_argument("--passes", default="fwd,fwdbwd")
    p.add_argument("--batch", type=int, default=None, help="override the batch of every workload")
    p.add_argument("--backends", default=None, help="subset of sdpa,flex,triton,cpu,naive (default: all for the device)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="fewer lengths and repetitions")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; stop starting new configurations after it")
    p.add_argument("--out", default=None, help="CSV path (default results/bench/<device>.csv; the committed "
                   "results in benchmarks/results/ are written only when named here)")
    p.add_argument("--triton-configs", default=None,
                   help="Triton launch configs to try, 'BMxBN/wW/sS' comma list, or 'sweep' for the built-in "
                        "set (default: sweep on CUDA, the default config otherwise)")
    args = p.parse_args(argv)
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device: {args.device!r} is not a device (cpu, cuda, cuda:N)")
    if args.device.type not in ("cpu", "cuda") or (args.device.type == "cuda" and not torch.cuda.is_available()):
        p.error(f"--device: {args.device} is not available here")
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.type == "cuda" else "float32"
    if args.dtype not in DTYPES:
        p.error(f"--dtype: unknown {args.dtype!r}; choose from {','.join(DTYPES)}")
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch must be at least 1, got {args.batch}")
    args.workloads = [w for w in args.workloads.split(",") if w]
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; choose from {list(WORKLOADS)}")
    args.passes = [x for x in args.passes.split(",") if x]
    args.triton_configs = _parse_configs(p, args.triton_configs, args.device)
    for x in args.passes:
        if x not in ("fwd", "fwdbwd"):
            p.error(f"unknown pass {x!r}; choose from fwd, fwdbwd")
    args.lengths = None if args.lengths is None else _int_list(p, "--lengths", args.lengths)
    if args.lengths is not None and any(L < 1 for L in args.lengths):
        p.error(f"--lengths: every length must be a positive integer, got {args.lengths}")
    args.sparsities = _int_list(p, "--sparsities", args.sparsities)
    for x in args.sparsities:
        if not 0 <= x < 100:
            p.error(f"--sparsities: {x} is not a percentage in [0, 100)")
    args.families = _choices(p, "--families", args.families, PATTERN_FAMILIES)
    args.pools = _choices(p, "--pools", args.pools, GUIDED_POOLS)
    args.backends = None if args.backends is None else _choices(p, "--backends", args.backends, BACKENDS)
    cpu = args.device.type == "cpu"
    if args.reps is None:
        args.reps = (3 if args.quick else 7) if cpu else 20
    if args.warmup is None:
        args.warmup = 1 if cpu else 3
    for opt in ("reps", "warmup"):
        if getattr(args, opt) < (1 if opt == "reps" else 0):
            p.error(f"--{opt} must be at least {1 if opt == 'reps' else 0}")
    return args


def default_out(device: str) -> Path:
    """Where a run writes without ``--out``: ``results/bench/<device>.csv`` under the current
    folder (one's own outputs), never the committed ``benchmarks/results/`` (`RESULTS_DIR`)."""
    return Path("results") / "bench" / f"{_file_name(device)}.csv"


def main(argv: Optional[list[str]] = None) -> list[dict]:
    args = parse_args(argv)
    device = args.device
    dtype = getattr(torch, args.dtype)
    args.device_name = device_name(device)
    args.triton_version = _triton_version()
    # the reference used by the gate materialises B*H*L*L logits several times over
    args.gate_max_elems = (1 << 30) if device.type == "cuda" else (1 << 27)
    args.naive_max_bytes = (torch.cuda.mem_get_info(device)[0] // 3) if device.type == "cuda" else (4 << 30)
    backends = _backends(device, args.backends)
    cases = []
    for w in args.workloads:
        if args.lengths:
            lengths = list(args.lengths)
        else:
            lengths = list((GPU_LENGTHS if device.type == "cuda" else CPU_LENGTHS)[w])
            if args.quick:
                lengths = lengths[:2]
        for L in lengths:
            for s in args.sparsities:
                batch = args.batch or default_batch(w, L, device)
                for family in args.families:
                    for pool in (args.pools if family == "guided" else [""]):
                        cases.append(Case(w, L, batch, s, family, pool))
    # the cases the targets name come first, so that a time budget only ever skips the others
    cases.sort(key=lambda c: PRIORITY.index((c.workload, c.L)) if (c.workload, c.L) in PRIORITY else len(PRIORITY))
    print(f"device {args.device_name}, dtype {args.dtype}, torch {torch.__version__}, triton {args.triton_version}, "
          f"threads {torch.get_num_threads()}, backends {backends}, timer {timer_method(device)}, "
          f"{len(cases)} configurations", flush=True)
    rows: list[dict] = []
    t0 = time.perf_counter()
    out = Path(args.out) if args.out else default_out(args.device_name)
    check_output_path(out)  # a folder, a device, /proc, ...: refused before any measurement
    # the CSV is rewritten, complete, after every case (atomically, patterns.output): a run stopped
    # by a timeout keeps the rows of every case it finished (the target cases come first)
    for case in cases:
        if args.time_budget is not None and time.perf_counter() - t0 > args.time_budget:
            print(f"time budget of {args.time_budget:.0f}s reached: remaining configurations skipped", flush=True)
            break
        case_rows: list[dict] = []
        run_case(case, args, device, dtype, backends, case_rows, t0)
        add_speedups(case_rows)  # ratios within one case: every backend of it is in case_rows
        rows.extend(case_rows)
        _write_csv(out, rows)
    print_table(rows)
    if not rows:
        _write_csv(out, rows)
    print(f"\nwrote {out} ({len(rows)} rows) in {time.perf_counter() - t0:.1f}s", flush=True)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    f = io.StringIO(newline="")
    wr = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    wr.writeheader()
    for r in rows:
        wr.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    write_output(path, f.getvalue())  # only a regular file is replaced, atomically


if __name__ == "__main__":
    from patterns.errors import exit_on_input_error

    with exit_on_input_error("python -m kernels.bench"):  # bad input: one line, exit status 2
        main(sys.argv[1:])

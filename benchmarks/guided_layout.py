"""Cost of building a guided layout against the sparse attention it feeds.

    python benchmarks/guided_layout.py [--device cpu|cuda] [--rounds 7] [--threads N] [--workloads a,b] [--spread row|layout]
        [--pools max,logsumexp] [--clock wall|cpu] [--out benchmarks/results/guided_layout_cpu.csv]

For each workload (MSA row attention: batch = MSA rows, the pair bias [1, H, L, L] shared by all
rows; triangle attention: batch = L) and each pooling, one round times, interleaved in this order:

* ``build``: `build_layout(GuidedConfig, L, signal=bias)` (per-head layout from the bias) plus its
  compact index (``kv_counts``), i.e. everything a model does before calling the kernel;
* ``build_nocheck``: the same without the NaN check (``check_nan=False``; on CUDA the default build
  makes no host synchronisation either: NaN is a device flag on the layout);
* ``attn_same``: the sparse attention (backend ``cpu`` on CPU, ``triton`` on CUDA), forward,
  no grad, on one layout reused across calls (a backend's per-layout preparation amortised);
* ``attn_fresh``: build a new guided layout and run the attention on it (what a model with
  guided attention does on every forward);
* ``attn_fresh_private``: the same with a layout that does not share the guided configs'
  workspace (``workspace=None``): what a backend's per-layout preparation costs without it;
* ``sdpa``: dense ``scaled_dot_product_attention`` with the bias (the search's baseline);
* ``build_torch`` (CUDA only): the build by the torch path (pooling ops, then the selection and
  index replayed from a captured CUDA graph), the baseline of ``build``, which on CUDA is the fused
  one-launch build of ``kernels.guided_build``;
* ``fused_launch`` (CUDA only): the fused kernel's launch alone (no `BlockLayout` around it);
* ``build_prev`` (``logsumexp`` only): the same build with the previous ``logsumexp`` pooling
  (`_lse_two_pass`: tile max, then ``exp(s - max)`` on a reused buffer and a sum per tile), kept
  here as the baseline of the current one (the fused ``log_softmax`` row pass) in the same rounds.

The order of the functions rotates from round to round (A B C, B C A, ...), so that a slow
phase of a shared machine does not always hit the same one.

Medians, 10th and 90th percentiles over ``rounds`` rounds; ``build_share`` = build median /
attn_same median (target <= 3% for MSA row attention, 64 rows, L = 512, 8 heads x 32, CPU;
<= 5% on CUDA with the fused build); ``build_torch_share`` / ``fused_launch_share`` the same for
those rows;
``fresh_overhead`` = attn_fresh median / attn_same median - 1; ``speedup_vs_sdpa`` = median over
rounds of sdpa / attn_fresh (what the search measures for a guided candidate: construction included),
with its 10th and 90th percentiles; ``build_prev_share`` = build_prev median / attn_same median.
``load_start``/``load_end``: the 1-minute load average before and after the workload (the machine
may be shared). CUDA timings use events after a synchronize.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import patterns.guided as _guided  # noqa: E402
from kernels import dense_attention, sparse_attention  # noqa: E402
from patterns import BlockLayout, GuidedConfig, build_layout  # noqa: E402
from patterns.guided import build_guided_layout  # noqa: E402

if torch.cuda.is_available():
    from kernels.guided_build import fused_guided_build  # noqa: E402

WORKLOADS = {
    # name: (batch, heads, L, head_dim)
    "msa_row_L512": (64, 8, 512, 32),
    "triangle_L256": (256, 4, 256, 32),
    "triangle_L512": (512, 4, 512, 32),  # not in the default list: ~1 s per call on one CPU core
    # the CPU main job's shapes (search_spaces/cpu.yaml: MSA row attention over 2048 tokens,
    # triangle attention with the batch capped at 2)
    "job_row_L256": (8, 8, 256, 32),
    "job_row_L512": (4, 8, 512, 32),
    "job_row_L1024": (2, 8, 1024, 32),
    "job_tri_L256": (2, 4, 256, 32),
    "job_tri_L512": (2, 4, 512, 32),
    "job_tri_L1024": (2, 4, 1024, 32),
    # GPU shapes: MSA row attention over 32768 tokens (as kernels.bench), triangle attention at L = 1024
    "gpu_row_L2048": (16, 8, 2048, 32),
    "gpu_tri_L1024": (1024, 4, 1024, 32),
}
DEFAULT_WORKLOADS = ("msa_row_L512", "triangle_L256")


def _timer(device: str, clock: str = "wall"):
    if clock == "cpu":  # CPU time of this thread: all of the work when torch runs on one thread
        def run(fn):
            t = time.thread_time()
            fn()
            return time.thread_time() - t
    elif device == "cuda":
        def run(fn):
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b) / 1e3
    else:
        def run(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
    return run


def _lse_two_pass(s3: torch.Tensor, bs: int) -> torch.Tensor:
    """The previous ``logsumexp`` tile pooling (the baseline): tile max m (rows, then columns), then
    ``m + log(sum(exp(s - m)))`` with the subtraction and the exp in place on a reused buffer of at
    most 2^19 values, query-block rows at a time. [G, L, L] -> [G, nb, nb]."""
    s = s3.detach()
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    G, L, _ = s.shape
    nb = -(-L // bs)
    Lp = nb * bs
    if Lp != L:
        s = torch.nn.functional.pad(s, (0, Lp - L, 0, Lp - L), value=float("-inf"))
    m = s.reshape(G, nb, bs, Lp).amax(2).reshape(G, nb, nb, bs).amax(-1)
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s5 = s.reshape(G * nb, bs, nb, bs)
    sh5 = shift.reshape(G * nb, 1, nb, 1)
    out = torch.empty(G * nb, nb, dtype=s.dtype, device=s.device)
    step = max(1, (1 << 19) // (bs * Lp))
    buf = torch.empty(min(step, G * nb), bs, nb, bs, dtype=s.dtype, device=s.device)
    for i in range(0, G * nb, step):
        j = min(G * nb, i + step)
        b = buf[: j - i]
        torch.sub(s5[i:j], sh5[i:j], out=b)
        b.exp_()
        torch.sum(b, dim=(1, 3), out=out[i:j])
    return out.log_().reshape(G, nb, nb).add_(shift)


@contextlib.contextmanager
def _torch_build():
    """`build_layout` by the torch path on CUDA too (the fused builder switched off)."""
    prev = _guided.FUSED_BUILD
    _guided.FUSED_BUILD = False
    try:
        yield
    finally:
        _guided.FUSED_BUILD = prev


@contextlib.contextmanager
def _previous_logsumexp():
    """`build_layout` with `_lse_two_pass` as its ``logsumexp`` pooling, for the baseline timing."""
    current = _guided.pool_signal

    def pool(s3, bs, pool):
        return _lse_two_pass(s3, bs) if pool == "logsumexp" else current(s3, bs, pool)

    _guided.pool_signal = pool
    try:
        yield
    finally:
        _guided.pool_signal = current


def _q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p * (len(xs) - 1))))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--keep", type=float, default=0.25, help="fraction of key blocks per row (0.25: ~75%% sparsity)")
    ap.add_argument("--spread", choices=["row", "layout"], default="row", help="GuidedConfig.spread")
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    ap.add_argument("--pools", default="max,mean,logsumexp")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="q, k, v and bias dtype")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time; cpu: this thread's CPU time (CPU device, --threads 1 only), which "
                         "a machine shared with other jobs inflates much less")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print("error: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if args.rounds < 3:
        print("error: --rounds must be >= 3", file=sys.stderr)
        return 2
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device", file=sys.stderr)
        return 2
    if args.clock == "cpu" and (device != "cpu" or torch.get_num_threads() != 1):
        print("error: --clock cpu needs --device cpu and --threads 1 (all the work on the timed thread)", file=sys.stderr)
        return 2
    backend = "triton" if device == "cuda" else "cpu"
    timer = _timer(device, args.clock)
    rows = []
    for wl in args.workloads.split(","):
        if wl not in WORKLOADS:
            print(f"error: unknown workload {wl!r}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
            return 2
        B, H, L, D = WORKLOADS[wl]
        g = torch.Generator(device=device).manual_seed(0)
        dtype = getattr(torch, args.dtype)
        q, k, v = (torch.randn(B, H, L, D, device=device, generator=g).to(dtype) for _ in range(3))
        bias = torch.randn(1, H, L, L, device=device, generator=g).to(dtype)
        for pool in args.pools.split(","):
            cfg = GuidedConfig(args.block_size, keep=args.keep, pool=pool, spread=args.spread)
            lay = build_layout(cfg, L, signal=bias)

            def build():
                build_layout(cfg, L, signal=bias).kv_counts

            def build_nocheck():  # no NaN check: the build with no host synchronisation
                build_guided_layout(cfg, L, bias, check_nan=False).kv_counts

            def attn_same():
                sparse_attention(q, k, v, lay, bias, backend=backend)

            def attn_fresh():
                sparse_attention(q, k, v, build_layout(cfg, L, signal=bias), bias, backend=backend)

            def attn_fresh_private():
                fl = build_layout(cfg, L, signal=bias)
                sparse_attention(q, k, v, BlockLayout(fl.block_mask, fl.block_size, L, cfg), bias, backend=backend)

            def sdpa():
                dense_attention(q, k, v, None, bias)

            def build_prev():
                with _previous_logsumexp():
                    build_layout(cfg, L, signal=bias).kv_counts

            def build_torch():
                with _torch_build():
                    build_layout(cfg, L, signal=bias).kv_counts

            s3, forced = bias[0], _guided._forced(cfg, L, bias.device)

            def fused_launch():
                fused_guided_build(cfg, L, s3, forced)

            fns = {"build": build, "build_nocheck": build_nocheck, "attn_same": attn_same, "attn_fresh": attn_fresh, "attn_fresh_private": attn_fresh_private,
                   "sdpa": sdpa}
            if device == "cuda":
                fns["build_torch"], fns["fused_launch"] = build_torch, fused_launch
                with _torch_build():
                    torch_mask = build_layout(cfg, L, signal=bias).block_mask
                if not torch.equal(torch_mask, lay.block_mask):
                    print(f"warning: {wl}: the fused build selects other blocks than the torch build", file=sys.stderr)
            if pool == "logsumexp":
                fns["build_prev"] = build_prev
                with _previous_logsumexp():  # the baseline selects the same blocks
                    prev_mask = build_layout(cfg, L, signal=bias).block_mask
                if not torch.equal(prev_mask, lay.block_mask):
                    print(f"warning: {wl}: the previous logsumexp pooling selects other blocks", file=sys.stderr)
            load_start = os.getloadavg()[0]
            times: dict[str, list[float]] = {n: [] for n in fns}
            names = list(fns)
            with torch.no_grad():
                for fn in fns.values():  # warm-up (compiles, first-touch pages)
                    fn()
                for r in range(args.rounds):
                    for name in names[r % len(names):] + names[: r % len(names)]:
                        times[name].append(timer(fns[name]))
            med = {n: statistics.median(t) for n, t in times.items()}
            load_end = os.getloadavg()[0]
            row = {
                "workload": wl, "device": device, "dtype": args.dtype, "backend": backend, "B": B, "H": H, "L": L, "D": D,
                "block_size": args.block_size, "keep": args.keep, "spread": args.spread, "pool": pool,
                "sparsity": round(lay.sparsity, 4), "rounds": args.rounds, "clock": args.clock,
            }
            for n in dict.fromkeys((*fns, "build_torch", "fused_launch", "build_prev")):
                t = times.get(n)
                row[f"{n}_ms_median"] = round(med[n] * 1e3, 3) if t else None
                row[f"{n}_ms_p10"] = round(_q(t, 0.1) * 1e3, 3) if t else None
                row[f"{n}_ms_p90"] = round(_q(t, 0.9) * 1e3, 3) if t else None
            row["build_share"] = round(med["build"] / med["attn_same"], 4)
            row["build_nocheck_share"] = round(med["build_nocheck"] / med["attn_same"], 4)
            for n in ("build_torch", "fused_launch"):
                row[f"{n}_share"] = round(med[n] / med["attn_same"], 4) if n in med else None
            row["build_prev_share"] = round(med["build_prev"] / med["attn_same"], 4) if "build_prev" in med else None
            row["fresh_overhead"] = round(med["attn_fresh"] / med["attn_same"] - 1.0, 4)
            row["fresh_private_overhead"] = round(med["attn_fresh_private"] / med["attn_same"] - 1.0, 4)
            ratios = [a / b for a, b in zip(times["sdpa"], times["attn_fresh"])]
            row["speedup_vs_sdpa"] = round(statistics.median(ratios), 3)
            row["speedup_vs_sdpa_p10"] = round(_q(ratios, 0.1), 3)
            row["speedup_vs_sdpa_p90"] = round(_q(ratios, 0.9), 3)
            row["threads"] = torch.get_num_threads()
            row["load_start"], row["load_end"] = round(load_start, 2), round(load_end, 2)
            rows.append(row)
            print(
                f"{wl:14s} {pool:9s} sparsity {row['sparsity']:.3f}: build {row['build_ms_median']:.3f} ms "
                f"[{row['build_ms_p10']:.3f}, {row['build_ms_p90']:.3f}], attention {row['attn_same_ms_median']:.2f} ms "
                f"[{row['attn_same_ms_p10']:.2f}, {row['attn_same_ms_p90']:.2f}] -> build share {row['build_share']:.1%} "
                f"(without the NaN check {row['build_nocheck_ms_median']:.3f} ms, {row['build_nocheck_share']:.1%}); "
                f"fresh layout per call +{row['fresh_overhead']:.1%} (without the shared workspace "
                f"+{row['fresh_private_overhead']:.1%}); vs SDPA {row['sdpa_ms_median']:.2f} ms: "
                f"{row['speedup_vs_sdpa']:.2f}x [{row['speedup_vs_sdpa_p10']:.2f}, {row['speedup_vs_sdpa_p90']:.2f}]"
                + (f"; torch build {row['build_torch_ms_median']:.3f} ms = {row['build_torch_share']:.1%}, fused "
                   f"launch alone {row['fused_launch_ms_median']:.3f} ms = {row['fused_launch_share']:.1%}"
                   if row["build_torch_share"] is not None else "")
                + (f"; previous logsumexp build {row['build_prev_ms_median']:.3f} ms [{row['build_prev_ms_p10']:.3f}, "
                   f"{row['build_prev_ms_p90']:.3f}] = {row['build_prev_share']:.1%}" if row["build_prev_share"] is not None else "")
                + f"; load {load_start:.1f} -> {load_end:.1f}",
                flush=True,
            )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

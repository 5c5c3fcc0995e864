"""Where an EvoFormer block's time goes, per operator, for dense SDPA, a static sparse pattern and a
guided one (torch.profiler), written to a CSV.

    python benchmarks/profile_evoformer.py [--device cuda] [--lengths 256 512] [--depth 128]
        [--modes fwd fwd+bwd] [--passes 10] [--out benchmarks/results/profile-evoformer-<device>.csv]

For each (L, pass, variant) it runs ``passes`` passes of the block (`autotune.evoformer.timed_pass`)
under ``torch.profiler`` after warm-up, and writes one CSV row per operator: its count per pass, its
self host time and (CUDA) self device time per pass, and its share of the variant's total. The
per-pass wall time without the profiler is printed beside it. Variants: dense SDPA, a static
pattern at ``--sparsity`` (`autotune.evoformer.bench.sparsity_pattern`) and a guided pattern
keeping ``1 - sparsity`` of the key blocks, both through ``kernels.sparse_attention`` (backend
auto). The rows answer where a sparse block's fixed cost per call lies (host operators, copies,
layout builds, launches). A diagnostic: the profiler adds host overhead; the benchmark times.
CPU defaults: float32, depth 8, L 64, the small model dims.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.evoformer.bench import SMALL_DIMS, default_block_size, device_tag, sparsity_pattern  # noqa: E402
from autotune.evoformer.timed_pass import block_pass  # noqa: E402
from kernels.baselines import SDPA  # noqa: E402
from models.evoformer import EvoformerAttention, EvoformerBlock  # noqa: E402
from patterns import GuidedConfig  # noqa: E402

FIELDS = ["device", "dtype", "L", "depth", "mode", "variant", "wall_ms_per_pass", "operator", "count_per_pass",
          "host_self_ms", "device_self_ms", "share"]


def variants(L: int, sparsity: float, backend: str) -> dict[str, EvoformerAttention]:
    bs = default_block_size(L)
    return {
        SDPA: EvoformerAttention.uniform(SDPA),
        f"static@{sparsity:g}": EvoformerAttention.sparse(sparsity_pattern(sparsity, L, bs), backend),
        f"guided@{sparsity:g}": EvoformerAttention.sparse(GuidedConfig(bs, keep=round(1 - sparsity, 4), pool="max"), backend),
    }


def profile_pass(fn, passes: int, dev: torch.device) -> tuple[float, list]:
    """(wall ms per pass without the profiler, the profiler's per-operator averages of ``passes`` passes)."""
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(passes):
        fn()
    sync()
    wall = (time.perf_counter() - t) / passes * 1e3
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(passes):
            fn()
        sync()
    return wall, list(prof.key_averages())


def operator_rows(events: list, passes: int, on_gpu: bool, top: int) -> list[dict]:
    """The ``top`` operators by self time (device time on CUDA, host time otherwise), per pass."""
    key = (lambda e: e.self_device_time_total) if on_gpu else (lambda e: e.self_cpu_time_total)
    total = sum(key(e) for e in events) or 1.0
    rows = []
    for e in sorted(events, key=lambda e: -key(e))[:top]:
        rows.append({"operator": e.key[:120], "count_per_pass": e.count / passes,
                     "host_self_ms": e.self_cpu_time_total / passes / 1e3,
                     "device_self_ms": (e.self_device_time_total / passes / 1e3) if on_gpu else float("nan"),
                     "share": key(e) / total})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lengths", type=int, nargs="+")
    ap.add_argument("--depth", type=int)
    ap.add_argument("--modes", nargs="+", default=["fwd"], choices=["fwd", "fwd+bwd"])
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", help="CSV path (default benchmarks/results/profile-evoformer-<device>.csv)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    lengths = args.lengths or ([256, 512] if on_gpu else [64])
    depth = args.depth or (128 if on_gpu else 8)
    dims = {} if on_gpu else SMALL_DIMS
    torch.manual_seed(0)
    block = EvoformerBlock(**dims).to(device=dev, dtype=dtype)
    c_m, c_z = block.msa_att_row.layer_norm_m.normalized_shape[0], block.msa_att_row.layer_norm_z.normalized_shape[0]
    out = Path(args.out or f"benchmarks/results/profile-evoformer-{device_tag(dev)}.csv")
    rows = []
    for L in lengths:
        m = torch.randn(depth, L, c_m, device=dev, dtype=dtype)
        z = torch.randn(L, L, c_z, device=dev, dtype=dtype)
        for mode in args.modes:
            for name, att in variants(L, args.sparsity, args.backend).items():
                block.set_attention(att)
                wall, events = profile_pass(block_pass(block, m, z, mode), args.passes, dev)
                ops = operator_rows(events, args.passes, on_gpu, args.top)
                print(f"== L={L} {mode} {name}: {wall:.2f} ms a pass (unprofiled); top: "
                      + ", ".join(f"{r['operator'][:40]} {r['share']:.0%}" for r in ops[:4]), flush=True)
                base = {"device": device_tag(dev), "dtype": str(dtype).replace("torch.", ""), "L": L, "depth": depth,
                        "mode": mode, "variant": name, "wall_ms_per_pass": wall}
                rows.extend({**base, **r} for r in ops)
    block.set_attention(None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"wrote {out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where an EvoFormer block's forward spends its time, per attention variant (torch.profiler).

    python benchmarks/profile_evoformer.py [--device cuda] [--L 256] [--depth 128] [--passes 10]

For dense SDPA, a static sparse pattern at 75% sparsity and a guided pattern keeping 25% of the
key blocks (both through ``kernels.sparse_attention``, backend auto), it runs ``passes`` forward
passes of an AlphaFold2-sized block under the profiler and prints, per variant: wall time per pass,
device-kernel time per pass (CUDA) and the operators with the most self time on host and device.
A diagnostic, not a benchmark: the profiler adds host overhead; `autotune.evoformer.bench` times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.evoformer import EvoformerAttention, EvoformerBlock  # noqa: E402
from autotune.evoformer.bench import sparsity_pattern  # noqa: E402
from patterns import GuidedConfig  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--L", type=int, default=256)
    ap.add_argument("--depth", type=int, default=128)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    block = EvoformerBlock().to(device=dev, dtype=dtype)
    m = torch.randn(args.depth, args.L, block.c_m if hasattr(block, "c_m") else 256, device=dev).to(dtype)
    z = torch.randn(args.L, args.L, block.c_z if hasattr(block, "c_z") else 128, device=dev).to(dtype)
    bs = 32 if args.L <= 256 else 64
    variants = {
        "sdpa": EvoformerAttention.uniform("sdpa"),
        "static@0.75": EvoformerAttention.sparse(sparsity_pattern(0.75, args.L, bs)),
        "guided keep 0.25": EvoformerAttention.sparse(GuidedConfig(bs, keep=0.25, pool="max")),
    }
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for name, att in variants.items():
        block.set_attention(att)
        with torch.no_grad():
            for _ in range(3):
                block(m, z)
            sync()
            t = time.perf_counter()
            for _ in range(args.passes):
                block(m, z)
            sync()
            wall = (time.perf_counter() - t) / args.passes * 1e3
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(args.passes):
                    block(m, z)
                sync()
        ka = prof.key_averages()
        dev_us = sum(e.self_device_time_total for e in ka) / args.passes if dev.type == "cuda" else 0.0
        host_us = sum(e.self_cpu_time_total for e in ka) / args.passes
        print(f"== {name}: {wall:.2f} ms a pass (unprofiled), device kernels {dev_us / 1e3:.2f} ms, host op time {host_us / 1e3:.2f} ms")
        if dev.type == "cuda":
            for e in sorted(ka, key=lambda e: -e.self_device_time_total)[: args.top]:
                print(f"   device {e.self_device_time_total / args.passes / 1e3:8.3f} ms  x{e.count // args.passes:<4d} {e.key[:90]}")
        for e in sorted(ka, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            print(f"   host   {e.self_cpu_time_total / args.passes / 1e3:8.3f} ms  x{e.count // args.passes:<4d} {e.key[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

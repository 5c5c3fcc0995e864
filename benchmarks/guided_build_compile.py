"""Offline compile of the fused guided build kernel (`kernels.guided_build`) for a Hopper GPU.

    python benchmarks/guided_build_compile.py [--lengths 512,2048] [--out benchmarks/results/guided_build_sm90.csv]

For each pool, budget (keep / mass), spread (row / layout, where the layout fits the kernel's
limit) and block size, the kernel is compiled for ``GPUTarget("cuda", 90, 32)`` with a float32
per-head signal [8, L, L] (contiguous rows), and ptxas (``--gpu-name=sm_90a``) reports its
registers and spills. No GPU is needed. One row per kernel specialisation.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels.compile_report import _ptxas  # noqa: E402
from kernels.guided_build import _guided_build_kernel, launch_params  # noqa: E402
from patterns import SUPPORTED_BLOCK_SIZES, GuidedConfig  # noqa: E402

_PTR = {"S": "*fp32", "Scores": "*fp32", "Forced": "*i8", "Mask": "*i8", "NanRows": "*i8",
        "KVC": "*i32", "KVI": "*i32", "QC": "*i32", "QI": "*i32", "Counter": "*i32"}


def compile_one(cfg: GuidedConfig, L: int, G: int = 8) -> dict:
    """Compile the kernel of ``cfg`` at length ``L`` for sm_90; registers, spills, shared memory."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    p = launch_params(cfg, L)
    ints = dict(stride_sg=L * L, stride_sm=L, stride_sn=1, L=L, NB=p["nb"], n_keep=p["n_keep"])
    sig, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(_guided_build_kernel.arg_names):
        if name in p:  # a constexpr
            sig[name], constexprs[name] = "constexpr", p[name]
        elif name in _PTR:
            sig[name] = _PTR[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name == "mass":
            sig[name] = "fp32"
        elif ints[name] == 1:  # Triton specialises an integer argument equal to 1
            sig[name], constexprs[name] = "constexpr", 1
        else:
            sig[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    t0 = time.perf_counter()
    kern = triton.compile(ASTSource(_guided_build_kernel, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=p["num_warps"], num_stages=1))
    row = dict(pool=cfg.pool, budget="keep" if cfg.keep is not None else "mass", spread=cfg.spread,
               block_size=cfg.block_size, L=L, num_warps=p["num_warps"], shared_bytes=int(kern.metadata.shared),
               compile_s=round(time.perf_counter() - t0, 2))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        Path(path).write_text(kern.asm["ptx"])
        out = subprocess.run([_ptxas(), "-v", "--gpu-name=sm_90a", path, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True, timeout=300)
    log = out.stderr + out.stdout
    m = re.search(r"Used (\d+) registers", log)
    row["registers"] = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    row["spill_stores"], row["spill_loads"] = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    row["ptxas_rc"] = out.returncode
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="512")
    ap.add_argument("--block-sizes", default=",".join(map(str, SUPPORTED_BLOCK_SIZES)))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
        sizes = [int(x) for x in args.block_sizes.split(",")]
    except ValueError:
        print("error: --lengths and --block-sizes take comma-separated integers", file=sys.stderr)
        return 2
    rows = []
    for L in lengths:
        for bs in sizes:
            for pool in ("max", "mean", "logsumexp"):
                for budget in ({"keep": 0.25}, {"mass": 0.8}):
                    for spread in ("row", "layout"):
                        cfg = GuidedConfig(bs, pool=pool, spread=spread, **budget)
                        if launch_params(cfg, L) is None:
                            continue
                        row = compile_one(cfg, L)
                        rows.append(row)
                        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.out and rows:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Interleaved CPU timing of the `cpu` backend against dense SDPA (row attention with pair bias).

On a small shared CPU machine, medians taken one backend after the other drift with the machine's
load; here every repetition times SDPA and the cpu backend back to back on the same inputs, and the
ratio is the median of the per-repetition ratios. Float32, forward, batch 1, 8 heads x 32, bias
[1, 8, L, L], 64-blocks, patterns from ``patterns.sparsity.pattern_for_sparsity``.

    python benchmarks/cpu_interleaved.py [--length 4096] [--reps 15] [--out results/cpu-interleaved.csv]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import reference_attention, sparse_attention
from patterns import build_layout
from patterns.sparsity import pattern_for_sparsity


def _ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--sparsities", default="0,50,75,90")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu-interleaved.csv"))
    args = p.parse_args()
    L, B, H, D = args.length, 1, 8, 32
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    bias = torch.randn(1, H, L, L, generator=g)
    rows = []
    print(f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, float32, row attention L={L} B={B} H={H} D={D}")
    with torch.no_grad():
        for s in (int(x) for x in args.sparsities.split(",")):
            layout = build_layout(pattern_for_sparsity(L, s / 100, block_size=64), L)
            # correctness gate on one batch element and two heads before any timing
            sl = (slice(0, 1), slice(0, 2))
            got = sparse_attention(q[sl], k[sl], v[sl], layout, bias[:, :2], backend="cpu")
            ref = reference_attention(q[sl].double(), k[sl].double(), v[sl].double(), layout, bias[:, :2].double())
            err = (got.double() - ref).abs().max().item()
            if err > 2e-4:
                raise SystemExit(f"sparsity {s}%: cpu backend differs from the reference by {err:.2e}")
            sdpa = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # noqa: E731
            ours = lambda: sparse_attention(q, k, v, layout, bias, backend="cpu")  # noqa: E731
            sdpa(), ours()
            pairs = [(_ms(sdpa), _ms(ours)) for _ in range(args.reps)]
            ratios = [a / b for a, b in pairs]
            row = {
                "L": L, "sparsity": round(layout.sparsity, 4), "reps": args.reps,
                "sdpa_ms": round(statistics.median(a for a, _ in pairs), 2),
                "cpu_ms": round(statistics.median(b for _, b in pairs), 2),
                "ratio_median": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                "max_abs_err": f"{err:.2e}",
            }
            rows.append(row)
            print(row, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

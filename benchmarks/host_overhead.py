"""Host time of one sparse attention call, with the kernels stubbed out (Triton, fused CPU), next to SDPA.

    python -m benchmarks.host_overhead [--rounds 15] [--calls 200] [--out PATH]

What is timed: ``kernels.sparse_attention(q, k, v, layout, bias, backend="triton")`` on CPU
tensors laid out as the EvoFormer modules hand them over (q, k, v permuted views of [B, L, H, D]
memory, bf16, a pair bias [1, H, L, L]), with the Triton kernels (``kernels.triton_op._attn_fwd_kernel``
and the backward's) replaced by a stub that takes the launch arguments and does nothing
(``TRITON_INTERPRET=1`` lets CPU tensors reach it). So the time is everything the product does on
the host per call: the dispatcher's input contract, the backend lookup, the launch-config and
launch-plan lookups, the layout index, the output and LSE allocations and building the launch
arguments; not Triton's own launcher (argument binding and the driver call, which SDPA's CUDA path
has an equivalent of) and not the kernel. Three paths: eager without gradients (the inference
path: the forward launched directly), with inputs that require grad (the autograd path, forward
only: in eager the op's autograd formula in an ``autograd.Function``, see ``kernels.opdefs``; the
path keeps its old name, ``-autograd-op``, for comparison with earlier runs) and a training step's
forward and backward (``torch.autograd.grad`` of q, k, v: the backward's host path as well, its
dQ / dK,dV buffers included).

The fused CPU backend (``backend="cpu"``, ``kernels.cpu_fused``) is timed the same way on float32
copies of the inputs (its compute dtype; same layouts and bias layout), with its C kernel calls
stubbed: ``kernels.cpu_fused._run`` (the one function that hands a work list to the C library:
the K^T / V^T packing, the forward and both backward passes) replaced by a no-op. What remains is
its host path: the dispatcher, the op-argument checks, the work-list and plan lookups, the output,
LSE, gradient and workspace allocations, the argument structs, and the backward's torch-side
preparation (delta = rowsum(dO * O), dO padded to whole blocks): that last part is arithmetic
over [B, H, L, D], so it grows with the shapes (it is real work, not dispatch).

Baselines, interleaved with it round by round: ``F.scaled_dot_product_attention`` on a one-token
problem [1, 1, 1, 8] (its wrapper and dispatch with next to no arithmetic) and on the same shapes
(wrapper plus the CPU computation; an upper bound). One thread (``torch.set_num_threads(1)``).

Each round times ``--calls`` calls of every path in turn (the order rotates between rounds), by
the thread's CPU time (``time.thread_time``: what the call costs this thread, robust to other
processes taking the cores of a shared machine) and by wall time; the CSV has, per case and path,
the median over rounds of the per-call time and the 25th / 75th percentiles of each, plus the
machine's load average (wall times grow with it; compare paths within one run).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: CPU tensors reach the (stubbed) launch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Case:
    name: str
    B: int
    H: int
    L: int
    D: int
    block_size: int


CASES = (
    Case("small", 1, 4, 64, 16, 16),
    Case("msa-row-L256", 8, 8, 256, 32, 64),
    Case("triangle-L256", 64, 4, 256, 32, 64),
)


STUBBED = ("_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel",
           "_attn_bwd_dbias_kernel")  # the Triton kernels kernels.triton_op launches


def _stub_run(name, args, items, max_threads=1 << 30):
    """Stands in for ``kernels.cpu_fused._run`` (the C kernel call over a work list): does nothing."""
    return None


class _StubLaunch:
    """Stands in for a Triton JIT kernel: ``kernel[grid](*args, **meta)`` does nothing."""

    def __getitem__(self, grid):
        return self

    def __call__(self, *args, **meta):
        return None


def _inputs(case: Case, requires_grad: bool, dtype: torch.dtype = torch.bfloat16):
    from patterns import BlockLayout

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(case.B, case.L, case.H, case.D, generator=g).to(dtype).permute(0, 2, 1, 3)
               .requires_grad_(requires_grad) for _ in range(3))
    bias = torch.randn(1, case.H, case.L, case.L, generator=g).to(dtype)
    nb = -(-case.L // case.block_size)
    mask = torch.eye(nb, dtype=torch.bool) | (torch.rand(nb, nb, generator=g) < 0.3)
    return q, k, v, bias, BlockLayout(mask, case.block_size, case.L)


def _paths(case: Case) -> dict[str, Callable[[], object]]:
    import kernels

    q, k, v, bias, layout = _inputs(case, False)
    qg, kg, vg, _, _ = _inputs(case, True)
    tiny = [torch.randn(1, 1, 1, 8) for _ in range(3)]
    qf, kf, vf, bf = (t.detach().float() for t in (q, k, v, bias))

    def sparse_nograd():
        with torch.no_grad():
            return kernels.sparse_attention(q, k, v, layout, bias, backend="triton")

    def sparse_op():
        return kernels.sparse_attention(qg, kg, vg, layout, bias, backend="triton")

    grad_out = torch.zeros(qg.shape, dtype=qg.dtype)

    def sparse_fwd_bwd():
        return torch.autograd.grad(sparse_op(), (qg, kg, vg), grad_out)

    return {
        "sparse-triton-stubbed-nograd": sparse_nograd,
        "sparse-triton-stubbed-autograd-op": sparse_op,
        "sparse-triton-stubbed-fwd-bwd": sparse_fwd_bwd,
        **_cpu_paths(case),
        "sdpa-one-token": lambda: F.scaled_dot_product_attention(*tiny),
        "sdpa-same-shapes-cpu": lambda: F.scaled_dot_product_attention(qf, kf, vf, attn_mask=bf),
    }


def _cpu_paths(case: Case) -> dict[str, Callable[[], object]]:
    """The fused CPU backend's three paths (float32 inputs, the C calls stubbed by ``measure``)."""
    import kernels

    q, k, v, bias, layout = _inputs(case, False, torch.float32)
    qg, kg, vg, _, _ = _inputs(case, True, torch.float32)
    grad_out = torch.zeros(qg.shape)

    def nograd():
        with torch.no_grad():
            return kernels.sparse_attention(q, k, v, layout, bias, backend="cpu")

    def autograd():
        return kernels.sparse_attention(qg, kg, vg, layout, bias, backend="cpu")

    return {
        "sparse-cpu-stubbed-nograd": nograd,
        "sparse-cpu-stubbed-autograd": autograd,
        "sparse-cpu-stubbed-fwd-bwd": lambda: torch.autograd.grad(autograd(), (qg, kg, vg), grad_out),
    }


def _time(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(thread CPU time, wall time) per call in us."""
    c0, t0 = time.thread_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.thread_time() - c0) / calls * 1e6, (time.perf_counter() - t0) / calls * 1e6


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    return tuple(statistics.quantiles(xs, n=4)) if len(xs) > 1 else (xs[0],) * 3


def measure(rounds: int, calls: int, cases=CASES) -> list[dict]:
    """Interleaved rounds per case; one row per (case, path) with median and quartiles in us."""
    from kernels import cpu_fused, triton_op

    torch.set_num_threads(1)
    for name in STUBBED:
        setattr(triton_op, name, _StubLaunch())
    cpu_fused._run = _stub_run
    rows = []
    for case in cases:
        paths = _paths(case)
        names = list(paths)
        for fn in paths.values():  # warm-up: plans, caches, first-call allocations
            for _ in range(20):
                fn()
        cpu: dict[str, list[float]] = {n: [] for n in names}
        wall: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                n_calls = max(1, calls // 20) if n == "sdpa-same-shapes-cpu" else calls
                c, w = _time(paths[n], n_calls)
                cpu[n].append(c)
                wall[n].append(w)
        for n in names:
            c1, cm, c3 = _quartiles(cpu[n])
            w1, wm, w3 = _quartiles(wall[n])
            rows.append(dict(case=case.name, B=case.B, H=case.H, L=case.L, D=case.D, block_size=case.block_size,
                             dtype="float32" if "-cpu-stubbed" in n else "bfloat16", path=n,
                             cpu_median_us=round(cm, 2), cpu_q25_us=round(c1, 2),
                             cpu_q75_us=round(c3, 2), wall_median_us=round(wm, 2), wall_q25_us=round(w1, 2),
                             wall_q75_us=round(w3, 2), rounds=rounds, calls_per_round=calls))
    return rows


def _machine() -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return dict(machine=f"{platform.machine()} {os.cpu_count()} cores", torch=torch.__version__,
                python=platform.python_version(), load_avg_1min=round(load, 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--out", default=str(RESULTS / "host-overhead-cpu.csv"))
    a = p.parse_args(argv)
    if a.rounds < 1 or a.calls < 1:
        p.error("--rounds and --calls must be >= 1")
    machine = _machine()
    rows = [{**machine, **r} for r in measure(a.rounds, a.calls)]
    machine_end = _machine()
    for r in rows:
        r["load_avg_1min_end"] = machine_end["load_avg_1min"]
    out = Path(a.out)
    tmp = out.with_suffix(out.suffix + ".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    for r in rows:
        print(f"{r['case']:>15} {r['path']:>34}: cpu {r['cpu_median_us']:9.1f} us [{r['cpu_q25_us']}, {r['cpu_q75_us']}]"
              f"  wall {r['wall_median_us']:9.1f} us [{r['wall_q25_us']}, {r['wall_q75_us']}]")
    print(f"written {out} (load average {machine['load_avg_1min']} -> {machine_end['load_avg_1min']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Offline compile report of the Triton kernels for a Hopper GPU: ``python -m kernels.compile_report``.

Compiles every kernel of the block-sparse attention (forward; backward dQ, dK/dV and the bias
gradient of a batch-shared bias) for ``GPUTarget("cuda", 90, 32)`` (H100 / H200) with the installed
Triton, on a machine without a GPU, for each launch config the autotuner may try
(``candidate_configs`` for the forward, ``candidate_backward_configs`` for the backward), dtype and
head dim (a forward, dQ or dK/dV tile larger than the layout block compiles the coarse-tile
kernel, ``kernels.coarse_index``; dBias compiles at its block-dividing tiles), and records what the compiled artifacts say:

* ``registers``, ``spill_stores`` / ``spill_loads`` (bytes): ``ptxas -v`` on the kernel's PTX for
  sm_90a (the ptxas that ships in the Triton wheel);
* ``shared_bytes``: Triton's shared-memory allocation (the compiled kernel's metadata; a launch
  raises OutOfResources above the device's 232,448 bytes per block on sm_90), next to
  ``shared_estimate``, the bound ``kernels.config.shared_memory_bytes`` that the launch code and
  ``candidate_configs`` use (must never be below the compiled value);
* ``wgmma``: number of ``wgmma.mma_async`` instructions in the PTX (Hopper's warp-group MMA; 0 means
  the dots fell back to ``mma.sync``, counted in ``mma_sync``);
* ``async_wait_max`` and ``kv_buffers``: the software pipeline in the TTGIR. ``kv_buffers`` is the
  depth of the multi-buffered shared-memory tiles (``num_stages - 1`` when the loop is pipelined as
  asked), ``async_wait_max`` the largest ``num`` of ``ttg.async_wait`` (0 means every iteration waits
  for all copies in flight: no overlap of loads with compute).

Shapes are those of AlphaFold2 MSA row attention at L=4096 (B=8, H=8, bias [1, H, L, L] shared by
the batch, block size 64), ``--ragged`` adds L=4000 (L not a multiple of the block). Integer
arguments are specialised as Triton's launcher does (value 1 -> constant, multiples of 16 ->
divisibility 16), pointers are 16-byte aligned.

Results go to ``benchmarks/results/compile-sm90-triton<version>.csv``, one row per compilation,
written as each finishes (an interrupted run keeps what it compiled). Runs without a GPU and
without ``TRITON_INTERPRET`` (the interpreter cannot compile; the module restarts itself without
it).
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from patterns.output import check_output_path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
SM90_SHARED_LIMIT = 232_448
KERNELS = ("fwd", "dq", "dkdv", "dbias", "fwd_gated")  # fwd_gated: the eager inference forward of a gated module
FORWARDS = ("fwd", "fwd_gated")
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class CompileJob:
    """One compilation: a kernel at a launch config, dtype, head dim and sequence length."""

    kernel: str
    dtype: str
    head_dim: int
    block_size: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    L: int = 4096
    B: int = 8
    H: int = 8
    rows_per_cta: int = 1  # forward only: batch elements one program walks


@dataclass
class CompileResult:
    """What the sm_90 compilation of one ``CompileJob`` reports (see the module docstring)."""

    triton: str
    target: str
    kernel: str
    dtype: str
    head_dim: int
    d_pad: int
    block_size: int
    L: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    stages_launched: int
    rows_per_cta: int = 1
    registers: Optional[int] = None
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None
    shared_bytes: Optional[int] = None
    shared_estimate: Optional[int] = None
    fits_shared: Optional[bool] = None
    wgmma: Optional[int] = None
    mma_sync: Optional[int] = None
    async_wait_max: Optional[int] = None
    kv_buffers: Optional[int] = None
    compile_s: Optional[float] = None
    error: str = ""


FIELDS = [f.name for f in fields(CompileResult)]


def _ptxas() -> str:
    import triton  # noqa: PLC0415

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _kernel_args(job: CompileJob) -> tuple[object, dict[str, object], dict[str, object], str]:
    """(jit function, example runtime arguments by name, constexprs by name, kernel tile role)."""
    from . import triton_bwd_kernels as tb  # noqa: PLC0415
    from . import triton_kernels as tk  # noqa: PLC0415
    from .config import dbias_tiles  # noqa: PLC0415
    from .triton_op import _d_pad, _nb_pad, _prec  # noqa: PLC0415
    import torch  # noqa: PLC0415

    dt = DTYPES[job.dtype]
    L, B, H, bs = job.L, job.B, job.H, job.block_size
    nb = -(-L // bs)
    d_pad = _d_pad(job.head_dim)
    common = dict(
        HEAD_DIM=job.head_dim, D_PAD=d_pad, BLOCK_SIZE=bs,
        EVEN_L=(L % bs == 0), EVEN_D=(job.head_dim == d_pad), PREC=_prec(getattr(torch, job.dtype)),
    )
    ptr = {n: f"*{dt}" for n in ("Q", "K", "V", "Bias", "Out", "Gate", "DO", "DQ", "DK", "DV", "DBias")}
    ptr.update({n: "*fp32" for n in ("Lse", "Delta")})
    ptr.update({n: "*i32" for n in ("KVCounts", "KVIndices", "QCounts", "QIndices", "TileOrder")})
    ptr["KVBits"] = ptr["QBits"] = "*i64"  # the coarse tiles' bitmasks (read only by tiles larger than the block)
    # bias [1, H, L, L] shared by the batch
    ints: dict[str, int] = {}
    # q, k, v, o and their gradients as the EvoFormer modules produce them: [B, L, H, D] memory read
    # as [B, H, L, D] through strides (batch L*H*D, head D, row H*D)
    D = job.head_dim
    for t in ("q", "k", "v", "o", "g", "do", "dq", "dk", "dv"):
        ints.update({f"stride_{t}b": L * H * D, f"stride_{t}h": D, f"stride_{t}m": H * D})
    ints.update(stride_kn=H * D, stride_vn=H * D, stride_dkn=H * D, stride_dvn=H * D)
    ints.update(stride_bias_b=0, stride_bias_h=L * L, stride_bias_m=L, stride_bias_n=1,
                stride_db_b=0, stride_db_h=L * L, B=B, H=H, L=L, NB=nb, LAYOUT_HEAD_STRIDE=0)
    floats = dict(qk_scale=0.25, sm_scale=0.17)
    if job.kernel in FORWARDS:
        fn = tk._attn_fwd_kernel
        # a tile larger than the block walks the coarse index (kernels.coarse_index): nr x nc coarse tiles
        rb, cb = max(1, job.block_m // bs), max(1, job.block_n // bs)
        nr, nc = -(-nb // rb), -(-nb // cb)
        # the training forward (the LSE stored; inference leaves it out)
        gated = job.kernel == "fwd_gated"  # inference of a gated module: no LSE, sigmoid(gate) in the epilogue
        const = dict(BLOCK_M=job.block_m, BLOCK_N=job.block_n, NB_PAD=_nb_pad(nc), HAS_BIAS=True, STORE_LSE=not gated,
                     ROWS_PER_CTA=job.rows_per_cta, ROW_BLOCKS=rb, COL_BLOCKS=cb, HAS_GATE=gated)
        common["EVEN_L"] = L % max(bs, job.block_m, job.block_n) == 0
        ints.update(N_TILES=nr * rb * bs // job.block_m, NB=nc, NB_ROWS=nr)
    elif job.kernel in ("dq", "dkdv"):
        # (owned, walked) = (queries, keys) for dQ, (keys, queries) for dK/dV; tiles larger than the
        # block walk the coarse index (of the rows for dQ, of the columns for dK/dV)
        rb, cb = max(1, job.block_m // bs), max(1, job.block_n // bs)
        nr, nc = -(-nb // rb), -(-nb // cb)
        const = dict(NB_PAD=_nb_pad(nc), HAS_BIAS=True, ROW_BLOCKS=rb, COL_BLOCKS=cb)
        if job.kernel == "dq":
            fn = tb._attn_bwd_dq_kernel
            const.update(BLOCK_M=job.block_m, BLOCK_N=job.block_n, WRITE_DBIAS=False)
        else:
            fn = tb._attn_bwd_dkdv_kernel
            const.update(BLOCK_M=job.block_n, BLOCK_N=job.block_m)
        common["EVEN_L"] = L % max(bs, job.block_m, job.block_n) == 0
        ints.update(N_TILES=nr * rb * bs // job.block_m, NB=nc, NB_ROWS=nr)
    elif job.kernel == "dbias":
        fn = tb._attn_bwd_dbias_kernel  # block-dividing tiles (config.dbias_tiles)
        bm, bn = dbias_tiles(job.block_m, job.block_n, bs)
        const = dict(BLOCK_M=bm, BLOCK_N=bn)
    else:
        raise ValueError(f"unknown kernel {job.kernel!r}; choose from {list(KERNELS)}")
    const.update(common)
    values: dict[str, object] = {}
    for name in fn.arg_names:
        if name in const:
            continue
        if name in ptr:
            values[name] = ptr[name]
        elif name in floats:
            values[name] = floats[name]
        elif name in ints:
            values[name] = ints[name]
        else:
            raise KeyError(f"compile_report: no example value for argument {name!r} of {job.kernel}")
    return fn, values, const, dt


def _compile(job: CompileJob) -> CompileResult:
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    from .config import dbias_tiles, fit_stages, shared_memory_bytes  # noqa: PLC0415
    from .triton_op import _d_pad  # noqa: PLC0415

    eb = 4 if job.dtype == "float32" else 2
    d_pad = _d_pad(job.head_dim)
    tiles = (dbias_tiles(job.block_m, job.block_n, job.block_size) if job.kernel == "dbias"
             else (job.block_m, job.block_n))  # the tiles launched
    role = "fwd" if job.kernel in FORWARDS else job.kernel  # the shared-memory model's kernel
    stages = fit_stages(role, eb, *tiles, d_pad, job.num_stages)
    res = CompileResult(
        triton=triton.__version__, target="cuda:90", kernel=job.kernel, dtype=job.dtype, head_dim=job.head_dim,
        d_pad=d_pad, block_size=job.block_size, L=job.L, block_m=job.block_m, block_n=job.block_n,
        num_warps=job.num_warps, num_stages=job.num_stages, stages_launched=stages, rows_per_cta=job.rows_per_cta,
        shared_estimate=shared_memory_bytes(role, eb, *tiles, d_pad, stages),
    )
    t0 = time.perf_counter()
    try:
        fn, values, const, _ = _kernel_args(job)
        sig: dict[str, str] = {}
        constexprs: dict[str, object] = dict(const)
        attrs: dict[tuple[int, ...], list] = {}
        for i, name in enumerate(fn.arg_names):
            if name in const:
                sig[name] = "constexpr"
                continue
            val = values[name]
            if isinstance(val, str):  # pointer
                sig[name] = val
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(val, float):
                sig[name] = "fp32"
            elif val == 1:  # Triton specialises an integer argument equal to 1 as a constant
                sig[name] = "constexpr"
                constexprs[name] = 1
            else:
                sig[name] = "i32"
                if val % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        src = ASTSource(fn, sig, constexprs, attrs)
        kern = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=job.num_warps, num_stages=stages))
        res.compile_s = round(time.perf_counter() - t0, 2)
        res.shared_bytes = int(kern.metadata.shared)
        res.fits_shared = res.shared_bytes <= SM90_SHARED_LIMIT
        ptx, ttgir = kern.asm["ptx"], kern.asm["ttgir"]
        res.wgmma = len(re.findall(r"wgmma\.mma_async", ptx))
        res.mma_sync = len(re.findall(r"\bmma\.sync", ptx))
        waits = [int(x) for x in re.findall(r"async_wait[^\n]*\{num = (\d+)", ttgir)]
        res.async_wait_max = max(waits) if waits else None
        bufs = [int(x) for x in re.findall(r"local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+)x\d+x\d+x", ttgir)]
        res.kv_buffers = max(bufs) if bufs else 0
        with tempfile.TemporaryDirectory() as tmp:
            ptx_path = os.path.join(tmp, "k.ptx")
            with open(ptx_path, "w") as f:
                f.write(ptx)
            out = subprocess.run([_ptxas(), "-v", "--gpu-name=sm_90a", ptx_path, "-o", os.path.join(tmp, "k.o")],
                                 capture_output=True, text=True, timeout=300)
        log = out.stderr + out.stdout
        m = re.search(r"Used (\d+) registers", log)
        res.registers = int(m.group(1)) if m else None
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
        if m:
            res.spill_stores, res.spill_loads = int(m.group(1)), int(m.group(2))
        if out.returncode != 0:
            res.error = f"ptxas exit {out.returncode}: {log.strip().splitlines()[-1][:200] if log.strip() else ''}"
    except Exception as exc:  # noqa: BLE001 - recorded in the row
        res.compile_s = round(time.perf_counter() - t0, 2)
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    return res


def jobs_for(kernels: list[str], dtypes: list[str], head_dims: list[int], block_size: int,
             lengths: list[int], which: str) -> list[CompileJob]:
    """The compile jobs: per kernel, dtype, head dim and length, each launch config of ``which``
    ("candidates": every config the autotuner may try, spilling ones included; "defaults": the
    default forward and backward configs only; "all": every tile / warps / stages combination,
    including those the candidate lists leave out for their shared memory)."""
    import torch  # noqa: PLC0415

    from .config import (  # noqa: PLC0415
        KERNEL_TILES, KernelConfig, candidate_backward_configs, candidate_configs, default_backward_config,
        default_forward_config,
    )

    out = []
    for dtype in dtypes:
        tdt = getattr(torch, dtype)
        for d in head_dims:
            for kern in kernels:
                if which == "all":  # every tile / warps / stages combination, unfiltered (calibration)
                    cfgs = [KernelConfig(bm, bn, w, s) for bm in KERNEL_TILES for bn in KERNEL_TILES
                            if (KernelConfig(bm, bn).fits(block_size) if kern in FORWARDS
                                else KernelConfig(bm, bn).for_backward(block_size) == KernelConfig(bm, bn)
                                and bm >= bn)
                            for w in (4, 8) if w == 4 or bm * bn >= 64 * 64 for s in (1, 2, 3)]
                elif which == "defaults":
                    cfgs = [default_forward_config(block_size, d, tdt) if kern in FORWARDS
                            else default_backward_config(block_size, d, tdt)]
                elif kern in FORWARDS:
                    cfgs = candidate_configs(block_size, d, tdt, exclude_spilling=False)
                else:
                    cfgs = candidate_backward_configs(block_size, d, tdt, exclude_spilling=False)
                for L in lengths:
                    for c in cfgs:
                        out.append(CompileJob(kern, dtype, d, block_size, c.block_m, c.block_n, c.num_warps,
                                              c.num_stages, L=L))
    return out


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kernels.compile_report", description=__doc__.split("\n")[0])
    p.add_argument("--kernels", default=",".join(k for k in KERNELS if k != "fwd_gated"),
                   help="comma-separated, of " + ", ".join(KERNELS) + " (fwd_gated on request)")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--head-dims", default="32,64")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--configs", default="candidates", choices=("candidates", "defaults", "all"))
    p.add_argument("--ragged", action="store_true", help="also compile for L=4000 (not a multiple of the block)")
    p.add_argument("--rows-per-cta", default="1", help="forward: comma list of batch elements per program (1, 2, 4, 8)")
    p.add_argument("--jobs", type=int, default=1, help="parallel compilations (processes)")
    p.add_argument("--out", default=None, help="CSV path (default benchmarks/results/compile-sm90-triton<version>.csv)")
    a = p.parse_args(argv)
    a.kernels = [k for k in a.kernels.split(",") if k]
    for k in a.kernels:
        if k not in KERNELS:
            p.error(f"--kernels: unknown kernel {k!r}; choose from {list(KERNELS)}")
    a.dtypes = [d for d in a.dtypes.split(",") if d]
    for d in a.dtypes:
        if d not in DTYPES:
            p.error(f"--dtypes: unknown dtype {d!r}; choose from {list(DTYPES)}")
    try:
        a.head_dims = [int(x) for x in a.head_dims.split(",") if x]
    except ValueError:
        p.error(f"--head-dims: not a comma list of integers: {a.head_dims!r}")
    from .triton_op import SUPPORTED_HEAD_DIMS  # noqa: PLC0415

    for d in a.head_dims:
        if d not in SUPPORTED_HEAD_DIMS:
            p.error(f"--head-dims: {d} not in {list(SUPPORTED_HEAD_DIMS)}")
    if a.block_size not in (16, 32, 64, 128):
        p.error(f"--block-size: {a.block_size} not in [16, 32, 64, 128]")
    if a.jobs < 1:
        p.error("--jobs: must be >= 1")
    try:
        a.rows_per_cta = [int(x) for x in a.rows_per_cta.split(",") if x]
    except ValueError:
        p.error(f"--rows-per-cta: not a comma list of integers: {a.rows_per_cta!r}")
    if not a.rows_per_cta or any(r not in (1, 2, 4, 8) for r in a.rows_per_cta):
        p.error(f"--rows-per-cta: each must be one of [1, 2, 4, 8]; got {a.rows_per_cta}")
    return a


def main(argv: Optional[list[str]] = None) -> list[CompileResult]:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # the interpreter replaces @triton.jit functions and cannot compile: restart without it
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        args = sys.argv[1:] if argv is None else argv
        return_code = subprocess.call([sys.executable, "-m", "kernels.compile_report", *args], env=env)
        if return_code:
            sys.exit(return_code)
        return []
    a = _parse(argv)
    import triton  # noqa: PLC0415

    lengths = [4096] + ([4000] if a.ragged else [])
    jobs = jobs_for(a.kernels, a.dtypes, a.head_dims, a.block_size, lengths, a.configs)
    jobs = [dataclasses.replace(j, rows_per_cta=r) for j in jobs for r in (a.rows_per_cta if j.kernel in FORWARDS else [1])]
    out = Path(a.out) if a.out else RESULTS_DIR / f"compile-sm90-triton{triton.__version__}.csv"
    check_output_path(out)  # a folder, a device, /proc, ...: refused with one line before compiling
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"compiling {len(jobs)} kernels for sm_90 with triton {triton.__version__} -> {out}", flush=True)
    results: list[CompileResult] = []
    t0 = time.perf_counter()
    with open(out, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        wr.writeheader()
        f.flush()
        if a.jobs == 1:
            it = map(_compile, jobs)
        else:
            pool = ProcessPoolExecutor(a.jobs)
            it = pool.map(_compile, jobs)
        for r in it:
            wr.writerow(asdict(r))
            f.flush()
            results.append(r)
            flag = "" if not r.error else f"  ERROR {r.error}"
            print(f"[{time.perf_counter() - t0:6.1f}s] {r.kernel:5s} {r.dtype:8s} D={r.head_dim:<2d} L={r.L} "
                  f"{r.block_m}x{r.block_n}/w{r.num_warps}/s{r.num_stages}->{r.stages_launched}/r{r.rows_per_cta}: regs {r.registers} "
                  f"spill {r.spill_stores} smem {r.shared_bytes} (est {r.shared_estimate}) wgmma {r.wgmma} "
                  f"wait {r.async_wait_max} bufs {r.kv_buffers}{flag}", flush=True)
        if a.jobs > 1:
            pool.shutdown()
    bad_smem = [r for r in results if r.shared_bytes is not None and not r.fits_shared]
    under = [r for r in results if r.shared_bytes is not None and r.shared_estimate < r.shared_bytes]
    spills = [r for r in results if r.spill_stores]
    errors = [r for r in results if r.error]
    print(f"\n{len(results)} compiled in {time.perf_counter() - t0:.0f}s: {len(bad_smem)} over the shared-memory "
          f"limit, {len(under)} above their shared-memory estimate, {len(spills)} spilling, {len(errors)} errors; "
          f"wrote {out}", flush=True)
    return results


if __name__ == "__main__":
    from patterns.errors import exit_on_input_error

    with exit_on_input_error("python -m kernels.compile_report"):  # an --out it cannot write: one line, exit 2
        main()

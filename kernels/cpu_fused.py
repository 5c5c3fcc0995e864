"""The fused CPU kernel: block-sparse attention with pair bias in one pass over the kept tiles.

    O = softmax(Q K^T * scale + bias, over the layout's keys) V      (exactly ``reference_attention``)

The kernel is the C file ``csrc/block_sparse_cpu.c`` (FlashAttention-style online softmax per
query block row; FlashAttention-2 backward with a key-column pass for dK/dV/dBias and a query-row
pass for dQ, so the result is deterministic). It is compiled on first use with the system C
compiler (the same one ``torch.compile`` needs on a CPU) for this machine (``-march=native``) and
cached under ``$SPARSE_AUTOTUNE_CACHE`` (default ``~/.cache/protein-sparse-autotune``), keyed by
the source, the compiler, the flags and the host (a temporary folder when that one is not
writable). Without a working compiler ``available()`` is
False with the reason in ``unavailable_reason()`` and the CPU backend uses its SDPA-bucket path.

Non-finite values follow ``kernels/reference.py``: the kernel's exp propagates NaN, so a NaN or
+inf logit at a kept pair (NaN in q, k, the bias or the scale) makes its row and its gradients NaN;
a row whose kept logits are all -inf (row sum 0) and a block row without kept tiles give zeros and
zero gradients; tiles that are not kept are never read.

Ops: the kernel is called through two custom ops (namespace ``sparse_autotune``, like the Triton
backend's), so ``torch.compile(fullgraph=True)`` traces it as one opaque node:

* ``cpu_block_sparse_attention_fwd(q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices,
  block_size, seq_len, scale) -> (out [B, H, L, D], lse [B, H, nb*block_size])``
* ``cpu_block_sparse_attention_bwd(grad_out, q, k, v, out, lse, bias, kv_counts, kv_indices,
  q_counts, q_indices, block_size, seq_len, scale, compute_dbias) -> (dq, dk, dv, dbias)``

float32 CPU tensors of any strides (head dimension with unit stride; the kernel reads q, k, v in
place through their batch, head and row strides, forward and backward, and the forward writes the
output in q's memory order, so a permuted [B, L, H, D] view needs no copy); ``bias`` is None or [1 or B, 1 or H, L, L] (the entry point materialises
row/column broadcasts and keeps batch/head broadcast at size 1; autograd sums ``dbias`` back to
the caller's shape); the index tensors are the layout's (``BlockLayout.index_on``). Both ops have
fake implementations; the forward's autograd formula calls the backward op (no double backward).
The op checks every size it passes to C and raises ValueError naming what does not fit.
A plain eager call (no graph capture, ``kernels.opdefs.plain_eager``) skips the ops' dispatch:
without autograd it runs the forward op's implementation, with autograd the same autograd formula
in a ``torch.autograd.Function`` (``kernels.opdefs.eager_autograd_function``; the registered op's
eager autograd path cost ~60 us of host time a forward and ~50 us a backward more).
Per-layout plans (work lists, the K^T workspace reused from call to call) are kept in the one
plan cache of ``kernels.plans``, keyed by the layout's index tensor (weakly: freed with the layout;
``kernels.clear_plan_caches()`` drops them). The index must be on the CPU: a layout built on a GPU
(a guided layout follows its signal) is read through ``BlockLayout.index_on("cpu")``, one copy per
layout.

Threads: ``torch.get_num_threads()`` Python threads call the kernel at once (ctypes releases the
GIL); they share an atomic counter over the work items, ordered largest first.
What it reads and writes: q, k, v (in place), the output and LSE, plus K^T (and V^T in backward,
packed by the kernel library from the strided inputs, rows past L zero), all O(L*D); the bias is read tile by tile in place, never gathered or expanded. Per-thread scratch is
a few hundred KiB. Supported: head dims 8, 16, 32, 64; block sizes 16, 32, 64, 128; float32
compute (half inputs are converted, like the reference).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from patterns import BlockLayout

from .capabilities import FUSED_CPU_HEAD_DIMS, LAYOUT_BLOCK_SIZES
from .compile_marks import assume_constant_result
from .opdefs import (
    declare_attention_ops,
    eager_autograd_function,
    empty_in_order_of,
    plain_eager,
    rows_in_place,
    wants_grad,
)
from .plans import host_index, layout_plans, shared
from .reference import resolve_scale

__all__ = ["available", "unavailable_reason", "supports", "fused_sparse_attention"]

SOURCE = Path(__file__).with_name("csrc") / "block_sparse_cpu.c"
ABI_VERSION = 2
HEAD_DIMS = FUSED_CPU_HEAD_DIMS  # the registry's record (kernels.backends)
BLOCK_SIZES = LAYOUT_BLOCK_SIZES


class _Args(ctypes.Structure):
    """Mirror of ``Args`` in the C source (field order and types must match)."""

    _fields_ = [
        *[(n, ctypes.c_int64) for n in ("B", "H", "L", "Lp", "D", "BS", "nb")],
        *[(n, ctypes.c_void_p) for n in ("q", "k", "v", "kt", "vt", "bias")],
        *[(n, ctypes.c_int64) for n in ("sb_b", "sb_h", "sb_i", "lh")],
        *[(n, ctypes.c_void_p) for n in ("kv_cnt", "kv_idx", "q_cnt", "q_idx")],
        ("scale", ctypes.c_double),
        *[(n, ctypes.c_void_p) for n in ("o", "lse", "dout", "delta", "dq", "dk", "dv", "dbias")],
        *[(n, ctypes.c_int64) for n in ("gB", "gH")],
        ("items", ctypes.c_void_p),
        ("n_items", ctypes.c_int64),
        ("counter", ctypes.c_void_p),
        *[(n, ctypes.c_int64) for t in "qkvo" for n in (f"s{t}_b", f"s{t}_h", f"s{t}_l")],
    ]


# ---- build and load ------------------------------------------------------------------------------
_LIB: dict = {}
_LOCK = threading.Lock()


def _cache_dir() -> Path:
    root = os.environ.get("SPARSE_AUTOTUNE_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "protein-sparse-autotune"


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name.split()[0]):
            return name
    return None


def _build(cc: str, flags: list[str], out: Path) -> Optional[str]:
    """Compile SOURCE into ``out`` atomically; return an error message or None."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
    except OSError as exc:
        return f"cannot write to {out.parent}: {exc.strerror or exc}"
    cmd = [*cc.split(), *flags, "-o", tmp, str(SOURCE), "-lm"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            lines = (res.stderr or res.stdout or "failed").strip().splitlines()
            return next((ln.strip() for ln in lines if "error" in ln), lines[-1].strip())
        os.replace(tmp, out)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> tuple[Optional[ctypes.CDLL], str]:
    with _LOCK:
        if "lib" in _LIB:
            return _LIB["lib"], _LIB["reason"]
        lib, reason = None, ""
        cc = _compiler()
        if not SOURCE.exists():
            reason = f"kernel source {SOURCE.name} is missing from the installed package"
        elif cc is None:
            reason = "no C compiler found (set CC)"
        else:
            src = SOURCE.read_bytes()
            errors = []
            for flags in (["-O3", "-march=native"], ["-O3"]):
                flags = [*flags, "-fPIC", "-shared", "-std=gnu11"]
                key = hashlib.sha256(
                    b"\0".join([src, cc.encode(), " ".join(flags).encode(), platform.machine().encode(), platform.node().encode()])
                ).hexdigest()[:16]
                for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"protein-sparse-autotune-{getattr(os, 'getuid', lambda: 0)()}"):
                    so = folder / f"block_sparse_cpu-{key}.so"
                    err = None if so.exists() else _build(cc, flags, so)
                    if err is None or not err.startswith("cannot write"):
                        break  # built (or a compile error): an unwritable cache falls back to a temp dir
                if err is None:
                    try:
                        cand = ctypes.CDLL(str(so))
                        if cand.bsa_abi_version() == ABI_VERSION:
                            lib = cand
                            break
                        err = "stale kernel library (ABI version)"
                    except OSError as exc:
                        err = str(exc)
                errors.append(f"{cc} {' '.join(flags[:2])}: {err}")
            if lib is None:
                reason = "could not build the fused CPU kernel: " + "; ".join(errors)
        if lib is not None:
            for name in ("bsa_pack_t", "bsa_forward", "bsa_backward_kv", "bsa_backward_q"):
                fn = getattr(lib, name)
                fn.argtypes = [ctypes.POINTER(_Args)]
                fn.restype = ctypes.c_int
        _LIB["lib"], _LIB["reason"] = lib, reason
        return lib, reason


@assume_constant_result
def available() -> bool:
    """True when the fused kernel is built (or can be built) and loaded on this machine."""
    return _load()[0] is not None


def unavailable_reason() -> str:
    """Why ``available()`` is False ('' when it is True)."""
    return _load()[1]


def supports(q: torch.Tensor, layout: BlockLayout) -> bool:
    """Whether the fused kernel handles these inputs (CPU tensors, its head dims and block sizes)."""
    return (
        q.device.type == "cpu"
        and q.shape[-1] in HEAD_DIMS
        and layout.block_size in BLOCK_SIZES
        and available()
    )


# ---- work lists and threads ----------------------------------------------------------------------
# Per-layout plans (work lists, the checked index, the K^T workspace) live in ``kernels.plans``, keyed
# by the layout's index tensor itself (the op sees tensors, not the layout) and freed with it; work
# lists and checks also key on its version.
_POOLS: dict = {}


def _pool(n: int) -> ThreadPoolExecutor:
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="bsa-cpu")
    return _POOLS[n]


def _run(name: str, args: _Args, items: torch.Tensor, max_threads: int = 1 << 30) -> None:
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(reason)
    counter = torch.zeros(1, dtype=torch.int64)
    args.items, args.n_items, args.counter = items.data_ptr(), items.numel(), counter.data_ptr()
    fn = getattr(lib, name)
    n = max(1, min(torch.get_num_threads(), items.numel(), max_threads))
    # n - 1 pool threads and the calling thread work through the same item list
    futures = [_pool(n - 1).submit(fn, ctypes.byref(args)) for _ in range(n - 1)] if n > 1 else []
    codes = [fn(ctypes.byref(args))] + [f.result() for f in futures]
    if any(c != 0 for c in codes):
        raise RuntimeError(f"fused CPU kernel {name} failed (code {min(codes)})")


# ---- the kernel calls ----------------------------------------------------------------------------
def _cut_rows(t: torch.Tensor, L: int) -> torch.Tensor:
    """[B, H, Lp, D] -> its first L rows (the inverse of ``_pad_rows``), contiguous."""
    return t if t.shape[2] == L else t[:, :, :L].contiguous()


def _pad_rows(t: torch.Tensor, Lp: int) -> torch.Tensor:
    L = t.shape[2]
    t = t.contiguous()
    return t if Lp == L else F.pad(t, (0, 0, 0, Lp - L))


def _block_t(t: torch.Tensor, bs: int, reuse: Optional[dict] = None, name: str = "kt") -> torch.Tensor:
    """[B, H, L, D] (any strides, unit head-dim stride) -> [B, H, nb, D, bs], nb = ceil(L / bs),
    rows past L zero: each block's transposed tile contiguous (the kernel's
    K^T / V^T operand; a [D, Lp] row-major transpose would put its rows a power-of-two stride apart,
    all in one L1 cache set). Packed by the kernel library, in parallel.
    ``reuse`` (the layout's plan): write into the buffer this thread used on the previous call with
    this layout and shape, kept with the layout's index (freed with it), instead of a fresh
    allocation whose first-touch page faults cost more than the copy itself (32 MiB: ~20 ms against
    ~3 ms). The buffer is a workspace of one op call, never returned nor saved for backward. A new
    layout object (``BlockLayout.fresh()``) has a new index and starts without it, so a cold call's
    peak memory counts it."""
    B, H, L, D = t.shape
    nb = -(-L // bs)
    shape = (B, H, nb, D, bs)
    key = (name, threading.get_ident())
    out = reuse.get(key) if reuse is not None else None
    if out is None or out.shape != shape or out.dtype != t.dtype:
        out = t.new_empty(shape)
        if reuse is not None:
            reuse[key] = out  # one buffer per (layout, thread): the latest shape only
    a = _Args()
    a.B, a.H, a.L, a.Lp, a.D, a.BS, a.nb = B, H, L, nb * bs, D, bs, nb
    a.k, a.kt = t.data_ptr(), out.data_ptr()
    a.sk_b, a.sk_h, a.sk_l = t.stride(0), t.stride(1), t.stride(2)
    # a small copy is not worth a thread hand-off
    _run("bsa_pack_t", a, _arange(B * H * nb), max_threads=1 if t.numel() < (1 << 18) else 1 << 30)
    return out


def _arange(n: int) -> torch.Tensor:
    return shared(("arange", n), lambda: torch.arange(n, dtype=torch.int64))


def _bias_view(bias: torch.Tensor, L: int) -> torch.Tensor:
    """bias as a 4-d [Bg, Hg, L, L] tensor with unit last stride (Bg in {1, B}, Hg in {1, H});
    broadcast rows or columns are materialised, batch/head broadcast is kept as size 1."""
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    if bias.shape[2] != L or bias.shape[3] != L:
        bias = bias.expand(bias.shape[0], bias.shape[1], L, L)
    if bias.stride(3) != 1 or bias.stride(2) == 0:
        bias = bias.contiguous()
    return bias


def _args(q, k, v, kt, bias, index, block_size: int, seq_len: int, scale: float) -> _Args:
    """The kernel's arguments; q, k, v [B, H, L or Lp, D] are read through their strides."""
    B, H, _, D = q.shape
    kv_cnt, kv_idx, q_cnt, q_idx = index
    a = _Args()
    a.B, a.H, a.L, a.Lp, a.D, a.BS, a.nb = B, H, seq_len, kv_cnt.shape[-1] * block_size, D, block_size, kv_cnt.shape[-1]
    a.q, a.k, a.v, a.kt = q.data_ptr(), k.data_ptr(), v.data_ptr(), kt.data_ptr()
    a.sq_b, a.sq_h, a.sq_l = q.stride(0), q.stride(1), q.stride(2)
    a.sk_b, a.sk_h, a.sk_l = k.stride(0), k.stride(1), k.stride(2)
    a.sv_b, a.sv_h, a.sv_l = v.stride(0), v.stride(1), v.stride(2)
    if bias is not None:
        a.bias = bias.data_ptr()
        a.sb_b = bias.stride(0) if bias.shape[0] > 1 else 0
        a.sb_h = bias.stride(1) if bias.shape[1] > 1 else 0
        a.sb_i = bias.stride(2)
    a.lh = kv_cnt.shape[0]
    a.kv_cnt, a.kv_idx, a.q_cnt, a.q_idx = kv_cnt.data_ptr(), kv_idx.data_ptr(), q_cnt.data_ptr(), q_idx.data_ptr()
    a.scale = scale
    return a


def _check_op_args(q, k, v, bias, index, block_size: int, seq_len: int) -> tuple:
    """Validate what the C kernel will read (it trusts every size and stride it is given): float32
    CPU q, k, v [B, H, L, D] with L == seq_len, D and block_size supported, int32 index tensors
    [lh, nb] / [lh, nb, nb] with nb * block_size covering L, bias [1 or B, 1 or H, L, L] float32.
    The shape, dtype and device checks are cached per (shapes, dtypes, devices, sizes) and the
    block numbers per index tensor (and version). Returns the index as contiguous int32 tensors."""
    _check_sizes((q.shape, k.shape, v.shape), (q.dtype, k.dtype, v.dtype), (q.device, k.device, v.device),
                 None if bias is None else (bias.shape, bias.dtype),
                 tuple(t.shape for t in index), tuple(t.device for t in index), block_size, seq_len)
    nb = index[0].shape[-1]
    index = tuple(t.to(torch.int32).contiguous() for t in index)
    for counts, indices, name in ((index[0], index[1], "kv"), (index[2], index[3], "q")):
        # the block numbers the kernel will read: checked once per index tensor (and version)
        plan, stamp = layout_plans(counts), (counts._version, indices._version)
        checked = plan.get("checked")
        if checked is None or checked[0] is not indices or checked[1] != stamp:
            if counts.numel() and (int(counts.min()) < 0 or int(counts.max()) > nb):
                raise ValueError(f"fused CPU kernel: {name}_counts must lie in [0, {nb}]")
            if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= nb):
                raise ValueError(f"fused CPU kernel: {name}_indices must lie in [0, {nb})")
            plan["checked"] = (indices, stamp)
    return index


@functools.lru_cache(maxsize=1024)
def _check_sizes(shapes: tuple, dtypes: tuple, devices: tuple, bias: Optional[tuple], index_shapes: tuple,
                 index_devices: tuple, block_size: int, seq_len: int) -> None:
    """``_check_op_args``'s checks of shapes, dtypes and devices (q, k, v; bias (shape, dtype) or
    None; the index tensors'); raises ValueError naming what does not fit."""
    qs, ks, vs = shapes
    if len(qs) != 4 or ks != qs or vs != qs:
        raise ValueError(f"fused CPU kernel: q, k, v must be [B, H, L, D] of one shape; got {list(qs)}, {list(ks)}, {list(vs)}")
    B, H, L, D = qs
    if any(dt != torch.float32 for dt in dtypes) or any(dev.type != "cpu" for dev in devices):
        raise ValueError("fused CPU kernel: q, k, v must be float32 CPU tensors")
    if L != seq_len or D not in HEAD_DIMS or block_size not in BLOCK_SIZES:
        raise ValueError(
            f"fused CPU kernel: need seq_len == L ({seq_len} vs {L}), head dim in {HEAD_DIMS} (got {D}), "
            f"block size in {BLOCK_SIZES} (got {block_size})"
        )
    if any(dev.type != "cpu" for dev in index_devices):
        # the kernel reads the index through host pointers: a CUDA (or meta) tensor would be garbage
        raise ValueError(
            f"fused CPU kernel: the layout's index tensors must be CPU tensors (BlockLayout.index_on('cpu')); "
            f"got {sorted({str(dev) for dev in index_devices})}"
        )
    kv_cnt, kv_idx, q_cnt, q_idx = index_shapes
    lh, nb = kv_cnt[0], kv_cnt[-1]
    if (
        len(kv_cnt) != 2 or q_cnt != kv_cnt or kv_idx != (lh, nb, nb) or q_idx != kv_idx
        or lh not in (1, H) or nb != -(-L // block_size)
    ):
        raise ValueError(
            f"fused CPU kernel: index tensors do not fit L={L}, block_size={block_size}, H={H}: "
            f"kv_counts {list(kv_cnt)}, kv_indices {list(kv_idx)}, q_counts {list(q_cnt)}, q_indices {list(q_idx)}"
        )
    if bias is not None and (
        len(bias[0]) != 4 or bias[1] != torch.float32 or bias[0][0] not in (1, B) or bias[0][1] not in (1, H)
        or tuple(bias[0][2:]) != (L, L)
    ):
        raise ValueError(f"fused CPU kernel: bias must be float32 [1 or {B}, 1 or {H}, {L}, {L}]; got {bias[1]} {list(bias[0])}")


def _fwd_impl(q, k, v, bias, index, block_size: int, seq_len: int, scale: float, workspace: Optional[dict] = None):
    """Output [B, H, L, D] (a fresh tensor) and LSE [B, H, Lp] of the forward kernel. ``workspace``:
    the layout's shared scratch dict (`BlockLayout.workspace`), eager calls only."""
    index = _check_op_args(q, k, v, bias, index, block_size, seq_len)
    B, H, L, D = q.shape
    Lp = index[0].shape[-1] * block_size
    # q, k, v are read in place through their strides (no padding: the kernel stops at L)
    q, k, v = rows_in_place(q), rows_in_place(k), rows_in_place(v)
    # K^T goes into a reused buffer: the layout's plan's, or the workspace guided layouts of one
    # config share (so that a fresh layout per forward does not pay a fresh allocation)
    kt = _block_t(k, block_size, reuse=layout_plans(index[0]) if workspace is None else workspace)
    bias4 = None if bias is None else _bias_view(bias, L)
    o = empty_in_order_of(q)
    lse = torch.empty(B, H, Lp, dtype=q.dtype)
    a = _args(q, k, v, kt, bias4, index, block_size, seq_len, scale)
    a.o, a.lse = o.data_ptr(), lse.data_ptr()
    a.so_b, a.so_h, a.so_l = o.stride(0), o.stride(1), o.stride(2)
    _run("bsa_forward", a, _fwd_items(index[0], B, H))
    return o, lse


def _bwd_impl(grad, q, k, v, out, lse, bias, index, block_size: int, seq_len: int, scale: float, compute_dbias: bool):
    """(dq, dk, dv, dbias) of the backward kernels: a key-column pass (dK, dV, dBias) and a
    query-row pass (dQ); dbias has bias's shape [Bg, Hg, L, L], or is empty without
    ``compute_dbias``. K^T is packed again (O(L D)) rather than saved by the forward."""
    index = _check_op_args(q, k, v, bias, index, block_size, seq_len)
    B, H, L, D = q.shape
    Lp = index[0].shape[-1] * block_size
    # q, k, v read in place through their strides; dO (and the gradients) padded to Lp rows
    q, k, v = rows_in_place(q), rows_in_place(k), rows_in_place(v)
    grad = grad.to(q.dtype)
    dout = _pad_rows(grad, Lp)
    delta = (grad * out).sum(-1)  # [B, H, L], contiguous
    if Lp != L:
        delta = F.pad(delta, (0, Lp - L))
    plan = layout_plans(index[0])
    kt = _block_t(k, block_size, reuse=plan)
    vt = _block_t(v, block_size)
    dq, dk, dv = (q.new_empty((B, H, Lp, D)) for _ in range(3))
    bias4 = None if bias is None else _bias_view(bias, L)
    want_bias = bias4 is not None and compute_dbias
    gB, gH = (bias4.shape[0], bias4.shape[1]) if want_bias else (B, H)
    dbias = q.new_zeros(gB, gH, L, L) if want_bias else None
    a = _args(q, k, v, kt, bias4, index, block_size, seq_len, scale)
    a.vt, a.lse, a.dout, a.delta = vt.data_ptr(), lse.contiguous().data_ptr(), dout.data_ptr(), delta.data_ptr()
    a.dq, a.dk, a.dv = dq.data_ptr(), dk.data_ptr(), dv.data_ptr()
    a.dbias = 0 if dbias is None else dbias.data_ptr()
    a.gB, a.gH = gB, gH
    _run("bsa_backward_kv", a, _group_items(index[2], gB, gH, B, H))
    _run("bsa_backward_q", a, _fwd_items(index[0], B, H))
    if dbias is None:
        dbias = q.new_empty((0,))
    return _cut_rows(dq, L), _cut_rows(dk, L), _cut_rows(dv, L), dbias


def _fwd_items(kv_counts: torch.Tensor, B: int, H: int) -> torch.Tensor:
    """(b, h, query block) items, flat id (b*H + h)*nb + qb, largest tile count first."""
    plan = layout_plans(kv_counts)
    key = ("rows", B, H, kv_counts._version)
    if key not in plan:
        counts = kv_counts.to(torch.int64)  # [lh, nb]
        per = counts.expand(H, -1) if counts.shape[0] == 1 else counts
        cost = per.unsqueeze(0).expand(B, -1, -1).reshape(-1)
        plan[key] = torch.argsort(cost, descending=True, stable=True).contiguous()
    return plan[key]


def _group_items(q_counts: torch.Tensor, gB: int, gH: int, B: int, H: int) -> torch.Tensor:
    """(bg, hg, key block) items for the key-column pass, flat id (bg*gH + hg)*nb + kb; an item
    covers every (b, h) its bias group shares, so its cost is the summed tile count."""
    plan = layout_plans(q_counts)
    key = ("cols", gB, gH, B, H, q_counts._version)
    if key not in plan:
        counts = q_counts.to(torch.int64)  # [lh, nb]
        per_h = counts.expand(H, -1) if counts.shape[0] == 1 else counts  # [H, nb]
        per_g = per_h.sum(0, keepdim=True) if gH == 1 else per_h  # [gH, nb]
        per_g = per_g * (B if gB == 1 else 1)
        cost = per_g.unsqueeze(0).expand(gB, -1, -1).reshape(-1)
        plan[key] = torch.argsort(cost, descending=True, stable=True).contiguous()
    return plan[key]


# ---- custom ops (what torch.compile sees) ---------------------------------------------------------
def _fwd_fake(q, k, v, bias, index, block_size, seq_len, scale):
    B, H, _, _ = q.shape
    return empty_in_order_of(rows_in_place(q)), q.new_empty((B, H, index[0].shape[-1] * block_size))


# Forward: (out float32 [B, H, L, D], lse float32 [B, H, nb*block_size]) from float32 CPU q, k, v
# [B, H, L, D] (L == seq_len), bias None or float32 [1 or B, 1 or H, L, L] and the layout's compact
# index (``BlockLayout.index_on``). Backward (FlashAttention-2 style, deterministic): (dq, dk, dv,
# dbias). Argument lists and autograd shared with the Triton ops (``kernels.opdefs``).
cpu_block_sparse_attention_fwd, cpu_block_sparse_attention_bwd = declare_attention_ops(
    "sparse_autotune::cpu_block_sparse_attention_fwd",
    "sparse_autotune::cpu_block_sparse_attention_bwd",
    forward_params="int block_size, int seq_len, float scale",
    backward_params="int block_size, int seq_len, float scale",
    forward=_fwd_impl,
    forward_fake=_fwd_fake,
    backward=_bwd_impl,
    backward_args=lambda params: params,
    device_types="cpu",
)


def _fwd_eager(plan: tuple, q, k, v, bias, kv_counts, kv_indices):
    """The forward of ``_EagerAttention``: ``plan`` = (the layout's index, block_size, seq_len, scale,
    the layout's workspace)."""
    index, block_size, seq_len, scale, workspace = plan
    return _fwd_impl(q, k, v, bias, index, block_size, seq_len, scale, workspace)


# plain eager calls with autograd: the forward op's autograd formula without the dispatcher
_EagerAttention = eager_autograd_function("CpuBlockSparseAttentionEager", _fwd_eager, _bwd_impl,
                                          cpu_block_sparse_attention_bwd)


def fused_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    bias: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over ``layout``'s pairs with the fused CPU kernel; q, k, v
    [B, H, L, D] on the CPU, bias broadcasting to [B, H, L, L]. Differentiable in q, k, v and bias
    (deterministic gradients). Under graph capture it calls the registered op
    ``sparse_autotune::cpu_block_sparse_attention_fwd`` (traceable by ``torch.compile(fullgraph=True)``);
    a plain eager call runs the op's implementation (and autograd formula) without its dispatch.
    Raises RuntimeError when the kernel is not available."""
    if not available():
        raise RuntimeError(unavailable_reason())
    D = q.shape[-1]
    if D not in HEAD_DIMS or layout.block_size not in BLOCK_SIZES:
        raise ValueError(f"fused CPU kernel: head dim must be one of {HEAD_DIMS} and block size one of {BLOCK_SIZES}")
    scale = resolve_scale(D, scale)
    out_dtype = q.dtype
    if not (q.dtype is k.dtype is v.dtype is torch.float32):  # a no-op .to() still costs ~1 us of dispatch
        q, k, v = (t.to(torch.float32) for t in (q, k, v))
    if bias is not None:
        # broadcast rows / columns materialised here, batch / head broadcast kept at size 1: the
        # op's dbias has this shape and autograd sums it back to the caller's
        bias = _bias_view(bias.to(torch.float32), q.shape[2])
    index = host_index(layout)  # a layout built on a GPU: its index copied to the host once
    if not plain_eager(q, k, v, bias):  # graph capture: the registered op
        out, _ = cpu_block_sparse_attention_fwd(q, k, v, bias, *index, layout.block_size, layout.seq_len, scale)
    elif not wants_grad(q, k, v, bias):  # inference: the op's implementation, without the dispatcher
        out = _fwd_impl(q, k, v, bias, index, layout.block_size, layout.seq_len, scale, layout.workspace)[0]
    else:  # training: the op's autograd formula, without the dispatcher
        params = (layout.block_size, layout.seq_len, scale)
        out = _EagerAttention.apply(q, k, v, bias, index, (index, *params, layout.workspace), params)[0]
    return out.to(out_dtype)

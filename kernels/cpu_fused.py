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

Threads: ``torch.get_num_threads()`` Python threads call the kernel at once (ctypes releases the
GIL); they share an atomic counter over the work items, ordered largest first.
What it reads and writes: q, k, v, the output and LSE, plus K^T (and V^T in backward), all
O(L*D); the bias is read tile by tile in place, never gathered or expanded. Per-thread scratch is
a few hundred KiB. Supported: head dims 8, 16, 32, 64; block sizes 16, 32, 64, 128; float32
compute (half inputs are converted, like the reference).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from patterns import BlockLayout

from .reference import resolve_scale

__all__ = ["available", "unavailable_reason", "supports", "fused_sparse_attention"]

SOURCE = Path(__file__).with_name("csrc") / "block_sparse_cpu.c"
ABI_VERSION = 1
HEAD_DIMS = (8, 16, 32, 64)
BLOCK_SIZES = (16, 32, 64, 128)


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
_PLANS: "weakref.WeakKeyDictionary[BlockLayout, dict]" = weakref.WeakKeyDictionary()
_POOLS: dict = {}


def _index(layout: BlockLayout) -> dict:
    """This backend's per-layout plan: the layout's compact index (int32, contiguous) under
    "index", plus cached work lists and workspaces."""
    plan = _PLANS.setdefault(layout, {})
    if "index" not in plan:
        idx = layout.index_on("cpu")  # the C kernel reads host memory, wherever the layout was built
        plan["index"] = tuple(t.to(torch.int32).contiguous() for t in idx)
    return plan


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


# ---- autograd ------------------------------------------------------------------------------------
def _cut_rows(t: torch.Tensor, L: int) -> torch.Tensor:
    """[B, H, Lp, D] -> its first L rows (the inverse of ``_pad_rows``)."""
    return t if t.shape[2] == L else t[:, :, :L]


def _pad_rows(t: torch.Tensor, Lp: int) -> torch.Tensor:
    L = t.shape[2]
    t = t.contiguous()
    return t if Lp == L else F.pad(t, (0, 0, 0, Lp - L))


def _block_t(t: torch.Tensor, bs: int, reuse: Optional[dict] = None) -> torch.Tensor:
    """[B, H, Lp, D] -> [B, H, nb, D, bs]: each block's transposed tile contiguous (the kernel's
    K^T / V^T operand; a [D, Lp] row-major transpose would put its rows a power-of-two stride apart,
    all in one L1 cache set). Packed by the kernel library, in parallel.
    ``reuse`` (calls without autograd: the layout's plan): write into the buffer this thread used
    on the previous call with this layout and shape, kept with the layout (freed with it), instead
    of a fresh allocation whose first-touch page faults cost more than the copy itself (32 MiB:
    ~20 ms against ~3 ms). A new layout object (``BlockLayout.fresh()``) starts without it, so a
    cold call's peak memory counts it."""
    B, H, Lp, D = t.shape
    shape = (B, H, Lp // bs, D, bs)
    key = ("kt", threading.get_ident())
    out = reuse.get(key) if reuse is not None else None
    if out is None or out.shape != shape or out.dtype != t.dtype:
        out = t.new_empty(shape)
        if reuse is not None:
            reuse[key] = out  # one buffer per (layout, thread): the latest shape only
    a = _Args()
    a.B, a.H, a.L, a.Lp, a.D, a.BS, a.nb = B, H, Lp, Lp, D, bs, Lp // bs
    a.k, a.kt = t.data_ptr(), out.data_ptr()
    # a small copy is not worth a thread hand-off
    _run("bsa_pack_t", a, _arange(B * H * (Lp // bs)), max_threads=1 if t.numel() < (1 << 18) else 1 << 30)
    return out


_ARANGE: dict = {}


def _arange(n: int) -> torch.Tensor:
    if n not in _ARANGE:
        _ARANGE[n] = torch.arange(n, dtype=torch.int64)
    return _ARANGE[n]


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


def _args(q, k, v, kt, bias, layout: BlockLayout, scale: float) -> _Args:
    B, H, Lp, D = q.shape
    kc, ki, qc, qi = _index(layout)["index"]
    a = _Args()
    a.B, a.H, a.L, a.Lp, a.D, a.BS, a.nb = B, H, layout.seq_len, Lp, D, layout.block_size, layout.n_blocks
    a.q, a.k, a.v, a.kt = q.data_ptr(), k.data_ptr(), v.data_ptr(), kt.data_ptr()
    if bias is not None:
        a.bias = bias.data_ptr()
        a.sb_b = bias.stride(0) if bias.shape[0] > 1 else 0
        a.sb_h = bias.stride(1) if bias.shape[1] > 1 else 0
        a.sb_i = bias.stride(2)
    a.lh = kc.shape[0]
    a.kv_cnt, a.kv_idx, a.q_cnt, a.q_idx = kc.data_ptr(), ki.data_ptr(), qc.data_ptr(), qi.data_ptr()
    a.scale = scale
    return a


def _forward(q, k, v, bias, layout: BlockLayout, scale: float, reuse: bool):
    """Padded inputs, K^T tiles, bias view, output [B, H, Lp, D] and LSE [B, H, Lp]."""
    B, H, L, D = q.shape
    Lp = layout.n_blocks * layout.block_size
    qp, kp, vp = (_pad_rows(t, Lp) for t in (q, k, v))
    kt = _block_t(kp, layout.block_size, reuse=(_index(layout) if layout.workspace is None else layout.workspace) if reuse else None)
    bias4 = None if bias is None else _bias_view(bias, L)
    o = torch.empty_like(qp)
    lse = torch.empty(B, H, Lp, dtype=q.dtype)
    a = _args(qp, kp, vp, kt, bias4, layout, scale)
    a.o, a.lse = o.data_ptr(), lse.data_ptr()
    _run("bsa_forward", a, _fwd_items(layout, B, H))
    return qp, kp, vp, kt, bias4, o, lse


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, layout: BlockLayout, scale: float):
        L = q.shape[2]
        qp, kp, vp, kt, bias4, o, lse = _forward(q, k, v, bias, layout, scale, reuse=False)
        ctx.layout, ctx.scale, ctx.L = layout, scale, L
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.save_for_backward(qp, kp, vp, kt, bias4, o, lse)
        return _cut_rows(o, L)

    @staticmethod
    def backward(ctx, grad):
        qp, kp, vp, kt, bias4, o, lse = ctx.saved_tensors
        layout, scale, L = ctx.layout, ctx.scale, ctx.L
        B, H, Lp, D = qp.shape
        dout = _pad_rows(grad.to(qp.dtype), Lp)
        delta = (dout * o).sum(-1).contiguous()
        vt = _block_t(vp, layout.block_size)
        dq, dk, dv = torch.empty_like(qp), torch.empty_like(kp), torch.empty_like(vp)
        want_bias = bias4 is not None and ctx.needs_input_grad[3]
        gB, gH = (bias4.shape[0], bias4.shape[1]) if want_bias else (B, H)
        dbias = qp.new_zeros(gB, gH, L, L) if want_bias else None
        a = _args(qp, kp, vp, kt, bias4, layout, scale)
        a.vt, a.o, a.lse, a.dout, a.delta = vt.data_ptr(), o.data_ptr(), lse.data_ptr(), dout.data_ptr(), delta.data_ptr()
        a.dq, a.dk, a.dv = dq.data_ptr(), dk.data_ptr(), dv.data_ptr()
        a.dbias = 0 if dbias is None else dbias.data_ptr()
        a.gB, a.gH = gB, gH
        _run("bsa_backward_kv", a, _group_items(layout, gB, gH, B, H))
        _run("bsa_backward_q", a, _fwd_items(layout, B, H))
        gbias = None
        if want_bias:
            gbias = dbias.sum_to_size(_shape4(ctx.bias_shape)).reshape(ctx.bias_shape)
        return _cut_rows(dq, L), _cut_rows(dk, L), _cut_rows(dv, L), gbias, None, None


def _shape4(shape) -> tuple:
    return (1,) * (4 - len(shape)) + tuple(shape)


def _fwd_items(layout: BlockLayout, B: int, H: int) -> torch.Tensor:
    """(b, h, query block) items, flat id (b*H + h)*nb + qb, largest tile count first."""
    plan = _index(layout)
    key = ("rows", B, H)
    if key not in plan:
        kc = plan["index"][0].to(torch.int64)  # [lh, nb]
        per = kc.expand(H, -1) if kc.shape[0] == 1 else kc
        cost = per.unsqueeze(0).expand(B, -1, -1).reshape(-1)
        plan[key] = torch.argsort(cost, descending=True, stable=True).contiguous()
    return plan[key]


def _group_items(layout: BlockLayout, gB: int, gH: int, B: int, H: int) -> torch.Tensor:
    """(bg, hg, key block) items for the key-column pass, flat id (bg*gH + hg)*nb + kb; an item
    covers every (b, h) its bias group shares, so its cost is the summed tile count."""
    plan = _index(layout)
    key = ("cols", gB, gH, B, H)
    if key not in plan:
        qc = plan["index"][2].to(torch.int64)  # [lh, nb]
        per_h = qc.expand(H, -1) if qc.shape[0] == 1 else qc  # [H, nb]
        per_g = per_h.sum(0, keepdim=True) if gH == 1 else per_h  # [gH, nb]
        per_g = per_g * (B if gB == 1 else 1)
        cost = per_g.unsqueeze(0).expand(gB, -1, -1).reshape(-1)
        plan[key] = torch.argsort(cost, descending=True, stable=True).contiguous()
    return plan[key]


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
    (deterministic gradients). Raises RuntimeError when the kernel is not available."""
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(reason)
    D = q.shape[-1]
    if D not in HEAD_DIMS or layout.block_size not in BLOCK_SIZES:
        raise ValueError(f"fused CPU kernel: head dim must be one of {HEAD_DIMS} and block size one of {BLOCK_SIZES}")
    scale = resolve_scale(D, scale)
    out_dtype = q.dtype
    q, k, v = (t.to(torch.float32) for t in (q, k, v))
    if bias is not None:
        bias = bias.to(torch.float32)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias)):
        return _FusedAttention.apply(q, k, v, bias, layout, scale).to(out_dtype)
    o = _forward(q, k, v, bias, layout, scale, reuse=True)[5]
    return _cut_rows(o, q.shape[2]).to(out_dtype)

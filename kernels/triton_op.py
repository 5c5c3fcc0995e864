"""The Triton block-sparse attention as PyTorch custom ops, with autograd.

Ops (namespace ``sparse_autotune``):

* ``block_sparse_attention_fwd(q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices,
  block_size, scale, block_m, block_n, num_warps, num_stages, bwd_block_m, bwd_block_n,
  bwd_num_warps, bwd_num_stages) -> (out, lse)``
* ``block_sparse_attention_bwd(grad_out, q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts,
  q_indices, block_size, scale, block_m, block_n, num_warps, num_stages, compute_dbias)
  -> (dq, dk, dv, dbias)``, launched with the backward's own config: (block_m, block_n) is the
  (owned, walked) tile, i.e. dQ owns block_m queries and walks block_n keys, dK/dV owns block_m
  keys and walks block_n queries (the FlashAttention-2 tutorial's 128x32 / 32x128 split). On a
  layout block under 64 the tiles may be multiples of the block: dQ walks the coarse index of the
  rows, dK/dV that of the columns (``kernels.coarse_index``); the dBias kernel keeps tiles
  clipped to the block (``kernels.config.dbias_tiles``).

q, k, v are [B, H, L, D]; ``bias`` is None or a 4-d tensor whose every dimension is 1 or the full
size of [B, H, L, L] (the entry point adds the leading dimensions); ``lse`` is float32 [B, H, L] in
the log2 domain (+inf on rows with no kept key). ``dbias`` has the shape and dtype of ``bias`` when
``compute_dbias`` is true, otherwise it is an empty tensor. Both ops have fake (meta)
implementations, so they trace under torch.compile; the forward op has an autograd formula that
calls the backward op (no double backward). The gradient of ``lse`` is ignored: it is an auxiliary
output for the backward pass. Graph capture (torch.compile, torch.export, dispatch modes, tensor
subclasses) sees these ops; a plain eager call skips their dispatch, pure host cost there: without
gradients the forward is launched directly (no LSE), with gradients the same autograd formula runs
in an ``autograd.Function`` (``kernels.opdefs.eager_autograd_function``).

Determinism: every gradient is deterministic (bitwise reproducible for a given config).
dQ is accumulated by the program that owns the query tile, dK/dV by the program that owns the key
tile (walking the column index, no atomics), and dBias tiles are written by exactly one program:
directly by the dQ kernel when the bias is not broadcast over the batch (or B == 1), otherwise by
a separate kernel that loops over the batch in order. A bias broadcast over heads (or over a
sequence dimension) gets its per-head [*, H, L, L] gradient summed with ``torch.sum``, which is
deterministic.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch

from patterns import BlockLayout

from .capabilities import TRITON_DTYPES, TRITON_HEAD_DIMS
from .coarse_index import coarse_index
from .config import (
    SHARED_MEMORY_LIMIT,
    KernelConfig,
    default_backward_config,
    dbias_tiles,
    default_forward_config,
    fit_stages,
    shared_memory_bytes,
)
from .inputs import gate_output
from .opdefs import (
    _dim_order,
    declare_attention_ops,
    eager_autograd_function,
    empty_in_order_of,
    plain_eager,
    rows_in_place,
    wants_grad,
)
from .plans import layout_plans
from .reference import resolve_scale
from .triton_bwd_kernels import (
    _attn_bwd_dbias_kernel,
    _attn_bwd_dkdv_kernel,
    _attn_bwd_dq_kernel,
    _attn_bwd_preprocess_kernel,
)
from .triton_kernels import LOG2E, _attn_fwd_kernel

__all__ = ["triton_sparse_attention", "triton_attention_checked", "SUPPORTED_HEAD_DIMS", "SUPPORTED_DTYPES"]

SUPPORTED_HEAD_DIMS: tuple[int, ...] = TRITON_HEAD_DIMS  # the registry's record (kernels.backends)
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = tuple(getattr(torch, name) for name in TRITON_DTYPES)


# ------------------------------------------------------------------------------------------------
# launch helpers
# ------------------------------------------------------------------------------------------------
def _d_pad(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def _prec(dtype: torch.dtype) -> str:
    # float32 dots in full precision (no TF32): the kernel is checked against a float64 oracle
    return "ieee" if dtype == torch.float32 else "tf32"


def _elem_bytes(dtype: torch.dtype) -> int:
    return 4 if dtype == torch.float32 else 2


def _nb_pad(nb: int) -> int:
    return max(1, 1 << (nb - 1).bit_length())


def _shared_limit(device: torch.device) -> int:
    """Shared memory one block may use on ``device`` (opt-in maximum; sm_90's 232,448 bytes for the
    interpreter or when the property is missing)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "shared_memory_per_block_optin", 0) or SHARED_MEMORY_LIMIT)
    return SHARED_MEMORY_LIMIT


def _stages(kernel: str, dtype: torch.dtype, block_m: int, block_n: int, head_dim: int, num_stages: int,
            limit: int = SHARED_MEMORY_LIMIT) -> int:
    """Pipeline stages actually launched: ``num_stages`` lowered until the kernel's shared memory
    (``config.shared_memory_bytes``, an upper bound checked against sm_90 compilations) fits
    ``limit``; configs offered by ``candidate_configs`` are never lowered on an H100 / H200."""
    return fit_stages(kernel, _elem_bytes(dtype), block_m, block_n, _d_pad(head_dim), num_stages, limit)


@functools.lru_cache(maxsize=512)  # per call otherwise: four shared-memory bounds in Python
def _check_fits_on(device: torch.device, dtype: torch.dtype, D: int, cfg: KernelConfig, bcfg: KernelConfig,
                   block_size: int) -> None:
    limit = _shared_limit(device)
    elem = _elem_bytes(dtype)
    dbias = KernelConfig(*dbias_tiles(bcfg.block_m, bcfg.block_n, block_size), bcfg.num_warps, bcfg.num_stages)
    for kern, c in (("fwd", cfg), ("dq", bcfg), ("dkdv", bcfg), ("dbias", dbias)):
        need = shared_memory_bytes(kern, elem, c.block_m, c.block_n, _d_pad(D), 1)
        if need > limit:
            which = "config" if kern == "fwd" else "bwd_config"
            raise ValueError(
                f"triton backend: {which} {c.block_m}x{c.block_n}/w{c.num_warps} needs up to {need} bytes of shared "
                f"memory in the {kern} kernel at head_dim={D}, {str(dtype).replace('torch.', '')}, more than this "
                f"GPU's {limit}; choose one of kernels.config.candidate_configs / candidate_backward_configs"
            )


def _tile_order(counts: torch.Tensor, block_size: int, tile: int) -> torch.Tensor:
    """int32 [layout heads, n_tiles]: the tiles of each layout head, most kept blocks first (stable,
    so equal rows keep their order). Kept with the layout's plans (``kernels.plans``, keyed by the
    counts tensor and its version: the layout's device index is built once per layout and device),
    so a call launches no sorting kernels after the first."""
    plans = layout_plans(counts)
    key = ("triton-tile-order", counts._version, block_size, tile)
    order = plans.get(key)
    if order is None:
        per_tile = counts.repeat_interleave(block_size // tile, dim=1)
        order = plans[key] = torch.argsort(per_tile, dim=1, descending=True, stable=True).to(torch.int32).contiguous()
    return order


def _row_strides(t: torch.Tensor) -> tuple[int, ...]:
    """The strides of ``rows_in_place(t)`` without making its copy: t's own, or contiguous ones."""
    if t.stride(-1) == 1 or t.shape[-1] == 1:
        return t.stride()
    B, H, L, D = t.shape
    return (H * L * D, L * D, D, 1)


def _bias_strides(bias: Optional[torch.Tensor]) -> tuple[int, int, int, int]:
    """Strides of a 4-d bias with 0 on broadcast (size-1) dimensions."""
    if bias is None:
        return (0, 0, 0, 0)
    return tuple(0 if bias.shape[i] == 1 else bias.stride(i) for i in range(4))  # type: ignore[return-value]


class _device_ctx:
    """Make ``t``'s CUDA device current for a launch (a no-op for CPU tensors / the interpreter)."""

    def __init__(self, t: torch.Tensor) -> None:
        self.ctx = torch.cuda.device(t.device) if t.is_cuda else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


def _common(q: torch.Tensor, kv_counts: torch.Tensor, block_size: int):
    if kv_counts.device != q.device:
        # the kernels read the index through device pointers: it must live where q does
        raise ValueError(f"triton backend: the layout's index is on {kv_counts.device} but q is on {q.device} "
                         "(pass BlockLayout.index_on(q.device))")
    B, H, L, D = q.shape
    nb = kv_counts.shape[-1]
    layout_head_stride = 1 if kv_counts.shape[0] > 1 else 0
    consts = dict(
        HEAD_DIM=D,
        D_PAD=_d_pad(D),
        BLOCK_SIZE=block_size,
        EVEN_L=(L % block_size == 0),
        EVEN_D=(D == _d_pad(D)),
        PREC=_prec(q.dtype),
    )
    return B, H, L, D, nb, layout_head_stride, consts


_rows = rows_in_place


def _s3(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, row) strides of a [B, H, L, D] tensor."""
    s = t.stride()
    return s[0], s[1], s[2]


@dataclass(frozen=True)
class _FwdPlan:
    """Everything a forward launch needs besides the tensors, for one (shapes, strides, dtype,
    device, bias layout, layout geometry, config): made once (``_fwd_plan``), then looked up."""

    copy: bool  # q, k or v needs a copy (a head dimension without unit stride)
    out_order: tuple[int, ...]  # memory order of the output (q's)
    out_strides: tuple[int, ...]  # the output's strides in that order (allocated with them: no sorting per call)
    lse_shape: tuple[int, int, int]
    grid: tuple[int]
    strides: tuple  # (batch, head, row) strides of q, k, v as launched and of the output, then the bias's 4
    sizes: tuple  # B, H, L, NB, N_TILES, LAYOUT_HEAD_STRIDE, NB_ROWS
    consts: dict  # with the LSE stored
    consts_no_lse: dict  # inference: the LSE neither allocated nor written
    consts_gated: dict  # inference of a gated module: no LSE, sigmoid(gate) applied in the epilogue
    block_size: int
    block_m: int
    row_blocks: int = 1  # layout row / column blocks per coarse tile (tiles that are multiples of the block)
    col_blocks: int = 1


_FWD_PLANS: dict = {}


def _cache_put(cache: dict, key, value):
    if len(cache) >= 4096:
        cache.clear()
    cache[key] = value
    return value


def _fwd_plan(q, k, v, bias, kv_counts, block_size, block_m, block_n, num_warps, num_stages,
              rows_per_cta: int = 1) -> _FwdPlan:
    """The forward launch plan of these inputs (see ``_FwdPlan``); refuses an index that is not on
    q's device. ``rows_per_cta`` is lowered to the greatest power of two dividing the batch. A tile
    larger than the layout block walks the coarse index (``kernels.coarse_index``) of
    block_m / block_size layout rows by block_n / block_size layout columns."""
    if kv_counts.device != q.device:
        # the kernels read the index through device pointers: it must live where q does
        raise ValueError(f"triton backend: the layout's index is on {kv_counts.device} but q is on {q.device} "
                         "(pass BlockLayout.index_on(q.device))")
    B, H, L, D = q.shape
    lh, nb = kv_counts.shape
    rb, cb = max(1, block_m // block_size), max(1, block_n // block_size)
    nb_rows, nb = -(-nb // rb), -(-nb // cb)  # coarse rows and columns (the layout's when rb = cb = 1)
    n_tiles = (nb_rows * rb * block_size) // block_m
    rows = math.gcd(rows_per_cta, B)
    consts = dict(
        HEAD_DIM=D, D_PAD=_d_pad(D), BLOCK_SIZE=block_size, EVEN_L=(L % max(block_size, block_m, block_n) == 0),
        EVEN_D=(D == _d_pad(D)), PREC=_prec(q.dtype), BLOCK_M=block_m, BLOCK_N=block_n, NB_PAD=_nb_pad(nb),
        HAS_BIAS=bias is not None, ROWS_PER_CTA=rows, ROW_BLOCKS=rb, COL_BLOCKS=cb,
        num_warps=num_warps, num_stages=_stages("fwd", q.dtype, block_m, block_n, D, num_stages, _shared_limit(q.device)),
    )
    row_strides = [_row_strides(t) for t in (q, k, v)]
    out_order = _dim_order(row_strides[0])
    out_strides = torch.empty_permuted(q.shape, out_order, device="meta").stride()  # what _launch_fwd allocates
    return _FwdPlan(
        copy=any(t.stride(3) != 1 for t in (q, k, v)), out_order=out_order, out_strides=out_strides,
        lse_shape=(B, H, L), grid=(n_tiles * (B // rows) * H,),
        strides=(*(x for st in (*row_strides, out_strides) for x in st[:3]), *_bias_strides(bias)),
        sizes=(B, H, L, nb, n_tiles, 1 if lh > 1 else 0, nb_rows),
        consts={**consts, "STORE_LSE": True}, consts_no_lse={**consts, "STORE_LSE": False},
        consts_gated={**consts, "STORE_LSE": False, "HAS_GATE": True},
        block_size=block_size, block_m=block_m, row_blocks=rb, col_blocks=cb,
    )


def _fwd_impl(q, k, v, bias, kv_counts, kv_indices, block_size, scale, block_m, block_n, num_warps, num_stages):
    """(out, lse): out [B, H, L, D] in q's memory order (``empty_in_order_of``), lse float32 [B, H, L].
    q, k, v are read through their strides (no copies); the launch plan is cached per (shapes,
    strides, dtype, device, bias layout, layout geometry, config)."""
    key = (q.shape, q.stride(), k.stride(), v.stride(), q.dtype, q.device,
           None if bias is None else (bias.shape, bias.stride()), kv_counts.shape, kv_counts.device,
           block_size, block_m, block_n, num_warps, num_stages)
    plan = _FWD_PLANS.get(key)
    if plan is None:
        plan = _cache_put(_FWD_PLANS, key, _fwd_plan(q, k, v, bias, kv_counts, block_size, block_m, block_n,
                                                     num_warps, num_stages))
    return _launch_fwd(plan, q, k, v, bias, kv_counts, kv_indices, scale, True)


def _walk_index(counts, indices, block_size: int, rows: int, cols: int, tile: int):
    """(counts, indices, bits, tile order) a kernel walks: the given compact index (bits unused)
    for tiles dividing the layout block, else its cached coarse index of ``rows`` owned x ``cols``
    walked layout blocks (`kernels.coarse_index`). The forward and dQ walk the layout's row index,
    dK/dV its column index."""
    if rows == 1 and cols == 1:
        return counts, indices, indices, _tile_order(counts, block_size, tile)
    c, i, bits = coarse_index(counts, indices, rows, cols)
    return c, i, bits, _tile_order(c, rows * block_size, tile)


def _launch_fwd(plan: _FwdPlan, q, k, v, bias, kv_counts, kv_indices, scale, store_lse: bool, gate=None):
    """Launch the forward kernel with a plan: (out, lse), lse None unless ``store_lse``; with
    ``gate`` ([B, H, L, D] logits, unit stride in the head dimension) the output is
    sigmoid(gate) * attention, applied in the kernel's epilogue."""
    if plan.copy:
        q, k, v = rows_in_place(q), rows_in_place(k), rows_in_place(v)
    out = q.new_empty_strided(q.shape, plan.out_strides)  # = torch.empty_permuted(q.shape, plan.out_order)
    lse = q.new_empty(plan.lse_shape, dtype=torch.float32) if store_lse else None
    counts, indices, bits, order = _walk_index(kv_counts, kv_indices, plan.block_size, plan.row_blocks,
                                               plan.col_blocks, plan.block_m)
    g = gate.stride() if gate is not None else (0, 0, 0)
    st = plan.strides
    args = (q, k, v, q if bias is None else bias, out, out if lse is None else lse, out if gate is None else gate,
            counts, indices, bits, *st[:12], g[0], g[1], g[2], *st[12:], order, *plan.sizes, scale * LOG2E)
    consts = plan.consts if store_lse else plan.consts_no_lse
    if gate is not None:  # inference only: the gradients go through the unfused product (gate_output)
        if store_lse:
            raise ValueError("triton backend: a gate is applied in the kernel for calls without gradients only")
        consts = plan.consts_gated
    if q.is_cuda and q.device.index != torch.cuda.current_device():
        with torch.cuda.device(q.device):
            _attn_fwd_kernel[plan.grid](*args, **consts)
    else:
        _attn_fwd_kernel[plan.grid](*args, **consts)
    return out, lse


@functools.lru_cache(maxsize=512)  # per call otherwise: three shared-memory fits in Python
def _bwd_stages(device: torch.device, dtype: torch.dtype, block_m: int, block_n: int, D: int, num_stages: int,
                block_size: int) -> dict:
    """The stages each backward kernel launches with (``_stages`` against the device's limit; dBias
    at its block-dividing tiles, ``config.dbias_tiles``)."""
    limit = _shared_limit(device)
    tiles = {"dq": (block_m, block_n), "dkdv": (block_m, block_n), "dbias": dbias_tiles(block_m, block_n, block_size)}
    return {kern: _stages(kern, dtype, *tiles[kern], D, num_stages, limit) for kern in tiles}


def _dbias_plan(bias: torch.Tensor, B: int, H: int, L: int) -> tuple[tuple, torch.dtype, bool, list[int]]:
    """dBias plan: (the shape [Bb, H, L, L] of its zero-filled buffer - zeros outside the layout, Bb =
    the bias batch; the buffer's dtype, float32 when broadcast dimensions are summed afterwards;
    whether the dQ kernel writes it (one bias per batch element, or B = 1); the broadcast
    dimensions to sum over)."""
    Bb = bias.shape[0]
    reduce_dims = [i for i in (1, 2, 3) if bias.shape[i] == 1 and (H if i == 1 else L) > 1]
    buf_dtype = bias.dtype if not reduce_dims else torch.float32
    return (Bb, H, L, L), buf_dtype, Bb == B or B == 1, reduce_dims


@dataclass(frozen=True)
class _BwdPlan:
    """Everything the backward launches need besides the tensors and the scale, for one (shapes,
    strides of q, k, v, out and dO, dtype, device, bias layout, layout geometry, config, whether
    dBias is computed): made once (``_bwd_plan``), then looked up, so that a call allocates its
    buffers and launches. The launch arguments keep the kernels' order; each ``*_strides`` tuple is
    the run of stride (and stride-like) arguments of one kernel, each ``*_consts`` its constexprs
    and launch options."""

    copy: bool  # q, k, v, out or dO needs a copy (a head dimension without unit stride)
    grad_strides: tuple  # strides of dq, dk, dv (q's, k's, v's memory order: empty_in_order_of)
    delta_shape: tuple[int, int, int]
    sizes: tuple  # B, H, L, walked (coarse) blocks, n_tiles, layout head stride, owned (coarse) rows: dQ / dK,dV
    row_blocks: int  # layout blocks per owned tile (1: tiles dividing the block)
    col_blocks: int  # layout blocks per walked tile
    pre_grid: tuple[int]
    pre_args: tuple  # the preprocess kernel's strides of out and dO, H, L, its tile count
    pre_consts: dict
    dq_grid: tuple[int]
    dq_strides: tuple  # q, k, v, dO, dq (batch, head, row), the bias's 4, the dBias buffer's 2
    dq_consts: dict
    dkdv_grid: tuple[int]
    dkdv_strides: tuple  # q, k, v, dO, dk, dv (batch, head, row), the bias's 4
    dkdv_consts: dict
    compute_dbias: bool
    db_shape: tuple = ()  # the dBias buffer (see _dbias_plan)
    db_dtype: Optional[torch.dtype] = None
    db_in_dq: bool = False
    reduce_dims: tuple = ()
    dbias_grid: tuple = ()  # the separate dBias kernel (a bias broadcast over the batch), else ()
    dbias_strides: tuple = ()  # q, k, v, dO (batch, head, row), the bias's head / row / column, L * L
    dbias_sizes: tuple = ()  # B, H, L, the layout's blocks, layout head stride
    dbias_consts: Optional[dict] = None


_BWD_PLANS: dict = {}


def _bwd_plan(do, q, k, v, out, bias, kv_counts, block_size, block_m, block_n, num_warps, num_stages,
              compute_dbias: bool) -> _BwdPlan:
    """The backward launch plan of these inputs (see ``_BwdPlan``); refuses an index that is not on
    q's device. Backward tiles: (block_m, block_n) = (owned, walked): dQ and dBias own block_m query
    rows and walk block_n keys; dK/dV own block_m keys and walk block_n query rows. Tiles that are
    multiples of the layout block walk the coarse index (``row_blocks`` owned x ``col_blocks`` walked
    layout blocks, `_walk_index`); dBias of a bias shared by the batch keeps block-dividing tiles
    (``config.dbias_tiles``)."""
    B, H, L, D, nb, lhs, consts = _common(q, kv_counts, block_size)
    qs, ks, vs, os_, dos = (_row_strides(t) for t in (q, k, v, out, do))
    grad_strides = tuple(torch.empty_permuted(q.shape, _dim_order(st), device="meta").stride() for st in (qs, ks, vs))
    sb = _bias_strides(bias)
    stages = _bwd_stages(q.device, q.dtype, block_m, block_n, D, num_stages, block_size)
    rb, cb = max(1, block_m // block_size), max(1, block_n // block_size)
    nb_rows, ncols = -(-nb // rb), -(-nb // cb)  # owned and walked (coarse) blocks
    n_tiles = (nb_rows * rb * block_size) // block_m  # query tiles of dQ = key tiles of dK/dV
    n_pre = triton_cdiv(L, block_m)
    tile = dict(NB_PAD=_nb_pad(ncols), HAS_BIAS=bias is not None, ROW_BLOCKS=rb, COL_BLOCKS=cb, num_warps=num_warps)
    coarse = {**consts, "EVEN_L": L % max(block_size, block_m, block_n) == 0}
    db_shape, db_dtype, db_in_dq, reduce_dims = _dbias_plan(bias, B, H, L) if compute_dbias else ((), None, False, [])
    plan = dict(
        copy=any(t.stride(-1) != 1 and t.shape[-1] != 1 for t in (q, k, v, out, do)),
        grad_strides=grad_strides, delta_shape=(B, H, L), sizes=(B, H, L, ncols, n_tiles, lhs, nb_rows),
        row_blocks=rb, col_blocks=cb,
        pre_grid=(n_pre * B * H,), pre_args=(*os_[:3], *dos[:3], H, L, n_pre),
        pre_consts=dict(HEAD_DIM=D, D_PAD=consts["D_PAD"], BLOCK_M=block_m, EVEN_L=(L % block_m == 0),
                        EVEN_D=consts["EVEN_D"], num_warps=4),
        dq_grid=(n_tiles * B * H,),
        dq_strides=(*qs[:3], *ks[:3], *vs[:3], *dos[:3], *grad_strides[0][:3], *sb,
                    H * L * L if (db_in_dq and db_shape[0] > 1) else 0, L * L),
        dq_consts=dict(BLOCK_M=block_m, BLOCK_N=block_n, **tile, WRITE_DBIAS=db_in_dq, num_stages=stages["dq"],
                       **coarse),
        dkdv_grid=(n_tiles * B * H,),
        dkdv_strides=(*qs[:3], *ks[:3], *vs[:3], *dos[:3], *grad_strides[1][:3], *grad_strides[2][:3], *sb),
        dkdv_consts=dict(BLOCK_M=block_n, BLOCK_N=block_m, **tile, num_stages=stages["dkdv"], **coarse),
        compute_dbias=compute_dbias, db_shape=db_shape, db_dtype=db_dtype, db_in_dq=db_in_dq,
        reduce_dims=tuple(reduce_dims),
    )
    if compute_dbias and not db_in_dq:
        dbm, dbn = dbias_tiles(block_m, block_n, block_size)
        plan.update(
            dbias_grid=((nb * block_size) // dbm, nb * (block_size // dbn), H),
            dbias_strides=(*qs[:3], *ks[:3], *vs[:3], *dos[:3], sb[1], sb[2], sb[3], L * L),
            dbias_sizes=(B, H, L, nb, lhs),
            dbias_consts=dict(BLOCK_M=dbm, BLOCK_N=dbn, num_warps=num_warps, num_stages=stages["dbias"], **consts),
        )
    return _BwdPlan(**plan)


def _bwd_impl(do, q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices,
              block_size, scale, block_m, block_n, num_warps, num_stages, compute_dbias):
    """(dq, dk, dv, dbias): dq, dk, dv in q's, k's, v's memory order, dbias of the bias's shape and
    dtype when ``compute_dbias`` (else empty). The launch plan is cached per (shapes, strides of q,
    k, v, out and dO, dtype, device, bias layout, layout geometry, config, compute_dbias)."""
    compute_dbias = bool(compute_dbias and bias is not None)
    key = (q.shape, q.stride(), k.stride(), v.stride(), out.stride(), do.stride(), q.dtype, q.device,
           None if bias is None else (bias.shape, bias.stride()), kv_counts.shape, kv_counts.device,
           block_size, block_m, block_n, num_warps, num_stages, compute_dbias)
    plan = _BWD_PLANS.get(key)
    if plan is None:
        plan = _cache_put(_BWD_PLANS, key, _bwd_plan(do, q, k, v, out, bias, kv_counts, block_size, block_m,
                                                     block_n, num_warps, num_stages, compute_dbias))
    return _launch_bwd(plan, do, q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices,
                       block_size, scale, block_m)


def _launch_bwd(plan: _BwdPlan, do, q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices,
                block_size, scale, block_m):
    """Allocate the gradients and launch the backward kernels with a plan: (dq, dk, dv, dbias)."""
    if plan.copy:
        q, k, v, out, do = (_rows(t) for t in (q, k, v, out, do))
    lse = lse.contiguous()
    bias_arg = q if bias is None else bias
    dq = q.new_empty_strided(q.shape, plan.grad_strides[0])  # = empty_in_order_of(q)
    dk = k.new_empty_strided(k.shape, plan.grad_strides[1])
    dv = v.new_empty_strided(v.shape, plan.grad_strides[2])
    delta = q.new_empty(plan.delta_shape, dtype=torch.float32)
    db_buf = torch.zeros(plan.db_shape, dtype=plan.db_dtype, device=q.device) if plan.compute_dbias else None
    db_in_dq = plan.db_in_dq
    sizes = plan.sizes
    # the walked indices: the layout's own (tiles dividing the block) or their cached coarse union
    # (dQ: of the rows, dK/dV: of the columns; `_walk_index`), with the tile orders
    dq_index = _walk_index(kv_counts, kv_indices, block_size, plan.row_blocks, plan.col_blocks, block_m)
    dkdv_index = _walk_index(q_counts, q_indices, block_size, plan.row_blocks, plan.col_blocks, block_m)
    with _device_ctx(q):
        _attn_bwd_preprocess_kernel[plan.pre_grid](out, do, delta, *plan.pre_args, **plan.pre_consts)
        _attn_bwd_dq_kernel[plan.dq_grid](
            q, k, v, bias_arg, do, lse, delta, dq, db_buf if db_in_dq else dq, *dq_index[:3],
            *plan.dq_strides, dq_index[3], *sizes, scale * LOG2E, scale, **plan.dq_consts,
        )
        _attn_bwd_dkdv_kernel[plan.dkdv_grid](
            q, k, v, bias_arg, do, lse, delta, dk, dv, *dkdv_index[:3],
            *plan.dkdv_strides, dkdv_index[3], *sizes, scale * LOG2E, scale, **plan.dkdv_consts,
        )
        if plan.dbias_consts is not None:
            _attn_bwd_dbias_kernel[plan.dbias_grid](
                q, k, v, bias, do, lse, delta, db_buf, kv_counts, kv_indices,
                *plan.dbias_strides, *plan.dbias_sizes, scale * LOG2E, **plan.dbias_consts,
            )
    if not plan.compute_dbias:
        return dq, dk, dv, q.new_empty((0,))
    dbias = db_buf.sum(dim=plan.reduce_dims, keepdim=True) if plan.reduce_dims else db_buf
    dbias = dbias.to(bias.dtype).contiguous()
    if dbias.data_ptr() == bias.data_ptr():  # never alias an input (cannot happen, but be safe)
        dbias = dbias.clone()
    return dq, dk, dv, dbias


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# ------------------------------------------------------------------------------------------------
# custom ops (argument lists and autograd shared with the CPU fused kernel's: kernels.opdefs)
# ------------------------------------------------------------------------------------------------
def _fwd_op(q, k, v, bias, index, block_size, scale, block_m, block_n, num_warps, num_stages, *bwd_config):
    """Forward of block-sparse attention: (out [B, H, L, D], lse float32 [B, H, L]). q_counts /
    q_indices and the ``bwd_*`` launch parameters are unused here; they are inputs so that
    autograd can save them for the backward op."""
    return _fwd_impl(q, k, v, bias, index[0], index[1], block_size, scale, block_m, block_n, num_warps, num_stages)


def _fwd_fake(q, k, v, bias, index, *params):
    B, H, L, _ = q.shape
    q = _rows(q)
    return empty_in_order_of(q), q.new_empty((B, H, L), dtype=torch.float32)


def _bwd_op(grad_out, q, k, v, out, lse, bias, index, block_size, scale, block_m, block_n, num_warps, num_stages,
            compute_dbias):
    """Backward of block-sparse attention: (dq, dk, dv, dbias); dbias is empty unless
    ``compute_dbias`` and a bias is given."""
    return _bwd_impl(grad_out, q, k, v, out, lse, bias, *index,
                     block_size, scale, block_m, block_n, num_warps, num_stages, compute_dbias)


def _bwd_fake(grad_out, q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices, *params):
    """dq, dk, dv in the memory order of q, k, v (as ``_bwd_impl`` allocates them)."""
    compute_dbias = params[-1]
    dq, dk, dv = (empty_in_order_of(_rows(t)) for t in (q, k, v))
    dbias = bias.new_empty(bias.shape) if compute_dbias and bias is not None else q.new_empty((0,))
    return dq, dk, dv, dbias


block_sparse_attention_fwd, block_sparse_attention_bwd = declare_attention_ops(
    "sparse_autotune::block_sparse_attention_fwd",
    "sparse_autotune::block_sparse_attention_bwd",
    forward_params=("int block_size, float scale, int block_m, int block_n, int num_warps, int num_stages, "
                    "int bwd_block_m, int bwd_block_n, int bwd_num_warps, int bwd_num_stages"),
    backward_params="int block_size, float scale, int block_m, int block_n, int num_warps, int num_stages",
    forward=_fwd_op,
    forward_fake=_fwd_fake,
    backward=_bwd_op,
    # the backward launches with the forward's bwd_* config
    backward_args=lambda p: (p[0], p[1], *p[6:10]),
    backward_fake=_bwd_fake,
)


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _launch_fwd_with_lse(plan_scale, q, k, v, bias, kv_counts, kv_indices):
    plan, scale = plan_scale
    return _launch_fwd(plan, q, k, v, bias, kv_counts, kv_indices, scale, True)


# plain eager calls with autograd: the forward op's autograd formula without the dispatcher
_EagerAttention = eager_autograd_function("BlockSparseAttentionEager", _launch_fwd_with_lse, _bwd_op,
                                          block_sparse_attention_bwd)


def triton_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    bias: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    config: Optional[KernelConfig] = None,
    bwd_config: Optional[KernelConfig] = None,
    gate: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Block-sparse attention with the Triton kernels (differentiable in q, k, v, bias and gate).

    q, k, v: [B, H, L, D], D in SUPPORTED_HEAD_DIMS, float32 / float16 / bfloat16, any strides (read
    in place; only a head dimension without unit stride is copied); bias: None or broadcastable to
    [B, H, L, L] (read in place with stride 0 on broadcast dimensions, never expanded). The output
    is laid out in q's memory order (``empty_in_order_of``): for q a permuted view of [B, L, H, D]
    memory, ``out.transpose(1, 2)`` is contiguous. config: forward tiles / warps / stages (default
    ``default_forward_config``: the measured winner, else the pipelined preference), tiles dividing
    ``layout.block_size`` or multiples of it (a coarse tile: ``kernels.coarse_index``); bwd_config:
    the backward's own launch config, (block_m, block_n) = (owned, walked) tile (default
    ``default_backward_config``), tiles dividing the block or, for a block under 64, multiples of it
    (``KernelConfig.for_backward``; others are clipped to the block). Every check and launch choice is computed
    once per (shape, dtype, device, layout geometry, configs) and cached. gate: None, or gate logits
    of q's shape: sigmoid(gate) * attention is returned, the gate applied in the forward kernel's
    epilogue on an eager call without gradients (AlphaFold2's gated attention at inference: no
    separate sigmoid and product over the output), by `kernels.inputs.gate_output` otherwise.
    """
    from .inputs import check_gate, check_inputs  # the dispatcher's contract (cached per shape)

    check_inputs(q, k, v, layout, bias)
    check_gate(q, gate)
    return triton_attention_checked(q, k, v, layout, bias, scale=scale, config=config, bwd_config=bwd_config,
                                    gate=gate)


def triton_attention_checked(q, k, v, layout, bias=None, *, scale=None, config=None, bwd_config=None, gate=None):
    """``triton_sparse_attention`` for inputs that passed ``kernels.check_inputs`` (and ``gate``,
    ``kernels.inputs.check_gate``; the dispatcher checks once; this is what it calls). One
    dictionary lookup finds this call's launch configs and forward plan (``_call_plan``, made on
    the first call of each (shapes, strides, dtype, devices, bias layout, layout geometry,
    configs))."""
    if bias is not None and bias.dim() < 4:
        bias = bias[(None,) * (4 - bias.dim())]  # a view: the gradient flows back to the caller's shape
    dev = q.device
    # k, v and the bias are on q's device and of its shapes (the contract): their strides suffice
    key = (q.shape, q.stride(), k.stride(), v.stride(), q.dtype, dev,
           None if bias is None else (bias.shape, bias.stride()),
           layout.geometry, config, bwd_config)
    entry = _CALLS.get(key)
    index = layout.index_on(dev)
    if entry is None:
        entry = _cache_put(_CALLS, key, _call_plan(q, k, v, bias, index[0], layout.block_size, config, bwd_config))
    cfg, bcfg, plan, default_scale = entry
    scale = default_scale if scale is None else float(scale)  # resolve_scale, its default kept per signature
    if plain_eager(q, k, v, bias, gate):  # no graph capture: launch without the op's dispatch (~0.1 ms a call)
        if not wants_grad(q, k, v, bias):  # inference: no LSE
            if gate is None:
                return _launch_fwd(plan, q, k, v, bias, index[0], index[1], scale, False)[0]
            if not (gate.requires_grad and torch.is_grad_enabled()):  # the gate in the epilogue
                return _launch_fwd(plan, q, k, v, bias, index[0], index[1], scale, False, rows_in_place(gate))[0]
            return gate_output(_launch_fwd(plan, q, k, v, bias, index[0], index[1], scale, False)[0], gate)
        return gate_output(_EagerAttention.apply(q, k, v, bias, index, (plan, scale), (
            layout.block_size, scale, bcfg.block_m, bcfg.block_n, bcfg.num_warps, bcfg.num_stages))[0], gate)
    out, _ = block_sparse_attention_fwd(
        q, k, v, bias, *index,
        layout.block_size, scale, cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages,
        bcfg.block_m, bcfg.block_n, bcfg.num_warps, bcfg.num_stages,
    )
    return gate_output(out, gate)


_CALLS: dict = {}


def _call_plan(q, k, v, bias, kv_counts, block_size: int, config, bwd_config):
    """(forward config, backward config, forward plan, default scale) of one call signature."""
    runnable = q.device.type == "cuda" or _interpreting()
    cfg, bcfg = _launch_configs(q.shape[3], q.dtype, q.device, runnable, k.device, v.device,
                                None if bias is None else bias.device, block_size, config, bwd_config)
    plan = _fwd_plan(q, k, v, bias, kv_counts, block_size, cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages,
                     cfg.rows_per_cta)
    return cfg, bcfg, plan, resolve_scale(q.shape[3], None)


@functools.lru_cache(maxsize=1024)
def _launch_configs(D: int, dtype: torch.dtype, device: torch.device, runnable: bool, k_device, v_device, bias_device,
                    block_size: int, config: Optional[KernelConfig], bwd_config: Optional[KernelConfig]):
    """The Triton backend's own checks (head dim, dtype, device) and its (forward, backward) launch
    configs for one (head dim, dtype, devices, block size, configs asked for); cached, so a
    repeated call pays one lookup. Raises ValueError / RuntimeError with one line."""
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"triton backend supports head_dim in {list(SUPPORTED_HEAD_DIMS)}, got head_dim={D}")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"triton backend supports q, k, v of one dtype among float32/float16/bfloat16; got {dtype}")
    if not runnable:
        raise RuntimeError("triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    if any(d is not None and d != device for d in (k_device, v_device, bias_device)):
        raise ValueError("q, k, v and bias must be on the same device")
    cfg = (config if config is not None else default_forward_config(block_size, D, dtype)).for_block(block_size)
    bcfg = (bwd_config if bwd_config is not None else default_backward_config(block_size, D, dtype)).for_backward(
        block_size)
    if device.type == "cuda":
        _check_fits_on(device, dtype, D, cfg, bcfg, block_size)
    return cfg, bcfg

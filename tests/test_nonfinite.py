"""Non-finite inputs: every backend and engine follows the semantics of ``kernels/reference.py``.

* A pair (i, j) is computed iff the layout keeps its tile; values at other pairs are never read
  (neither by the output nor by the gradients).
* At computed pairs plain IEEE arithmetic: NaN in q[i], k[j] or bias[i, j], or +inf in the bias,
  makes row i NaN; NaN/inf in v[j] reaches every row that computes j; ``scale=nan`` makes every row
  with a computed key NaN.
* A row with no computed key, or whose computed logits are all -inf, gives zeros and zero gradients.

The expected values come from ``_oracle``: the reference's formula written pair by pair (only the
computed pairs enter any product, so its autograd never forms 0 * NaN with a value outside the
layout), written independently of ``reference_attention``; the two agree, forward and
gradients, NaN for NaN (checked here for every case).

Each case is a fresh random input (the seed is in every message) with one kind of bad value put
at a chosen place of a ragged layout that has a full row, padded buckets, an empty row and keys
that some rows compute and others do not. Engines: the reference; the cpu backend's SDPA path (full
layout), fused C kernel (also on a per-head layout), SDPA-bucket engine (float64, also per-head;
head dim 12; and called directly as on a machine without a compiler); dense (sparse and full layout); flex (CPU forward, compiled: slow);
triton (under the interpreter on a CPU machine: slow).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from kernels import cpu_fused, reference_attention, sparse_attention
from kernels.cpu import bucket_sparse_attention
from kernels.dense import dense_attention
from patterns import BlockLayout


F32, F64 = torch.float32, torch.float64
NAN, INF = float("nan"), float("inf")
B, H, BS, NB = 2, 2, 16, 9
L = BS * (NB - 1) + 5  # ragged last block


def _sparse_layout() -> BlockLayout:
    """9 x 9 blocks: row 0 full (a global row), column 0 kept by every row but row 4 (empty), a
    band |I - J| <= 1, rows 6 and 7 with 7 and 6 kept blocks (one bucket, padded)."""
    m = torch.zeros(NB, NB, dtype=torch.bool)
    for i in range(NB):
        for j in range(max(0, i - 1), min(NB, i + 2)):
            m[i, j] = True
    m[0, :] = True
    m[:, 0] = True
    m[6, :7] = True
    m[7, [0, 2, 3, 5, 6, 7]] = True
    m[4, :] = False
    return BlockLayout(m, BS, L)


SPARSE = _sparse_layout()
FULL = BlockLayout(torch.ones(NB, NB, dtype=torch.bool), BS, L)


def _per_head_layout() -> BlockLayout:
    """Head 0: SPARSE; head 1: its transpose (row 4 kept empty): the layouts differ per head."""
    m = SPARSE.block_mask
    m1 = m.T.clone()
    m1[4, :] = False
    return BlockLayout(torch.stack([m, m1]), BS, L)


PER_HEAD = _per_head_layout()

# places, in token indices, chosen against SPARSE
I0 = 2 * BS + 5        # a live row of block row 2 (keeps key blocks 0..3)
J_IN = 1 * BS + 4      # a key that row I0 computes
J_PART = 8 * BS + 2    # a key of the ragged block 8: computed by rows of blocks 0, 7, 8 only
I_EMPTY = 4 * BS + 3   # a row of the empty block row
I_DEAD = 5 * BS + 7    # a row whose bias is all -inf in the "dead row" cases
assert SPARSE.token_mask()[I0, J_IN] and not SPARSE.token_mask()[I0, J_PART]
assert not SPARSE.token_mask()[I_EMPTY].any() and SPARSE.token_mask()[I_DEAD].any()


# ---- the oracle -----------------------------------------------------------------------------------
def _oracle(q, k, v, layout: BlockLayout, bias, scale):
    """softmax(q k^T * scale + bias) v over the computed pairs, pair by pair (float64, materialises
    [B, H, L, L, D]); a row whose computed logits are all -inf (or that has none) gives zeros."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    allowed = layout.token_mask()
    a5 = allowed.unsqueeze(-1)
    zero = torch.zeros((), dtype=q.dtype)
    qe = torch.where(a5, q.unsqueeze(-2), zero)
    ke = torch.where(a5, k.unsqueeze(-3), zero)
    s = (qe * ke).sum(-1) * scale
    if bias is not None:
        s = s + bias
    s = torch.where(allowed, s, torch.tensor(-INF, dtype=q.dtype))
    live = (s != -INF).any(-1, keepdim=True)
    p = torch.where(allowed, torch.softmax(torch.where(live, s, zero), dim=-1), zero)
    ve = torch.where(a5, v.unsqueeze(-3), zero)
    out = torch.where(a5, p.unsqueeze(-1) * ve, zero).sum(-2)
    return torch.where(live, out, zero)


# ---- the cases --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One kind of bad input: ``apply`` writes it into (q, k, v, bias) in place and returns the
    scale; ``bad_rows(q, computes)`` the rows [B, H, L] whose output must be non-finite (computes:
    [L, L] bool computed pairs), ``zero_rows`` the rows that must be exactly zero besides the
    layout's empty rows."""

    name: str
    apply: Callable
    bad_rows: Callable
    zero_rows: tuple = ()
    finite_dq: bool = True  # dq finite in every finite row (not with an inf key: 0 * inf there)


def _rows(*, h=0, b=None):
    def mark(rows_fn):
        def bad(q, tm):
            out = torch.zeros(B, H, L, dtype=torch.bool)
            sel = rows_fn(q, tm)  # [L] bool for head h (and batch b, else every batch element)
            if b is None:
                out[:, h] = sel
            else:
                out[b, h] = sel
            return out

        return bad

    return mark


def _only(i):
    return lambda q, tm: torch.arange(L) == i


def _computing(j):
    return lambda q, tm: tm[:, j]


def _none(q, tm):
    return torch.zeros(B, H, L, dtype=torch.bool)


def _set(t, idx, value):
    t[idx] = value


def _dead_row(q, k, v, b):
    b[0, 0, I_DEAD, :] = -INF


def _dead_row_nan_v(q, k, v, b):
    b[0, 0, I_DEAD, :] = -INF
    v[:, 0, 2, 3] = NAN  # key 2 (block 0): computed by every row but the empty ones, I_DEAD too


CASES = [
    Case("q_nan", lambda q, k, v, b: _set(q, (1, 0, I0, 3), NAN), _rows(b=1)(_only(I0))),
    Case("q_inf", lambda q, k, v, b: _set(q, (1, 0, I0, 3), INF), _rows(b=1)(_only(I0))),
    Case("q_nan_empty_row", lambda q, k, v, b: _set(q, (0, 0, I_EMPTY), NAN), _none),
    Case("k_nan_partial", lambda q, k, v, b: _set(k, (0, 0, J_PART, 5), NAN), _rows(b=0)(_computing(J_PART))),
    Case(
        "k_inf_partial",
        lambda q, k, v, b: _set(k, (0, 0, J_PART, 5), INF),
        # +inf logit (NaN row) where q[i, 5] > 0; a -inf logit elsewhere just weighs 0
        _rows(b=0)(lambda q, tm: tm[:, J_PART] & (q[0, 0, :, 5] > 0)),
        finite_dq=False,  # a -inf logit from the inf key: its row's dq has 0 * inf (IEEE)
    ),
    Case("v_nan_partial", lambda q, k, v, b: _set(v, (0, 0, J_PART, 1), NAN), _rows(b=0)(_computing(J_PART))),
    Case("v_inf_partial", lambda q, k, v, b: _set(v, (0, 0, J_PART, 1), INF), _rows(b=0)(_computing(J_PART))),
    Case("v_ninf", lambda q, k, v, b: _set(v, (1, 1, J_IN, 0), -INF), _rows(h=1, b=1)(_computing(J_IN))),
    Case("bias_nan_computed", lambda q, k, v, b: _set(b, (0, 0, I0, J_IN), NAN), _rows()(_only(I0))),
    Case("bias_pinf_computed", lambda q, k, v, b: _set(b, (0, 0, I0, J_IN), INF), _rows()(_only(I0))),
    Case("bias_nan_outside", lambda q, k, v, b: _set(b, (0, 0, I0, J_PART), NAN), _none),
    Case("bias_pinf_outside", lambda q, k, v, b: _set(b, (0, 0, I0, J_PART), INF), _none),
    Case("bias_ninf_some", lambda q, k, v, b: _set(b, (0, 0, I0, slice(0, 20)), -INF), _none),
    Case("bias_ninf_row", _dead_row, _none, zero_rows=(I_DEAD,)),
    Case(
        "bias_ninf_row_nan_v",
        _dead_row_nan_v,
        _rows()(lambda q, tm: tm[:, 2] & (torch.arange(L) != I_DEAD)),
        zero_rows=(I_DEAD,),
    ),
    Case("scale_nan", lambda q, k, v, b: NAN, lambda q, tm: tm.any(-1).expand(B, H, L).clone()),
]
CASE_IDS = [c.name for c in CASES]


def _inputs(seed: int, D: int, dtype, case: Case):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=F64) for _ in range(3))
    bias = torch.randn(1, H, L, L, generator=g, dtype=F64)
    scale = case.apply(q, k, v, bias)
    return [t.to(dtype) for t in (q, k, v, bias)], scale


def _close(got, want, what, dtype, grad=False):
    if dtype == F64:
        atol, rtol = 1e-9, 1e-7
    else:
        atol, rtol = 2e-5, 1e-4
    if grad:
        finite = want[torch.isfinite(want)]
        atol *= max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    torch.testing.assert_close(
        got.double(), want.double(), atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


# ---- 1. the oracle and the reference follow the semantics --------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_oracle_and_reference_follow_the_semantics(case):
    seed = secrets.randbelow(2**31)
    (q, k, v, bias), scale = _inputs(seed, 16, F64, case)
    what = f"seed={seed} case={case.name}"
    tm = SPARSE.token_mask()
    x = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    out = _oracle(*x[:3], SPARSE, x[3], scale)
    bad = ~torch.isfinite(out).all(-1)
    want_bad = case.bad_rows(q, tm)
    assert torch.equal(bad, want_bad), f"{what}: non-finite rows {torch.nonzero(bad).tolist()} != {torch.nonzero(want_bad).tolist()}"
    zero = [I_EMPTY, *case.zero_rows]  # in head 0 (the -inf bias rows are in head 0 only)
    assert (out[:, 0, zero] == 0).all() and (out[:, :, I_EMPTY] == 0).all(), f"{what}: rows {zero} are not zero"
    grads = torch.autograd.grad(out, x, torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64))
    assert (grads[0][:, 0, zero] == 0).all(), f"{what}: dq of rows {zero} is not zero"
    # values outside the computed pairs are never read: dq is finite in every row whose output
    # is, dk and dv at every key that no non-finite row computes
    if case.finite_dq:
        assert torch.isfinite(grads[0][~bad]).all(), f"{what}: dq non-finite in a finite row"
    keys = (bad.double() @ tm.double()) > 0  # [B, H, L]: keys computed by a non-finite row
    for name, gr in (("k", grads[1]), ("v", grads[2])):
        assert torch.isfinite(gr[~keys]).all(), f"{what}: d{name} non-finite at a key no bad row computes"
    # the reference is the same function: same forward and the same gradients, NaN for NaN
    y = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    ref = reference_attention(*y[:3], SPARSE, y[3], scale)
    _close(ref, out.detach(), f"{what} reference forward", F64)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    want = torch.autograd.grad(_oracle(*x[:3], SPARSE, x[3], scale), x, g)
    got = torch.autograd.grad(ref, y, g)
    for name, a, b in zip("qkvb", got, want):
        _close(a, b, f"{what} reference grad {name}", F64, grad=True)


# ---- 2. every engine against the oracle ------------------------------------------------------------
@dataclass(frozen=True)
class Engine:
    name: str
    fn: Callable
    dtype: torch.dtype = F32
    layout: BlockLayout = SPARSE
    grads: bool = True
    D: int = 16
    marks: tuple = field(default=())


def _cpu(q, k, v, layout, bias, scale):
    return sparse_attention(q, k, v, layout, bias, scale=scale, backend="cpu")


def _fused(q, k, v, layout, bias, scale):
    if not cpu_fused.available():
        pytest.skip(f"fused CPU kernel unavailable: {cpu_fused.unavailable_reason()}")
    return cpu_fused.fused_sparse_attention(q, k, v, layout, bias, scale=scale)


def _flex(q, k, v, layout, bias, scale):
    return sparse_attention(q, k, v, layout, bias, scale=scale, backend="flex")


def _triton(q, k, v, layout, bias, scale):
    return sparse_attention(q, k, v, layout, bias, scale=scale, backend="triton")


_TRITON_MARKS = (pytest.mark.slow,)  # the Triton interpreter: several seconds a case


ENGINES = [
    Engine("reference", lambda q, k, v, lay, b, s: reference_attention(q, k, v, lay, b, s), F64, grads=False),
    Engine("cpu-sdpa-full", _cpu, F32, FULL),
    Engine("cpu-fused", _fused, F32),
    Engine("cpu-fused-per-head", _fused, F32, PER_HEAD),
    Engine("cpu-bucket-f64", _cpu, F64),
    Engine("cpu-bucket-f64-per-head", _cpu, F64, PER_HEAD),
    Engine("cpu-bucket-d12", _cpu, F32, D=12),
    Engine("cpu-bucket-nocc", lambda q, k, v, lay, b, s: bucket_sparse_attention(q, k, v, lay, b, scale=s), F32),
    Engine("dense", lambda q, k, v, lay, b, s: dense_attention(q, k, v, lay, b, s), F64),
    Engine("dense-full", lambda q, k, v, lay, b, s: dense_attention(q, k, v, lay, b, s), F64, FULL),
    Engine("flex", _flex, F32, grads=False, marks=(pytest.mark.slow,)),
    Engine("triton", _triton, F32, marks=_TRITON_MARKS),
]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("engine", [pytest.param(e, id=e.name, marks=e.marks) for e in ENGINES])
def test_engine_follows_the_semantics(engine, case):
    seed = secrets.randbelow(2**31)
    (q, k, v, bias), scale = _inputs(seed, engine.D, engine.dtype, case)
    what = f"seed={seed} engine={engine.name} case={case.name}"
    x = [t.clone().requires_grad_(engine.grads) for t in (q, k, v, bias)]
    if engine.grads:
        out = engine.fn(*x[:3], engine.layout, x[3], scale)
    else:
        with torch.no_grad():
            out = engine.fn(*x[:3], engine.layout, x[3], scale)
    assert out.shape == q.shape and out.dtype == q.dtype, f"{what}: {tuple(out.shape)} {out.dtype}"
    x64 = [t.detach().to(F64).requires_grad_(True) for t in (q, k, v, bias)]
    want = _oracle(*x64[:3], engine.layout, x64[3], scale)
    _close(out, want.detach(), f"{what} forward", engine.dtype)
    empty = ~engine.layout.token_mask().any(-1).expand(H, L)  # [H, L]: rows with no computed key
    assert (out[:, empty] == 0).all(), f"{what}: a row with no computed key is not zero"
    for r in case.zero_rows:
        assert (out[:, 0, r] == 0).all(), f"{what}: row {r} (all -inf) is not zero"
    if not engine.grads:
        return
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    got = torch.autograd.grad(out, x, g.to(out.dtype))
    exp = torch.autograd.grad(want, x64, g)
    for name, a, b in zip("qkvb", got, exp):
        assert a.shape == b.shape, f"{what}: grad {name} shape {tuple(a.shape)}"
        _close(a, b, f"{what} grad {name}", engine.dtype, grad=True)


# ---- 3. engine selection: the cases above reach the engine they name -----------------------------------
def test_engines_are_the_ones_named(monkeypatch):
    """cpu-bucket-f64 / -d12 really run the bucket engine and cpu-fused's float32 dispatch the fused
    kernel (so a dispatcher change cannot silently move the cases to another engine)."""
    from kernels import cpu as cpu_backend

    calls = []
    real_bucket, real_fused = cpu_backend.bucket_sparse_attention, cpu_backend.cpu_fused.fused_sparse_attention
    monkeypatch.setattr(cpu_backend, "bucket_sparse_attention", lambda *a, **kw: calls.append("bucket") or real_bucket(*a, **kw))
    monkeypatch.setattr(cpu_backend.cpu_fused, "fused_sparse_attention", lambda *a, **kw: calls.append("fused") or real_fused(*a, **kw))
    for dtype, D, want in ((F64, 16, "bucket"), (F32, 12, "bucket"), (F32, 16, "fused" if cpu_fused.available() else "bucket")):
        calls.clear()
        q = torch.randn(B, H, L, D, dtype=dtype)
        _cpu(q, q, q, SPARSE, None, None)
        assert calls == [want], (dtype, D, calls)

"""The fused C kernel of ``kernels.cpu_fused`` (forward + gradients in q, k, v, bias) against the
float64 reference over its head dims and block sizes, its own edge cases (-inf bias tiles, half
inputs, determinism), its dispatch through ``sparse_attention(..., backend="cpu")`` and its
build/cache/fallback behaviour. The cases every backend shares (bias shapes, ragged L, empty rows
and layouts, per-head and guided layouts, non-contiguous and expanded inputs, a bias without
gradient) run through the dispatcher in tests/test_conformance.py.

Inputs are fresh random every run; the seed is in every assertion message (rerun a failure with
the same seed through ``_inputs(..., seed=SEED)``).
"""

from __future__ import annotations

import math
import secrets

import pytest
import torch

from kernels import cpu as cpu_backend
from kernels import cpu_fused, reference_attention, sparse_attention
from patterns import BlockLayout, PatternConfig, build_layout
from patterns.sparsity import pattern_for_sparsity
from test_conformance import _bias_shape  # the bias-shape names shared with the conformance suite

F32, F64 = torch.float32, torch.float64
HEAD_DIMS = (8, 16, 32, 64)
BLOCK_SIZES = (16, 32, 64, 128)
BIAS_KINDS = ("1HLL", "BHLL", "HLL", "LL", "B11L", "11L1", None)
LAYOUT_KINDS = ("half", "diag", "strided+global", "random", "per-head")


def _seed() -> int:
    return secrets.randbelow(2**31 - 1)


def _inputs(B, H, L, D, bias_shape, seed, dtype=F32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(dtype) for _ in range(3))
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=g).to(dtype)
    return q, k, v, bias


def _layout(kind, L, bs, H, gen):
    nb = -(-L // bs)
    if kind == "half":
        return build_layout(pattern_for_sparsity(L, 0.5, block_size=bs), L)
    if kind == "diag":
        return build_layout(PatternConfig(bs, window=0), L)
    if kind == "strided+global":
        return build_layout(PatternConfig(bs, window=0, num_global=1, stride=3, global_placement="spread"), L)
    if kind == "random":
        return BlockLayout(torch.rand(nb, nb, generator=gen) < 0.5, bs, L)
    if kind == "per-head":
        m = torch.rand(H, nb, nb, generator=gen) < 0.5
        m[0] = torch.eye(nb, dtype=torch.bool)  # heads differ: a diagonal head, random heads,
        m[-1] = True                             # and a full head
        return BlockLayout(m, bs, L)
    raise AssertionError(kind)


def _close(got, want, atol, rtol, what):
    """assert_close on float64 copies, the message prefixed with ``what`` (seed, case)."""
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _check_against_reference(q, k, v, layout, bias, scale, what, *, fn=None, atol=2e-5, rtol=1e-4, gseed=0):
    """Forward and the gradients of every input (q, k, v and bias when given) of ``fn`` (default
    the fused kernel) against ``reference_attention`` run in float64 on the float64 versions of the
    same inputs. Returns (out, grads) of ``fn``."""
    fn = fn or (lambda q_, k_, v_, b_: cpu_fused.fused_sparse_attention(q_, k_, v_, layout, b_, scale=scale))
    ins = [q, k, v] + ([] if bias is None else [bias])
    x = [t.detach().clone().requires_grad_(True) for t in ins]
    x64 = [t.detach().to(F64).requires_grad_(True) for t in ins]
    out = fn(x[0], x[1], x[2], x[3] if bias is not None else None)
    ref = reference_attention(x64[0], x64[1], x64[2], layout, x64[3] if bias is not None else None, scale)
    assert out.dtype == q.dtype, f"{what}: output dtype {out.dtype} != input dtype {q.dtype}"
    assert out.shape == q.shape, f"{what}: output shape {tuple(out.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite output"
    _close(out, ref, atol, rtol, f"{what} forward")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(gseed)).to(out.dtype)
    grads = torch.autograd.grad(out, x, g)
    want = torch.autograd.grad(ref, x64, g.to(F64))
    for name, a, b, t in zip("qkvb", grads, want, ins):
        assert a.shape == t.shape and a.dtype == t.dtype, f"{what}: grad {name} {tuple(a.shape)} {a.dtype}"
        assert torch.isfinite(a).all(), f"{what}: non-finite grad {name}"
        # gradients sum over up to L terms (and the bias gradient over broadcast dims): scale atol
        _close(a, b, atol * max(1.0, float(b.abs().max())), rtol, f"{what} grad {name}")
    return out, grads


# ---- 1. forward and gradients vs the float64 reference ----------------------------------------------
def _seq_len(bs, ragged):
    if ragged:
        return min(int(2.5 * bs), 200)  # 40, 80, 160, 200 (bs=128: 2 blocks, the last one ragged)
    return 3 * bs if bs < 128 else 2 * bs  # 48, 96, 192, 256


@pytest.mark.parametrize("ragged", [False, True], ids=["whole", "ragged"])
@pytest.mark.parametrize("bs", BLOCK_SIZES)
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_fused_matches_reference(D, bs, ragged):
    """Every layout kind once per (D, bs, ragged); the bias shape rotates so that all seven kinds
    (including None) meet every layout kind and head dim; a custom scale on half the cases."""
    seed = _seed()
    L = _seq_len(bs, ragged)
    assert (L % bs != 0) == ragged
    B, H = 2, 3 if D <= 16 else 2
    combo = HEAD_DIMS.index(D) * 8 + BLOCK_SIZES.index(bs) * 2 + int(ragged)
    gen = torch.Generator().manual_seed(seed)
    for i, kind in enumerate(LAYOUT_KINDS):
        layout = _layout(kind, L, bs, H, gen)
        bias_kind = BIAS_KINDS[(i + combo) % len(BIAS_KINDS)]
        scale = None if (i + combo) % 2 == 0 else (0.6 + 0.2 * i) / math.sqrt(D)  # 0.6x .. 1.4x the default
        case_seed = seed + 7919 * i
        q, k, v, bias = _inputs(B, H, L, D, _bias_shape(bias_kind, B, H, L), case_seed)
        what = f"seed={seed} case_seed={case_seed} D={D} bs={bs} L={L} layout={kind} bias={bias_kind} scale={scale}"
        _check_against_reference(q, k, v, layout, bias, scale, what, gseed=case_seed)


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_fused_extreme_ragged_lengths(bs):
    """L shorter than one block, a one-row last block, a one-token sequence."""
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    for i, (L, D) in enumerate([(1, 8), (5, 64), (bs - 1, 16), (bs + 1, 32), (2 * bs + 3, 64)]):
        nb = -(-L // bs)
        m = (torch.rand(nb, nb, generator=gen) < 0.6) | torch.eye(nb, dtype=torch.bool)
        bias_kind = BIAS_KINDS[(i + bs) % len(BIAS_KINDS)]
        q, k, v, bias = _inputs(1, 2, L, D, _bias_shape(bias_kind, 1, 2, L), seed + i)
        what = f"seed={seed} L={L} bs={bs} D={D} bias={bias_kind} mask={m.int().tolist()}"
        _check_against_reference(q, k, v, BlockLayout(m, bs, L), bias, None, what, gseed=seed + i)


# ---- 3. -inf in the bias ---------------------------------------------------------------------------
def _inf_bias(B, H, L, bs, layout, seed):
    """A [B, H, L, L] bias with -inf: scattered entries, a whole kept tile in some rows (the first
    kept key block of a query block row: the online softmax starts from an all -inf tile), all but
    one kept key of a row."""
    g = torch.Generator().manual_seed(seed + 1)
    bias = torch.randn(B, H, L, L, generator=g)
    bias[torch.rand(B, H, L, L, generator=g) < 0.2] = float("-inf")
    tm = layout.token_mask()
    for qb in range(layout.n_blocks):
        kept = torch.nonzero(layout.block_mask[qb]).flatten().tolist()
        if len(kept) >= 2:  # first kept tile all -inf for query rows r0..r0+2 (the row keeps others)
            r0, c0 = qb * bs, kept[0] * bs
            bias[:, :, r0 : r0 + 3, c0 : c0 + bs] = float("-inf")
    r = 5  # all but one allowed key of row 5 masked
    allowed = torch.nonzero(tm[r]).flatten()
    bias[:, :, r, allowed[1:]] = float("-inf")
    bias[:, :, r, allowed[0]] = 0.25
    return bias


def test_fused_bias_partially_inf_matches_reference():
    seed = _seed()
    B, H, L, D, bs = 2, 2, 90, 16, 16
    layout = build_layout(PatternConfig(bs, window=bs, num_global=2, stride=3), L)
    q, k, v, _ = _inputs(B, H, L, D, None, seed)
    bias = _inf_bias(B, H, L, bs, layout, seed)
    # every row keeps at least one finite logit: the reference is finite everywhere
    s = bias.masked_fill(~layout.token_mask(), float("-inf"))
    assert torch.isfinite(s).any(-1).all()
    what = f"seed={seed} partially -inf bias"
    out, grads = _check_against_reference(q, k, v, layout, bias, None, what, gseed=seed)
    # no gradient flows into a -inf bias entry
    assert (grads[3][torch.isinf(bias)] == 0).all(), f"{what}: nonzero dBias at -inf entries"


def test_fused_bias_whole_rows_inf():
    """Rows whose every kept key has a -inf bias give zeros and zero gradients (the reference's
    rule: a -inf bias means "not allowed"); everything else, gradients included, matches the
    reference."""
    seed = _seed()
    B, H, L, D, bs = 2, 2, 90, 8, 32
    layout = build_layout(pattern_for_sparsity(L, 0.5, block_size=bs), L)
    assert not layout.is_full
    q, k, v, _ = _inputs(B, H, L, D, None, seed)
    bias = _inf_bias(B, H, L, bs, layout, seed)
    dead = [0, 17, 40, L - 1]  # whole rows -inf (query rows in several blocks, the ragged one too)
    bias[:, :, dead, :] = float("-inf")
    bias[1, 0, 50, :] = float("-inf")  # one (b, h) only
    what = f"seed={seed} whole -inf rows"
    out, grads = _check_against_reference(q, k, v, layout, bias, None, what, gseed=seed)
    assert (out[:, :, dead] == 0).all() and (out[1, 0, 50] == 0).all(), f"{what}: a fully -inf row is not zero"
    assert (grads[0][:, :, dead] == 0).all() and (grads[0][1, 0, 50] == 0).all(), f"{what}: dq of a -inf row"


# ---- 4. half inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)], ids=["f16", "bf16"])
@pytest.mark.parametrize("entry", ["fused", "dispatcher"])
def test_fused_half_inputs(dtype, tol, entry):
    seed = _seed()
    B, H, L, D, bs = 2, 2, 200, 32, 32
    layout = build_layout(PatternConfig(bs, window=0, num_global=1, stride=3, global_placement="spread"), L)
    assert not layout.is_full
    q, k, v, bias = _inputs(B, H, L, D, (1, H, L, L), seed, dtype=dtype)
    if entry == "fused":
        fn = lambda q_, k_, v_, b_: cpu_fused.fused_sparse_attention(q_, k_, v_, layout, b_)  # noqa: E731
    else:
        fn = lambda q_, k_, v_, b_: sparse_attention(q_, k_, v_, layout, b_, backend="cpu")  # noqa: E731
    # the reference sees exactly the half-rounded inputs (in float64): the remaining error is the
    # float32 compute plus rounding the output / gradients to the half dtype
    _check_against_reference(q, k, v, layout, bias, None, f"seed={seed} {dtype} {entry}", fn=fn, atol=tol, rtol=tol, gseed=seed)


# ---- 5. determinism --------------------------------------------------------------------------------
def _run_all(q, k, v, layout, bias, g):
    x = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    out = cpu_fused.fused_sparse_attention(*x[:3], layout, x[3])
    return (out.detach(), *torch.autograd.grad(out, x, g))


@pytest.mark.parametrize("bias_kind", ["1HLL", "LL", "BHLL"])
def test_fused_deterministic_across_calls_and_threads(bias_kind):
    seed = _seed()
    B, H, L, D, bs = 2, 3, 200, 32, 16
    layout = build_layout(PatternConfig(bs, window=2 * bs, num_global=5, stride=4, global_placement="spread"), L)
    q, k, v, bias = _inputs(B, H, L, D, _bias_shape(bias_kind, B, H, L), seed)
    g = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(seed))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = _run_all(q, k, v, layout, bias, g)
        b = _run_all(q, k, v, layout, bias, g)
        torch.set_num_threads(1)
        c = _run_all(q, k, v, layout, bias, g)
        torch.set_num_threads(3)
        d = _run_all(q, k, v, layout, bias, g)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    for name, x, y, z, w in zip(["out", "dq", "dk", "dv", "dbias"], a, b, c, d):
        assert torch.equal(x, y), f"seed={seed} bias={bias_kind}: {name} differs between two calls (max {(x - y).abs().max()})"
        assert torch.equal(x, z), f"seed={seed} bias={bias_kind}: {name} differs 2 threads vs 1 (max {(x - z).abs().max()})"
        assert torch.equal(x, w), f"seed={seed} bias={bias_kind}: {name} differs 2 threads vs 3 (max {(x - w).abs().max()})"


# ---- 6. the public dispatcher ----------------------------------------------------------------------
@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of cpu_fused.fused_sparse_attention (still running the real kernel)."""
    calls = []
    real = cpu_fused.fused_sparse_attention

    def wrapper(*args, **kwargs):
        calls.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_fused, "fused_sparse_attention", wrapper)
    return calls


def test_dispatcher_uses_fused_for_float32_only(fused_calls):
    assert cpu_fused.available(), cpu_fused.unavailable_reason()
    seed = _seed()
    B, H, L, D, bs = 2, 2, 120, 16, 32
    layout = build_layout(pattern_for_sparsity(L, 0.5, block_size=bs), L)
    assert not layout.is_full
    q, k, v, bias = _inputs(B, H, L, D, (1, H, L, L), seed)
    dispatch = lambda q_, k_, v_, b_: sparse_attention(q_, k_, v_, layout, b_, backend="cpu")  # noqa: E731

    _check_against_reference(q, k, v, layout, bias, None, f"seed={seed} dispatcher f32", fn=dispatch, gseed=seed)
    assert len(fused_calls) == 1 and fused_calls[0] == F32
    out_auto = sparse_attention(q, k, v, layout, bias)  # auto on CPU tensors -> cpu -> fused
    assert len(fused_calls) == 2
    _close(out_auto, reference_attention(q.double(), k.double(), v.double(), layout, bias.double()), 2e-5, 1e-4, f"seed={seed} auto")

    # float64: the bucket engine (float64-exact), never the fused kernel
    q64, k64, v64, b64 = (t.double() for t in (q, k, v, bias))
    out64 = sparse_attention(q64, k64, v64, layout, b64, backend="cpu")
    assert out64.dtype == F64 and len(fused_calls) == 2
    _close(out64, reference_attention(q64, k64, v64, layout, b64), 1e-10, 1e-9, f"seed={seed} float64")

    # a full layout: SDPA, not the fused kernel
    full = build_layout(PatternConfig(bs, window=L), L)
    assert full.is_full
    out_full = sparse_attention(q, k, v, full, bias, backend="cpu")
    assert len(fused_calls) == 2
    _close(out_full, reference_attention(q64, k64, v64, full, b64), 2e-5, 1e-4, f"seed={seed} full layout")

    # a per-head layout in float32 goes to the fused kernel too
    ph = _layout("per-head", L, bs, H, torch.Generator().manual_seed(seed))
    _check_against_reference(q, k, v, ph, bias, None, f"seed={seed} dispatcher per-head", fn=lambda a, b, c, d: sparse_attention(a, b, c, ph, d, backend="cpu"), gseed=seed)
    assert len(fused_calls) == 3


# ---- 7. no compiler ------------------------------------------------------------------------------
def test_no_compiler_falls_back_to_bucket_engine(monkeypatch, tmp_path, fused_calls):
    monkeypatch.setenv("CC", "/nonexistent/bin/no-such-cc")
    monkeypatch.setattr(cpu_fused.shutil, "which", lambda *a, **kw: None)
    monkeypatch.setenv("SPARSE_AUTOTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_fused, "_LIB", {})
    built = []
    monkeypatch.setattr(cpu_fused, "_build", lambda *a, **kw: built.append(a) or "unexpected build")

    assert cpu_fused.available() is False
    reason = cpu_fused.unavailable_reason()
    assert "compiler" in reason.lower(), reason
    assert not built and not list(tmp_path.iterdir())
    seed = _seed()
    B, H, L, D, bs = 2, 2, 100, 16, 32
    layout = build_layout(pattern_for_sparsity(L, 0.5, block_size=bs), L)
    q, k, v, bias = _inputs(B, H, L, D, (1, H, L, L), seed)
    assert not cpu_fused.supports(q, layout)
    with pytest.raises(RuntimeError, match="compiler"):
        cpu_fused.fused_sparse_attention(q, k, v, layout, bias)
    fused_calls.clear()
    dispatch = lambda q_, k_, v_, b_: sparse_attention(q_, k_, v_, layout, b_, backend="cpu")  # noqa: E731
    _check_against_reference(q, k, v, layout, bias, None, f"seed={seed} no compiler", fn=dispatch, gseed=seed)
    assert fused_calls == [], "the dispatcher called the fused kernel without a compiler"


# ---- 8. a fresh build and the cache ----------------------------------------------------------------
def test_fresh_build_then_cache_reuse(monkeypatch, tmp_path):
    cache = tmp_path / "cache"  # does not exist yet
    monkeypatch.setenv("SPARSE_AUTOTUNE_CACHE", str(cache))
    monkeypatch.setattr(cpu_fused, "_LIB", {})
    builds = []
    real_build = cpu_fused._build

    def counting_build(*args, **kwargs):
        builds.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(cpu_fused, "_build", counting_build)
    assert cpu_fused.available(), cpu_fused.unavailable_reason()
    assert cpu_fused.unavailable_reason() == ""
    sos = sorted(cache.glob("*.so"))
    assert len(sos) >= 1 and len(builds) >= 1, (sos, builds)
    assert not [p for p in cache.iterdir() if p.suffix != ".so"], "temporary build files left behind"
    stamps = {p: p.stat().st_mtime_ns for p in sos}
    n_builds = len(builds)

    # the freshly built library computes the right thing
    seed = _seed()
    L, bs = 80, 16
    layout = build_layout(PatternConfig(bs, window=bs, num_global=2), L)
    q, k, v, bias = _inputs(1, 2, L, 8, (2, L, L), seed)
    _check_against_reference(q, k, v, layout, bias, None, f"seed={seed} fresh build", gseed=seed)

    # a second load (a new process, in effect) reuses the cached library: no compile
    monkeypatch.setattr(cpu_fused, "_LIB", {})
    assert cpu_fused.available(), cpu_fused.unavailable_reason()
    assert len(builds) == n_builds, "the cached library was rebuilt"
    assert sorted(cache.glob("*.so")) == sos
    assert {p: p.stat().st_mtime_ns for p in sos} == stamps


# ---- 9. bad arguments ------------------------------------------------------------------------------
def test_unsupported_head_dim_or_block_size():
    seed = _seed()
    B, H, L = 2, 2, 96
    layout = build_layout(pattern_for_sparsity(L, 0.5, block_size=32), L)
    q, k, v, bias = _inputs(B, H, L, 24, (1, H, L, L), seed)
    with pytest.raises(ValueError):
        cpu_fused.fused_sparse_attention(q, k, v, layout, bias)
    assert not cpu_fused.supports(q, layout)
    for D in (4, 128):
        qd = torch.randn(B, H, L, D)
        with pytest.raises(ValueError):
            cpu_fused.fused_sparse_attention(qd, qd, qd, layout)
    q16 = torch.randn(B, H, L, 16)
    for bs in (8, 24, 48, 256):
        nb = -(-L // bs)
        odd = BlockLayout(torch.eye(nb, dtype=torch.bool) | (torch.rand(nb, nb) < 0.3), bs, L)
        assert not cpu_fused.supports(q16, odd)
        with pytest.raises(ValueError):
            cpu_fused.fused_sparse_attention(q16, q16, q16, odd)


def test_dispatcher_unsupported_shapes_use_bucket_engine(fused_calls):
    seed = _seed()
    B, H, L = 2, 2, 96
    layout = build_layout(pattern_for_sparsity(L, 0.5, block_size=32), L)
    assert not layout.is_full
    q, k, v, bias = _inputs(B, H, L, 24, (1, H, L, L), seed)
    dispatch = lambda q_, k_, v_, b_: sparse_attention(q_, k_, v_, layout, b_, backend="cpu")  # noqa: E731
    _check_against_reference(q, k, v, layout, bias, None, f"seed={seed} D=24 dispatcher", fn=dispatch, gseed=seed)
    # block size 48 (not a fused block size), ragged
    L2, bs2 = 100, 48
    nb = -(-L2 // bs2)
    m = torch.rand(nb, nb, generator=torch.Generator().manual_seed(seed)) < 0.5
    m |= torch.eye(nb, dtype=torch.bool)
    m[0, -1] = False
    odd = BlockLayout(m, bs2, L2)
    q, k, v, bias = _inputs(B, H, L2, 16, (B, 1, 1, L2), seed + 1)
    dispatch = lambda q_, k_, v_, b_: sparse_attention(q_, k_, v_, odd, b_, backend="cpu")  # noqa: E731
    _check_against_reference(q, k, v, odd, bias, None, f"seed={seed} bs=48 dispatcher", fn=dispatch, gseed=seed)
    assert fused_calls == []
    # the bucket engine itself, same inputs, agrees
    out = cpu_backend.bucket_sparse_attention(q, k, v, odd, bias)
    _close(out, reference_attention(q.double(), k.double(), v.double(), odd, bias.double()), 2e-5, 1e-4, f"seed={seed} bucket")


def test_fused_without_autograd_reuses_its_buffer_and_stays_exact():
    """Calls without autograd write K^T into a per-thread buffer kept from call to call: results
    must equal the autograd path bitwise, across changing shapes, and never alias that buffer."""
    seed = _seed()
    outs = []
    for B, H, L, D, bs in ((2, 2, 96, 32, 32), (1, 3, 70, 16, 16), (2, 2, 96, 32, 32)):
        lay = build_layout(pattern_for_sparsity(L, 0.5, block_size=bs), L)
        q, k, v, bias = _inputs(B, H, L, D, (1, H, L, L), seed)
        with torch.no_grad():
            fast = cpu_fused.fused_sparse_attention(q, k, v, lay, bias)
        graded = cpu_fused.fused_sparse_attention(q.requires_grad_(), k, v, lay, bias)
        assert torch.equal(fast, graded.detach()), f"seed={seed}"
        ref = reference_attention(q.double(), k.double(), v.double(), lay, bias.double())
        torch.testing.assert_close(fast.double(), ref, atol=2e-5, rtol=1e-4, msg=f"seed={seed}")
        outs.append(fast)
    # the first output is untouched by the later calls that reused the buffer
    assert torch.equal(outs[0], outs[2]), f"seed={seed}"


def test_fused_eager_create_graph_goes_through_the_op_and_has_no_double_backward():
    """With autograd an eager call runs the op's formula in an autograd.Function; under
    ``create_graph=True`` its backward calls the registered backward op (as the op's formula
    does): the same gradients bitwise, and differentiating them raises (the backward op has no
    autograd formula) instead of giving silently wrong second derivatives."""
    if not cpu_fused.available():
        pytest.skip(cpu_fused.unavailable_reason())
    seed = _seed()
    lay = build_layout(pattern_for_sparsity(48, 0.5, block_size=16), 48)
    q, k, v, bias = _inputs(1, 2, 48, 16, (1, 2, 48, 48), seed)
    ins = [t.requires_grad_() for t in (q, k, v, bias)]
    grad = torch.randn(1, 2, 48, 16, generator=torch.Generator().manual_seed(seed))
    out = cpu_fused.fused_sparse_attention(*ins[:3], lay, ins[3])
    assert type(out.grad_fn).__name__ == "CpuBlockSparseAttentionEagerBackward"
    plain = torch.autograd.grad(out, ins, grad, retain_graph=True)
    graphed = torch.autograd.grad(out, ins, grad, create_graph=True)
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), plain, graphed):
        assert torch.equal(a, b), f"seed={seed}: {name} differs under create_graph"
    with pytest.raises(RuntimeError, match="no autograd formula"):
        torch.autograd.grad(graphed[0].sum() + graphed[3].sum(), (ins[0], ins[1]))

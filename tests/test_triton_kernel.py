"""The Triton block-sparse attention kernels (forward and backward) against the float64 oracle:
what is Triton's own (launch configs, float16 / bfloat16, determinism, its errors). The cases that
every backend shares (bias shapes, ragged L, empty rows and layouts, per-head and guided layouts,
non-contiguous inputs, a custom scale, partial gradients) are in tests/test_conformance.py.

Without a GPU the kernels run under the Triton interpreter (tests/conftest.py), so shapes stay
small. Every test draws fresh random inputs from a random seed that it prints on failure
(re-run a failure with ``torch.manual_seed(<seed>)``).
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from kernels import KernelConfig, candidate_configs, sparse_attention
from kernels.reference import reference_attention
from patterns import BlockLayout, PatternConfig, build_layout

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"

# (atol, rtol) per input dtype; outputs and gradients are compared to a float64 reference
TOL = {
    torch.float32: (2e-4, 2e-4),
    torch.float16: (1.5e-2, 1.5e-2),
    torch.bfloat16: (8e-2, 8e-2),
}

needs_real_bf16 = pytest.mark.skipif(
    INTERPRET, reason="bfloat16 is garbage under the Triton interpreter; checked on GPU"
)


def _seed() -> int:
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    return seed


def _close(name, got, want, dtype, seed):
    atol, rtol = TOL[dtype]
    assert torch.isfinite(got).all(), f"{name}: non-finite values (seed={seed})"
    torch.testing.assert_close(
        got.double(), want.double(), atol=atol, rtol=rtol,
        msg=lambda m: f"{name} (dtype={dtype}, seed={seed}): {m}",
    )


def _make(B, H, L, D, dtype, bias_shape):
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE, dtype=dtype).requires_grad_() for _ in range(3))
    bias = None
    if bias_shape is not None:
        bias = torch.randn(*bias_shape, device=DEVICE, dtype=dtype).requires_grad_()
    return q, k, v, bias


def check_against_reference(q, k, v, layout, bias, config=None, scale=None, seed=None):
    """Run the triton backend forward + backward and compare out, dq, dk, dv, dbias with the
    float64 reference on upcast copies. Returns the triton output and its gradients by name."""
    dtype = q.dtype
    out = sparse_attention(q, k, v, layout, bias, scale=scale, backend="triton", config=config)
    assert out.dtype == dtype and out.shape == q.shape
    grad = torch.randn_like(out)
    leaves = [t for t in (q, k, v, bias) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, leaves, grad)

    ref_in = [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in (q, k, v, bias)]
    ref = reference_attention(*ref_in[:3], layout, ref_in[3], scale)
    ref_leaves = [t for t in ref_in if t is not None and t.requires_grad]
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())

    _close("out", out, ref, dtype, seed)
    names = [n for n, t in zip(("dq", "dk", "dv", "dbias"), (q, k, v, bias)) if t is not None and t.requires_grad]
    for name, g, rg, leaf in zip(names, grads, ref_grads, leaves):
        assert g.shape == leaf.shape and g.dtype == leaf.dtype, name
        _close(name, g, rg, dtype, seed)
    return out.detach(), dict(zip(names, grads))


def _layout(kind: str, L: int, bs: int) -> BlockLayout:
    if kind == "full":
        lay = build_layout(PatternConfig(bs, L), L)
        assert lay.is_full
    elif kind == "half":  # every other block diagonal: ~50% sparsity
        lay = build_layout(PatternConfig(bs, 0, 0, 2), L)
        assert 0.35 < lay.sparsity < 0.65, lay
    elif kind == "diag":  # window=0: diagonal tiles only
        lay = build_layout(PatternConfig(bs, 0), L)
        assert lay.sparsity > 0.4
    elif kind == "local_global":
        lay = build_layout(PatternConfig(bs, 8, 1, 0), L)
    else:
        raise ValueError(kind)
    return lay


# ------------------------------------------------------------------------------------------------
# main grid: L multiple of block or not, sparsity, bias shape, dtype
# ------------------------------------------------------------------------------------------------
CASES = [
    # L, bs, layout, bias, dtype, D, config(bm, bn)
    pytest.param(64, 32, "full", "1H", torch.float32, 16, (32, 32), marks=pytest.mark.slow),
    pytest.param(70, 32, "full", "BH", torch.float32, 32, (16, 32), marks=pytest.mark.slow),
    pytest.param(64, 16, "half", "1H", torch.float32, 16, (16, 16), marks=pytest.mark.slow),
    pytest.param(75, 16, "half", "BH", torch.float32, 8, (16, 16), marks=pytest.mark.slow),
    pytest.param(75, 16, "diag", None, torch.float32, 16, (16, 16), marks=pytest.mark.slow),
    (64, 32, "diag", "1H", torch.float32, 8, (32, 16)),
    (60, 32, "local_global", None, torch.float32, 32, (32, 32)),
    pytest.param(64, 32, "half", "1H", torch.float16, 16, (32, 32), marks=pytest.mark.slow),
    pytest.param(75, 16, "half", "BH", torch.float16, 32, (16, 16), marks=pytest.mark.slow),
    (70, 32, "diag", None, torch.float16, 8, (32, 32)),
    pytest.param(70, 32, "full", "1H", torch.float16, 16, (16, 32), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("L,bs,kind,bias,dtype,D,tiles", CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_matches_reference(L, bs, kind, bias, dtype, D, tiles):
    seed = _seed()
    B, H = 2, 2
    bias_shape = {None: None, "1H": (1, H, L, L), "BH": (B, H, L, L)}[bias]
    q, k, v, b = _make(B, H, L, D, dtype, bias_shape)
    check_against_reference(q, k, v, _layout(kind, L, bs), b, KernelConfig(*tiles), seed=seed)


# ------------------------------------------------------------------------------------------------
# per-head layouts in float16 (float32: tests/test_conformance.py)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16], ids=str)
def test_per_head_layout(dtype):
    seed = _seed()
    B, H, L, D = 2, 3, 52, 16
    lay = build_layout([PatternConfig(16, 0), PatternConfig(16, 0, 0, 2), PatternConfig(16, 16, 1, 0)], L)
    assert lay.num_heads == H
    q, k, v, b = _make(B, H, L, D, dtype, (1, H, L, L))
    check_against_reference(q, k, v, lay, b, KernelConfig(16, 16), seed=seed)


# ------------------------------------------------------------------------------------------------
# every launch config the autotuner may try
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_candidate_config_block32():
    """All of candidate_configs(32, D) (warps / stages do not change results under the
    interpreter, but every config is launched), ragged L, batch-shared and per-batch bias."""
    L, D = 60, 16
    lay = _layout("half", L, 32)
    configs = candidate_configs(32, D)
    assert configs
    for i, cfg in enumerate(configs):
        seed = _seed()
        bias_shape = (1, 2, L, L) if i % 2 == 0 else (2, 2, L, L)
        q, k, v, b = _make(2, 2, L, D, torch.float32, bias_shape)
        try:
            check_against_reference(q, k, v, lay, b, cfg, seed=seed)
        except AssertionError as e:
            raise AssertionError(f"{cfg}: {e}") from None


def _sample(configs):
    """First, last and one per distinct tile shape in between (up to 4 in all)."""
    by_tiles = {}
    for c in configs:
        by_tiles.setdefault((c.block_m, c.block_n), c)
    picks = [configs[0], configs[-1]] + list(by_tiles.values())
    out = []
    for c in picks:
        if c not in out:
            out.append(c)
    return out[:4]


@pytest.mark.slow
@pytest.mark.parametrize("bs,L", [(16, 40), (64, 100), (128, 100)])
def test_sampled_candidate_configs(bs, L):
    D = 8 if bs == 128 else 16
    nb = math.ceil(L / bs)
    if nb > 1:
        lay = _layout("half", L, bs) if nb > 2 else _layout("diag", L, bs)
    else:
        lay = _layout("full", L, bs)
    for cfg in _sample(candidate_configs(bs, D)):
        seed = _seed()
        q, k, v, b = _make(1, 2, L, D, torch.float32, (1, 2, L, L))
        try:
            check_against_reference(q, k, v, lay, b, cfg, seed=seed)
        except AssertionError as e:
            raise AssertionError(f"{cfg}: {e}") from None


def test_default_config_and_clipping():
    """config=None uses kernels.config.default_forward_config; a tile larger than the layout block
    runs as a coarse tile (kernels.coarse_index), its backward clipped to the block."""
    seed = _seed()
    L = 36
    q, k, v, b = _make(1, 2, L, 16, torch.float32, (1, 2, L, L))
    check_against_reference(q, k, v, _layout("diag", L, 16), b, None, seed=seed)
    q, k, v, b = _make(1, 1, L, 16, torch.float32, None)
    check_against_reference(q, k, v, _layout("full", L, 32), b, KernelConfig(128, 64), seed=seed)


# ------------------------------------------------------------------------------------------------
# bfloat16, determinism, errors
# ------------------------------------------------------------------------------------------------
@needs_real_bf16
@pytest.mark.parametrize("bias", [None, "1H", "BH"])
def test_bfloat16(bias):
    seed = _seed()
    B, H, L, D = 2, 2, 100, 32
    bias_shape = {None: None, "1H": (1, H, L, L), "BH": (B, H, L, L)}[bias]
    q, k, v, b = _make(B, H, L, D, torch.bfloat16, bias_shape)
    check_against_reference(q, k, v, _layout("half", L, 16), b, KernelConfig(16, 16), seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("bias", ["1H", "BH"])
def test_backward_is_deterministic(bias):
    _seed()
    B, H, L = 2, 2, 40
    bias_shape = (1, H, L, L) if bias == "1H" else (B, H, L, L)
    q, k, v, b = _make(B, H, L, 16, torch.float32, bias_shape)
    lay = _layout("half", L, 16)
    grad = torch.randn(B, H, L, 16, device=DEVICE)
    runs = []
    for _ in range(2):
        out = sparse_attention(q, k, v, lay, b, backend="triton", config=KernelConfig(16, 16))
        runs.append((out,) + torch.autograd.grad(out, (q, k, v, b), grad))
    for x, y in zip(*runs):
        assert torch.equal(x, y)


def test_gradients_of_gradients_raise():
    """No double backward: differentiating the gradients raises (eager, the autograd.Function's
    backward goes through the backward op under create_graph, which has no autograd formula)
    instead of giving silently wrong second derivatives."""
    _seed()
    q, k, v, b = _make(1, 1, 32, 16, torch.float32, (1, 1, 32, 32))
    out = sparse_attention(q, k, v, _layout("half", 32, 16), b, backend="triton", config=KernelConfig(16, 16))
    dq, db = torch.autograd.grad(out, (q, b), torch.randn_like(out), create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        torch.autograd.grad((dq.sum() + db.sum()), (q, k))


@pytest.mark.parametrize("D", [24, 128, 4])
def test_unsupported_head_dim_raises(D):
    lay = _layout("full", 32, 16)
    q = torch.randn(1, 1, 32, D, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim"):
        sparse_attention(q, q, q, lay, backend="triton")


def test_unsupported_dtype_raises():
    lay = _layout("full", 32, 16)
    q = torch.randn(1, 1, 32, 16, device=DEVICE, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype"):
        sparse_attention(q, q, q, lay, backend="triton")



# ------------------------------------------------------------------------------------------------
# one program walks several batch elements (rows_per_cta)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,rows,bias", [(4, 2, "1H"), (4, 4, "BH"), (3, 2, "1H"), (6, 8, None)])
def test_rows_per_cta_forward_matches_reference(B, rows, bias):
    """The inference forward with ``rows_per_cta`` (several MSA rows per program, the block index
    loaded once) equals the reference: ragged L, per-head layout with empty rows, a bias shared by
    the batch or one per batch element, a batch not divisible by the knob (lowered to a divisor);
    poisoned outputs are fully overwritten (a fresh allocation every call is checked by NaN-free
    rows)."""
    seed = _seed()
    H, L, D = 2, 40, 16
    bias_shape = {None: None, "1H": (1, H, L, L), "BH": (B, H, L, L)}[bias]
    q, k, v, b = (None if t is None else t.detach() for t in _make(B, H, L, D, torch.float32, bias_shape))
    nb = -(-L // 16)
    mask = torch.rand(H, nb, nb) < 0.6
    mask[0, 1] = False  # a block row with no kept tile in head 0: zeros
    lay = BlockLayout(mask, 16, L)
    cfg = KernelConfig(16, 16, 4, 2, rows_per_cta=rows)
    with torch.no_grad():
        out = sparse_attention(q, k, v, lay, b, backend="triton", config=cfg)
    want = reference_attention(q.double(), k.double(), v.double(), lay, None if b is None else b.double())
    _close("out", out, want, torch.float32, seed)


def test_rows_per_cta_with_autograd_matches_reference():
    """An eager call with gradients launches the forward with the config's ``rows_per_cta`` too
    (each row's LSE stored for the backward): output and dq, dk, dv, dbias equal the reference."""
    seed = _seed()
    B, H, L, D = 2, 2, 40, 16
    q, k, v, b = _make(B, H, L, D, torch.float32, (1, H, L, L))
    mask = torch.rand(H, 3, 3) < 0.6
    mask[0, 1] = False  # a block row with no kept tile in head 0: zeros, zero gradients
    check_against_reference(q, k, v, BlockLayout(mask, 16, L), b, config=KernelConfig(16, 16, 4, 2, rows_per_cta=2),
                            seed=seed)


def test_rows_per_cta_is_lowered_to_a_divisor_of_the_batch():
    from kernels import triton_op

    q = torch.randn(6, 2, 32, 16, device=DEVICE)
    lay = _layout("half", 32, 16)
    kv_counts = lay.index_on(q.device)[0]
    plan = triton_op._fwd_plan(q, q, q, None, kv_counts, 16, 16, 16, 4, 2, rows_per_cta=4)
    assert plan.consts["ROWS_PER_CTA"] == 2 and plan.grid == (2 * 3 * 2,)
    assert KernelConfig(rows_per_cta=1).to_dict() == {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}
    assert KernelConfig.from_dict(KernelConfig(rows_per_cta=4).to_dict()).rows_per_cta == 4
    with pytest.raises(ValueError, match="rows_per_cta"):
        KernelConfig(rows_per_cta=3)

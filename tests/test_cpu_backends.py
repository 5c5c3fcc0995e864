"""The backend registry (``kernels.backends``), the one per-layout plan cache (``kernels.plans``) and
layouts on another device than the inputs (a layout without data is refused with one line).

The registry is what the dispatcher reads: a registered backend's entry is what ``sparse_attention``
calls, ``backend="auto"`` resolves through it, and its records agree with the backends' own
constants. The plan cache: every backend's per-layout preparation lands in it, ``clear_plan_caches``
empties it (so the next call is cold and still exact), and a layout's plans die with the layout.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import os
import weakref

import pytest
import torch

import kernels
from kernels import backends, clear_plan_caches, cpu_fused, plans, reference_attention, sparse_attention
from kernels.cpu_bucket import bucket_sparse_attention
from patterns import BlockLayout, GuidedConfig, PatternConfig, build_layout

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _case(seed, B=2, H=2, L=100, D=16, bs=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=dtype) for _ in range(3))
    bias = torch.randn(1, H, L, L, generator=g, dtype=dtype)
    nb = -(-L // bs)
    mask = (torch.rand(nb, nb, generator=g) < 0.4) | torch.eye(nb, dtype=torch.bool)
    mask[0, -1] = False  # never full
    return q, k, v, bias, BlockLayout(mask, bs, L)


def _ref(q, k, v, layout, bias):
    return reference_attention(q.double(), k.double(), v.double(), layout, bias.double())


# ---- the registry -----------------------------------------------------------------------------------
def test_registry_lists_every_backend_and_the_dispatcher_names_them():
    assert kernels.BACKENDS == ("auto", *backends.names())
    assert set(backends.names()) == {"reference", "triton", "flex", "dense", "cpu"}
    for name, rec in backends.REGISTRY.items():
        assert rec.name == name and rec.devices and rec.dtypes and rec.summary and callable(rec.run)
        assert set(rec.grad_devices) <= set(rec.devices)
    assert backends.get("triton").config_type is kernels.KernelConfig
    assert all(backends.get(n).config_type is None for n in ("reference", "flex", "dense", "cpu"))
    q = torch.zeros(1, 1, 16, 8)
    with pytest.raises(ValueError) as exc:
        sparse_attention(q, q, q, build_layout(PatternConfig(16, window=0), 16), backend="nope")
    assert str(exc.value) == "backend must be one of ['auto', 'reference', 'triton', 'flex', 'dense', 'cpu'], got 'nope'"
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.get("nope")


def test_records_agree_with_the_backends_own_constants():
    assert cpu_fused.HEAD_DIMS == backends.FUSED_CPU_HEAD_DIMS and cpu_fused.BLOCK_SIZES == backends.LAYOUT_BLOCK_SIZES
    from patterns.config import SUPPORTED_BLOCK_SIZES

    assert backends.get("triton").block_sizes == tuple(SUPPORTED_BLOCK_SIZES)
    if HAS_TRITON:
        from kernels import triton_op

        assert triton_op.SUPPORTED_HEAD_DIMS == backends.get("triton").head_dims
        assert [str(d).replace("torch.", "") for d in triton_op.SUPPORTED_DTYPES] == list(backends.get("triton").dtypes)


def test_auto_resolves_through_the_registry():
    assert backends.auto_backend("cpu") == "cpu" and backends.auto_backend(torch.device("cuda", 0)) == "triton"
    assert backends.resolve("auto", "cpu") is backends.get("cpu")
    assert backends.resolve("dense", "cuda") is backends.get("dense")


@pytest.mark.parametrize("name", ["reference", "dense", "cpu"])
def test_dispatcher_calls_the_registered_entry(monkeypatch, name):
    """sparse_attention calls the record's ``run`` (a wrapped entry is seen), with scale and config."""
    calls = []
    rec = backends.get(name)

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return rec.run(*args, **kwargs)

    monkeypatch.setitem(backends.REGISTRY, name, dataclasses.replace(rec, run=spy))
    seed = _seed()
    q, k, v, bias, lay = _case(seed)
    cfg = kernels.KernelConfig()
    out = sparse_attention(q, k, v, lay, bias, scale=0.3, backend=name, config=cfg)
    assert calls == [{"scale": 0.3, "config": cfg}]
    ref = reference_attention(q.double(), k.double(), v.double(), lay, bias.double(), scale=0.3)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4, msg=f"seed={seed} {name}")
    if name == "cpu":  # auto on CPU tensors goes through the same record
        sparse_attention(q, k, v, lay, bias, backend="auto")
        assert len(calls) == 2


def test_availability_and_support_are_answered_with_reasons(monkeypatch):
    for name in ("reference", "dense", "cpu", "flex"):
        assert backends.get(name).available("cpu"), backends.get(name).unavailable_reason("cpu")
    tri = backends.get("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in tri.unavailable_reason("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tri.available("cpu") == HAS_TRITON
    if not torch.cuda.is_available():
        assert "no CUDA device" in backends.get("dense").unavailable_reason("cuda")
    assert "does not run on mps" in tri.unavailable_reason("mps")
    assert tri.unsupported("cuda", "bfloat16", head_dim=32, block_size=64, grad=True) == ""
    assert "head_dim" in tri.unsupported("cuda", torch.float32, head_dim=24)
    assert "float64" in tri.unsupported("cuda", torch.float64)
    assert "block_size" in tri.unsupported("cuda", "float32", block_size=8)
    assert "no gradients on cpu" in backends.get("flex").unsupported("cpu", "float32", grad=True)
    assert backends.get("flex").supports_grad("cuda") and not backends.get("flex").supports_grad("cpu")
    assert backends.get("cpu").unsupported("cpu", torch.float64, head_dim=24, block_size=48, grad=True) == ""


# ---- the one plan cache -----------------------------------------------------------------------------
def _plans_of(layout, device="cpu"):
    return plans.layout_plans(layout.index_on(device)[0])


def test_every_cpu_engine_keeps_its_plans_in_the_one_cache_and_clearing_it_makes_a_cold_exact_call():
    seed = _seed()
    q, k, v, bias, lay = _case(seed)
    assert cpu_fused.available(), cpu_fused.unavailable_reason()
    clear_plan_caches()
    assert plans.cached_layouts() == 0
    with torch.no_grad():
        fused = sparse_attention(q, k, v, lay, bias, backend="cpu")             # fused kernel
        bucket = bucket_sparse_attention(q, k, v, lay, bias)                   # SDPA-bucket engine
    keys = set(_plans_of(lay))
    assert "checked" in keys and any(isinstance(x, tuple) and x[0] == "rows" for x in keys), keys
    assert any(isinstance(x, tuple) and x[0] == "kt" for x in keys), keys     # the K^T workspace
    assert any(isinstance(x, tuple) and x[0] == "bucket" for x in keys), keys
    kt = next(v_ for x, v_ in _plans_of(lay).items() if isinstance(x, tuple) and x[0] == "kt")

    clear_plan_caches()
    assert plans.cached_layouts() == 0 and _plans_of(lay) == {}
    with torch.no_grad():
        fused2 = sparse_attention(q, k, v, lay, bias, backend="cpu")
        bucket2 = bucket_sparse_attention(q, k, v, lay, bias)
    kt2 = next(v_ for x, v_ in _plans_of(lay).items() if isinstance(x, tuple) and x[0] == "kt")
    assert kt2 is not kt, "the K^T workspace survived clear_plan_caches"
    assert torch.equal(fused, fused2) and torch.equal(bucket, bucket2), f"seed={seed}"
    ref = _ref(q, k, v, lay, bias)
    torch.testing.assert_close(fused2.double(), ref, atol=2e-5, rtol=1e-4, msg=f"seed={seed}")
    torch.testing.assert_close(bucket2.double(), ref, atol=2e-5, rtol=1e-4, msg=f"seed={seed}")


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_tile_orders_live_in_the_plan_cache(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    seed = _seed()
    q, k, v, bias, lay = _case(seed, B=1, H=1, L=64, bs=32)
    clear_plan_caches()
    out = sparse_attention(q, k, v, lay, bias, backend="triton", config=kernels.KernelConfig(32, 32, 4, 1))
    assert any(isinstance(x, tuple) and x[0] == "triton-tile-order" for x in _plans_of(lay))
    clear_plan_caches()
    assert _plans_of(lay) == {}
    torch.testing.assert_close(out.double(), _ref(q, k, v, lay, bias), atol=2e-5, rtol=1e-4, msg=f"seed={seed}")


def test_plans_die_with_their_layout():
    clear_plan_caches()
    q, k, v, bias, lay = _case(_seed())
    with torch.no_grad():
        sparse_attention(q, k, v, lay, bias, backend="cpu")
        bucket_sparse_attention(q, k, v, lay, bias)
    assert plans.cached_layouts() > 0
    # the plans themselves die too (the K^T workspace: MiBs at real sizes), not only their key
    kt = next(v_ for x, v_ in _plans_of(lay).items() if isinstance(x, tuple) and x[0] == "kt")
    kt_ref = weakref.ref(kt)
    del lay, kt
    gc.collect()
    assert plans.cached_layouts() == 0
    assert kt_ref() is None, "a layout's plans outlived it"


# ---- layouts on another device ------------------------------------------------------------------------
def test_a_layout_without_data_is_refused_with_one_line():
    L, bs = 64, 16
    meta = BlockLayout(torch.ones(L // bs, L // bs, dtype=torch.bool, device="meta"), bs, L)
    q = torch.randn(1, 2, L, 16)
    names = ["reference", "dense", "cpu", "auto"] + (["triton"] if HAS_TRITON else [])
    for name in names:
        with pytest.raises(ValueError, match="meta device") as exc:
            sparse_attention(q, q, q, meta, backend=name)
        assert "\n" not in str(exc.value)
    for fn in (bucket_sparse_attention, cpu_fused.fused_sparse_attention):
        with pytest.raises(ValueError, match="meta device"):
            fn(q, q, q, meta)


def test_fused_op_refuses_an_index_that_is_not_on_the_cpu():
    L, bs = 64, 16
    lay = build_layout(PatternConfig(bs, window=16), L)
    q = torch.randn(1, 1, L, 16)
    index = tuple(t.to("meta") for t in lay.index_on("cpu"))
    # the implementation the op (and the plain eager path) runs: it reads the index by host pointer
    with pytest.raises(ValueError, match="must be CPU tensors"):
        cpu_fused._fwd_impl(q, q, q, None, index, bs, L, 0.25)


_METADATA = {"dim", "size", "__get__"}  # shape, device, dtype, ...: no data read, no device sync


class _CountingMask(torch.Tensor):
    """A CPU bool tensor that counts reads of its data: stands in for a mask on another device,
    which an engine may read once per layout (the host copy of its index), never on every call."""

    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") not in _METADATA:
            cls.reads += 1
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out


@pytest.mark.parametrize("engine", ["fused", "bucket"])
def test_cpu_engines_read_a_layouts_mask_once_not_per_call(engine):
    """A guided layout built on a GPU is given to CPU tensors: the engines read its index on the
    host once per layout (``plans.host_index``) and never touch the mask on its own device per
    call. Simulated on a CPU-only machine by a mask that counts reads (exact answers checked)."""
    seed = _seed()
    q, k, v, bias, lay = _case(seed, dtype=torch.float32 if engine == "fused" else torch.float64)
    lay._mask = lay._mask.as_subclass(_CountingMask)  # the layout's own mask (its constructor copies)
    run = (lambda: sparse_attention(q, k, v, lay, bias, backend="cpu")) if engine == "fused" else (
        lambda: bucket_sparse_attention(q, k, v, lay, bias))
    first = run()
    _CountingMask.reads = 0
    outs = [run() for _ in range(3)]
    assert _CountingMask.reads == 0, f"{engine}: the layout's mask was read {_CountingMask.reads} times on later calls"
    tol = dict(atol=2e-5, rtol=1e-4) if engine == "fused" else dict(atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(first.double(), _ref(q, k, v, lay, bias), msg=f"seed={seed} {engine}", **tol)
    assert all(torch.equal(o, first) for o in outs)


def test_a_guided_layout_per_forward_is_exact_and_its_plans_do_not_pile_up():
    """A new guided layout on every forward (as in the EvoFormer): each call exact; the cache holds
    plans only for layouts still alive."""
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    B, H, L, D = 2, 2, 96, 16
    cfg = GuidedConfig(block_size=16, keep=0.3)
    clear_plan_caches()
    for _ in range(4):
        q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
        bias = torch.randn(1, H, L, L, generator=g)
        lay = build_layout(cfg, L, signal=bias)
        with torch.no_grad():
            out = sparse_attention(q, k, v, lay, bias, backend="cpu")
        torch.testing.assert_close(out.double(), _ref(q, k, v, lay, bias), atol=2e-5, rtol=1e-4, msg=f"seed={seed}")
        del lay
        gc.collect()
        assert plans.cached_layouts() == 0


def test_bucket_engine_reuses_the_guided_workspace_across_fresh_layouts():
    """float64 takes the SDPA-bucket engine: a new guided layout per forward writes its gathered
    buffers into the config's shared workspace (no new allocation once grown), stays exact, and an
    earlier output is never overwritten by a later call."""
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    B, H, L, D = 2, 2, 96, 16
    cfg = GuidedConfig(block_size=16, keep=0.3)
    outs, ptrs, cases = [], [], []
    for _ in range(3):
        q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(3))
        bias = torch.randn(1, H, L, L, generator=g, dtype=torch.float64)
        lay = build_layout(cfg, L, signal=bias.float())
        with torch.no_grad():
            outs.append(sparse_attention(q, k, v, lay, bias, backend="cpu"))
        bufs = {key: t for key, t in lay.workspace.items() if isinstance(key, tuple) and key[0] == "bucket"}
        assert bufs, "the bucket engine did not use the guided layout's workspace"
        ptrs.append({key: t.data_ptr() for key, t in bufs.items()})
        cases.append((q, k, v, lay, bias))
    shared_keys = set(ptrs[1]) & set(ptrs[2])
    assert any(ptrs[1][key] == ptrs[2][key] for key in shared_keys), "no buffer was reused across layouts"
    for out, (q, k, v, lay, bias) in zip(outs, cases):
        torch.testing.assert_close(out, _ref(q, k, v, lay, bias), atol=1e-10, rtol=1e-9, msg=f"seed={seed}")

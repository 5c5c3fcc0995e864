"""Guided layouts that live on a CUDA device (skipped without one).

A guided layout is built on its signal's device (`patterns.guided`): in a model that is the GPU,
where the pair bias lives. These checks are the GPU half of issue-level promises that a CPU cannot
test:

* building the layout (pooling, selection, compact index: one fused launch by default) makes no
  host synchronisation (the NaN check is a device flag on CUDA unless ``check_nan=True``): run under
  ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising call;
* the build can be captured in a CUDA graph and replayed on a new signal, giving the eager layout;
* every CUDA backend accepts the GPU-resident layout (per head and shared, ragged L) and is exact
  against the float64 reference, forward and gradients.
"""

from __future__ import annotations

import pytest
import torch

from kernels import sparse_attention
from kernels.reference import reference_attention
from patterns import GuidedConfig, build_layout
from patterns.guided import build_guided_layout

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device (not the Triton interpreter)",
)

CONFIGS = [
    GuidedConfig(32, keep=0.4, pool="max"),
    GuidedConfig(32, keep=0.3, pool="mean", window=40, num_global=8),
    GuidedConfig(64, keep=0.25, pool="logsumexp", spread="layout"),
    GuidedConfig(32, mass=0.6, pool="logsumexp"),
    GuidedConfig(16, mass=0.5, pool="max", spread="layout", window=16),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pool}-{c.spread}-{'keep' if c.keep else 'mass'}")
@pytest.mark.parametrize("per_head", (True, False))
def test_build_makes_no_host_sync(cfg, per_head):
    L, H = 300, 4
    g = torch.Generator(device="cuda").manual_seed(11)
    bias = torch.randn(1, H, L, L, device="cuda", generator=g)
    signal = bias if per_head else bias[0, 0]
    build_guided_layout(cfg, L, signal, check_nan=False)  # warm caches (forced blocks) outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        lay = build_guided_layout(cfg, L, signal)  # the default: NaN left to the device flag on CUDA
        idx = (lay.kv_counts, lay.kv_indices, lay.q_counts, lay.q_indices)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.is_cuda for t in idx)
    cpu = build_layout(cfg, L, signal=signal.cpu())
    assert torch.equal(lay.block_mask.cpu(), cpu.block_mask)
    assert torch.equal(lay.kv_counts.cpu(), cpu.kv_counts) and torch.equal(lay.kv_indices.cpu(), cpu.kv_indices)


def test_build_is_captured_in_a_cuda_graph_and_replays_on_a_new_signal():
    cfg, L, H = GuidedConfig(32, keep=0.3, pool="logsumexp", window=32), 256, 4
    static = torch.randn(1, H, L, L, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            build_guided_layout(cfg, L, static, check_nan=False, workspace={})
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lay = build_guided_layout(cfg, L, static, check_nan=False, workspace={})
        out = (lay.block_mask, lay.kv_counts, lay.kv_indices)
    for seed in (1, 2):
        new = torch.randn(1, H, L, L, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed))
        static.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        eager = build_layout(cfg, L, signal=new)
        assert torch.equal(out[0], eager.block_mask)
        assert torch.equal(out[1], eager.kv_counts) and torch.equal(out[2], eager.kv_indices)


def _case(L, H, per_head, seed, dtype):
    g = torch.Generator(device="cuda").manual_seed(seed)
    bias = torch.randn(1, H, L, L, device="cuda", generator=g)
    signal = bias if per_head else bias[0, 0]
    lay = build_layout(GuidedConfig(32, keep=0.35, pool="logsumexp", window=20), L, signal=signal)
    assert lay.block_mask.is_cuda
    q, k, v = (torch.randn(2, H, L, 32, device="cuda", generator=g) for _ in range(3))
    return lay, [t.to(dtype) for t in (q, k, v, bias)]


def _run(backend, lay, ins, grads):
    ins = [t.detach().clone().requires_grad_(grads) for t in ins]
    out = sparse_attention(*ins[:3], lay, ins[3], backend=backend)
    if not grads:
        return out.detach().double(), []
    go = torch.linspace(-1, 1, out.shape[-1], device=out.device).expand_as(out).to(out.dtype)
    return out.detach().double(), [g.double() for g in torch.autograd.grad(out, ins, go)]


@pytest.mark.parametrize("backend,dtype,grads,tol", [
    ("triton", torch.float32, True, 2e-3),   # tf32 dots
    ("triton", torch.bfloat16, True, 3e-2),
    ("flex", torch.float32, True, 2e-3),
    ("dense", torch.float32, True, 1e-5),
    ("reference", torch.float32, True, 1e-5),
])
@pytest.mark.parametrize("per_head", (True, False))
def test_backends_exact_on_gpu_resident_guided_layout(backend, dtype, grads, tol, per_head):
    lay, ins = _case(200, 4, per_head, seed=7 + per_head, dtype=dtype)  # 200 = 6 * 32 + 8: ragged
    ref, rgrads = _run("reference", lay, [t.double() for t in ins], grads)
    out, got = _run(backend, lay, ins, grads)
    assert torch.isfinite(out).all()

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    assert rel(out, ref) < tol, (backend, dtype, rel(out, ref))
    for name, a, b in zip("q k v bias".split(), got, rgrads):
        assert rel(a, b) < 3 * tol, (backend, dtype, name, rel(a, b))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pool}-{c.spread}-{'keep' if c.keep else 'mass'}")
@pytest.mark.parametrize("per_head", (True, False))
def test_graph_replayed_build_equals_eager_and_owns_its_tensors(cfg, per_head, monkeypatch):
    import patterns.guided as guided

    L, H = 333, 4  # ragged for every block size
    layouts, eager = [], []
    for seed in range(3):
        bias = torch.randn(1, H, L, L, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed))
        signal = bias if per_head else bias[0, 0]
        monkeypatch.setattr(guided, "FUSED_BUILD", False)  # the torch path: graph replay on CUDA
        layouts.append(build_layout(cfg, L, signal=signal))
        monkeypatch.setattr(guided, "GRAPH_REPLAY", False)
        eager.append(build_layout(cfg, L, signal=signal))
        monkeypatch.setattr(guided, "GRAPH_REPLAY", True)
        monkeypatch.setattr(guided, "FUSED_BUILD", True)
    assert any(k[0] == cfg and k[1] == L for k in guided._GRAPHS), "no graph was captured for this config"
    for a, b in zip(layouts, eager):  # earlier layouts are not overwritten by later replays
        assert torch.equal(a.block_mask, b.block_mask)
        for x, y in zip(a.index_on(a.device), b.index_on(b.device)):
            assert torch.equal(x, y)


@pytest.mark.parametrize("per_head", (True, False))
def test_nan_signal_is_flagged_on_cuda_and_refused_when_checked(per_head):
    """By default a CUDA build makes no host synchronisation for NaN: the layout's device flag
    ``signal_nan`` says it; ``check_nan=True`` refuses the signal (one synchronisation)."""
    L, H = 130, 2
    bias = torch.randn(1, H, L, L, device="cuda")
    bias[0, 1, 77, 5] = float("nan")
    signal = bias if per_head else bias[0, 1]
    for cfg in (GuidedConfig(32, keep=0.5), GuidedConfig(32, mass=0.5, pool="logsumexp")):
        assert not bool(build_layout(cfg, L, signal=torch.randn_like(signal)).signal_nan)
        lay = build_layout(cfg, L, signal=signal)
        assert lay.signal_nan.is_cuda and bool(lay.signal_nan)
        with pytest.raises(ValueError, match="NaN"):
            build_guided_layout(cfg, L, signal, check_nan=True)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pool}-{c.spread}-{'keep' if c.keep else 'mass'}")
@pytest.mark.parametrize("per_head", (True, False))
def test_fused_build_equals_the_torch_build_on_cuda(cfg, per_head, monkeypatch):
    """The default CUDA build is the fused launch (`kernels.guided_build`); it gives the torch
    path's mask and index (on the GPU and on the CPU)."""
    import patterns.guided as guided
    from kernels.guided_build import launch_params

    L, H = 333, 4
    bias = torch.randn(1, H, L, L, device="cuda", generator=torch.Generator(device="cuda").manual_seed(5))
    signal = bias if per_head else bias[0, 0]
    calls = []
    builder = guided._FUSED_BUILDER
    monkeypatch.setattr(guided, "_FUSED_BUILDER", lambda *a: calls.append(1) or builder(*a))
    fused = build_layout(cfg, L, signal=signal)
    assert calls == [1] and launch_params(cfg, L) is not None
    monkeypatch.setattr(guided, "FUSED_BUILD", False)
    for ref in (build_layout(cfg, L, signal=signal), build_layout(cfg, L, signal=signal.cpu())):
        assert torch.equal(fused.block_mask.cpu(), ref.block_mask.cpu())
        for x, y in zip(fused.index_on(fused.device), ref.index_on(ref.device)):
            assert torch.equal(x.cpu(), y.cpu())

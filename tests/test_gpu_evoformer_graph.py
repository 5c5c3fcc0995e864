"""A whole EvoFormer block forward captured in one CUDA graph (skipped without CUDA).

The promise: with block-sparse attention (a static pattern, or a guided one whose layouts are chosen
on the GPU from each module's pair bias on every call) nothing in a block's forward synchronises
with the host or depends on host-side values that change between calls, so
``torch.cuda.CUDAGraph`` captures the whole forward and a replay on new inputs gives what the eager
forward gives on them: guided layouts are re-chosen inside the replay (`patterns.guided` builds
eagerly, without its NaN check, while a capture is under way), static layouts and kernel plans are
fixed at capture. Inference (``torch.no_grad``), the Triton backend; the forward is warmed up on a
side stream first (kernel compilation, layout and plan caches), as capture requires.
"""

from __future__ import annotations

import os

import pytest
import torch

from models.evoformer import EvoformerAttention, EvoformerBlock
from patterns import GuidedConfig, PatternConfig

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device (not the Triton interpreter)",
)

DIMS = dict(c_m=64, c_z=32, c_hidden_msa_att=32, no_heads_msa=4, c_hidden_pair_att=32, no_heads_pair=4,
            c_hidden_opm=16, c_hidden_mul=32)
L, N_SEQ = 300, 8  # 300: ragged for block size 32 (9 full blocks + 12)
PATTERNS = {
    "static": PatternConfig(block_size=32, window=3, num_global=1, stride=4),
    "guided": GuidedConfig(32, keep=0.4, pool="max"),
    "guided-window": GuidedConfig(32, keep=0.3, pool="logsumexp", window=32, num_global=1),
}


def _inputs(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    m = torch.randn(N_SEQ, L, DIMS["c_m"], device="cuda", generator=g).to(dtype)
    z = torch.randn(L, L, DIMS["c_z"], device="cuda", generator=g).to(dtype)
    return m, z


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=("fp32", "bf16"))
@pytest.mark.parametrize("kind", list(PATTERNS))
def test_block_forward_replays_a_cuda_graph_on_new_inputs(kind, dtype):
    torch.manual_seed(0)
    block = EvoformerBlock(**DIMS).to(device="cuda", dtype=dtype).eval()
    block.set_attention(EvoformerAttention.sparse(PATTERNS[kind], backend="triton"))
    static_m, static_z = _inputs(0, dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            block(static_m, static_z)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out_m, out_z = block(static_m, static_z)

    previous = None
    for seed in (1, 2, 3):
        m, z = _inputs(seed, dtype)
        static_m.copy_(m)
        static_z.copy_(z)
        graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            eager_m, eager_z = block(m, z)
        torch.cuda.synchronize()
        assert torch.isfinite(out_m).all() and torch.isfinite(out_z).all()
        # the same kernels on the same inputs: equal up to the order of floating-point reductions
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(out_m, eager_m, **tol)
        torch.testing.assert_close(out_z, eager_z, **tol)
        if previous is not None:  # the replay computed on the new inputs, not a stale result
            assert not torch.equal(previous, out_z)
        previous = out_z.clone()


def test_guided_layouts_in_the_replay_follow_the_new_pair_bias():
    """The layouts a replay of a guided block builds (in the graph's own tensors) are those the eager
    forward chooses on the new inputs, and differ from the ones chosen at capture: the selection runs
    inside the graph, it is not frozen at capture."""
    import models.evoformer.attention as attention_mod

    dtype = torch.float32
    torch.manual_seed(0)
    block = EvoformerBlock(**DIMS).to(device="cuda", dtype=dtype).eval()
    block.set_attention(EvoformerAttention.sparse(PATTERNS["guided"], backend="triton"))
    static_m, static_z = _inputs(0, dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            block(static_m, static_z)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    real = attention_mod.build_layout

    def recording(into):
        def record(cfg, seq_len, **kw):
            lay = real(cfg, seq_len, **kw)
            into.append(lay.block_mask)
            return lay
        return record

    captured: list = []  # graph-owned tensors: each replay writes its layouts into them
    attention_mod.build_layout = recording(captured)
    try:
        with torch.no_grad(), torch.cuda.graph(graph):
            block(static_m, static_z)
    finally:
        attention_mod.build_layout = real
    assert len(captured) == 3  # MSA row, triangle start, triangle end
    at_capture = [mask.clone() for mask in captured]
    m, z = _inputs(5, dtype)
    static_m.copy_(m)
    static_z.copy_(z)
    graph.replay()
    torch.cuda.synchronize()
    eager: list = []
    attention_mod.build_layout = recording(eager)
    try:
        with torch.no_grad():
            block(m, z)
    finally:
        attention_mod.build_layout = real
    assert len(eager) == 3
    for replayed, now, before in zip(captured, eager, at_capture):
        assert torch.equal(replayed, now)  # the replay chose the eager layout for the new inputs
    assert any(not torch.equal(now, before) for now, before in zip(eager, at_capture))  # and it changed

"""A whole EvoFormer block with static or guided block-sparse attention (CPU backend) compiles with
``torch.compile(fullgraph=True)``: zero graph breaks (fullgraph raises on any), and the compiled
block equals eager, forward and gradients.

``aot_eager`` traces what inductor would (dynamo's graph, then AOT autograd over fake tensors) without
generating C++ (minutes on a small CPU); a GPU run compiles with inductor. Fresh random inputs each
run; the seed is in every assertion message.
"""

from __future__ import annotations

import secrets

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from kernels import cpu_fused
from models.evoformer import EvoformerAttention, EvoformerBlock
from patterns import GuidedConfig, PatternConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not cpu_fused.available(), reason="fused CPU kernel not available (no C compiler)"),
]

SMALL = dict(c_m=32, c_z=16, c_hidden_msa_att=16, no_heads_msa=2, c_hidden_pair_att=16, no_heads_pair=2,
             c_hidden_opm=8, c_hidden_mul=16)
L, S = 64, 3
PATTERNS = {
    "static": PatternConfig(16, window=16),  # 37.5% sparse at L=64
    "static-full": PatternConfig(16, stride=1),  # every tile: the backend's dense path (torch.cond)
    "guided": GuidedConfig(16, keep=0.4, pool="max"),
}


def _block(kind: str, seed: int) -> EvoformerBlock:
    torch.manual_seed(seed)
    block = EvoformerBlock(**SMALL)
    with torch.no_grad():  # the default init zeroes some output layers; make every path count
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return block.set_attention(EvoformerAttention.sparse(PATTERNS[kind], backend="cpu"))


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(S, L, SMALL["c_m"], generator=g), torch.randn(L, L, SMALL["c_z"], generator=g)


def _grads(fn, block, m, z, seed):
    block.zero_grad(set_to_none=True)
    m, z = m.clone().requires_grad_(True), z.clone().requires_grad_(True)
    om, oz = fn(m, z)
    g = torch.Generator().manual_seed(seed)
    (om * torch.randn(om.shape, generator=g)).sum().add((oz * torch.randn(oz.shape, generator=g)).sum()).backward()
    out = {"m": m.grad, "z": z.grad, "om": om.detach(), "oz": oz.detach()}
    out.update({n: p.grad.clone() for n, p in block.named_parameters()})
    return out


@pytest.mark.parametrize("kind", list(PATTERNS))
def test_compiled_sparse_block_has_no_graph_break_and_equals_eager(kind):
    seed = secrets.randbelow(2**31 - 1)
    block = _block(kind, seed)
    m, z = _inputs(seed)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        want = block(m, z)
        got = compiled(m, z)
    assert not counters["graph_break"], f"seed {seed}: graph breaks {dict(counters['graph_break'])}"
    for a, b, name in zip(got, want, ("m", "z")):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda msg: f"seed {seed}: {kind} {name}: {msg}")
    eager = _grads(block, block, m, z, seed)
    comp = _grads(compiled, block, m, z, seed)
    assert not counters["graph_break"], f"seed {seed}: graph breaks {dict(counters['graph_break'])}"
    for name, want_g in eager.items():
        torch.testing.assert_close(comp[name], want_g, atol=1e-4, rtol=1e-4,
                                   msg=lambda msg: f"seed {seed}: {kind} grad {name}: {msg}")

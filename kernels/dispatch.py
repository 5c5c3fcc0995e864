"""The dispatcher of `kernels.sparse_attention` (the package docstring says what it computes):
the backend name checked against the registry (``BACKENDS``: "auto" and every registered backend),
the input contract (`kernels.inputs.check_inputs`), a bias of fewer than 4 dims viewed as
[1, .., L, L], then the backend's ``run``. Importing it also hands `patterns.guided` the fused
CUDA build of guided layouts (`kernels.guided_build`; patterns cannot import kernels), so every
caller of sparse attention builds its guided layouts with one launch on CUDA.
"""

from __future__ import annotations

from typing import Optional

import torch

from patterns import BlockLayout
from patterns import guided as _guided

from . import backends as _backends
from .config import KernelConfig
from .inputs import check_gate, check_inputs, gate_output

BACKENDS: tuple[str, ...] = ("auto", *_backends.names())


def _fused_guided_build(*args):
    """`kernels.guided_build.fused_guided_build`, imported (with Triton) on the first CUDA build;
    None (the torch path builds the layout) where Triton is not installed."""
    try:
        from .guided_build import fused_guided_build
    except ImportError:
        _guided.register_fused_builder(None)
        return None
    return fused_guided_build(*args)


# guided layouts on CUDA: pooling, selection and index in one launch (patterns cannot import kernels)
_guided.register_fused_builder(_fused_guided_build)

__all__ = ["sparse_attention", "BACKENDS"]


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    bias: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    backend: str = "auto",
    config: Optional[KernelConfig] = None,
    gate: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Block-sparse attention of [B, H, L, D] inputs on ``layout`` (see module docstring). The
    backend is looked up in the registry (``kernels.backends``); ``config`` goes to a backend that
    takes a launch config (triton) and is ignored by the others. ``gate``: None, or gate logits of
    q's shape: the result is then sigmoid(gate) * attention (`kernels.inputs.gate_output`), applied
    inside the kernel by a backend that can (``Backend.gated``: the Triton forward's epilogue, for
    eager calls without gradients) and after it otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    check_inputs(q, k, v, layout, bias)
    check_gate(q, gate)
    if bias is not None and bias.dim() < 4:
        bias = bias[(None,) * (4 - bias.dim())]  # a view: [L, L] -> [1, 1, L, L] (gradients flow back)
    impl = _backends.resolve(backend, q.device)
    if gate is not None and impl.gated:
        return impl.run(q, k, v, layout, bias, scale=scale, config=config, gate=gate)
    return gate_output(impl.run(q, k, v, layout, bias, scale=scale, config=config), gate)


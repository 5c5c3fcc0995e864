"""Attention on a block layout: one entry point, several backends.

``sparse_attention(q, k, v, layout, bias=None, *, scale=None, backend="auto", config=None)``
computes softmax(q k^T * scale + bias) v where the softmax runs over the keys that
``layout.token_mask()`` allows (a row with no allowed key gives zeros). q, k, v are [B, H, L, D];
bias broadcasts to [B, H, L, L] (AlphaFold2 passes [1, H, L, L], shared by all MSA rows).
Non-finite inputs (NaN, inf, ``scale=nan``, rows whose bias is all -inf) follow one set of rules on
every backend, written in the docstring of ``kernels.reference``: pairs outside the layout are
never read, NaN at a computed pair makes its row NaN, an all -inf row gives zeros.

Backends:
  reference  exact dense definition in PyTorch (the oracle), any device and dtype
  triton     the product's block-sparse Triton kernel (forward + backward), CUDA or TRITON_INTERPRET
  flex       FlexAttention with a BlockMask from the same layout (the peer baseline)
  dense      scaled_dot_product_attention with the bias (the dense baseline)
  cpu        the fastest correct CPU path
  auto       triton on CUDA tensors, cpu otherwise

What each backend supports (devices, dtypes, head dims, gradients, launch-config type,
availability) is one record per backend in ``kernels.backends``, which the dispatcher reads.
A layout may live on the CPU or on the device of q (a guided layout is built on its signal's
device); every backend reads its index where it runs. Per-layout plans that backends keep are in
one cache, ``kernels.plans``; ``clear_plan_caches()`` empties it (before a cold measurement).
"""

from __future__ import annotations

from typing import Optional

import torch

from patterns import BlockLayout
from patterns import guided as _guided

from . import backends as _backends
from .config import KernelConfig, candidate_configs
from .dense import dense_attention
from .inputs import check_inputs
from .plans import clear_plan_caches
from .reference import reference_attention

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

__all__ = [
    "sparse_attention",
    "reference_attention",
    "dense_attention",
    "KernelConfig",
    "candidate_configs",
    "BACKENDS",
    "check_inputs",
    "clear_plan_caches",
]


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
) -> torch.Tensor:
    """Block-sparse attention of [B, H, L, D] inputs on ``layout`` (see module docstring). The
    backend is looked up in the registry (``kernels.backends``); ``config`` goes to a backend that
    takes a launch config (triton) and is ignored by the others."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    check_inputs(q, k, v, layout, bias)
    if bias is not None and bias.dim() < 4:
        bias = bias[(None,) * (4 - bias.dim())]  # a view: [L, L] -> [1, 1, L, L] (gradients flow back)
    return _backends.resolve(backend, q.device).run(q, k, v, layout, bias, scale=scale, config=config)


# the deployed tuned-file reader (kernels/tuned.py): what a deployment loads next to sparse_attention
from .tuned import TunedFile, TunedPatterns, load_tuned  # noqa: E402

__all__ += ["TunedFile", "TunedPatterns", "load_tuned"]

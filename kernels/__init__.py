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

The public names are loaded on first use (PEP 562), as in `patterns`: ``import kernels.baselines``
(the baseline vocabulary the report reads) or ``kernels.compile_cache`` does not load torch.
``sparse_attention`` and ``BACKENDS`` live in `kernels.dispatch`; the deployed tuned-file reader
(``TunedFile``, ``TunedPatterns``, ``load_tuned``) in `kernels.tuned`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from patterns.lazy import lazy_exports

#: public name -> the submodule that defines it
_LAZY = {
    "sparse_attention": "dispatch",
    "BACKENDS": "dispatch",
    "_fused_guided_build": "dispatch",
    "reference_attention": "reference",
    "dense_attention": "dense",
    "KernelConfig": "config",
    "candidate_configs": "config",
    "check_inputs": "inputs",
    "clear_plan_caches": "plans",
    "TunedFile": "tuned",
    "TunedPatterns": "tuned",
    "load_tuned": "tuned",
}

if TYPE_CHECKING:
    from .config import KernelConfig, candidate_configs
    from .dense import dense_attention
    from .dispatch import BACKENDS, sparse_attention
    from .inputs import check_inputs
    from .plans import clear_plan_caches
    from .reference import reference_attention
    from .tuned import TunedFile, TunedPatterns, load_tuned

__all__ = [
    "sparse_attention",
    "reference_attention",
    "dense_attention",
    "KernelConfig",
    "candidate_configs",
    "BACKENDS",
    "check_inputs",
    "clear_plan_caches",
    "TunedFile",
    "TunedPatterns",
    "load_tuned",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

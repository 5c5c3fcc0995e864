"""What the block-sparse kernels support, as constants: the one place both the backend registry
(`kernels.backends`) and the kernels themselves (`kernels.triton_op`, `kernels.cpu_fused`) read.

A leaf module (it imports nothing of ``kernels``), so that the registry, which imports each
backend's module on first use, and the backends, which check their inputs against these values,
do not import each other.
"""

from __future__ import annotations

from patterns.config import SUPPORTED_BLOCK_SIZES

__all__ = ["TRITON_HEAD_DIMS", "TRITON_DTYPES", "FUSED_CPU_HEAD_DIMS", "LAYOUT_BLOCK_SIZES"]

# Head dims and dtypes of the Triton kernels.
TRITON_HEAD_DIMS: tuple[int, ...] = (8, 16, 32, 64)
TRITON_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
# Head dims of the CPU backend's fused C kernel (other head dims take its SDPA-bucket engine).
FUSED_CPU_HEAD_DIMS: tuple[int, ...] = (8, 16, 32, 64)
# Layout block sizes the block-sparse kernels take (every block size a pattern may have).
LAYOUT_BLOCK_SIZES: tuple[int, ...] = tuple(SUPPORTED_BLOCK_SIZES)

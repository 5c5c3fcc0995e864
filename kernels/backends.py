"""The backend registry: what each attention backend supports, as data, and how to call it.

One ``Backend`` record per backend: the device types it runs on, the dtypes and head dims it
computes exactly, the layout block sizes it takes, where it has gradients, the type of its launch
config (``config=`` of ``sparse_attention``), what it needs installed, how to tell whether it can
run here (with the reason when it cannot), and its entry function, whose module is imported on
first use (so that importing ``kernels`` imports neither triton nor torch.compile's machinery). The dispatcher
(``kernels.sparse_attention``) reads it to check a backend name, to resolve ``backend="auto"``
and to call the backend; the search-space validator, the kernel benchmark and the report can read
the same records instead of restating them.

Checking a request against a record (``Backend.unsupported``) is advice for those callers: the
dispatcher itself leaves every check to the backend, whose own errors say what does not fit.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from .capabilities import FUSED_CPU_HEAD_DIMS, LAYOUT_BLOCK_SIZES, TRITON_DTYPES, TRITON_HEAD_DIMS
from .config import KernelConfig

__all__ = [
    "Backend", "REGISTRY", "AUTO", "names", "get", "resolve", "auto_backend",
    "TRITON_HEAD_DIMS", "TRITON_DTYPES", "FUSED_CPU_HEAD_DIMS", "LAYOUT_BLOCK_SIZES",
]

DeviceLike = Union[str, torch.device]
DtypeLike = Union[str, torch.dtype]

_ALL_DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")


def _dtype_name(dtype: DtypeLike) -> str:
    return str(dtype).replace("torch.", "")


def _device_type(device: DeviceLike) -> str:
    return device.type if isinstance(device, torch.device) else torch.device(device).type


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class Backend:
    """One attention backend.

    name: the ``backend=`` name. summary: one line on what it is.
    devices: device types of q, k, v it runs on. dtypes: input dtypes it computes exactly (names).
    head_dims / block_sizes: the head dims and layout block sizes it takes (None: any).
    grad_devices: device types on which it is differentiable (q, k, v, bias).
    config_type: the launch-config type its ``config=`` takes (None: it takes none; a config given
    to it is ignored). run: the entry, ``run(q, k, v, layout, bias, scale=..., config=...)``, which
    imports the backend's module on first use. requires: (module, extra) pairs it needs installed.
    interpreter_on_cpu: it runs on CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's
    interpreter: exact but slow, for tests). gated: its ``run`` takes ``gate=`` and applies
    sigmoid(gate) itself (inside the kernel where it can); the dispatcher multiplies after the
    others (`kernels.inputs.gate_output`).
    """

    name: str
    summary: str
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    head_dims: Optional[tuple[int, ...]]
    block_sizes: Optional[tuple[int, ...]]
    grad_devices: tuple[str, ...]
    config_type: Optional[type]
    run: Callable = field(repr=False)
    requires: tuple[tuple[str, str], ...] = ()
    interpreter_on_cpu: bool = False
    gated: bool = False

    # ---- where it can run ------------------------------------------------------------------------
    def unavailable_reason(self, device: DeviceLike = "cpu") -> str:
        """Why this backend cannot run on ``device`` on this machine ('' when it can). Imports
        nothing: optional packages are looked up, not loaded."""
        dev = _device_type(device)
        if dev not in self.devices:
            return f"{self.name} backend does not run on {dev} tensors (runs on: {', '.join(self.devices)})"
        for module, extra in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"{self.name} backend needs {module}, which is not installed (the '{extra}' extra)"
        if dev == "cuda" and not torch.cuda.is_available():
            return f"{self.name} backend: this machine has no CUDA device"
        if dev == "cpu" and self.interpreter_on_cpu and not _interpreting():
            return f"{self.name} backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)"
        return ""

    def available(self, device: DeviceLike = "cpu") -> bool:
        """True when ``unavailable_reason(device)`` is empty."""
        return not self.unavailable_reason(device)

    def supports_grad(self, device: DeviceLike) -> bool:
        """Whether it is differentiable on ``device``."""
        return _device_type(device) in self.grad_devices

    def unsupported(self, device: DeviceLike, dtype: DtypeLike, head_dim: Optional[int] = None,
                    block_size: Optional[int] = None, grad: bool = False) -> str:
        """Why this backend does not take such a call ('' when it does; availability on this
        machine is ``unavailable_reason``): device type, dtype, head dim, block size, gradients."""
        dev = _device_type(device)
        if dev not in self.devices:
            return f"{self.name} backend does not run on {dev} tensors (runs on: {', '.join(self.devices)})"
        name = _dtype_name(dtype)
        if name not in self.dtypes:
            return f"{self.name} backend does not compute {name} (dtypes: {', '.join(self.dtypes)})"
        if head_dim is not None and self.head_dims is not None and head_dim not in self.head_dims:
            return f"{self.name} backend supports head_dim in {list(self.head_dims)}, got head_dim={head_dim}"
        if block_size is not None and self.block_sizes is not None and block_size not in self.block_sizes:
            return f"{self.name} backend supports block_size in {list(self.block_sizes)}, got {block_size}"
        if grad and dev not in self.grad_devices:
            return f"{self.name} backend has no gradients on {dev} (forward only there)"
        return ""

    # ---- calling it ------------------------------------------------------------------------------
    def __call__(self, q, k, v, layout, bias=None, *, scale=None, config=None):
        """Run this backend on [B, H, L, D] inputs (``config`` reaches it only if it takes one)."""
        return self.run(q, k, v, layout, bias, scale=scale, config=config)


# Entry functions: each imports its backend module on first use (plain import statements, which
# torch.compile traces; a backend's optional dependencies load only when it is called).
def _run_reference(q, k, v, layout, bias, *, scale, config):
    from .reference import reference_attention

    return reference_attention(q, k, v, layout, bias, scale=scale)


def _run_triton(q, k, v, layout, bias, *, scale, config, gate=None):
    run = _LOADED.get("triton")  # an import statement costs ~1 us a call: the product's hot path keeps the entry
    if run is None:
        from .triton_op import triton_attention_checked as run  # the dispatcher has checked the inputs

        _LOADED["triton"] = run
    return run(q, k, v, layout, bias, scale=scale, config=config, gate=gate)


_LOADED: dict[str, Callable] = {}  # backend entries imported once (see _run_triton)


def _run_flex(q, k, v, layout, bias, *, scale, config):
    from .flex import flex_sparse_attention

    return flex_sparse_attention(q, k, v, layout, bias, scale=scale)


def _run_dense(q, k, v, layout, bias, *, scale, config):
    from .dense import dense_attention

    return dense_attention(q, k, v, layout, bias, scale=scale)


def _run_cpu(q, k, v, layout, bias, *, scale, config):
    from .cpu import cpu_sparse_attention

    return cpu_sparse_attention(q, k, v, layout, bias, scale=scale)


REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            name="reference", summary="exact dense definition in PyTorch (the oracle), any device and dtype",
            devices=("cpu", "cuda"), dtypes=_ALL_DTYPES, head_dims=None, block_sizes=None,
            grad_devices=("cpu", "cuda"), config_type=None, run=_run_reference,
        ),
        Backend(
            name="triton", summary="the product's block-sparse Triton kernel (forward + backward), CUDA or TRITON_INTERPRET",
            devices=("cuda", "cpu"), dtypes=TRITON_DTYPES, head_dims=TRITON_HEAD_DIMS, block_sizes=LAYOUT_BLOCK_SIZES,
            grad_devices=("cuda", "cpu"), config_type=KernelConfig, run=_run_triton,
            requires=(("triton", "triton"),), interpreter_on_cpu=True, gated=True,
        ),
        Backend(
            name="flex", summary="FlexAttention with a BlockMask from the same layout (the peer baseline)",
            devices=("cpu", "cuda"), dtypes=("float32", "float16", "bfloat16"), head_dims=None, block_sizes=None,
            grad_devices=("cuda",), config_type=None, run=_run_flex,
        ),
        Backend(
            name="dense", summary="scaled_dot_product_attention with the bias (the dense baseline)",
            devices=("cpu", "cuda"), dtypes=_ALL_DTYPES, head_dims=None, block_sizes=None,
            grad_devices=("cpu", "cuda"), config_type=None, run=_run_dense,
        ),
        Backend(
            name="cpu",
            summary="the fastest correct CPU path (fused C kernel, else the SDPA-bucket engine, which also runs on CUDA tensors)",
            devices=("cpu", "cuda"), dtypes=_ALL_DTYPES, head_dims=None, block_sizes=None,
            grad_devices=("cpu", "cuda"), config_type=None, run=_run_cpu,
        ),
    )
}

# backend="auto": per device type of q, else the default
AUTO: dict[str, str] = {"cuda": "triton"}
AUTO_DEFAULT = "cpu"


def names() -> tuple[str, ...]:
    """The registered backend names, in registry order (without "auto")."""
    return tuple(REGISTRY)


def auto_backend(device: DeviceLike) -> str:
    """The backend ``backend="auto"`` picks for tensors on ``device``: triton on CUDA, cpu otherwise."""
    return AUTO.get(_device_type(device), AUTO_DEFAULT)


def get(name: str) -> Backend:
    """The record of backend ``name``; ValueError naming the choices for an unknown one."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"backend must be one of {['auto', *REGISTRY]}, got {name!r}") from None


def resolve(name: str, device: DeviceLike) -> Backend:
    """The record that runs ``backend=name`` for tensors on ``device`` ("auto" resolved)."""
    return get(auto_backend(device) if name == "auto" else name)

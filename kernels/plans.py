"""The one cache of per-layout plans that the backends keep, and the one way to clear it.

A backend prepares things once per layout and device and reuses them on every later call with the
same layout: the CPU fused kernel's work lists (query block rows ordered by cost), its checked
index and its K^T workspace; the SDPA-bucket engine's row buckets and gather indices; the Triton
kernels' tile orders; FlexAttention's ``BlockMask``. All of them live here, in one weak dictionary
keyed by the layout's compact index tensor (``kv_counts``) on the device the backend reads it on
(``BlockLayout.index_on(device)``): the custom ops see tensors, not the layout, and the index
tensor is built once per layout and device and dies with the layout, so a layout's plans are freed
with it. Each backend keeps its entries under its own keys in the per-layout dict that
``layout_plans`` returns.

A plan is never stale: a `patterns.BlockLayout` is a value (it copies its mask and hands out
copies), and if one of its index tensors is written in place all the same, ``index_on`` notices it
by the tensor's version counter and builds the index again as new tensors, whose plans start
empty. Plans of index tensors given to the custom ops directly (not through a layout) are keyed on
their version counters as well (the fused kernel's work lists and checks, the Triton tile orders).

``clear_plan_caches()`` drops every plan of every layout (and the small shared tables below), so
that the next call on any layout is a cold call: what a first call allocates and computes. What
stays is the layout's own data (its mask and compact index, on each device it was asked for:
``BlockLayout.index_on``), a guided config's shared workspace (``BlockLayout.workspace``, which
belongs to ``patterns.guided``), and compiled code (Triton's and torch.compile's caches). A layout
object made by ``BlockLayout.fresh()`` owns none of these either: a cold measurement either calls
on ``layout.fresh()`` or calls ``clear_plan_caches()`` first.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Hashable, TypeVar

import torch
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["layout_plans", "shared", "clear_plan_caches", "cached_layouts", "check_layout_device", "host_index"]

T = TypeVar("T")

_PLANS = WeakTensorKeyDictionary()  # a layout's index tensor (on one device) -> {key: plan}
_SHARED: dict = {}                  # small tables not tied to a layout (e.g. aranges)
_LOCK = threading.Lock()
# id(index) -> (weak reference to index, its plans): one dict lookup per call instead of the weak
# key that a lookup in _PLANS makes (~3 us; a call looks plans up several times). An entry is
# dropped when its tensor dies (the reference's callback), so it keeps neither alive.
_FAST: dict = {}


def layout_plans(index: torch.Tensor) -> dict:
    """The dict of plans kept for the layout whose ``kv_counts`` on one device is ``index``
    (created empty on first use; freed with the tensor). Backends store under their own keys."""
    hit = _FAST.get(id(index))
    if hit is not None and hit[0]() is index:
        return hit[1]
    plans = _PLANS.get(index)
    if plans is None:
        with _LOCK:
            plans = _PLANS.get(index)
            if plans is None:
                plans = _PLANS[index] = {}
    key = id(index)
    _FAST[key] = (weakref.ref(index, lambda ref: _drop_fast(key, ref)), plans)
    return plans


def _drop_fast(key: int, ref) -> None:
    hit = _FAST.get(key)
    if hit is not None and hit[0] is ref:
        _FAST.pop(key, None)


def shared(key: Hashable, make: Callable[[], T]) -> T:
    """A small table shared by all layouts (built by ``make`` once, until the caches are cleared)."""
    value = _SHARED.get(key)
    if value is None:
        value = _SHARED[key] = make()
    return value


def clear_plan_caches() -> None:
    """Forget every backend's per-layout plans and workspaces (and the shared tables): the next
    call on any layout prepares its plan again, as a first call does."""
    with _LOCK:
        for key in list(_PLANS.keys()):
            plans = _PLANS.get(key)
            if plans is not None:
                plans.clear()
        _PLANS.clear()
        _FAST.clear()
        _SHARED.clear()


def cached_layouts() -> int:
    """How many (layout, device) entries hold plans now (for tests and diagnostics)."""
    return sum(1 for _ in _PLANS.keys())


def check_layout_device(layout) -> None:
    """Refuse a layout whose mask holds no data (the ``meta`` device) with one line; a layout on the
    CPU or on a GPU is accepted by every backend (each reads its index where it runs)."""
    if layout.device.type == "meta":
        raise ValueError(
            "layout.block_mask is on the meta device (no data): build the layout on the CPU or on the inputs' device"
        )


def host_index(layout) -> tuple[torch.Tensor, ...]:
    """The layout's compact index (kv_counts, kv_indices, q_counts, q_indices) on the CPU: the
    layout's own for a CPU layout; for one built on a GPU (a guided layout lives on its signal's
    device) a copy made once per layout (``BlockLayout.index_on("cpu")``), the one host transfer
    that planning on the host needs."""
    check_layout_device(layout)
    return layout.index_on("cpu")

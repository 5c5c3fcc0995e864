"""Timing and peak-memory measurement, on GPU and on CPU, and the naive attention baseline.

Time: ``warmup`` untimed calls, then ``repeats`` timed calls, each timed on its own; we report the
median and the 10th / 90th percentiles. On CUDA each call is timed with a pair of CUDA events
(device time, no host overhead beyond the launch); on CPU with ``time.perf_counter``.

Peak memory above the inputs (everything the call allocates at its high point: output, logits,
workspaces, gradients in fwd+bwd), measured, never estimated:

* CUDA: the caching allocator's statistics, ``max_memory_allocated() - memory_allocated()`` around
  one call after ``reset_peak_memory_stats()``.
* CPU: the kernel's own high-water mark of the process's resident set. Before the call we return
  freed heap pages to the OS (glibc ``malloc_trim(0)``) and reset the high-water mark by writing
  ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0); after the call the peak is
  ``VmHWM - VmRSS(before)`` from ``/proc/self/status``. Page granularity, includes every thread of
  the process (other threads of an idle Ray worker allocate next to nothing). Where clear_refs is
  not available, a thread samples VmRSS every 0.2 ms during the call instead (may miss very short
  peaks); ``peak_memory`` returns which method was used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
import time
from typing import Callable, Optional

import torch

__all__ = ["time_fn", "peak_memory", "naive_attention", "is_oom", "percentile"]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], *, device: str, warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Median / p10 / p90 wall (CPU) or device (CUDA event) time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    if device == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": percentile(times, 50),
        "p10_ms": percentile(times, 10),
        "p90_ms": percentile(times, 90),
        "repeats": len(times),
    }


# ---- CPU resident-set measurement ----------------------------------------------------------------

_libc = None


def _malloc_trim() -> None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak(fn: Callable[[], object]) -> tuple[int, str]:
    _malloc_trim()
    if _status_kib("VmRSS") is not None and _reset_hwm():
        before = _status_kib("VmRSS") or 0
        fn()
        hwm = _status_kib("VmHWM") or before
        return max(0, hwm - before) * 1024, "rss_hwm"
    # fallback: sample the resident set in a thread
    before = _status_kib("VmRSS") or 0
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            v = _status_kib("VmRSS")
            if v is not None and v > peak[0]:
                peak[0] = v
            time.sleep(0.0002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        stop.set()
        th.join()
    v = _status_kib("VmRSS") or 0
    return max(0, max(peak[0], v) - before) * 1024, "rss_sampled"


def peak_memory(fn: Callable[[], object], *, device: str) -> tuple[int, str]:
    """(bytes allocated above the current level at the peak of one ``fn()`` call, method)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before), "cuda_allocator"
    return _cpu_peak(fn)


# ---- baselines --------------------------------------------------------------------------------------


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor], scale: Optional[float] = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with the L x L logits materialised, in the input dtype."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias
    return torch.matmul(torch.softmax(s, dim=-1), v)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError))):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg

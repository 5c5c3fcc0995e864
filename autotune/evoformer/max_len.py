"""The largest sequence length whose EvoFormer block pass fits a memory budget (the benchmark's
``--max-len`` probe).

`probe_max_len` searches lengths that are multiples of ``step``: it doubles from ``start`` while the
pass fits (up to ``limit``), then bisects between the last length that fits and the first that does
not until they are one ``step`` apart (a binary search on a monotone predicate: memory grows with
L). A start that does not fit is bisected below (down to ``step``); 0 means not even ``step`` fits.
A deadline stops the probe early: the answer is then the largest length proven to fit, a lower
bound (``complete=False``).

`pass_fits` is the predicate for one block pass: its peak memory above the inputs and parameters,
measured by a peak function (default `kernels.measure.peak_memory`: the CUDA caching allocator's
peak, or on a CPU the resident-set high-water mark; injectable, so the search logic is testable on a
CPU with a tiny model), within the budget; out of memory does not fit. A CPU whose peak can only be
sampled (no resettable high-water mark) is refused with one line (`ProbeUnavailable`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from kernels.measure import is_oom, peak_memory, release_memory
from patterns.errors import InputError

__all__ = ["ProbeError", "ProbeResult", "ProbeUnavailable", "check_probe", "probe_max_len", "pass_fits",
           "TRUSTED_METHODS"]

# peak-memory methods the probe trusts: an allocator's peak (CUDA) or a resettable high-water mark
TRUSTED_METHODS = frozenset({"cuda_allocator", "rss_hwm"})


class ProbeError(InputError):
    """Probe arguments that cannot work (one line; exit status 2 on the command line)."""


class ProbeUnavailable(ProbeError):
    """The peak memory of a pass cannot be measured reliably here (one line)."""


def check_probe(start: int, step: int, limit: int) -> None:
    """`ProbeError` unless step >= 1, start is a positive multiple of step and start <= limit."""
    if step < 1 or start < step or start % step or limit < start:
        raise ProbeError(f"--max-len: needs --max-len-step >= 1, --max-len-start a multiple of it and at most "
                         f"--max-len-limit; got start={start}, step={step}, limit={limit}")


@dataclass(frozen=True)
class ProbeResult:
    """The answer of `probe_max_len`: ``max_len`` (0: nothing fits), ``peak_mib`` at it (NaN for
    0), whether the search finished (False: stopped by the deadline, ``max_len`` a lower bound),
    and every length tried as (L, fits, peak MiB), in order."""

    max_len: int
    peak_mib: float
    complete: bool
    tried: tuple[tuple[int, bool, float], ...] = field(default_factory=tuple)


def probe_max_len(fits: Callable[[int], tuple[bool, float]], *, start: int, step: int, limit: int,
                  deadline: Optional[float] = None, log: Callable[[str], None] = lambda s: None) -> ProbeResult:
    """The largest multiple of ``step`` in [step, limit] for which ``fits(L)`` holds (module
    docstring: doubling from ``start``, then bisection to ``step``). ``fits(L)`` -> (fits, peak MiB);
    ``deadline``: a ``time.perf_counter()`` value after which no new length is tried."""
    check_probe(start, step, limit)
    limit = limit // step * step
    tried: list[tuple[int, bool, float]] = []
    peaks = {0: float("nan")}

    def attempt(L: int) -> Optional[bool]:
        if deadline is not None and time.perf_counter() > deadline:
            log(f"  max-len: time cap reached before L={L}")
            return None
        ok, peak = fits(L)
        tried.append((L, ok, peak))
        peaks[L] = peak
        log(f"  max-len: L={L} {'fits' if ok else 'does not fit'} ({peak:.0f} MiB)")
        return ok

    lo, hi, L = 0, limit + step, start  # lo fits (0: nothing yet), hi does not (limit + step: untried)
    while L <= limit:  # doubling
        ok = attempt(L)
        if ok is None:
            return ProbeResult(lo, peaks[lo], False, tuple(tried))
        if not ok:
            hi = L
            break
        lo = L
        L = min(2 * L, limit) if L < limit else limit + step
    while hi - lo > step:  # bisection on multiples of step
        mid = max(lo + step, (lo + hi) // 2 // step * step)
        ok = attempt(mid)
        if ok is None:
            return ProbeResult(lo, peaks[lo], False, tuple(tried))
        lo, hi = (mid, hi) if ok else (lo, mid)
    return ProbeResult(lo, peaks[lo], True, tuple(tried))


def pass_fits(make_pass: Callable[[int], Callable[[], None]], budget_gib: float, device: torch.device,
              peak_fn: Callable = peak_memory) -> Callable[[int], tuple[bool, float]]:
    """The predicate of `probe_max_len` for one kind of pass: ``make_pass(L)`` builds the pass at
    length L (inputs, attention), whose peak (``peak_fn(fn, device=...)`` -> (bytes, method))
    must be within ``budget_gib``; out of memory does not fit (peak NaN). A peak measured by a
    method not in `TRUSTED_METHODS` raises `ProbeUnavailable`."""
    def fits(L: int) -> tuple[bool, float]:
        fn = None
        try:
            fn = make_pass(L)
            nbytes, method = peak_fn(fn, device=device)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            return False, float("nan")
        finally:
            fn = None
            release_memory(device)
        if method not in TRUSTED_METHODS:
            raise ProbeUnavailable(f"--max-len: the peak memory on {device} can only be sampled here ({method}), "
                                   "not measured; run the probe on CUDA or a Linux host with a resettable VmHWM")
        mib = nbytes / 2**20
        return mib <= budget_gib * 1024.0, mib
    return fits

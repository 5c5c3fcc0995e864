"""The one measurement layer: timer, peak-memory probe, OOM detector and tolerance table.

Every benchmark and the search measure through this module (`kernels.bench`, the EvoFormer
benchmark, the trials), so that one number means one thing wherever it is reported.

**The timer.** One stopwatch (`Stopwatch`) times a sequence of calls: on CUDA each call between its
own pair of CUDA events (device time; the host synchronises once, after the sequence), on a CPU
with ``time.perf_counter`` around each call (wall time). `timer_method` names it
(``"cuda_events"`` or ``"perf_counter"``) and every CSV and record stores that name next to the
times it produced. Two ways to use it:

* `time_fn` / `measure_time`: one function on its own, median / p10 / p90 (linear-interpolated
  percentiles) of ``repeats`` calls after ``warmup`` untimed calls (the kernel benchmark, the
  EvoFormer benchmark, the naive baseline of the trials);
* `time_paired`: the candidate(s) and the baseline interleaved (the search's method, below).

Paired time (`time_paired`, what trials and the confirmation use): the candidate(s) and the
baseline run interleaved in one loop. One *round* calls every function once, in an order that
rotates from round to round (A B, B A, ... for two), so that a load change on the machine hits
candidate and baseline alike and neither always runs first. ``warmup`` untimed rounds come first
(at least one, so first calls - allocation, compilation, cache misses - are excluded). After each
timed round the speedup of every candidate over the baseline is estimated from the per-round
ratios ``t_baseline / t_candidate`` (the two calls of a pair are adjacent in time): the point
estimate is the median of the ratios, the interval the distribution-free confidence interval of
that median from order statistics (the binomial method: the k-th smallest and k-th largest ratio,
k the largest index with P(Binomial(n, 1/2) < k) <= (1 - level) / 2; Conover, *Practical
Nonparametric Statistics*, 3rd ed., sec. 3.2). Repeats adapt: at least ``repeats`` rounds, then
more until every candidate's interval is narrower than ``rel_width`` of its estimate on each side
(short kernels and quiet machines stop early, noisy ones take more rounds), ``max_repeats`` is
reached, or ``time_cap_s`` of timed calls is spent. A call shorter than ``min_call_ms`` is repeated
``inner`` times inside one timed sample (timer resolution). A round is one `Stopwatch` sequence
(one host synchronisation per round on CUDA). With fewer rounds than the level allows (n < 6 at
95%) the interval is the full range of the ratios and its achieved level is reported.

Caches between paired calls. On CUDA the paired timer flushes the GPU's L2 before each timed
sample (``flush_l2``, default on): a buffer of twice the device's L2 size (`l2_flush_bytes`) is
zeroed on the stream *before* the sample's start event, so the flush is never timed and every
candidate and baseline call starts from a cold L2 - otherwise the second call of a pair reads the
inputs the first one just brought in (the AlphaFold2 shapes' q, k, v and pair bias are 16-64 MiB
each, the size of an H100's 50 MB L2), a bias in favour of whichever runs second that the rotation
only averages out. The ``inner`` repeats of one sample (calls under ``min_call_ms``) share one flush.
On a CPU nothing is flushed: evicting a last-level cache takes a pass over a buffer several times
its size (milliseconds per call, as long as the CPU calls being timed), and the CPU shapes' inputs
(a few MiB) fit the cache either way, so both functions of a pair see a warm cache alike.

**The peak-memory probe** (`peak_memory`): bytes allocated above the current level at the high
point of one call (output, logits, workspaces, gradients in fwd+bwd), measured, never estimated:

* CUDA: the caching allocator's statistics, ``max_memory_allocated() - memory_allocated()`` around
  one call after ``reset_peak_memory_stats()`` (method ``"cuda_allocator"``).
* CPU: the kernel's own high-water mark of the process's resident set. Before the call we return
  freed heap pages to the OS (glibc ``malloc_trim(0)``) and reset the high-water mark by writing
  ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0); after the call the peak is
  ``VmHWM - VmRSS(before)`` from ``/proc/self/status`` (method ``"rss_hwm"``). Page granularity,
  includes every thread of the process (other threads of an idle Ray worker allocate next to
  nothing). Where clear_refs is not available, a thread samples VmRSS every 0.2 ms during the call
  instead (``"rss_sampled"``; may miss very short peaks).

**The OOM detector** (`is_oom`): ``MemoryError``, ``torch.cuda.OutOfMemoryError``, or an error whose
message says the allocator ran out ("out of memory", "can't allocate memory", "not enough
memory"); `release_memory` collects garbage and empties the CUDA cache after one.

**The tolerance table** (`TOLERANCES`, `tolerance`): per dtype the largest accepted error of a
forward output and of a gradient against the reference, both *relative to the reference's
largest magnitude* (`relative_error`: max |x - ref| / max |ref|; a non-finite error is infinite).
Half-precision rows allow for the output's own rounding (bf16 keeps 8 significant bits:
2^-8 = 0.4% per value) on top of a float32-accumulating kernel.

`naive_attention` (the materialised softmax the trials time as their naive baseline) also lives
here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch

__all__ = ["Stopwatch", "timer_method", "Timing", "measure_time", "time_fn", "time_paired", "PairedTiming",
           "RatioEstimate", "median_ci", "percentile", "PAIRED_DEFAULTS", "PeakMemory", "peak_memory", "is_oom",
           "release_memory", "Tolerance", "TOLERANCES", "tolerance", "relative_error", "naive_attention",
           "TIMER_CUDA_EVENTS", "TIMER_PERF_COUNTER"]

Device = Union[str, torch.device]

# Defaults of the paired timer (the space's ``measure`` section overrides them).
PAIRED_DEFAULTS = {"warmup": 2, "repeats": 7, "max_repeats": 41, "rel_width": 0.05, "time_cap_s": 3.0,
                   "level": 0.95, "min_call_ms": 0.5}

TIMER_CUDA_EVENTS = "cuda_events"
TIMER_PERF_COUNTER = "perf_counter"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _is_cuda(device: Device) -> bool:
    return (device.type if isinstance(device, torch.device) else str(device).split(":")[0]) == "cuda"


def timer_method(device: Device) -> str:
    """The name of the timer `Stopwatch` uses on ``device``: ``"cuda_events"`` or ``"perf_counter"``."""
    return TIMER_CUDA_EVENTS if _is_cuda(device) else TIMER_PERF_COUNTER


# ---- the timer ------------------------------------------------------------------------------------


class Stopwatch:
    """The one timer: times a sequence of calls, each between its own marks.

    CUDA: a pair of CUDA events per call recorded on the current stream (device time), one host
    synchronisation after the whole sequence. CPU: ``time.perf_counter`` before and after each call
    (wall time; the call itself returns when the work is done)."""

    def __init__(self, device: Device, flush_l2: bool = False) -> None:
        self.cuda = _is_cuda(device)
        self.method = timer_method(device)
        # CUDA with flush_l2: zeroed before each sample (module docstring, "Caches between paired calls")
        self.flush = _l2_flush_buffer(device) if (self.cuda and flush_l2) else None

    def sync(self) -> None:
        """Wait for the device's queued work (no-op on a CPU)."""
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, calls: Sequence[Callable[[], object]], inner: int = 1) -> list[float]:
        """Call each of ``calls`` ``inner`` times in order; milliseconds per call of each."""
        if self.cuda:
            marks = []
            for fn in calls:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                if self.flush is not None:
                    self.flush.zero_()
                start.record()
                for _ in range(inner):
                    fn()
                end.record()
                marks.append((start, end))
            torch.cuda.synchronize()
            return [float(s.elapsed_time(e)) / inner for s, e in marks]
        out = []
        for fn in calls:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t0) * 1e3 / inner)
        return out


_FLUSH_BUFFERS: dict[int, torch.Tensor] = {}


def l2_flush_bytes(l2_bytes: int) -> int:
    """Bytes zeroed to evict an L2 of ``l2_bytes``: twice its size, at least 8 MiB."""
    return max(2 * int(l2_bytes), 8 << 20)


def _l2_flush_buffer(device: Device) -> torch.Tensor:
    """The flush buffer of a CUDA device (allocated once per device)."""
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index not in _FLUSH_BUFFERS:
        l2 = getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 50 << 20)
        _FLUSH_BUFFERS[index] = torch.empty(l2_flush_bytes(l2), dtype=torch.uint8, device=f"cuda:{index}")
    return _FLUSH_BUFFERS[index]


@dataclass(frozen=True)
class Timing:
    """Times of one function called on its own (`measure_time`), in milliseconds per call."""

    times_ms: tuple[float, ...]
    method: str  # the timer: "cuda_events" | "perf_counter"
    warmup: int

    @property
    def median_ms(self) -> float:
        return percentile(self.times_ms, 50)

    @property
    def p10_ms(self) -> float:
        return percentile(self.times_ms, 10)

    @property
    def p90_ms(self) -> float:
        return percentile(self.times_ms, 90)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def repeats(self) -> int:
        return len(self.times_ms)

    def to_dict(self) -> dict[str, object]:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "repeats": self.repeats, "method": self.method}


def measure_time(fn: Callable[[], object], *, device: Device, warmup: int = 3, repeats: int = 10) -> Timing:
    """``repeats`` timed calls of ``fn()`` after ``warmup`` untimed ones (`Stopwatch`: CUDA events or
    perf_counter); on CUDA the host synchronises after every call, so calls do not overlap."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    watch = Stopwatch(device)
    for _ in range(warmup):
        fn()
    watch.sync()
    times = [watch.run([fn])[0] for _ in range(repeats)]
    return Timing(tuple(times), watch.method, warmup)


def time_fn(fn: Callable[[], object], *, device: Device, warmup: int = 3, repeats: int = 10) -> dict[str, object]:
    """`measure_time` as a dict: median / p10 / p90 milliseconds, repeats and the timer's ``method``."""
    return measure_time(fn, device=device, warmup=warmup, repeats=repeats).to_dict()


# ---- paired (interleaved) timing --------------------------------------------------------------------


def _binom_cdf_half(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(0, min(k, n) + 1)) / 2.0 ** n


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(median, lo, hi, achieved level): the order-statistics confidence interval of the median.

    With the sorted sample x(1) <= ... <= x(n), [x(k), x(n+1-k)] covers the population median with
    probability 1 - 2 P(B <= k - 1), B ~ Binomial(n, 1/2); k is the largest index keeping that
    probability >= ``level``. When even k = 1 falls short (small n) the interval is [min, max] and
    the achieved level 1 - 2^(1-n) is returned instead."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_ci of an empty sample")
    med = percentile(xs, 50)
    if n == 1:
        return med, xs[0], xs[0], 0.0
    alpha = 1.0 - level
    k = 1
    while k + 1 <= n // 2 and 2 * _binom_cdf_half(k, n) <= alpha:
        k += 1
    achieved = 1.0 - 2 * _binom_cdf_half(k - 1, n)
    return med, xs[k - 1], xs[n - k], achieved


@dataclass
class RatioEstimate:
    """Speedup of one candidate over the baseline: median of the per-round ratios
    t_baseline / t_candidate, with its order-statistics confidence interval [lo, hi]."""

    point: float
    lo: float
    hi: float
    level: float  # achieved confidence level of [lo, hi]
    n: int  # rounds (pairs)

    def to_dict(self) -> dict[str, float]:
        return {"point": self.point, "lo": self.lo, "hi": self.hi, "level": self.level, "n": self.n}


@dataclass
class PairedTiming:
    """Result of `time_paired`: per-call times (ms) of every function, round by round."""

    baseline: str
    times_ms: dict[str, list[float]]
    warmup: int
    inner: int  # calls per timed sample (times are per call)
    stop: str  # "converged" | "max_repeats" | "time_cap"
    timed_s: float  # seconds inside the timed calls (all functions, warm-up included)
    wall_s: float  # seconds of the whole measurement
    level: float
    ratios: dict[str, RatioEstimate] = field(default_factory=dict)
    method: str = TIMER_PERF_COUNTER  # the timer (`timer_method`)

    @property
    def rounds(self) -> int:
        return len(self.times_ms[self.baseline])

    def stats(self, name: str) -> dict[str, float]:
        ts = self.times_ms[name]
        return {"median_ms": percentile(ts, 50), "p10_ms": percentile(ts, 10), "p90_ms": percentile(ts, 90),
                "repeats": len(ts)}

    def ratio(self, name: str) -> RatioEstimate:
        return self.ratios[name]


def _estimate(times: dict[str, list[float]], baseline: str, level: float) -> dict[str, RatioEstimate]:
    out = {}
    base = times[baseline]
    for name, ts in times.items():
        if name == baseline:
            continue
        rs = [b / max(c, 1e-12) for b, c in zip(base, ts)]
        med, lo, hi, ach = median_ci(rs, level)
        out[name] = RatioEstimate(med, lo, hi, ach, len(rs))
    return out


def time_paired(fns: dict[str, Callable[[], object]], *, baseline: str, device: Device,
                warmup: int = PAIRED_DEFAULTS["warmup"], repeats: int = PAIRED_DEFAULTS["repeats"],
                max_repeats: int = PAIRED_DEFAULTS["max_repeats"], rel_width: float = PAIRED_DEFAULTS["rel_width"],
                time_cap_s: float = PAIRED_DEFAULTS["time_cap_s"], level: float = PAIRED_DEFAULTS["level"],
                min_call_ms: float = PAIRED_DEFAULTS["min_call_ms"], flush_l2: bool = True) -> PairedTiming:
    """Time ``fns`` interleaved (module docstring); ``baseline`` names the reference function;
    ``flush_l2``: on CUDA, evict the L2 before each timed sample (module docstring).

    Returns the per-call times of every function and, for every other function, the speedup
    ``t_baseline / t_candidate`` with its confidence interval (`PairedTiming.ratios`)."""
    if baseline not in fns or len(fns) < 2:
        raise ValueError("time_paired needs the baseline and at least one candidate")
    names = list(fns)
    repeats, max_repeats = max(1, int(repeats)), max(1, int(max_repeats))
    max_repeats = max(max_repeats, repeats)
    t_wall = time.perf_counter()
    timed = 0.0
    watch = Stopwatch(device, flush_l2=flush_l2)

    def one_round(order: list[str], inner: int) -> dict[str, float]:
        nonlocal timed
        out = dict(zip(order, watch.run([fns[name] for name in order], inner)))
        timed += sum(out.values()) * inner / 1e3
        return out

    # warm-up rounds (at least one: first calls never count); they also size ``inner``
    first: dict[str, float] = {}
    for w in range(max(1, int(warmup))):
        first = one_round(names[w % len(names):] + names[:w % len(names)], 1)
    shortest = min(first.values()) if first else 0.0
    inner = 1 if shortest <= 0 or shortest >= min_call_ms else min(64, int(math.ceil(min_call_ms / shortest)))
    times: dict[str, list[float]] = {n: [] for n in names}
    stop = "max_repeats"
    timed_at_start = timed
    r = 0
    while r < max_repeats:
        order = names[r % len(names):] + names[:r % len(names)]
        res = one_round(order, inner)
        for n in names:
            times[n].append(res[n])
        r += 1
        if r >= repeats:
            est = _estimate(times, baseline, level)
            if all(e.level >= level - 1e-9 and e.hi - e.point <= rel_width * e.point
                   and e.point - e.lo <= rel_width * e.point for e in est.values()):
                stop = "converged"
                break
            if timed - timed_at_start >= time_cap_s:
                stop = "time_cap"
                break
    return PairedTiming(baseline=baseline, times_ms=times, warmup=max(1, int(warmup)), inner=inner, stop=stop,
                        timed_s=timed, wall_s=time.perf_counter() - t_wall, level=level,
                        ratios=_estimate(times, baseline, level), method=watch.method)


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


class PeakMemory(NamedTuple):
    """Result of `peak_memory`: bytes above the level before the call at its high point, and how
    they were measured (``"cuda_allocator"``, ``"rss_hwm"`` or ``"rss_sampled"``)."""

    nbytes: int
    method: str

    @property
    def mib(self) -> float:
        return self.nbytes / 2**20


def peak_memory(fn: Callable[[], object], *, device: Device) -> PeakMemory:
    """Peak memory of one ``fn()`` call above what was allocated before it (module docstring);
    unpacks as ``(bytes, method)``."""
    if _is_cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return PeakMemory(max(0, torch.cuda.max_memory_allocated() - before), "cuda_allocator")
    return PeakMemory(*_cpu_peak(fn))


# ---- out of memory --------------------------------------------------------------------------------

_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` means the allocator ran out of memory (CUDA or host; module docstring)."""
    if isinstance(exc, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError))):
        return True
    msg = str(exc).lower()
    return any(m in msg for m in _OOM_MESSAGES)


def release_memory(device: Device) -> None:
    """Collect garbage and, on CUDA, return the caching allocator's free blocks (after an OOM, or
    before a memory measurement)."""
    gc.collect()
    if _is_cuda(device) and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- tolerances -----------------------------------------------------------------------------------


class Tolerance(NamedTuple):
    """Largest accepted `relative_error` of a forward output (``fwd``) and of a gradient (``bwd``)
    against the reference; unpacks as ``(fwd, bwd)``."""

    fwd: float
    bwd: float


TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(1e-9, 1e-8),
    "float32": Tolerance(1e-4, 1e-3),
    "bfloat16": Tolerance(2e-2, 5e-2),
    "float16": Tolerance(5e-3, 2e-2),
}


def tolerance(dtype: Union[str, torch.dtype]) -> Tolerance:
    """The `TOLERANCES` row of ``dtype`` (a torch dtype or its name, e.g. ``"bfloat16"``)."""
    name = str(dtype).replace("torch.", "")
    if name not in TOLERANCES:
        raise ValueError(f"no tolerance for dtype {name!r}; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[name]


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref| in float32 (the denominator at least 1e-12); ``inf`` when the error
    is not finite (NaN or inf on either side where the other differs)."""
    x, ref = x.detach().float(), ref.detach().float()
    err = (x - ref).abs().max().item() if x.numel() else 0.0
    if not math.isfinite(err):
        return math.inf
    denom = ref.abs().max().item() if ref.numel() else 0.0
    return err / max(denom, 1e-12)


# ---- baselines --------------------------------------------------------------------------------------


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor], scale: Optional[float] = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with the L x L logits materialised, in the input dtype."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias
    return torch.matmul(torch.softmax(s, dim=-1), v)

"""The measurement layer (`kernels.measure`): the paired timer and its order-statistics interval,
the single-function timer, the peak-memory probe, the OOM detector and the tolerance table."""

from __future__ import annotations

import math
import random

import pytest

import torch

from kernels import measure
from kernels.measure import median_ci, time_paired


class FakeClock:
    """A perf_counter that only the timed functions advance (milliseconds of 'work')."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def work(self, ms: float):
        def fn():
            self.t += ms / 1e3
        return fn


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(measure.time, "perf_counter", c)
    return c


def test_median_ci_coverage_is_the_binomial_level():
    # n = 41: the 95% interval is [x(14), x(28)] (P(B <= 13) = 0.0153 per side, P(B <= 14) = 0.0298 > 0.025)
    med, lo, hi, level = median_ci(list(range(1, 42)), 0.95)
    assert (med, lo, hi) == (21, 14, 28)
    exact = 1 - 2 * sum(math.comb(41, i) for i in range(14)) / 2 ** 41
    assert level == pytest.approx(exact) and level >= 0.95
    # too few values for 95%: the full range at its own (lower) level
    med, lo, hi, level = median_ci([3.0, 1.0, 2.0, 5.0, 4.0], 0.95)
    assert (med, lo, hi) == (3.0, 1.0, 5.0) and level == pytest.approx(1 - 2 / 32)


def test_median_ci_covers_the_median_at_its_level():
    rng = random.Random(0)
    hits, trials = 0, 400
    for _ in range(trials):
        xs = [rng.lognormvariate(0.0, 0.5) for _ in range(25)]  # population median 1.0
        _, lo, hi, level = median_ci(xs, 0.95)
        hits += lo <= 1.0 <= hi
    assert hits / trials >= 0.93  # nominal >= 0.95, a little slack for 400 draws


def test_paired_ratio_is_exact_on_a_steady_machine(clock):
    pt = time_paired({"sdpa": clock.work(2.0), "cand": clock.work(1.0)}, baseline="sdpa", device="cpu",
                     warmup=1, repeats=5, max_repeats=41, rel_width=0.05, time_cap_s=10.0, min_call_ms=0.0)
    r = pt.ratio("cand")
    assert (r.point, r.lo, r.hi) == pytest.approx((2.0, 2.0, 2.0))
    assert pt.stop == "converged" and pt.rounds == 6  # 6 rounds: the first n whose interval reaches 95%
    assert pt.stats("sdpa")["median_ms"] == pytest.approx(2.0) and pt.stats("cand")["median_ms"] == pytest.approx(1.0)


def test_pairing_cancels_a_load_change_that_unpaired_medians_do_not(clock):
    """The machine slows down 8x for a stretch: medians of each side alone drift, the paired
    ratios stay at the true 2x because both calls of a round see the same load."""
    load = {"f": 1.0, "n": 0}

    def work(ms):
        def fn():
            clock.t += ms * load["f"] / 1e3
        return fn

    calls = {"sdpa": work(2.0), "cand": work(1.0)}

    def slow_phase(name):
        f = calls[name]

        def g():
            load["n"] += 1
            load["f"] = 8.0 if 20 <= load["n"] < 50 else 1.0
            f()
        return g

    pt = time_paired({n: slow_phase(n) for n in calls}, baseline="sdpa", device="cpu", warmup=1, repeats=41,
                     max_repeats=41, rel_width=0.0, time_cap_s=100.0, min_call_ms=0.0)
    r = pt.ratio("cand")
    assert r.point == pytest.approx(2.0) and r.lo == pytest.approx(2.0) and r.hi == pytest.approx(2.0)


def test_order_rotates_and_warmup_is_excluded(clock):
    order = []

    def rec(name, ms):
        def fn():
            order.append(name)
            clock.t += (ms * (50 if len(order) <= 3 else 1)) / 1e3  # the first calls are slow
        return fn

    pt = time_paired({"a": rec("a", 1.0), "b": rec("b", 2.0), "c": rec("c", 4.0)}, baseline="a", device="cpu",
                     warmup=1, repeats=4, max_repeats=4, rel_width=0.0, time_cap_s=100.0, min_call_ms=0.0)
    assert order[:3] == ["a", "b", "c"]  # warm-up round
    assert order[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]  # rotated rounds
    assert max(pt.times_ms["a"]) == pytest.approx(1.0)  # the slow first calls never count
    assert pt.ratio("b").point == pytest.approx(0.5) and pt.ratio("c").point == pytest.approx(0.25)


def test_noisy_timing_takes_more_rounds_and_stops_at_the_cap(clock):
    rng = random.Random(1)

    def noisy(ms):
        def fn():
            clock.t += ms * rng.choice([0.5, 1.0, 3.0]) / 1e3
        return fn

    pt = time_paired({"sdpa": noisy(2.0), "cand": noisy(1.0)}, baseline="sdpa", device="cpu", warmup=1, repeats=5,
                     max_repeats=1000, rel_width=0.01, time_cap_s=0.2, min_call_ms=0.0)
    assert pt.stop == "time_cap" and pt.rounds > 5
    r = pt.ratio("cand")
    assert r.lo <= r.point <= r.hi and r.lo < r.hi and r.n == pt.rounds
    pt2 = time_paired({"sdpa": noisy(2.0), "cand": noisy(1.0)}, baseline="sdpa", device="cpu", warmup=1, repeats=5,
                      max_repeats=9, rel_width=0.01, time_cap_s=100.0, min_call_ms=0.0)
    assert pt2.stop == "max_repeats" and pt2.rounds == 9


def test_short_calls_are_grouped(clock):
    pt = time_paired({"sdpa": clock.work(0.02), "cand": clock.work(0.01)}, baseline="sdpa", device="cpu",
                     warmup=1, repeats=5, min_call_ms=0.5)
    assert pt.inner == 50  # 0.5 ms / 0.01 ms per call
    assert pt.stats("cand")["median_ms"] == pytest.approx(0.01) and pt.ratio("cand").point == pytest.approx(2.0)


def test_time_paired_needs_a_baseline_and_a_candidate():
    with pytest.raises(ValueError):
        time_paired({"a": lambda: None}, baseline="a", device="cpu")
    with pytest.raises(ValueError):
        time_paired({"a": lambda: None, "b": lambda: None}, baseline="x", device="cpu")


def test_real_kernels_pair_on_this_machine():
    """Real work, real clock: a candidate doing a quarter of the baseline's matmuls is faster."""
    import torch

    a = torch.randn(256, 256)
    pt = time_paired({"sdpa": lambda: [a @ a for _ in range(8)], "cand": lambda: [a @ a for _ in range(2)]},
                     baseline="sdpa", device="cpu", warmup=1, repeats=7, max_repeats=21, time_cap_s=2.0)
    r = pt.ratio("cand")
    assert r.lo <= r.point <= r.hi and r.point > 1.5


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_paired_timing_with_cuda_events():
    import torch

    a = torch.randn(1024, 1024, device="cuda")
    pt = time_paired({"sdpa": lambda: [a @ a for _ in range(8)], "cand": lambda: [a @ a for _ in range(2)]},
                     baseline="sdpa", device="cuda", warmup=2, repeats=7, max_repeats=41, time_cap_s=2.0)
    r = pt.ratio("cand")
    assert 2.5 < r.point < 5.5 and r.lo <= r.point <= r.hi  # about 4x less device work


def test_single_timer_excludes_warmup_and_names_its_method(clock):
    calls = []

    def fn():
        calls.append(1)
        clock.t += (100.0 if len(calls) <= 2 else float(len(calls))) / 1e3  # two slow warm-up calls

    t = measure.measure_time(fn, device="cpu", warmup=2, repeats=5)
    assert t.times_ms == pytest.approx((3.0, 4.0, 5.0, 6.0, 7.0)) and t.method == "perf_counter"
    assert (t.median_ms, t.min_ms, t.repeats) == pytest.approx((5.0, 3.0, 5))
    assert t.p10_ms == pytest.approx(3.4) and t.p90_ms == pytest.approx(6.6)
    d = measure.time_fn(fn, device="cpu", warmup=0, repeats=3)
    assert d["method"] == "perf_counter" and d["repeats"] == 3 and d["median_ms"] == pytest.approx(9.0)
    with pytest.raises(ValueError):
        measure.measure_time(fn, device="cpu", repeats=0)


def test_paired_and_single_timers_are_the_same_timer(clock):
    pt = time_paired({"sdpa": clock.work(2.0), "cand": clock.work(1.0)}, baseline="sdpa", device="cpu",
                     warmup=1, repeats=5, min_call_ms=0.0)
    assert pt.method == measure.timer_method("cpu") == measure.Stopwatch("cpu").method == "perf_counter"
    assert measure.timer_method("cuda") == measure.timer_method(torch.device("cuda", 0)) == "cuda_events"
    assert measure.Stopwatch("cpu").run([clock.work(2.0), clock.work(0.5)], inner=4) == pytest.approx([2.0, 0.5])


def test_peak_memory_sees_a_temporary_allocation():
    """A call that allocates and touches 64 MiB, then frees it: the probe reports its high point."""
    def alloc():
        x = torch.ones(16 << 20)  # 64 MiB of float32, written
        return float(x[-1])

    res = measure.peak_memory(alloc, device="cpu")
    nbytes, method = res  # unpacks as (bytes, method)
    assert method in ("rss_hwm", "rss_sampled")
    assert 60 << 20 <= nbytes < 512 << 20 and res.mib == pytest.approx(nbytes / 2**20)
    small, _ = measure.peak_memory(lambda: None, device="cpu")
    assert small < 16 << 20


def test_oom_detector():
    assert measure.is_oom(MemoryError())
    assert measure.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert measure.is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    if hasattr(torch.cuda, "OutOfMemoryError"):
        assert measure.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert not measure.is_oom(RuntimeError("shape mismatch"))
    assert not measure.is_oom(ValueError("memory_vs_sdpa must be a number"))


def test_tolerance_table_and_relative_error():
    assert measure.tolerance(torch.bfloat16) == measure.tolerance("bfloat16") == measure.TOLERANCES["bfloat16"]
    fwd, bwd = measure.tolerance(torch.float32)
    assert 0 < fwd <= bwd
    for name, tol in measure.TOLERANCES.items():
        assert getattr(torch, name).is_floating_point and 0 < tol.fwd <= tol.bwd < 0.1
    assert measure.tolerance("float64").fwd < measure.tolerance("float32").fwd < measure.tolerance("float16").fwd \
        < measure.tolerance("bfloat16").fwd
    with pytest.raises(ValueError, match="int8"):
        measure.tolerance(torch.int8)
    ref = torch.tensor([[2.0, -4.0], [1.0, 0.5]])
    assert measure.relative_error(ref + torch.tensor([[0.0, 0.2], [0.0, 0.0]]), ref) == pytest.approx(0.05)
    assert measure.relative_error(ref, ref) == 0.0
    assert measure.relative_error(ref * float("nan"), ref) == math.inf
    assert measure.relative_error(ref.to(torch.bfloat16), ref) <= measure.tolerance("bfloat16").fwd

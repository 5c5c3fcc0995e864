"""The paired timer's cache handling: on CUDA an L2 flush before every timed sample (outside the
timed events), on a CPU none. The CUDA cases run where a GPU is (benchmarks/gpu_search.sh)."""

from __future__ import annotations

import pytest
import torch

from kernels import measure

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_flush_size_is_twice_the_l2():
    assert measure.l2_flush_bytes(50 << 20) == 100 << 20
    assert measure.l2_flush_bytes(0) == 8 << 20


def test_cpu_stopwatch_never_flushes():
    assert measure.Stopwatch("cpu", flush_l2=True).flush is None


@cuda
def test_cuda_paired_timer_flushes_l2_outside_the_events():
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    watch = measure.Stopwatch("cuda", flush_l2=True)
    assert watch.flush is not None and watch.flush.numel() >= 2 * l2
    x = torch.randn(16 << 20, device="cuda")  # 64 MiB, about the size of the AF2 inputs

    def read():
        x.sum()

    pt = measure.time_paired({"a": read, "b": read}, baseline="a", device="cuda", warmup=2, repeats=11,
                             max_repeats=11, rel_width=0.0)
    assert pt.method == "cuda_events" and pt.rounds == 11
    r = pt.ratio("b")  # the same function against itself: the interval holds 1
    assert r.lo <= 1.0 <= r.hi
    assert all(t > 0 for ts in pt.times_ms.values() for t in ts)

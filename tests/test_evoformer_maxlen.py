"""The EvoFormer benchmark's training rows with activation checkpointing and its max-L probe
(`autotune.evoformer.max_len`): the search (doubling, then bisection to the step) finds the largest
fitting length of a monotone predicate in few tries; on a tiny block with an injected peak-memory
function it agrees with trying every length; the rows carry the checkpointing and ingest into the
results tables; bad probe arguments and an unmeasurable peak are refused with one line."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from autotune.evoformer import bench
from autotune.evoformer.max_len import ProbeError, ProbeUnavailable, probe_max_len
from autotune.evoformer.timed_pass import block_pass
from kernels.measure import PeakMemory
from models.evoformer import EvoformerBlock

TINY = dict(c_m=8, c_z=8, c_hidden_msa_att=4, no_heads_msa=2, c_hidden_pair_att=4, no_heads_pair=2,
            c_hidden_opm=2, c_hidden_mul=4)


@pytest.mark.parametrize("threshold", [0, 15, 16, 17, 100, 255, 256, 300, 511, 512, 4000])
@pytest.mark.parametrize("start", [16, 64, 256])
def test_probe_finds_the_largest_fitting_multiple_of_the_step(threshold, start):
    calls = []

    def fits(L):
        calls.append(L)
        return L <= threshold, float(L)

    res = probe_max_len(fits, start=start, step=16, limit=512)
    expected = min(threshold, 512) // 16 * 16
    assert res.max_len == expected and res.complete
    assert all(L % 16 == 0 and 16 <= L <= 512 for L in calls)
    assert len(calls) == len(set(calls)) <= 2 * math.ceil(math.log2(512 / 16)) + 2  # logarithmic
    assert res.peak_mib == float(expected) if expected else math.isnan(res.peak_mib)
    assert [t[0] for t in res.tried] == calls


def test_probe_time_cap_gives_a_lower_bound():
    clock = {"n": 0}

    def fits(L):
        clock["n"] += 1
        return L <= 1000, 0.0

    res = probe_max_len(fits, start=256, step=256, limit=16384, deadline=-1.0)  # already past
    assert (res.max_len, res.complete, res.tried) == (0, False, ())
    import time

    deadline = time.perf_counter() + 3600
    res = probe_max_len(fits, start=256, step=256, limit=16384, deadline=deadline)
    assert (res.max_len, res.complete) == (768, True)


def test_probe_arguments_are_checked():
    for start, step, limit in [(100, 256, 1024), (256, 0, 1024), (512, 256, 256), (300, 256, 1024)]:
        with pytest.raises(ProbeError, match="--max-len"):
            probe_max_len(lambda L: (True, 0.0), start=start, step=step, limit=limit)


def saved_bytes_peak(fn, *, device):
    """A deterministic stand-in for the peak: bytes of the distinct storages autograd saves in one
    pass (grows with L, shrinks with checkpointing)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return PeakMemory(sum(seen.values()), "cuda_allocator")


def _peak_at(L, checkpoint, attention):
    torch.manual_seed(0)
    block = EvoformerBlock(**TINY).set_attention(attention)
    m, z = torch.randn(2, L, TINY["c_m"]), torch.randn(L, L, TINY["c_z"])
    return saved_bytes_peak(block_pass(block, m, z, "fwd+bwd", checkpoint), device="cpu")[0] / 2**20


@pytest.mark.slow
def test_bench_probe_agrees_with_trying_every_length(tmp_path):
    """Tiny block, injected peak (saved bytes), tiny budget: the probe's answer per (checkpointing,
    variant) is the largest length that fits when every multiple of the step is tried, checkpointing
    each update lets a longer chain fit, and the rows ingest into the results tables."""
    budget_mib = 1.0
    out = tmp_path / "ml.csv"
    rows = bench.run_evoformer_bench(
        lengths=[16], depth=2, dims=TINY, kinds=("sdpa", "sparse"), sparsities=[0.5], sparse_backend="reference",
        modes=("fwd+bwd",), warmup=0, repeats=1, max_repeats=1, dtype=torch.float32, device="cpu",
        measure_share=False, measure_memory=False, find_max_len=True, mem_budget_gib=budget_mib / 1024,
        checkpoints=("none", "modules"), max_len_start=32, max_len_step=16, max_len_limit=112,
        max_len_time_cap_s=600, peak_fn=saved_bytes_peak, csv_path=out,
    )
    timed = [r for r in rows if r["status"] == "ok"]
    assert {(r["variant"], r["checkpoint"]) for r in timed} == {
        (v, c) for v in ("sdpa", "sparse@0.5") for c in ("none", "modules")}
    found = {(r["variant"], r["checkpoint"]): r for r in rows if r["status"] == "max_len"}
    assert set(found) == {(v, c) for v in ("sdpa", "sparse@0.5") for c in ("none", "modules")}
    for (variant, ck), r in found.items():
        if variant != "sdpa":
            continue
        peaks = [(L, _peak_at(L, ck, "sdpa")) for L in range(16, 113, 16)]
        assert all(a[1] < b[1] for a, b in zip(peaks, peaks[1:]))  # monotone in L
        expected = max((L for L, p in peaks if p <= budget_mib), default=0)
        assert r["max_len"] == r["L"] == expected, (ck, peaks)
        assert r["peak_mib"] == pytest.approx(dict(peaks).get(expected, float("nan")))
    assert 0 < found[("sdpa", "none")]["max_len"] < found[("sdpa", "modules")]["max_len"]
    from results.ingest import parse_csv

    _, parsed = parse_csv(out, "evoformer")
    assert {r["checkpoint"] for r in parsed} == {"none", "modules"}
    assert sorted(r["max_len"] for r in parsed if r["status"] == "max_len") == sorted(
        r["max_len"] for r in found.values())


def test_checkpointed_pass_gives_the_same_gradients():
    torch.manual_seed(0)
    block = EvoformerBlock(**TINY)
    m, z = torch.randn(2, 24, TINY["c_m"]), torch.randn(24, 24, TINY["c_z"])
    grads = {}
    for ck in ("none", "block", "modules"):
        captured = {}
        hooks = [p.register_hook(lambda g, n=n: captured.__setitem__(n, g.clone())) for n, p in block.named_parameters()]
        block_pass(block, m, z, "fwd+bwd", ck)()
        for h in hooks:
            h.remove()
        grads[ck] = captured
        assert all(p.grad is None for p in block.parameters()) and not block.checkpoint_modules
    for ck in ("block", "modules"):
        assert grads[ck].keys() == grads["none"].keys()
        for n in grads["none"]:
            torch.testing.assert_close(grads[ck][n], grads["none"][n], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="checkpoint"):
        block_pass(block, m, z, "fwd+bwd", "layers")


def test_an_unmeasurable_peak_is_refused():
    def sampled(fn, *, device):
        fn()
        return PeakMemory(1 << 20, "rss_sampled")

    with pytest.raises(ProbeUnavailable, match="can only be sampled"):
        bench.run_evoformer_bench(
            lengths=[16], depth=2, dims=TINY, kinds=("sdpa",), modes=("fwd+bwd",), device="cpu", dtype=torch.float32,
            warmup=0, repeats=1, max_repeats=1, measure_share=False, measure_memory=False, find_max_len=True, max_len_start=16, max_len_step=16, max_len_limit=32,
            peak_fn=sampled, csv_path=False)


def test_bad_probe_arguments_exit_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "autotune.evoformer.bench", "--device", "cpu", "--dims", "small",
                           "--lengths", "16", "--max-len", "--max-len-start", "100", "--max-len-step", "64",
                           "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--max-len" in lines[0], lines
    assert not (tmp_path / "x.csv").exists()

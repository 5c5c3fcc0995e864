"""The fused guided build (`kernels.guided_build`) against the torch build of `patterns.guided`.

Without a GPU the kernel runs under Triton's interpreter (small L). For every pool, budget and
spread, ragged L, per-head and shared signals, ties and NaN, the fused launch must give the torch
path's mask and compact index exactly, the pooled ``max`` / ``mean`` scores bit for bit, and the
NaN rows flag equal to the torch scores' NaN rows.
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
import patterns.guided as guided
from kernels import guided_build
from kernels.guided_build import MAX_LAYOUT_TILES, MAX_ROW_BLOCKS, fused_guided_build, launch_params
from patterns import GuidedConfig, build_layout
from patterns.guided import _forced, _select_mask, pool_signal
from patterns.layout import compact_index

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
pytestmark = [
    pytest.mark.skipif(DEVICE == "cpu" and not INTERPRET, reason="needs CUDA or the Triton interpreter"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # the interpreter's numpy on NaN / inf lanes
]
ROOT = Path(__file__).resolve().parents[1]


def _torch_build(cfg, L, s3):
    scores = pool_signal(s3, cfg.block_size, cfg.pool)
    mask = _select_mask(cfg, L, scores)
    return scores, mask, compact_index(mask), torch.isnan(scores).any(-1)


def _check(cfg, L, s3):
    """The fused build equals the torch build on the signal s3 [G, L, L]."""
    got = fused_guided_build(cfg, L, s3, _forced(cfg, L, s3.device))
    assert got is not None
    mask, kvc, kvi, qc, qi, nan_rows, scores = got
    ref_scores, ref_mask, ref_idx, ref_nan = _torch_build(cfg, L, s3)
    if cfg.pool == "logsumexp":  # exp/log of the device: equal to a few ulps (module docstring)
        torch.testing.assert_close(scores, ref_scores, rtol=2e-6, atol=2e-6, equal_nan=True)
    else:
        same = (scores == ref_scores) | (torch.isnan(scores) & torch.isnan(ref_scores))
        assert bool(same.all()), (scores - ref_scores).abs().nan_to_num().max()
    assert torch.equal(nan_rows, ref_nan)
    assert torch.equal(mask, ref_mask), (mask ^ ref_mask).nonzero()[:5]
    for name, a, b in zip(("kv_counts", "kv_indices", "q_counts", "q_indices"), (kvc, kvi, qc, qi), ref_idx):
        assert torch.equal(a, b), name
    assert all(int(c.abs().max()) == 0 for c in guided_build._COUNTERS.values())  # left at zero for the next launch
    return mask


POOLS = ("max", "mean", "logsumexp")
BUDGETS = ({"keep": 0.3}, {"mass": 0.55})


#: (pool, budget, spread) cases kept in the quick suite: every pool, budget and spread at least
#: once; the rest of each 12-case matrix runs in the full suite (marked slow: the interpreter)
QUICK_CASES = {("max", "keep", "row"), ("mean", "mass", "layout"), ("logsumexp", "keep", "layout")}


def _matrix():
    """Every (pool, budget, spread) as pytest params, those outside QUICK_CASES marked slow."""
    for pool in POOLS:
        for budget, bid in zip(BUDGETS, ("keep", "mass")):
            for spread in ("row", "layout"):
                marks = () if (pool, bid, spread) in QUICK_CASES else (pytest.mark.slow,)
                yield pytest.param(pool, budget, spread, marks=marks, id=f"{pool}-{bid}-{spread}")


def _cfg(bs, budget, pool, spread, **kw):
    return GuidedConfig(bs, pool=pool, spread=spread, **budget, **kw)


@pytest.mark.parametrize("pool, budget, spread", list(_matrix()))
def test_fused_equals_torch_on_random_signals(pool, budget, spread):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    bs = rng.choice((16, 32))
    L = rng.choice((48, 77, 100, 130, 161, 200))
    kw = rng.choice(({}, {"window": rng.randrange(1, 40)}, {"num_global": 3, "global_placement": "spread"}))
    g = torch.Generator().manual_seed(seed)
    bias = torch.randn(1, 3, L, L, generator=g).to(DEVICE)
    signal = bias[0] if rng.random() < 0.5 else bias[0, 1:2]  # per head, or one map shared by all heads
    _check(_cfg(bs, budget, pool, spread, **kw), L, signal)


def test_fused_reads_strided_signals():
    L, cfg = 90, GuidedConfig(16, keep=0.4, pool="mean", window=8)
    s = torch.randn(2, L, L, device=DEVICE)
    _check(cfg, L, s.transpose(-1, -2))  # column-major rows
    _check(cfg, L, torch.randn(L, 2, L, device=DEVICE).permute(1, 0, 2))


@pytest.mark.parametrize("pool, budget, spread", list(_matrix()))
def test_fused_breaks_ties_as_torch(pool, budget, spread):
    """A constant signal (every full tile ties) and a signal of a few values (many ties)."""
    L = 100  # ragged: the last tiles hold fewer pairs
    cfg = _cfg(16, budget, pool, spread, window=5)
    _check(cfg, L, torch.full((1, L, L), 0.3, device=DEVICE))
    g = torch.Generator().manual_seed(3)
    _check(cfg, L, torch.randint(0, 3, (2, L, L), generator=g).float().to(DEVICE) / 4)


@pytest.mark.parametrize("pool, budget, spread", list(_matrix()))
def test_fused_nan_and_infinite_signals_follow_torch(pool, budget, spread):
    """All NaN; NaN in a few tiles (one of them forced); +inf and -inf tiles (mean: NaN): the
    layout the torch path chooses (NaN ranked first) and the NaN rows flag, without a raise."""
    L = 70
    cfg = _cfg(16, budget, pool, spread, window=3)
    mask = _check(cfg, L, torch.full((2, L, L), float("nan"), device=DEVICE))
    assert mask.any()
    s = torch.randn(2, L, L, device=DEVICE)
    s[0, 5, 40] = float("nan")   # tile (0, 2)
    s[1, 69, 69] = float("nan")  # the ragged corner tile, forced (diagonal)
    s[1, 20:30, 50:60] = float("inf")
    s[1, 33, 3] = float("-inf")
    s[0, 50:64, 0:16] = float("-inf")  # a whole tile -inf
    s[0, 17, 60] = float("inf")
    s[0, 18, 61] = float("-inf")       # +inf and -inf in one tile
    _check(cfg, L, s)


def test_limits_fall_back():
    assert launch_params(GuidedConfig(16, keep=0.5), 16 * MAX_ROW_BLOCKS) is not None
    assert launch_params(GuidedConfig(16, keep=0.5), 16 * MAX_ROW_BLOCKS + 1) is None
    side = int(MAX_LAYOUT_TILES ** 0.5)
    assert launch_params(GuidedConfig(16, keep=0.5, spread="layout"), 16 * side) is not None
    assert launch_params(GuidedConfig(16, keep=0.5, spread="layout"), 16 * side + 1) is None


@pytest.mark.parametrize("L", (1, pytest.param(5, marks=pytest.mark.slow), pytest.param(16, marks=pytest.mark.slow),
                               17, pytest.param(33, marks=pytest.mark.slow)))
def test_fused_tiny_lengths(L):
    """One or two blocks (block 16): rows and columns of one tile, ragged or not."""
    for cfg in (GuidedConfig(16, keep=0.5, pool="mean"), GuidedConfig(16, mass=0.3, pool="logsumexp", spread="layout")):
        _check(cfg, L, torch.randn(2, L, L, device=DEVICE))


def test_fused_half_precision_signal_pools_in_float32():
    for cfg in (GuidedConfig(32, keep=0.4, pool="mean"), GuidedConfig(16, mass=0.6, pool="max", spread="layout")):
        _check(cfg, 75, torch.randn(2, 75, 75, device=DEVICE).half())


def test_float64_signal_is_left_to_the_torch_path():
    cfg = GuidedConfig(16, keep=0.5)
    s = torch.randn(1, 40, 40, dtype=torch.float64, device=DEVICE)
    assert fused_guided_build(cfg, 40, s, _forced(cfg, 40, s.device)) is None


def test_kernels_registers_the_fused_builder():
    assert guided._FUSED_BUILDER is kernels._fused_guided_build


def test_cpu_build_raises_on_nan_by_default_and_flags_it_when_asked_not_to():
    L, cfg = 64, GuidedConfig(16, keep=0.5)
    s = torch.randn(2, L, L)
    s[1, 3, 40] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        build_layout(cfg, L, signal=s)
    lay = guided.build_guided_layout(cfg, L, s, check_nan=False)
    assert bool(lay.signal_nan)
    assert not bool(build_layout(cfg, L, signal=torch.randn(2, L, L)).signal_nan)


@pytest.mark.parametrize("spread,budget", [
    pytest.param(spread, budget, marks=() if (spread, bid) in {("row", "keep"), ("layout", "mass")} else pytest.mark.slow,
                 id=f"{spread}-{bid}")
    for spread in ("row", "layout") for budget, bid in zip(BUDGETS, ("keep", "mass"))])
def test_fused_with_small_chunks(spread, budget, monkeypatch):
    """Index chunks smaller than a row: the last program's index lines loop over several."""
    monkeypatch.setattr(guided_build, "_CHUNK", 128)
    launch_params.cache_clear()
    try:
        p = launch_params(_cfg(16, budget, "max", spread), 150)
        assert p["LN"] < p["nb"]
        _check(_cfg(16, budget, "max", spread, window=20), 150, torch.randn(2, 150, 150, device=DEVICE))
    finally:
        launch_params.cache_clear()


@pytest.mark.slow
def test_fused_kernel_compiles_for_sm90(tmp_path):
    """Offline compile for GPUTarget("cuda", 90, 32): every specialisation at L = 512, block 64
    assembles, without register spills in the row spread (the default)."""
    pytest.importorskip("triton")
    out = tmp_path / "sm90.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "guided_build_compile.py"), "--lengths", "512",
                           "--block-sizes", "64", "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12
    for r in rows:
        assert r["ptxas_rc"] == "0" and int(r["registers"]) <= 255, r
        if r["spread"] == "row":
            assert r["spill_stores"] == "0", r

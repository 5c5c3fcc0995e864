"""Launch configs of the Triton kernels: what ``candidate_configs`` / ``candidate_backward_configs``
offer fits an sm_90 block (checked against the offline compile report), the backward's own configs
are exact under the interpreter, and the program order is the documented one."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import KernelConfig, sparse_attention
from kernels.config import (
    SHARED_MEMORY_LIMIT,
    candidate_backward_configs,
    candidate_configs,
    dbias_tiles,
    default_backward_config,
    default_forward_config,
    MEASURED_FORWARD,
    fit_stages,
    shared_memory_bytes,
    spills,
)
from kernels.reference import reference_attention
from kernels.triton_op import _tile_order, triton_sparse_attention
from patterns import BlockLayout, PatternConfig, build_layout

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"


def _report_rows() -> list[dict]:
    rows = []
    for path in sorted(RESULTS.glob("compile-sm90-triton*.csv")):
        with open(path, newline="") as f:
            rows += [r for r in csv.DictReader(f) if r["shared_bytes"]]
    return rows


def test_compile_report_is_committed_and_bounds_hold():
    """Every compilation in the committed report: the shared-memory bound used by the launch code
    is never below what Triton allocated, and no row offered by the candidate lists overflows."""
    rows = _report_rows()
    assert len(rows) >= 100, "benchmarks/results/compile-sm90-triton*.csv missing or too small"
    for r in rows:
        eb = 4 if r["dtype"] == "float32" else 2
        role = "fwd" if r["kernel"] == "fwd_gated" else r["kernel"]  # the gated forward: the forward's memory
        est = shared_memory_bytes(role, eb, int(r["block_m"]), int(r["block_n"]), int(r["d_pad"]),
                                  int(r["stages_launched"]))
        assert est >= int(r["shared_bytes"]), r
        if int(r["shared_bytes"]) > SHARED_MEMORY_LIMIT:
            cfg = KernelConfig(int(r["block_m"]), int(r["block_n"]), int(r["num_warps"]), int(r["num_stages"]))
            bs = int(r["block_size"])
            offered = (candidate_configs(bs, int(r["head_dim"]), r["dtype"], exclude_spilling=False)
                       if role == "fwd" else
                       candidate_backward_configs(bs, int(r["head_dim"]), r["dtype"], exclude_spilling=False))
            assert cfg not in offered, r


def test_spilling_table_matches_the_report():
    """A config the report saw spilling (at the stages it launches) is flagged by ``spills``. The
    table is of the kernels the tuner times: the gated inference forward (``fwd_gated``, spilling
    a few bytes more in some configs, benchmarks/README.md) is reported, not tabled."""
    for r in _report_rows():
        if r.get("rows_per_cta") not in (None, "", "1") or r["kernel"] == "fwd_gated":
            continue  # the table is of one-row-per-program configs; rows_per_cta > 1 is reported, not tabled
        if r["spill_stores"] and int(r["spill_stores"]) > 0 and r["num_stages"] == r["stages_launched"]:
            cfg = KernelConfig(int(r["block_m"]), int(r["block_n"]), int(r["num_warps"]), int(r["num_stages"]))
            group = "fwd" if r["kernel"] == "fwd" else "bwd"
            assert spills(group, cfg, r["dtype"], int(r["head_dim"]), int(r["block_size"])), r


@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
@pytest.mark.parametrize("head_dim", [8, 16, 32, 64, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, None], ids=str)
def test_candidates_fit_shared_memory(block_size, head_dim, dtype):
    fwd = candidate_configs(block_size, head_dim, dtype)
    bwd = candidate_backward_configs(block_size, head_dim, dtype)
    assert fwd and bwd
    d_pad = max(16, 1 << ((head_dim or 64) - 1).bit_length())
    eb = 2 if dtype == torch.bfloat16 else 4
    for cfg in fwd:
        assert cfg.fits(block_size)
        assert shared_memory_bytes("fwd", eb, cfg.block_m, cfg.block_n, d_pad, cfg.num_stages) <= SHARED_MEMORY_LIMIT
        assert fit_stages("fwd", eb, cfg.block_m, cfg.block_n, d_pad, cfg.num_stages) == cfg.num_stages
    for cfg in bwd:
        # tiles dividing the block, or (blocks under 64) coarse multiples of it, run as offered
        assert cfg.for_backward(block_size) == cfg and cfg.block_m >= cfg.block_n
        assert cfg.divides(block_size) or block_size < 64
        for kern in ("dq", "dkdv", "dbias"):
            tiles = dbias_tiles(cfg.block_m, cfg.block_n, block_size) if kern == "dbias" else (cfg.block_m, cfg.block_n)
            assert shared_memory_bytes(kern, eb, *tiles, d_pad, cfg.num_stages) <= SHARED_MEMORY_LIMIT
    assert default_backward_config(block_size, head_dim, dtype) in bwd
    assert not spills("bwd", default_backward_config(block_size, head_dim, dtype), dtype, head_dim or 64, block_size)
    # the default forward: offered (fits, does not spill) and pipelined (3 stages) where one is
    fdef = default_forward_config(block_size, head_dim, dtype)
    assert fdef in fwd and not spills("fwd", fdef, dtype, head_dim or 64, block_size)
    assert fdef.num_stages >= 3 or not any(c.num_stages >= 3 for c in fwd)


def test_configs_that_overflow_are_not_offered_and_launch_with_fewer_stages():
    """The fp32 launches that overflow an sm_90 block (forward / dQ at D=8 with 128x128 tiles and
    3 stages, dK/dV at D=64 with 128x128 tiles) are not candidates; a launch asked for them runs
    with fewer stages."""
    bad = KernelConfig(128, 128, 8, 3)
    assert bad not in candidate_configs(128, 8, torch.float32, exclude_spilling=False)
    assert bad not in candidate_configs(128, None, None, exclude_spilling=False)
    assert fit_stages("fwd", 4, 128, 128, 16, 3) < 3
    assert fit_stages("dq", 4, 128, 128, 16, 3) < 3
    assert KernelConfig(128, 128, 8, 1) not in candidate_backward_configs(128, 64, torch.float32, exclude_spilling=False)


def test_default_configs_do_not_spill_bf16():
    for d in (32, 64):
        assert not spills("fwd", default_forward_config(64, d, torch.bfloat16), torch.bfloat16, d)
        assert not spills("bwd", default_backward_config(64, d, torch.bfloat16), torch.bfloat16, d)


def test_default_forward_config_is_the_measured_winner():
    """The committed H200 benchmark's winner (bf16, head dim 32, block 64) is the default there."""
    assert default_forward_config(64, 32, torch.bfloat16) == MEASURED_FORWARD[(64, 32, "16")] == KernelConfig(64, 64, 4, 3)
    with open(ROOT / "benchmarks" / "results" / "NVIDIA-H200.csv", newline="") as f:
        winners = {r["kernel_config"] for r in csv.DictReader(f) if r["backend"] == "triton"}
    assert winners == {"64x64/w4/s3"}


def test_tile_order_is_heaviest_first_and_stable():
    counts = torch.tensor([[1, 3, 3, 0], [2, 2, 2, 2]], dtype=torch.int32)
    order = _tile_order(counts, 32, 16)  # 2 tiles per layout row
    assert order.dtype == torch.int32 and order.shape == (2, 8)
    assert order[0].tolist() == [2, 3, 4, 5, 0, 1, 6, 7]
    assert order[1].tolist() == list(range(8))
    assert _tile_order(counts, 32, 16) is order  # cached per counts tensor
    counts[0, 3] = 9  # an in-place change is seen (tensor version)
    assert _tile_order(counts, 32, 16)[0].tolist() == [6, 7, 2, 3, 4, 5, 0, 1]


# ------------------------------------------------------------------------------------------------
# the backward's own launch configs, exact under the interpreter
# ------------------------------------------------------------------------------------------------
def _check(q, k, v, lay, bias, config, bwd_config, seed):
    out = triton_sparse_attention(q, k, v, lay, bias, config=config, bwd_config=bwd_config)
    grad = torch.randn_like(out)
    leaves = [t for t in (q, k, v, bias) if t is not None]
    grads = torch.autograd.grad(out, leaves, grad)
    ref_in = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference_attention(*ref_in[:3], lay, ref_in[3] if bias is not None else None)
    ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
    for name, g, rg in zip(("out", "dq", "dk", "dv", "dbias"), (out, *grads), (ref, *ref_grads)):
        torch.testing.assert_close(g.double(), rg, atol=2e-4, rtol=2e-4,
                                   msg=lambda m, name=name: f"{name} ({config}, bwd {bwd_config}, seed={seed}): {m}")


@pytest.mark.parametrize("bwd,bias_batch", [
    ((32, 16), 2),
    pytest.param((32, 16), 1, marks=pytest.mark.slow),
    pytest.param((16, 16), 1, marks=pytest.mark.slow),
    pytest.param((16, 16), 2, marks=pytest.mark.slow),
    pytest.param((32, 32), 1, marks=pytest.mark.slow),
], ids=str)
def test_backward_configs_exact_per_head_ragged(bwd, bias_batch):
    """Per-head layout with an empty query block and an unread key block, ragged L (not a multiple
    of the block), bias shared by the batch or not: out and all four gradients against the
    float64 reference, forward and backward on different tiles."""
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    B, H, L, D = 2, 2, 76, 8
    mask = torch.tensor([[[1, 0, 1], [0, 1, 1], [1, 0, 1]],
                         [[1, 1, 0], [0, 0, 0], [1, 1, 1]]], dtype=torch.bool)
    lay = BlockLayout(mask, 32, L)
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE, requires_grad=True) for _ in range(3))
    bias = torch.randn(bias_batch, H, L, L, device=DEVICE, requires_grad=True)
    _check(q, k, v, lay, bias, KernelConfig(16, 32), KernelConfig(*bwd, 4, 2), seed)


@pytest.mark.slow
def test_every_backward_candidate_block32():
    """Every config of candidate_backward_configs(32, 16, float32) on a ragged, partly sparse layout."""
    L = 60
    lay = build_layout(PatternConfig(32, 0, 0, 2), L)
    for cfg in candidate_backward_configs(32, 16, torch.float32):
        seed = random.randrange(2**31)
        torch.manual_seed(seed)
        q, k, v = (torch.randn(2, 2, L, 16, device=DEVICE, requires_grad=True) for _ in range(3))
        bias = torch.randn(1, 2, L, L, device=DEVICE, requires_grad=True)
        _check(q, k, v, lay, bias, KernelConfig(32, 16), cfg, seed)


def test_default_backward_config_used_through_sparse_attention():
    """sparse_attention (no backward config) trains with default_backward_config: gradients exact."""
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    L = 40
    lay = build_layout(PatternConfig(16, 0, 0, 2), L)
    q, k, v = (torch.randn(1, 2, L, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, L, L, device=DEVICE, requires_grad=True)
    out = sparse_attention(q, k, v, lay, bias, backend="triton")
    grads = torch.autograd.grad(out.sum(), (q, k, v, bias))
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    ref_grads = torch.autograd.grad(reference_attention(*ref_in[:3], lay, ref_in[3]).sum(), ref_in)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), rg, atol=2e-4, rtol=2e-4, msg=lambda m: f"seed={seed}: {m}")


# ------------------------------------------------------------------------------------------------
# the offline compile report itself (compiles for sm_90 without a GPU)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compile_report_defaults_and_worst_cases(tmp_path):
    """Compile the default forward and backward configs for bf16 at head dims 32 and 64: they fit,
    do not spill, use wgmma, and the forward loop is pipelined; the estimate bounds every row."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "report.csv"
    res = subprocess.run(
        [sys.executable, "-m", "kernels.compile_report", "--configs", "defaults", "--dtypes", "bfloat16",
         "--head-dims", "32,64", "--ragged", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16  # 4 kernels x 2 head dims x 2 lengths
    for r in rows:
        assert not r["error"], r
        assert int(r["shared_bytes"]) <= SHARED_MEMORY_LIMIT, r
        assert int(r["shared_estimate"]) >= int(r["shared_bytes"]), r
        assert int(r["spill_stores"]) == 0, r
        assert int(r["wgmma"]) > 0, r
    fwd = [r for r in rows if r["kernel"] == "fwd"]
    for r in fwd:  # num_stages honoured (wgmma path): one shared buffer per stage for K and V
        assert int(r["kv_buffers"]) == int(r["stages_launched"]) >= 2, r
        # the default forward is software-pipelined: loads stay in flight across iterations
        assert int(r["num_stages"]) >= 3 and int(r["async_wait_max"]) > 0, r
    # a 3-stage forward keeps loads in flight across iterations (async_wait num > 0)
    res = subprocess.run(
        [sys.executable, "-m", "kernels.compile_report", "--configs", "candidates", "--kernels", "fwd",
         "--dtypes", "bfloat16", "--head-dims", "32", "--out", str(tmp_path / "fwd.csv")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    with open(tmp_path / "fwd.csv", newline="") as f:
        s3 = [r for r in csv.DictReader(f) if r["num_stages"] == "3"]
    # (num_stages buffers on the wgmma path, num_stages - 1 on the mma.sync path of tiles under 64 rows)
    assert s3 and all(int(r["async_wait_max"]) > 0 and int(r["kv_buffers"]) >= 2 for r in s3), s3


@pytest.mark.parametrize("bad", [{"block_m": 64.0}, {"block_n": True}, {"num_warps": "4"}, {"num_stages": True}])
def test_kernel_config_takes_real_integers_only(bad):
    from kernels import KernelConfig

    with pytest.raises(ValueError, match=next(iter(bad))):
        KernelConfig(**bad)

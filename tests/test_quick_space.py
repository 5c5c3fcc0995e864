"""The quick GPU space (search_spaces/protein-quick.yaml) parsed and sized on a CPU, and a GPU space
started on a machine without a GPU answered with the CPU space to use.

Sizing model (an upper bound, written down so that the space's numbers can be checked without a
GPU; the GPU run of benchmarks/gpu_search.sh is the measurement):

* memory: per (workload, bucket) the inputs (`Workload.input_gib`) plus the naive baseline's
  materialised logits and probabilities in float32 (batch x heads x L^2 x 4 bytes x 2; for the
  EvoFormer block its triangle attention: L x pair heads x L^2, plus the MSA row attention's), under
  90% of an 80 GB GPU;
* wall time: start-up 30 s + ``budget.timeout`` + the cut grace + the confirmation (per bucket and
  workload two paired loops - the leaders together, then the chosen one's hold-out - of at most
  ``confirm_time_cap_s`` of timed calls each, counted twice for the untimed rounds) <= 5 minutes;
* trials: ``budget.timeout`` over a trial's upper bound (every cell at ``time_cap_s``, doubled for
  warm-up and memory probes, + 1.5 s of gate and bookkeeping, + accuracy at 0.05 s per chain and
  bucket, + the study's compiles - every launch config x block size at 2 distinct lengths, 2.5 s
  each as measured offline for sm_90 in benchmarks/results/compile-sm90-triton3.6.0.csv - spread
  over the budget) >= 20.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autotune.search import main
from autotune.trial import CUT_GRACE_S
from search_spaces.space import load_space

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "search_spaces" / "protein-quick.yaml"
GPU_GIB = 80e9 / 2**30
COMPILE_S = 2.5


def naive_gib(w, L: int) -> float:
    """GiB of the naive baseline's logits and probabilities (float32) at bucket L."""
    if w.kind == "evoformer":
        return (L * w.pair_heads * L * L + w.msa_depth * w.heads * L * L) * 4 * 2 / 2**30
    return w.batch(L) * w.heads * L * L * 4 * 2 / 2**30


def cells(space) -> list[tuple]:
    return [(w, L) for L in space.buckets for w in space.workloads if w.applies(L)]


def test_quick_space_parses_with_the_af2_shapes_and_two_buckets():
    s = load_space(QUICK)
    assert s.device == "cuda" and s.backend == "triton" and s.dtype == "bfloat16"
    assert s.buckets == [512, 2048]
    assert {w.kind for w in s.workloads} == {"msa_row", "triangle", "evoformer"}
    assert all(w.head_dim == 32 for w in s.workloads if w.kind != "evoformer")
    assert {"pattern.block_size", "pattern.window", "kernel.block_m", "kernel.num_warps"} <= set(s.distributions())
    assert s.gate.seq_len == s.buckets[0]  # the gate's compile is the first bucket's


def test_quick_space_fits_an_80gb_gpu():
    s = load_space(QUICK)
    for w, L in cells(s):
        need = w.input_gib(L, s.dtype) + naive_gib(w, L)
        assert need < 0.9 * GPU_GIB, (w.name, L, need)


def test_quick_space_ends_within_five_minutes_with_at_least_20_trials():
    s = load_space(QUICK)
    m = s.measure
    n_cells = len(cells(s))
    confirm_s = n_cells * 2 * 2 * m.confirm_time_cap_s
    bound = 30 + s.budget.timeout + CUT_GRACE_S + confirm_s
    assert bound <= 300, bound
    d = s.distributions()
    launch = len(d["pattern.block_size"].choices)
    for k in ("kernel.block_m", "kernel.block_n", "kernel.num_warps", "kernel.num_stages"):
        launch *= len(d[k].choices) if k in d else 1
    compile_per_trial = launch * len(s.buckets) * COMPILE_S / s.budget.trials
    chains = s.effective_targets().max_chains
    trial_s = n_cells * 2 * m.time_cap_s + 1.5 + len(s.buckets) * chains * 0.05 + compile_per_trial
    assert s.budget.timeout / trial_s >= 20, (trial_s, s.budget.timeout / trial_s)
    assert s.budget.trials >= 20


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without a CUDA device")
@pytest.mark.parametrize("space", ["protein.yaml", "protein-quick.yaml"])
def test_gpu_space_on_a_cpu_machine_names_the_cpu_space(space, tmp_path, capsys, monkeypatch):
    """One line naming search_spaces/cpu.yaml, exit 2, nothing written (no database, no results/)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTOTUNE_STORAGE", raising=False)
    rc = main(["--space", str(ROOT / "search_spaces" / space), "--executor", "local", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "no CUDA device" in err[0] and "search_spaces/cpu.yaml" in err[0] and "--device cpu" not in err[0]
    assert os.listdir(tmp_path) == []

"""benchmarks/gpu_check.sh, the one prepared GPU script: valid bash, and its ``--dry-run`` runs every
step (the CUDA tests, skipped; EvoFormer forward, forward+backward with and without checkpointing,
the max-L probe; the profile, the kernel rows) on the CPU at tiny sizes, each to a zero exit status,
writing into a temporary folder only; the CUDA tests run first, the whole-block graph test among
them; the steps' time limits fit the script's budget."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_gpu_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_runs_the_cuda_tests_first_and_fits_its_budget():
    text = SCRIPT.read_text()
    steps = re.findall(r"^run_step (\w+) (\d+) ", text, flags=re.M)
    assert steps[0][0] == "gpu_tests" and "tests/test_gpu_evoformer_graph.py" in text
    budget = int(re.search(r"^BUDGET=(\d+)", text, flags=re.M).group(1))
    assert sum(int(limit) for _, limit in steps) <= budget <= 480  # "at most 8 minutes"
    assert "--max-len-time-cap" in text and "--checkpoint none block" in text


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_on_the_cpu():
    before = set((ROOT / "benchmarks" / "results").iterdir())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PY": "python"}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    done = [line for line in proc.stdout.splitlines() if "done:" in line]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert done, proc.stdout[-2000:]
    for step in ("gpu_tests=0", "evoformer_fwd=0", "evoformer_fwdbwd=0", "evoformer_maxlen=0", "profile=0", "kernel_rows=0"):
        assert step in done[0], done[0]
    assert set((ROOT / "benchmarks" / "results").iterdir()) == before  # a dry run writes no results

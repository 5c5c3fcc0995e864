"""benchmarks/gpu_search.sh, its CPU side: the script parses, and its dry run (a 2-trial study of a
tiny CPU space through the same steps: packages, search, export, re-timing, report) writes the log
and the report, and names every step's exit status."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from test_search import write_space

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_search.sh"


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.slow
def test_dry_run_writes_log_tuned_file_and_report(tmp_path):
    space = write_space(tmp_path, budget={"trials": 2})
    out = tmp_path / "out"
    env = dict(os.environ, GPU_SEARCH_DRY="1", GPU_SEARCH_SPACE=str(space), GPU_SEARCH_OUT=str(out))
    env.pop("OUT", None)
    res = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = (out / "dry-run-cpu.log").read_text()
    assert "search rc=0" in log and "trials/min; wall time: compiling" in log
    assert (out / "dry-run-cpu_REPORT.md").exists()
    assert "done (install rc=0, search rc=0, export rc=" in res.stdout
    if (out / "dry-run-cpu.yaml").exists():  # a bucket had a choice: it was re-timed alone
        assert (out / "dry-run-cpu-retime.json").exists() and "re-timed" in log

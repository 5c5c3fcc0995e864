"""A tiny CPU run of ``python -m kernels.bench``: the CSV has the expected rows and consistent ratios."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import bench


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_bench_cpu_tiny(tmp_path):
    out = tmp_path / "bench.csv"
    bench.main([
        "--device", "cpu", "--workloads", "row,tri", "--lengths", "128,160", "--sparsities", "0,50",
        "--passes", "fwd,fwdbwd", "--batch", "1", "--backends", "sdpa,cpu,naive", "--reps", "1",
        "--out", str(out),
    ])
    rows = _rows(out)
    assert set(bench.CSV_FIELDS) <= set(rows[0])
    # 2 workloads x 2 lengths x 2 sparsities x 2 passes x 3 backends
    assert len(rows) == 48
    keys = {(r["workload"], r["L"], r["sparsity_target"], r["pass"], r["backend"]) for r in rows}
    assert len(keys) == 48
    for r in rows:
        assert r["status"] == "ok", r
        assert r["device"].startswith("cpu-") and r["dtype"] == "float32" and r["torch"]
        assert float(r["ms"]) > 0
        assert 0.0 <= float(r["sparsity_actual"]) < 1.0
    # speedups are ratios of the file's own ms columns
    by_key = {(r["workload"], r["L"], r["sparsity_target"], r["pass"], r["backend"]): r for r in rows}
    for (w, L, s, p, b), r in by_key.items():
        sdpa = float(by_key[(w, L, s, p, "sdpa")]["ms"])
        assert float(r["speedup_vs_sdpa"]) == pytest.approx(sdpa / float(r["ms"]), rel=2e-3, abs=2e-3)
        assert r["speedup_vs_flex"] == ""  # flex not run
    zero = [r for r in rows if r["sparsity_target"] == "0.0"]
    assert all(float(r["sparsity_actual"]) == 0.0 for r in zero)
    assert any(float(r["sparsity_actual"]) > 0.2 for r in rows if r["sparsity_target"] == "0.5")


def test_bench_gate_marks_fail(tmp_path, monkeypatch):
    """A backend whose output is wrong is marked FAIL and not timed."""
    real = bench._run_backend

    def broken(name, q, k, v, layout, bias):
        out = real(name, q, k, v, layout, bias)
        return out + 1.0 if name == "cpu" else out

    monkeypatch.setattr(bench, "_run_backend", broken)
    out = tmp_path / "bench.csv"
    bench.main(["--device", "cpu", "--workloads", "row", "--lengths", "128", "--sparsities", "50",
                "--passes", "fwd", "--batch", "1", "--backends", "sdpa,cpu", "--reps", "1", "--out", str(out)])
    rows = {r["backend"]: r for r in _rows(out)}
    assert rows["cpu"]["status"] == "FAIL" and rows["cpu"]["ms"] == ""
    assert rows["sdpa"]["status"] == "ok"


@pytest.mark.slow
def test_bench_module_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "kernels.bench", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert res.returncode == 0 and "--sparsities" in res.stdout


def test_pattern_for_sparsity_rule():
    from patterns import build_layout
    from patterns.sparsity import pattern_for_sparsity

    full = pattern_for_sparsity(1024, 0.0)
    assert build_layout(full, 1024).is_full and full.num_global == 0 and full.stride == 0
    for target in (0.5, 0.75, 0.9):
        cfg = pattern_for_sparsity(4096, target)
        assert cfg == pattern_for_sparsity(4096, target)  # deterministic
        assert abs(build_layout(cfg, 4096).sparsity - target) < 0.03
        assert cfg.block_size == 64 and cfg.window % 64 == 0
    with pytest.raises(ValueError):
        pattern_for_sparsity(1024, 1.5)


def test_bench_triton_launch_config_sweep(tmp_path, monkeypatch, capsys):
    """The Triton backend's launch-config sweep (interpreter on a CPU): every config is gated, the
    fastest is recorded in the CSV, and a config that fails the gate is never chosen."""
    import os

    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"
    real = bench._run_backend
    bad = "64x32/w4/s3"

    def broken_for_one_config(name, q, k, v, layout, bias, **kernel):
        out = real(name, q, k, v, layout, bias, **kernel)
        if name == "triton" and bench._config_text(kernel.get("config")) == bad:
            return out + 1.0
        return out

    monkeypatch.setattr(bench, "_run_backend", broken_for_one_config)
    out = tmp_path / "bench.csv"
    bench.main(["--device", "cpu", "--workloads", "row", "--lengths", "128", "--sparsities", "50",
                "--passes", "fwd", "--batch", "1", "--backends", "sdpa,triton", "--reps", "1", "--warmup", "0",
                "--triton-configs", f"64x64/w4/s2,{bad}", "--out", str(out)])
    rows = {r["backend"]: r for r in _rows(out)}
    assert rows["triton"]["status"] == "ok"
    assert rows["triton"]["kernel_config"] == "64x64/w4/s2"
    assert rows["sdpa"]["kernel_config"] == ""
    log = capsys.readouterr().out
    assert f"FAILED gate: {bad}" in log and f"config {bad}" not in log  # gated out, never timed


def test_bench_rejects_bad_launch_config():
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--triton-configs", "64x48/w4/s2"])


def test_bench_writes_csv_after_each_case_targets_first(tmp_path, monkeypatch):
    """A run that dies in its second case keeps the first case's rows on disk, and the first case
    is a target case (row L=512 before row L=128)."""
    real = bench.run_case
    seen = []

    def dies_second(case, *a, **kw):
        seen.append((case.workload, case.L))
        if len(seen) == 2:
            raise KeyboardInterrupt("stopped")
        return real(case, *a, **kw)

    monkeypatch.setattr(bench, "run_case", dies_second)
    out = tmp_path / "bench.csv"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--device", "cpu", "--workloads", "row", "--lengths", "128,512", "--sparsities", "90",
                    "--passes", "fwd", "--batch", "1", "--backends", "sdpa", "--reps", "1", "--warmup", "0",
                    "--out", str(out)])
    assert seen == [("row", 512), ("row", 128)]
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["L"] == "512" and rows[0]["status"] == "ok"


@pytest.mark.slow
def test_gpu_check_modules_import_no_search_stack():
    """What benchmarks/gpu_check.sh runs imports neither optuna, ray nor sqlalchemy (the GPU
    machine has none of them)."""
    code = ("import sys, kernels.bench, kernels.triton_op, kernels.compile_report, autotune.evoformer.bench; "
            "print(sorted(m for m in ('optuna', 'ray', 'sqlalchemy') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr[-1000:]
    assert res.stdout.strip() == "[]"


def test_gpu_check_script_phases_fit_one_call():
    """The phase timeouts of benchmarks/gpu_check.sh add up to at most 8 minutes, with no -x."""
    import re

    text = (Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh").read_text()
    limits = [int(x) for x in re.findall(r"\btimeout (\d+) ", text)]
    assert limits and sum(limits) <= 480, limits
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert " -x" not in commands and "pip install --no-deps" in commands and "PY=python3" in commands
    assert text.index("bfloat16") < text.index("kernels.bench") < text.index("autotune.evoformer.bench")

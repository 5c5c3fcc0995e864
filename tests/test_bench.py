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
    # the default run is the static family only, timed with the one timer of kernels.measure
    assert all(r["family"] == "static" and r["pool"] == "" and r["build_ms"] == "" for r in rows)
    assert all(r["timer"] == "perf_counter" and r["memory_method"] in ("rss_hwm", "rss_sampled") for r in rows)
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
    """benchmarks/gpu_check.sh fits one device call of at most 8 minutes (its budget, and every
    step's own timeout within it) and runs the EvoFormer rows first, then the profile, then the
    search's GPU step, then the kernel rows."""
    import re

    text = (Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh").read_text()
    budget = int(re.search(r"^BUDGET=(\d+)$", text, re.M).group(1))
    assert budget <= 480
    limits = [int(x) for x in re.findall(r"^run_step \w+ (\d+) ", text, re.M)]
    assert limits and max(limits) <= budget, limits
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    order = [commands.index(m) for m in ("run_step evoformer_fwd ", "run_step evoformer_fwdbwd ", "run_step profile ",
                                         "gpu_search.sh", "run_step kernel_rows ")]
    assert order == sorted(order), "EvoFormer rows, profile, search, kernel rows: in that order"


# ---- guided layouts ------------------------------------------------------------------------------


def test_bench_guided_rows(tmp_path):
    """--families static,guided: one case per pool next to the static one, the guided layout's own
    sparsity, the build time alone and its share of the timed call, speedups within each case."""
    from patterns import GuidedConfig, build_layout

    out = tmp_path / "bench.csv"
    bench.main(["--device", "cpu", "--workloads", "row", "--lengths", "160", "--sparsities", "75",
                "--passes", "fwd,fwdbwd", "--batch", "1", "--backends", "sdpa,cpu", "--reps", "1", "--warmup", "1",
                "--families", "static,guided", "--pools", "max,mean", "--out", str(out)])
    rows = _rows(out)
    assert len(rows) == 3 * 2 * 2  # (static, guided max, guided mean) x 2 passes x 2 backends
    assert all(r["status"] == "ok" for r in rows)
    assert {(r["family"], r["pool"]) for r in rows} == {("static", ""), ("guided", "max"), ("guided", "mean")}
    case = bench.Case("row", 160, 1, 75, "guided", "max")
    _, _, _, bias = bench._case_inputs(case, bench.WORKLOADS["row"].heads, torch.device("cpu"), torch.float32)
    for pool in ("max", "mean"):
        expect = build_layout(GuidedConfig(64, keep=0.25, pool=pool), 160, signal=bias)
        assert expect.num_heads == 8  # one layout per head, from the case's bias
        g = [r for r in rows if r["pool"] == pool]
        assert all(float(r["sparsity_actual"]) == pytest.approx(round(expect.sparsity, 4)) for r in g)
        for r in g:
            if r["backend"] == "sdpa":  # the dense baseline builds nothing
                assert r["build_ms"] == "" and r["build_share"] == "" and float(r["speedup_vs_sdpa"]) == 1.0
            else:
                build, ms = float(r["build_ms"]), float(r["ms"])
                assert build > 0 and float(r["build_share"]) == pytest.approx(build / ms, rel=1e-3, abs=1e-4)
                sdpa = next(x for x in g if x["backend"] == "sdpa" and x["pass"] == r["pass"])
                assert float(r["speedup_vs_sdpa"]) == pytest.approx(float(sdpa["ms"]) / ms, rel=2e-3, abs=2e-3)
    static = [r for r in rows if r["family"] == "static"]
    assert all(r["build_ms"] == "" and r["stride"] != "" for r in static)


def test_bench_guided_layout_is_built_in_every_timed_call(tmp_path, monkeypatch):
    """A guided case builds its layout from the bias inside each timed call of a sparse backend (so
    the construction is in its time), the cold memory call with a workspace of its own; a static
    case builds its layout once, before timing."""
    calls = []
    real = bench.build_layout

    def counting(cfg, L, *a, **kw):
        calls.append((type(cfg).__name__, "signal" in kw, kw.get("workspace") is not None))
        return real(cfg, L, *a, **kw)

    monkeypatch.setattr(bench, "build_layout", counting)
    args = ["--device", "cpu", "--workloads", "row", "--lengths", "128", "--sparsities", "50", "--passes", "fwd",
            "--batch", "1", "--backends", "sdpa,cpu", "--reps", "3", "--warmup", "1", "--out", str(tmp_path / "b.csv")]
    bench.main(args + ["--families", "guided"])
    assert all(name == "GuidedConfig" and signal for name, signal, _ in calls)
    # case layout 1, build alone (warm-up 1 + reps 3), cpu timed calls (1 + 3), cold memory call 1;
    # sdpa builds nothing
    assert len(calls) == 1 + 4 + 4 + 1
    assert [own for _, _, own in calls].count(True) == 1  # only the cold call has a workspace of its own
    calls.clear()
    bench.main(args + ["--families", "static"])
    assert len(calls) == 1 and calls[0][0] == "PatternConfig"


def test_bench_guided_gate_uses_the_guided_layout(tmp_path, monkeypatch):
    """A backend that ignores the guided layout (computes a static dense one) fails the gate."""
    from patterns import PatternConfig, build_layout

    real = bench._run_backend

    def ignores_layout(name, q, k, v, layout, bias, **kernel):
        if name == "cpu":
            layout = build_layout(PatternConfig(64, window=10**4, num_global=0, stride=0), layout.seq_len)
        return real(name, q, k, v, layout, bias, **kernel)

    monkeypatch.setattr(bench, "_run_backend", ignores_layout)
    out = tmp_path / "bench.csv"
    bench.main(["--device", "cpu", "--workloads", "tri", "--lengths", "256", "--sparsities", "75", "--passes", "fwd",
                "--batch", "1", "--backends", "sdpa,cpu", "--reps", "1", "--families", "guided", "--out", str(out)])
    rows = {r["backend"]: r for r in _rows(out)}
    assert rows["cpu"]["status"] == "FAIL" and rows["cpu"]["family"] == "guided" and rows["cpu"]["ms"] == ""
    assert rows["sdpa"]["status"] == "ok"


def test_bench_guided_triton_under_the_interpreter(tmp_path):
    """The Triton backend on a per-head guided layout built in the call (interpreter on a CPU)."""
    import os

    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"
    out = tmp_path / "bench.csv"
    bench.main(["--device", "cpu", "--workloads", "tri", "--lengths", "128", "--sparsities", "50", "--passes", "fwd",
                "--batch", "1", "--backends", "sdpa,triton", "--reps", "1", "--warmup", "0", "--families", "guided",
                "--out", str(out)])
    rows = {r["backend"]: r for r in _rows(out)}
    assert rows["triton"]["status"] == "ok" and float(rows["triton"]["build_ms"]) > 0


@pytest.mark.parametrize("flag, value", [("--families", "static,random"), ("--pools", "median"),
                                         ("--sparsities", "100"), ("--sparsities", "fifty"), ("--lengths", "0"),
                                         ("--reps", "0"), ("--dtype", "float8"), ("--batch", "0"),
                                         ("--backends", "sdpa,cuda")])
def test_bench_rejects_bad_options_with_exit_2(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert flag in err[-1]


# ---- the EvoFormer block benchmark on the measurement layer ------------------------------------------

EVO_SMALL = dict(c_m=16, c_z=8, c_hidden_msa_att=4, no_heads_msa=2, c_hidden_pair_att=4, no_heads_pair=2,
                 c_hidden_opm=4, c_hidden_mul=8)


def test_block_pass_is_the_one_pass_of_benchmark_and_trial():
    from autotune import workloads
    from autotune.evoformer import bench as evo
    from models.evoformer.modules import EvoformerBlock
    from autotune.evoformer.timed_pass import block_pass

    assert evo.block_pass is block_pass and workloads.block_pass is block_pass  # one pass, not copies
    torch.manual_seed(0)
    block = EvoformerBlock(**EVO_SMALL)
    m, z = torch.randn(2, 16, 16), torch.randn(16, 16, 8)
    block_pass(block, m, z, "fwd")()
    assert all(p.grad is None for p in block.parameters())
    block_pass(block, m, z, "fwd+bwd")()
    assert all(p.grad is None for p in block.parameters())  # cleared after each call: every call does the same work
    with pytest.raises(ValueError, match="mode"):
        block_pass(block, m, z, "bwd")


def test_evoformer_bench_records_timer_and_maps_oom_and_missing_backends(tmp_path, monkeypatch):
    """Rows name the timer and the memory method; out of memory (kernels.measure.is_oom) gives
    status 'oom', a missing backend 'unavailable: ...', any other error is raised."""
    from autotune.evoformer import bench as evo
    from kernels import measure

    real = measure.measure_time
    faults = iter([RuntimeError("CUDA out of memory. Tried to allocate 4 GiB"), NotImplementedError("no flex here")])

    def faulty(fn, **kw):
        err = next(faults, None)
        if err is not None:
            raise err
        return real(fn, **kw)

    monkeypatch.setattr(evo, "measure_time", faulty)
    rows = evo.run_evoformer_bench([16], 2, dims=EVO_SMALL, kinds=("naive", "sdpa", "sparse"), sparsities=(0.5,), modes=("fwd",), warmup=0,
                                   repeats=1, device="cpu", dtype=torch.float32, measure_share=False,
                                   csv_path=tmp_path / "evo.csv")
    assert [r["status"] for r in rows] == ["oom", "unavailable: NotImplementedError", "ok"]
    assert all(r["timer"] == "perf_counter" for r in rows)
    assert rows[2]["memory_method"] in ("rss_hwm", "rss_sampled") and rows[0]["memory_method"] == ""
    header = (tmp_path / "evo.csv").read_text().splitlines()[0].split(",")
    assert header == evo.CSV_FIELDS and "timer" in header and "memory_method" in header
    monkeypatch.setattr(evo, "measure_time", lambda fn, **kw: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        evo.run_evoformer_bench([16], 2, dims=EVO_SMALL, kinds=("sdpa",), modes=("fwd",), warmup=0, repeats=1,
                                device="cpu", measure_share=False, csv_path=False)


def test_bench_default_output_leaves_the_committed_results_alone(tmp_path, monkeypatch):
    """Without --out a run writes results/bench/<device>.csv under the current folder, never the
    committed benchmarks/results/ files."""
    import hashlib

    committed = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in bench.RESULTS_DIR.glob("*.csv")}
    monkeypatch.chdir(tmp_path)
    bench.main(["--device", "cpu", "--workloads", "row", "--lengths", "64", "--sparsities", "50", "--passes", "fwd",
                "--batch", "1", "--backends", "sdpa,cpu", "--reps", "1"])
    out = tmp_path / "results" / "bench" / f"{bench._file_name(bench.device_name(torch.device('cpu')))}.csv"
    assert out.exists() and {r["backend"] for r in _rows(out)} == {"sdpa", "cpu"}
    assert bench.default_out("x") == Path("results") / "bench" / "x.csv"
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in bench.RESULTS_DIR.glob("*.csv")} == committed


def test_one_baseline_vocabulary():
    """The baselines have one name each (`kernels.baselines`), which the benchmarks' CSVs, the
    search's stored cells and the objectives all use; each is computed by a registered backend."""
    from kernels import backends
    from kernels.baselines import BASELINES, NAIVE, SDPA
    from autotune.evoformer import bench as evo_bench
    from results.bench_tables import EVOFORMER_COLUMNS, KERNEL_COLUMNS
    from results.tables import Measurement
    from search_spaces.objectives import OBJECTIVE_BY_NAME

    assert set(BASELINES) == {SDPA, NAIVE}
    for b in BASELINES.values():
        assert b.backend in backends.names()
        assert hasattr(Measurement, f"{b.name}_peak_mib") and hasattr(Measurement, f"{b.name}_ms")
        assert f"memory_vs_{b.name}" in OBJECTIVE_BY_NAME
        assert f"speedup_vs_{b.name}" in EVOFORMER_COLUMNS and b.name in evo_bench.DEFAULT_KINDS
        assert b.name in bench.BACKENDS
    assert f"speedup_vs_{SDPA}" in bench.CSV_FIELDS and f"speedup_vs_{SDPA}" in KERNEL_COLUMNS


def test_bench_workloads_share_the_spaces_batch_rule():
    """``kernels.bench``'s row / tri workloads and a space's msa_row / triangle entries take their
    batch from the one rule (`kernels.workloads.attention_batch`): the GPU protein space's row
    (32768 tokens) and an uncapped triangle give the benchmark's GPU batches."""
    from search_spaces.workloads import AttentionWorkload

    row = AttentionWorkload(name="row", kind="msa_row", heads=8, head_dim=32, tokens=32768)
    tri = AttentionWorkload(name="tri", kind="triangle", heads=4, head_dim=32)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for L in (256, 512, 1000, 4096, 40000):
        assert bench.default_batch("row", L, cuda) == row.batch(L) == max(1, 32768 // L)
        assert bench.default_batch("tri", L, cuda) == tri.batch(L) == L
        assert bench.default_batch("row", L, cpu) == 1 and bench.default_batch("tri", L, cpu) == 8
    assert {w: (s.heads, s.head_dim) for w, s in bench.WORKLOADS.items()} == {"row": (8, 32), "tri": (4, 32)}

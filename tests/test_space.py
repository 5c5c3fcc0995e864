"""Search-space files: the shipped spaces load, and every broken file in tests/data/bad_spaces is
rejected with its one-line message, exit status 2 and no database written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.search import main
from search_spaces.space import Choices, SpaceError, load_space, parse_space

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((ROOT / "tests" / "data" / "bad_spaces").glob("*.yaml"))


def expected(path: Path) -> str:
    """The message a corpus file must give: its first line ``# expect: MESSAGE``, or, for a file
    whose bytes are not ASCII-readable (UTF-16, Latin-1, ...), the sidecar ``NAME.yaml.expect``."""
    sidecar = path.with_name(path.name + ".expect")
    if sidecar.exists():
        return sidecar.read_text().strip()
    first = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert first.startswith("# expect:"), f"{path} must start with '# expect: <message>'"
    return first.split("expect:", 1)[1].strip()


def test_corpus_size():
    assert len(BAD) >= 50


@pytest.mark.parametrize("name", ["protein.yaml", "cpu.yaml", "cpu_evoformer.yaml"])
def test_shipped_spaces_load(name):
    space = load_space(ROOT / "search_spaces" / name)
    assert space.buckets and space.workloads
    dists = space.distributions()
    assert "pattern.block_size" in dists and "pattern.window" in dists
    assert len(space.directions()) == len(space.objectives)
    # round trip through the plain dict the workers receive
    from search_spaces.space import SearchSpace

    again = SearchSpace.from_dict(space.to_dict())
    assert again.workloads == space.workloads and again.constraints == space.constraints


def test_protein_space_shapes():
    space = load_space(ROOT / "search_spaces" / "protein.yaml")
    assert space.buckets == [256, 512, 1024, 2048, 4096]
    assert space.dtype == "bfloat16" and space.device == "cuda"
    row = next(w for w in space.workloads if w.kind == "msa_row")
    tri = next(w for w in space.workloads if w.kind == "triangle")
    assert (row.heads, row.head_dim, row.batch(512), row.batch(4096)) == (8, 32, 64, 8)
    assert (tri.heads, tri.head_dim, tri.batch(256)) == (4, 32, 128)
    assert space.kernel is not None
    evo = next(w for w in space.workloads if w.kind == "evoformer")
    assert (evo.msa_depth, evo.c_m, evo.c_z, evo.heads, evo.pair_heads, evo.head_dim, evo.max_len) == (128, 256, 128, 8, 4, 32, 2048)
    assert evo.batch(1024) == 128 and evo.applies(2048) and not evo.applies(4096)


def test_cpu_spaces_keep_the_block_out_of_the_main_cpu_job():
    assert all(w.kind != "evoformer" for w in load_space(ROOT / "search_spaces" / "cpu.yaml").workloads)
    evo = load_space(ROOT / "search_spaces" / "cpu_evoformer.yaml")
    assert [w.kind for w in evo.workloads] == ["evoformer"] and evo.device == "cpu"


def test_split_params_and_grid():
    space = load_space(ROOT / "search_spaces" / "cpu.yaml")
    grid = space.grid()
    placements = space.pattern["global_placement"].values  # cpu.yaml may fix it to 'first'
    # guided keys (family, keep, pool, spread) multiply the grid when cpu.yaml searches them
    extra = 1
    for key in ("family", "keep", "pool", "spread"):
        spec = space.pattern.get(key)
        extra *= len(spec.values) if isinstance(spec, Choices) else 1
    assert len(grid) == 3 * 5 * 3 * 3 * len(placements) * extra
    static = next(g for g in grid if g.get("pattern.family", "static") == "static")
    pattern, kernel = space.split_params(static)
    assert set(pattern) == {"block_size", "window", "num_global", "stride", "global_placement"} and kernel is None


def test_space_error_is_one_line_naming_file_and_key():
    with pytest.raises(SpaceError) as ei:
        parse_space({"buckets": [64], "pattern": {}, "workloads": [], "objectives": []}, "x.yaml")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("x.yaml: pattern.block_size: ")


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_space_rejected(path, tmp_path, capsys):
    db = tmp_path / "out.db"
    rc = main(["--space", str(path), "--storage", f"sqlite:///{db}", "--executor", "local", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert str(path) in err[0] and expected(path) in err[0], err[0]
    assert not db.exists(), "nothing may be written for an invalid space"
    assert list(tmp_path.iterdir()) == []


def test_bad_space_exit_status_from_the_command_line(tmp_path):
    path = ROOT / "tests" / "data" / "bad_spaces" / "unsupported_block_size.yaml"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "autotune.search", "--space", str(path), "--storage", f"sqlite:///{tmp_path}/a.db"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert expected(path) in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_space_file(tmp_path, capsys):
    rc = main(["--space", str(tmp_path / "nope.yaml"), "--storage", f"sqlite:///{tmp_path}/a.db"])
    assert rc == 2
    assert "nope.yaml: (file): no such file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_limits_are_raisable_and_zero_tolerance_is_kept(tmp_path):
    base = (ROOT / "tests" / "data" / "bad_spaces" / "huge_bucket.yaml").read_text()
    with pytest.raises(SpaceError, match="raise limits.max_seq_len"):
        parse_space(__import__("yaml").safe_load(base), "s.yaml")
    p = tmp_path / "ok.yaml"
    p.write_text(base + "limits: {max_seq_len: 10000000, max_input_gib: 1.0e+9}\ngate: {fwd_tol: 0, bwd_tol: 0.0}\n")
    space = load_space(p)
    assert space.buckets[-1] == 10_000_000
    assert space.gate.fwd_tol == 0.0 and space.gate.bwd_tol == 0.0  # 0 is exact, not "default"
    assert space.gate.tolerances((1e-4, 1e-3)) == (0.0, 0.0)


def test_anchors_within_budget_are_accepted(tmp_path):
    text = (ROOT / "tests" / "data" / "bad_spaces" / "wrong_type_trials.yaml").read_text()
    text = text.replace("budget: {trials: ten}", "budget: &b {trials: 4}\nmeasure: {warmup: 1, repeats: 3}")
    text = text.replace("  block_size: {choices: [16, 32]}", "  block_size: &bs {choices: [16, 32]}")
    text += "gate: {seq_len: 64, batch: 1}\n"
    p = tmp_path / "anchors.yaml"
    p.write_text(text)
    assert load_space(p).pattern["block_size"] == Choices((16, 32))


def test_sections_are_typed_records_that_round_trip():
    """Every settings section is a frozen record with its defaults; a space's stored form loads
    back to the same records and stores the same data again."""
    import dataclasses

    from search_spaces.space import (BudgetSettings, ExecutionSettings, GateSettings, MeasureSettings, SamplerSettings,
                                SearchSpace)

    space = load_space(ROOT / "search_spaces" / "cpu.yaml")
    for section, cls in (("sampler", SamplerSettings), ("budget", BudgetSettings), ("measure", MeasureSettings),
                         ("gate", GateSettings), ("execution", ExecutionSettings)):
        value = getattr(space, section)
        assert type(value) is cls and dataclasses.is_dataclass(value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, dataclasses.fields(value)[0].name, None)
    stored = space.to_dict()
    again = SearchSpace.from_dict(stored)
    assert again.to_dict() == stored
    assert (again.sampler, again.budget, again.measure, again.gate, again.execution, again.pattern, again.kernel) == (
        space.sampler, space.budget, space.measure, space.gate, space.execution, space.pattern, space.kernel)
    assert again.distributions() == space.distributions()


def test_a_space_stored_by_an_older_version_loads():
    """Sections stored with fewer keys (and a key this version no longer has) take the field
    defaults; workloads stored with every kind's keys load as the record of their kind."""
    from search_spaces.space import AttentionWorkload, EvoformerWorkload, SearchSpace

    space = load_space(ROOT / "search_spaces" / "protein.yaml")
    stored = space.to_dict()
    stored.pop("targets")
    stored.pop("accuracy_noise")
    stored["measure"] = {"warmup": 3, "repeats": 10, "retired_key": 1}
    stored["sampler"] = {"name": "tpe"}
    old = SearchSpace.from_dict(stored)
    assert (old.measure.warmup, old.measure.repeats, old.measure.max_repeats, old.measure.confirm_top) == (3, 10, 41, 3)
    assert old.sampler.seed is None and old.sampler.startup_trials == 10 and old.accuracy_noise == 4.0
    kinds = {w.kind: type(w) for w in old.workloads}
    assert kinds == {"msa_row": AttentionWorkload, "triangle": AttentionWorkload, "evoformer": EvoformerWorkload}
    assert [w.to_dict() for w in old.workloads] == [w.to_dict() for w in space.workloads]


def test_zero_tolerance_reaches_the_gate(tmp_path):
    """gate.fwd_tol / bwd_tol 0 is an exact comparison in the trial, not the dtype default."""
    import yaml

    from autotune.trial import TrialRequest, TrialRunner

    data = yaml.safe_load((ROOT / "search_spaces" / "cpu.yaml").read_text())
    data.update(backend="reference", buckets=[64], gate={"seq_len": 40, "batch": 1, "fwd_tol": 0, "bwd_tol": 0},
                pattern={"block_size": 16, "window": 16, "num_global": 0, "stride": 0},
                workloads=[{"name": "row", "kind": "msa_row", "heads": 2, "head_dim": 16, "tokens": 64}])
    space = parse_space(data, "zero.yaml")
    assert space.gate.tolerances((1e-4, 1e-3)) == (0.0, 0.0)
    runner = TrialRunner()
    pattern, kernel = space.split_params({})
    cand = runner._parse(TrialRequest("z", 0, {}, pattern, kernel, space.to_dict()))
    report = runner._gate(cand, seed=0)
    assert (report.fwd_tol, report.bwd_tol) == (0.0, 0.0) and report.values["row.fwd_err"] == 0.0

"""Search-space files: the shipped spaces load, and every broken file in tests/data/bad_spaces is
rejected with its one-line message, exit status 2 and no database written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.search import main
from autotune.space import Choices, SpaceError, load_space, parse_space

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
    from autotune.space import SearchSpace

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

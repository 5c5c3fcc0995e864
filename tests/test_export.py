"""Export a study's per-bucket choice and deploy it with kernels.load_tuned."""

from __future__ import annotations

import pytest
import torch
import yaml

from autotune.export import main as export_main
from kernels import KernelConfig, TunedPatterns, load_tuned, reference_attention, sparse_attention
from kernels.tuned import parse_tuned
from patterns import PatternConfig, build_layout
from test_search import run_search


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    summary, db = run_search(tmp, trials=4)
    assert summary["completed"] == 4
    return db


def test_export_and_load(study_db, tmp_path, capsys):
    out = tmp_path / "tuned" / "protein.yaml"
    rc = export_main(["--study", "tiny", "--storage", f"sqlite:///{study_db}", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = yaml.safe_load(out.read_text())
    assert doc["study"] == "tiny" and doc["hardware"]["device"] == "cpu" and "rule" in doc
    assert [b["seq_len"] for b in doc["buckets"]] == [64, 128]
    # format 2: the machine and, per bucket, the shapes it was tuned for
    assert doc["format"] == 2 and doc["device"] == "cpu" and doc["device_name"] == doc["hardware"]["device_name"]
    assert all(b["heads"] == [2] and b["head_dims"] == [16] for b in doc["buckets"])  # both workloads: 2 x 16
    for b in doc["buckets"]:
        assert b["source"]["study"] == "tiny" and isinstance(b["source"]["trial"], int)
        assert set(b["speedup"]) == {"row", "tri"} and "contact_recall_long" in b["accuracy"]

    tuned = load_tuned(out)
    assert isinstance(tuned, TunedPatterns) and tuned.buckets == [64, 128]
    # bucket rule: smallest measured bucket >= L; beyond every measured bucket: none (dense attention)
    assert tuned.bucket_for(1) == 64 and tuned.bucket_for(64) == 64 and tuned.bucket_for(65) == 128
    assert tuned.bucket_for(5000) is None and tuned.config_for(5000) is None
    cfg = tuned.config_for(100)
    assert isinstance(cfg, PatternConfig) and cfg.to_dict() == doc["buckets"][1]["pattern"]
    assert tuned.kernel_config_for(100) is None
    # the config is used as is by build_layout and sparse_attention
    layout = build_layout(cfg, 100)
    q, k, v = (torch.randn(1, 2, 100, 16) for _ in range(3))
    out_t = sparse_attention(q, k, v, layout, None, backend="reference")
    torch.testing.assert_close(out_t, reference_attention(q, k, v, layout, None))

    # the choice is also recorded in the database
    import sqlite3

    con = sqlite3.connect(study_db)
    assert con.execute("select count(*) from at_tuned where study_name = 'tiny'").fetchone()[0] == 2
    con.close()


def test_export_choice_rule(study_db, tmp_path):
    """The chosen trial at each bucket is the confirmed leader with the highest confirmed geometric-mean
    speedup, recomputed here from at_confirmations and at_measurements; its exported speedups are its
    hold-out re-measurement's."""
    import math
    import sqlite3

    out = tmp_path / "t.yaml"
    assert export_main(["--study", "tiny", "--storage", f"sqlite:///{study_db}", "--out", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    con = sqlite3.connect(study_db)
    (cid,) = con.execute("select max(confirm_id) from at_confirmations where study_name = 'tiny'").fetchone()
    n_complete = con.execute("select count(*) from at_trials where study_name = 'tiny' and state = 'COMPLETE'").fetchone()[0]
    for b in doc["buckets"]:
        L = b["seq_len"]
        rows = con.execute("select trial_number, workload, speedup, speedup_lo, speedup_hi, complete_trials, rank "
                           "from at_confirmations where confirm_id = ? and bucket = ? and stage is null",
                           (cid, L)).fetchall()
        held = con.execute("select trial_number, workload, speedup from at_confirmations "
                           "where confirm_id = ? and bucket = ? and stage = 'holdout'", (cid, L)).fetchall()
        assert rows and all(r[5] == n_complete for r in rows)
        # the leaders: the top (confirm_top = 3) trials by the search's geometric-mean speedup at this bucket
        search = {}
        for number, speedup in con.execute(
            "select t.number, m.speedup from at_measurements m join at_trials t on m.trial_id = t.id "
            "where m.bucket = ? and t.state = 'COMPLETE'", (L,)
        ):
            search.setdefault(number, []).append(speedup)
        gm = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
        leaders = sorted(search, key=lambda n: (-gm(search[n]), n))[:3]
        assert {r[0] for r in rows} == set(leaders)
        confirmed = {}
        for number, w, sp, lo, hi, _, _ in rows:
            assert lo <= sp <= hi
            confirmed.setdefault(number, {})[w] = sp
        best = max(confirmed, key=lambda n: gm(list(confirmed[n].values())))
        assert b["source"]["trial"] == best
        assert {r[0] for r in held} == {best} and b["speedup_from"] == "holdout"
        holdout = {w: sp for _, w, sp in held}
        assert math.isclose(b["speedup_geomean"], gm(list(holdout.values())), rel_tol=1e-4)
        assert {w: x["median"] for w, x in b["speedup"].items()} == pytest.approx(holdout, rel=1e-4)
        lo, hi = b["speedup_interval"]
        assert lo <= b["speedup_geomean"] <= hi
        # no null keys are repeated per workload
        assert all(None not in w.values() for w in doc["workloads"])
    con.close()


def test_export_storage_hints(study_db, tmp_path, capsys):
    out = tmp_path / "x.yaml"
    # a plain path is a SQLite file
    assert export_main(["--study", "tiny", "--storage", str(study_db), "--out", str(out)]) == 0 and out.exists()
    capsys.readouterr()
    assert export_main(["--study", "tiny", "--storage", "sqlite://results/a.db", "--out", str(tmp_path / "y.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sqlite:///results/a.db" in err[0]
    assert export_main(["--study", "nope", "--storage", str(study_db), "--out", str(tmp_path / "y.yaml")]) == 2
    assert "studies there: tiny" in capsys.readouterr().err
    pytest.importorskip("sqlalchemy")
    try:
        import pg8000  # noqa: F401
    except ImportError:  # a PostgreSQL URL whose driver is missing names the extra to install
        assert export_main(["--study", "tiny", "--storage", "postgresql+pg8000://u@h/db", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ".[postgres]" in err[0]


def test_export_errors(study_db, tmp_path, capsys):
    out = tmp_path / "x.yaml"
    assert export_main(["--study", "nope", "--storage", f"sqlite:///{study_db}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study 'nope' does not exist" in err[0]
    missing = tmp_path / "missing.db"
    assert export_main(["--study", "tiny", "--storage", f"sqlite:///{missing}", "--out", str(out)]) == 2
    assert "no database file" in capsys.readouterr().err
    assert not missing.exists() and not out.exists()


def test_export_no_feasible_trial(tmp_path, capsys):
    summary, db = run_search(tmp_path, trials=2, constraints={"speedup": {"min": 1000.0}},
                              objectives=["speedup", "memory_vs_sdpa"])
    assert summary["completed"] == 2
    out = tmp_path / "x.yaml"
    assert export_main(["--study", "tiny", "--storage", f"sqlite:///{db}", "--out", str(out)]) == 2
    assert "no feasible trial" in capsys.readouterr().err and not out.exists()


GOOD = {
    "buckets": [
        {"seq_len": 256, "pattern": {"block_size": 64, "window": 64, "num_global": 0, "stride": 0},
         "kernel": {"block_m": 32, "block_n": 64, "num_warps": 4, "num_stages": 2}},
        {"seq_len": 1024, "pattern": {"block_size": 32, "window": 128, "num_global": 16, "stride": 4}},
    ]
}


def test_load_tuned_kernel_config(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(GOOD))
    t = load_tuned(p)
    assert t.kernel_config_for(200) == KernelConfig(32, 64, 4, 2)
    assert t.kernel_config_for(300) is None and t.config_for(300).block_size == 32


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("buckets"), "buckets: required key is missing"),
        (lambda d: d["buckets"][0].pop("pattern"), "buckets[0].pattern: required key is missing"),
        (lambda d: d["buckets"][1]["pattern"].update(block_size=48), "PatternConfig.block_size must be one of"),
        (lambda d: d["buckets"][1]["pattern"].update(windw=3), "buckets[1].pattern: unknown pattern key"),
        (lambda d: d["buckets"][0]["kernel"].update(num_warps=3), "buckets[0].kernel: KernelConfig.num_warps"),
        (lambda d: d["buckets"][0]["kernel"].update(block_m=96), "buckets[0].kernel: KernelConfig.block_m must be one of"),
        (lambda d: d["buckets"][1].update(seq_len="long"), "buckets[1].seq_len: must be a positive integer"),
        (lambda d: d["buckets"][1].update(seq_len=256), "buckets[1].seq_len: duplicate bucket 256"),
    ],
)
def test_load_tuned_malformed(tmp_path, mutate, message):
    import copy

    d = copy.deepcopy(GOOD)
    mutate(d)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError) as ei:
        load_tuned(p)
    assert str(p) in str(ei.value) and message in str(ei.value), str(ei.value)


def test_load_tuned_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_tuned(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        (tmp_path / "b.yaml").write_text("buckets: [\n")
        load_tuned(tmp_path / "b.yaml")
    with pytest.raises(ValueError, match="must be a mapping"):
        parse_tuned([1, 2], "x.yaml")


@pytest.mark.slow
def test_tuned_imports_no_search_stack():
    import subprocess
    import sys

    code = ("import sys; import kernels.tuned; bad = [m for m in ('optuna', 'ray', 'sqlalchemy', 'autotune') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

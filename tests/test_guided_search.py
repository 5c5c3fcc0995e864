"""Guided patterns in the search, export and deployment: the space searches the family, a guided
trial builds its layout from the bias inside the timed call, export writes the guided config,
load_tuned returns it and a deployed model builds the layout from its bias."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from autotune.export import main as export_main
from autotune.search import Search
from search_spaces.space import SpaceError, load_space
from kernels import load_tuned
from patterns import GuidedConfig, PatternConfig, build_layout

SPACE = {
    "name": "guided-tiny",
    "device": "cpu",
    "backend": "cpu",
    "dtype": "float32",
    "mode": "fwd",
    "buckets": [96],
    "pattern": {
        "family": {"choices": ["static", "guided"]},
        "block_size": 16,
        "window": {"choices": [0, 16]},
        "num_global": 0,
        "stride": {"choices": [0, 2]},
        "keep": {"choices": [0.25, 0.5]},
        "pool": {"choices": ["max", "logsumexp"]},
        "spread": "layout",
    },
    "workloads": [
        {"name": "row", "kind": "msa_row", "heads": 2, "head_dim": 16, "tokens": 384, "bias": True},
    ],
    "objectives": ["speedup", "accuracy"],
    "constraints": {
        "memory_vs_naive": {"max": 50.0},
        "accuracy": {"metric": "contact_recall_long", "min": 0.0, "max_chains": 2, "noise": 2.0},
    },
    "sampler": {"name": "random", "seed": 3},
    "budget": {"trials": 6},
    "measure": {"warmup": 1, "repeats": 3},
    "gate": {"seq_len": 72, "batch": 1},
    "execution": {"workers": 1, "threads_per_worker": 1},
}


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_space_family_params_and_errors(tmp_path):
    space = load_space(_write(tmp_path, SPACE))
    assert space.accuracy_noise == 2.0
    assert "pattern.family" in space.distributions() and "pattern.keep" in space.distributions()
    pat, _ = space.split_params({"pattern.family": "guided", "pattern.window": 16, "pattern.stride": 2,
                                 "pattern.keep": 0.25, "pattern.pool": "max"})
    assert pat == {"family": "guided", "block_size": 16, "window": 16, "num_global": 0, "keep": 0.25, "pool": "max",
                   "spread": "layout"}
    pat, _ = space.split_params({"pattern.family": "static", "pattern.window": 0, "pattern.stride": 2,
                                 "pattern.keep": 0.5, "pattern.pool": "max"})
    assert pat == {"block_size": 16, "window": 0, "num_global": 0, "stride": 2}
    bad = [
        ({"keep": {"choices": [0.0, 0.5]}}, "pattern.keep.choices[0]"),
        ({"keep": 1.5}, "pattern.keep"),
        ({"keep": None}, "pattern.keep"),
        ({"pool": "min"}, "pattern.pool"),
        ({"family": "dynamic"}, "pattern.family"),
    ]
    for change, key in bad:
        data = dict(SPACE, pattern={k: v for k, v in dict(SPACE["pattern"], **change).items() if v is not None})
        with pytest.raises(SpaceError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load_space(_write(tmp_path, data))
    guided_only = dict(SPACE, pattern={"family": "guided", "block_size": 16, "window": 0, "num_global": 0, "keep": 0.5})
    assert load_space(_write(tmp_path, guided_only)).split_params({})[0]["family"] == "guided"
    with pytest.raises(SpaceError, match="noise"):
        load_space(_write(tmp_path, dict(SPACE, constraints={"accuracy": {"metric": "contact_recall_long", "noise": -1}})))


@pytest.mark.slow
def test_guided_search_export_and_deploy(tmp_path):
    space = load_space(_write(tmp_path, SPACE))
    db = tmp_path / "results.db"
    summary = Search(space, study_name="g", storage=f"sqlite:///{db}", executor="local", progress=False, num_cpus=1).run()
    assert summary["completed"] == 6 and summary["failed"] == 0
    con = sqlite3.connect(db)
    try:
        pats = [yaml.safe_load(r[0]) if isinstance(r[0], str) else r[0] for r in con.execute("select pattern from at_trials")]
    finally:
        con.close()
    fams = {("guided" if "guided" in str(p) else "static") for p in pats}
    assert fams == {"static", "guided"}, pats
    from autotune.report.__main__ import main as report_main

    rep = tmp_path / "REPORT.md"
    assert report_main(["--storage", f"sqlite:///{db}", "--study", "g", "--out", str(rep)]) in (0, None)
    text = rep.read_text()
    assert "Static and guided patterns side by side" in text and "| guided |" in text and "| static |" in text
    out = tmp_path / "tuned.yaml"
    assert export_main(["--study", "g", "--storage", f"sqlite:///{db}", "--out", str(out)]) == 0
    tuned = load_tuned(out)
    cfg = tuned.config_for(96)
    assert isinstance(cfg, (GuidedConfig, PatternConfig))
    # a guided entry written by hand (as export writes it) deploys: the layout comes from the bias
    data = yaml.safe_load(out.read_text())
    data["buckets"][0]["pattern"] = {"family": "guided", "block_size": 16, "keep": 0.25, "pool": "max",
                                     "window": 0, "num_global": 0, "spread": "layout", "mass": None,
                                     "global_placement": "first"}
    del data["integrity"]  # a deliberate edit drops the export's seal (README: the integrity field)
    out.write_text(yaml.safe_dump(data))
    g = load_tuned(out).config_for(80)
    assert isinstance(g, GuidedConfig) and g.keep == 0.25
    bias = torch.randn(1, 2, 80, 80)
    lay = build_layout(g, 80, signal=bias)
    assert lay.num_heads == 2

    from models.evoformer import EvoformerAttention, EvoformerBlock

    block = EvoformerBlock(c_m=16, c_z=8, c_hidden_msa_att=8, no_heads_msa=2, c_hidden_pair_att=8, no_heads_pair=2,
                           c_hidden_opm=4, c_hidden_mul=8, attention=EvoformerAttention.sparse(load_tuned(out), backend="cpu"))
    with torch.no_grad():
        m, z = block(torch.randn(2, 80, 16), torch.randn(80, 80, 8))
    assert torch.isfinite(m).all() and torch.isfinite(z).all()


def test_load_tuned_guided_entry_and_bad_family(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"format": 1, "buckets": [
        {"seq_len": 128, "pattern": {"family": "guided", "block_size": 32, "keep": 0.5}},
        {"seq_len": 256, "pattern": {"block_size": 32, "window": 64, "num_global": 0, "stride": 0}},
    ]}))
    t = load_tuned(p)
    assert t.config_for(100) == GuidedConfig(32, keep=0.5)
    assert t.config_for(200) == PatternConfig(32, 64)
    p.write_text(yaml.safe_dump({"buckets": [{"seq_len": 128, "pattern": {"family": "guided", "block_size": 32}}]}))
    with pytest.raises(ValueError, match=r"buckets\[0\]\.pattern.*exactly one budget"):
        load_tuned(p)
    p.write_text(yaml.safe_dump({"buckets": [{"seq_len": 128, "pattern": {"family": "x", "block_size": 32}}]}))
    with pytest.raises(ValueError, match="family"):
        load_tuned(p)


@pytest.mark.slow
def test_guided_evoformer_workload_trial_fwd_bwd(tmp_path):
    """A guided candidate on a whole (tiny) EvoFormer block, forward + backward: the gate compares it
    with the block whose attention is the dense oracle of the same guided layouts."""
    import json

    evo = {"name": "evo", "kind": "evoformer", "msa_depth": 3, "c_m": 16, "c_z": 8, "heads": 2, "pair_heads": 2,
           "head_dim": 8, "c_hidden_opm": 4, "c_hidden_mul": 8, "max_len": 64}
    data = dict(SPACE, mode="fwd+bwd", buckets=[48, 64], budget={"trials": 2}, gate={"seq_len": 48, "batch": 2},
                pattern={"family": "guided", "block_size": 16, "window": 0, "num_global": 0,
                         "keep": {"choices": [0.25, 0.5]}, "pool": "logsumexp", "spread": "layout"},
                workloads=[evo, SPACE["workloads"][0]])
    space = load_space(_write(tmp_path, data))
    db = tmp_path / "evo.db"
    summary = Search(space, study_name="ge", storage=f"sqlite:///{db}", executor="local", progress=False, num_cpus=1).run()
    assert summary["completed"] == 2 and summary["failed"] == 0
    con = sqlite3.connect(db)
    try:
        gates = [json.loads(r[0]) for r in con.execute("select gate from at_trials")]
        ms = con.execute("select workload, sparsity, time_ms from at_measurements").fetchall()
    finally:
        con.close()
    for g in gates:
        assert g["evo.fwd_z_err"] <= g["fwd_tol"] and g["evo.dtri_start_err"] <= g["bwd_tol"]
        assert g["row.fwd_err"] <= g["fwd_tol"]
    assert {m[0] for m in ms} == {"evo", "row"} and all(m[2] > 0 for m in ms)
    assert any(m[1] > 0 for m in ms)

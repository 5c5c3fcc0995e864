"""Accuracy of guided patterns on a degraded structure, and "no data" for ranges without contacts."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from autotune.accuracy import Chain, aggregate, contact_pairs, evaluate_pattern
from autotune.accuracy.__main__ import run as cli
from autotune.accuracy.guided import (
    contact_probability,
    contact_signal,
    evaluate_guided,
    matched_layout,
    noisy_coords,
    random_layout,
)
from autotune.accuracy.metrics import layout_stats
from patterns import GuidedConfig, PatternConfig


def hairpin(L: int = 160, name: str = "hairpin") -> Chain:
    """Two strands 5 A apart: residue i faces residue L-1-i (and its neighbours), so the long-range
    contacts lie on the anti-diagonal, where no local/strided pattern looks."""
    half = L // 2
    pts = np.zeros((L, 3))
    pts[:half, 0] = 3.8 * np.arange(half)
    pts[half:, 0] = 3.8 * (half - 1 - np.arange(L - half))
    pts[half:, 1] = 5.0
    return Chain(name, "A", pts, "A" * L, tuple((k + 1, " ") for k in range(L)))


def line_chain(L: int = 10) -> Chain:
    pts = np.zeros((L, 3))
    pts[:, 0] = 3.8 * np.arange(L)
    return Chain(f"line{L}", "A", pts, "A" * L, tuple((k + 1, " ") for k in range(L)))


def test_zero_contacts_is_no_data_not_perfect():
    chain = line_chain(10)
    res = evaluate_pattern(PatternConfig(16), 16, buckets=[16], chains=[chain])
    assert res.metrics["contact_recall_long"] is None
    assert res.metrics["contact_recall_medium"] is None
    assert res.metrics["contact_recall_short"] is None
    assert res.metrics["attention_mass_recall"] == pytest.approx(1.0)
    # pooled with a chain that has contacts, the range has data again
    stats = [layout_stats(matched_layout(GuidedConfig(16, keep=0.5), 160, contact_signal(hairpin(), 0.0), 0.5), hairpin())]
    assert aggregate(stats)["contact_recall_long"] is not None


def test_cli_prints_dash_and_json_null_for_no_data(tmp_path, capsys):
    d = tmp_path / "prot"
    d.mkdir()
    lines = [
        f"ATOM  {k + 1:5d}  CA  GLY A{k + 1:4d}    {3.8 * k:8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00           C"
        for k in range(10)
    ]
    (d / "tiny.pdb.gz").write_bytes(gzip.compress(("\n".join(lines) + "\nEND\n").encode()))
    out = tmp_path / "acc.json"
    assert cli(["--proteins", str(d), "--block-size", "16", "--buckets", "16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    row = [ln for ln in text.splitlines() if ln.strip().startswith("16")][0]
    cols = [x for x in row.split() if x != "*"]  # "*": extrapolated (no chain reaches 16)
    assert cols[-5:-2] == ["-", "-", "-"]  # short / medium / long: no data, not 1.000
    data = json.loads(out.read_text())
    m = data["buckets"][0]["metrics"]
    assert m["contact_recall_short"] is None and m["contact_recall_long"] is None
    assert "null" in out.read_text()


def test_noise_is_seeded_and_signal_well_formed():
    c = hairpin()
    assert np.array_equal(noisy_coords(c, 0.0), c.coords)
    a, b = noisy_coords(c, 4.0), noisy_coords(c, 4.0)
    assert np.array_equal(a, b) and not np.array_equal(a, c.coords)
    assert not np.array_equal(noisy_coords(c, 4.0, seed=1), a)
    assert abs(float(np.std(a - c.coords)) - 4.0) < 0.5
    s = contact_signal(c, 2.0)
    assert s.shape == (160, 160) and s.dtype == torch.float32 and not torch.isnan(s).any()
    assert (s <= 0).all() and s[0, 3] == -1e4 and s[0, 159] > -1.0  # |i-j| < 6 excluded; facing pair likely
    with pytest.raises(ValueError, match="sigma"):
        noisy_coords(c, -1.0)


def test_guided_finds_known_contacts_static_and_random_do_not():
    chain = hairpin()
    n_long = len(contact_pairs(chain)["long"][0])
    assert n_long > 100
    rows = evaluate_guided([chain], sigmas=(0.0, 2.0), sparsities=(0.75,), block_size=16)
    by = {(r.method, r.sigma): r for r in rows}
    g0 = by[("guided", 0.0)]
    assert g0.metrics["contact_recall_long"] >= 0.95  # the anti-diagonal tiles found from the exact map
    assert abs(g0.sparsity - 0.75) < 0.02
    assert by[("guided", 2.0)].metrics["contact_recall_long"] > 0.9
    rnd = by[("random", 4.0)]
    assert rnd.metrics["contact_recall_long"] < 0.6 and abs(rnd.sparsity - 0.75) < 0.05
    static = [r for r in rows if r.method == "static"][0]
    assert static.metrics["contact_recall_long"] < 0.6
    assert g0.metrics["attention_mass_recall"] > rnd.metrics["attention_mass_recall"]


def test_matched_layout_and_random_layout_budgets():
    c = hairpin(150)
    sig = contact_signal(c, 4.0)
    for spread in ("row", "layout"):
        for t in (0.5, 0.75, 0.9):
            lay = matched_layout(GuidedConfig(16, keep=0.5, spread=spread), 150, sig, t)
            assert abs(lay.sparsity - t) < (0.05 if spread == "layout" else 0.1), (spread, t, lay.sparsity)
            assert lay.block_mask.diagonal().all()
    counts = torch.tensor([1, 3, 2, 10, 4, 1, 1, 2, 5, 10], dtype=torch.int32)
    rl = random_layout(counts, 16, 150, seed=3)
    assert torch.equal(rl.kv_counts[0], counts) and rl.block_mask.diagonal().all()
    assert torch.equal(random_layout(counts, 16, 150, seed=3).block_mask, rl.block_mask)


def test_cli_guided_mode(tmp_path, capsys):
    d = tmp_path / "prot"
    d.mkdir()
    c = hairpin(140)
    lines = [
        f"ATOM  {k + 1:5d}  CA  GLY A{k + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C"
        for k, (x, y, z) in enumerate(c.coords)
    ]
    (d / "hp.pdb").write_text("\n".join(lines) + "\nEND\n")
    js, png = tmp_path / "g.json", tmp_path / "g.png"
    rc = cli(["--guided", "--proteins", str(d), "--noise", "0,4", "--sparsities", "75,90", "--min-length", "100",
              "--json", str(js), "--png", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "guided" in out and "random" in out and "static" in out
    data = json.loads(js.read_text())
    assert data["noise_sigmas"] == [0.0, 4.0] and data["target_sparsities"] == [0.75, 0.9]
    methods = {(r["method"], r["target"]) for r in data["rows"]}
    assert ("guided", 0.75) in methods and ("random", 0.9) in methods
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    g0 = [r for r in data["rows"] if r["method"] == "guided" and r["sigma"] == 0.0 and r["target"] == 0.75][0]
    pc = g0["per_chain_long"]  # one chain: its recall is the pooled one
    assert pc["n_chains"] == 1 and pc["min_chain"] == pc["max_chain"] == "hp"
    assert pc["min"] == pc["median"] == pc["max"] == pytest.approx(g0["metrics"]["contact_recall_long"])
    assert data["guided"]["min_separation"] == 12


def test_per_chain_spread_of_long_range_recall():
    """Two chains, one whose long-range contacts the guided layout finds and one without any: the
    spread covers the chain with contacts only; min <= pooled <= max."""
    a, b = hairpin(160, "a"), hairpin(192, "b")
    rows = evaluate_guided([a, b, line_chain(140)], sigmas=(0.0, 8.0), sparsities=(0.9,), block_size=16)
    for r in rows:
        pc = r.per_chain_long
        assert pc["n_chains"] == 2 and {pc["min_chain"], pc["max_chain"]} <= {"a", "b"}
        assert pc["min"] <= r.metrics["contact_recall_long"] + 1e-12 <= pc["max"] + 2e-12


@pytest.mark.parametrize("extra", [["--noise", "-1"], ["--noise", "nan"], ["--sparsities", "0"],
                                   ["--sparsities", "x"], ["--min-length", "100000"], ["--guided-block-size", "24"],
                                   ["--min-separation", "-1"]])
def test_cli_guided_bad_input_exit_2(tmp_path, capsys, extra):
    d = tmp_path / "prot"
    d.mkdir()
    c = hairpin(140)
    lines = [f"ATOM  {k + 1:5d}  CA  GLY A{k + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C"
             for k, (x, y, z) in enumerate(c.coords)]
    (d / "hp.pdb").write_text("\n".join(lines) + "\nEND\n")
    js = tmp_path / "g.json"
    assert cli(["--guided", "--proteins", str(d), "--json", str(js), *extra]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1
    assert not js.exists()


def test_cli_tuned_file_with_a_guided_entry(tmp_path, capsys):
    import yaml

    tuned = tmp_path / "t.yaml"
    tuned.write_text(yaml.safe_dump({"buckets": [
        {"seq_len": 140, "pattern": {"family": "guided", "block_size": 16, "keep": 0.3, "pool": "logsumexp",
                                     "spread": "layout"}},
        {"seq_len": 300, "pattern": {"block_size": 16, "window": 16, "num_global": 0, "stride": 0}},
    ]}))
    d = tmp_path / "prot"
    d.mkdir()
    c = hairpin(140)
    lines = [f"ATOM  {k + 1:5d}  CA  GLY A{k + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C"
             for k, (x, y, z) in enumerate(c.coords)]
    (d / "hp.pdb").write_text("\n".join(lines) + "\nEND\n")
    js, png = tmp_path / "a.json", tmp_path / "a.png"
    assert cli(["--tuned", str(tuned), "--proteins", str(d), "--json", str(js), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "guided b16" in out
    data = json.loads(js.read_text())
    g = data["buckets"][0]
    assert g["config"]["family"] == "guided" and g["sparsity_at_bucket"] is None
    assert 0.5 < g["sparsity_at_chain_lengths"] < 0.8 and g["metrics"]["contact_recall_long"] > 0.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_data_reaches_the_trial_summary_as_none(tmp_path):
    """A bucket whose chains have no long-range contact: the trial's accuracy value is None (stored as
    NULL, shown as "-"), the objective skips it, and the accuracy constraint treats it as unmet."""
    import yaml

    from search_spaces.space import load_space
    from autotune.trial import cell_values, summarize

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({
        "device": "cpu", "buckets": [16, 256], "pattern": {"block_size": 16, "window": 0, "num_global": 0, "stride": 0},
        "workloads": [{"name": "row", "kind": "msa_row", "heads": 2, "head_dim": 16, "tokens": 64, "bias": True}],
        "objectives": ["speedup", "accuracy"],
        "constraints": {"accuracy": {"metric": "contact_recall_long", "min": 0.1}},
    }))
    space = load_space(p)
    none = {k: None for k in ("contact_recall_short", "contact_recall_medium", "contact_recall_long")}
    acc = {"16": {"metrics": dict(none, attention_mass_recall=1.0, output_rel_error=0.0)},
           "256": {"metrics": dict(none, contact_recall_long=0.4, attention_mass_recall=0.9, output_rel_error=0.1)}}
    ms = [{"bucket": 16, "speedup": 1.0, "memory_vs_sdpa": 1.0, "memory_vs_naive": 1.0, "sparsity": 0.0},
          {"bucket": 256, "speedup": 2.0, "memory_vs_sdpa": 1.0, "memory_vs_naive": 1.0, "sparsity": 0.5}]
    assert cell_values(space, ms[0], acc)["accuracy"] is None
    objs, cons = summarize(space, {"measurements": ms, "accuracy": acc})
    assert objs[1] == 0.4  # the worst bucket with data, not a perfect 1.0 from the empty one
    assert cons[0] > 0  # no data cannot show the constraint is met


@pytest.mark.parametrize("m,sigma", [(0.5, 2.0), (5.0, 2.0), (8.0, 4.0), (12.0, 4.0), (20.0, 4.0), (3.0, 8.0), (30.0, 8.0)])
def test_contact_probability_is_the_posterior_under_gaussian_noise(m, sigma):
    """P(|x| < 8 | x ~ N(x~, 2 sigma^2 I_3), |x~| = m) against a Monte Carlo estimate (1e6
    samples: standard error <= 5e-4), and the exact indicator at sigma = 0."""
    g = torch.Generator().manual_seed(int(m * 10 + sigma))
    x = torch.randn(1_000_000, 3, generator=g, dtype=torch.float64) * (2.0 ** 0.5 * sigma)
    x[:, 0] += m
    mc = float((x.norm(dim=1) < 8.0).double().mean())
    p = float(contact_probability(torch.tensor([m]), sigma))
    assert abs(p - mc) < 3e-3, (p, mc)
    d = torch.tensor([7.9, 8.0, 8.1])
    assert contact_probability(d, 0.0).tolist() == [1.0, 0.0, 0.0]
    q = contact_probability(torch.linspace(0.0, 40.0, 81), sigma)
    assert (q[1:] <= q[:-1] + 1e-12).all() and float(q[-1]) < 1e-3  # decreasing, Gaussian tail


def test_signal_min_separation_option():
    c = hairpin()
    s = contact_signal(c, 0.0, min_separation=24)
    assert s[0, 23] == -1e4 and s[0, 24] > -1e4 and s[0, 159] == 0.0  # a true contact: log 1

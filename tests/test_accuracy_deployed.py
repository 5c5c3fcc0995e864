"""The accuracy command the search suggests (``python -m autotune.accuracy --tuned FILE``) evaluates
exactly what the export deploys: per bucket, the chains the search scored the chosen pattern on
(the study's bucket ladder fixes the bucket's lower edge, so the shorter chains that deployment
runs dense are not folded in), with the chain cap the file records."""

from __future__ import annotations

import json

import yaml

from autotune.accuracy import evaluate_pattern
from autotune.accuracy.__main__ import run as cli
from kernels.tuned import integrity_of
from patterns import PatternConfig

PATTERN = {"block_size": 32, "window": 32, "num_global": 0, "stride": 0, "global_placement": "first"}
LADDER = [128, 256]  # the study's buckets; 128 measured without a pattern worth deploying


def _r(x):  # the export's rounding (results.export._r)
    return None if x is None else float(f"{x:.6g}")


def test_accuracy_command_equals_the_export_on_the_same_bucket(tmp_path):
    cfg = PatternConfig(**PATTERN)
    # what the search's trial measured at L=256 (autotune.trial: buckets=space buckets, max_chains)
    trial = evaluate_pattern(cfg, 256, buckets=LADDER, max_chains=3)
    assert trial.lengths and min(trial.lengths) > 128
    # what the export writes for that bucket (results.export._bucket)
    entry = {"seq_len": 256, "pattern": PATTERN, "kernel": None,
             "accuracy": {k: _r(v) for k, v in trial.metrics.items()},
             "accuracy_chains": {"n": trial.n_chains, "lengths": [min(trial.lengths), max(trial.lengths)],
                                 "max_chains": 3, "buckets": LADDER, "noise": 4.0}}
    doc = {"format": 2, "device": "cpu", "integrity": integrity_of([entry], [128]), "infeasible_buckets": [128],
           "not_exported": {128: "no trial meets the non-speedup targets"}, "buckets": [entry]}
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "acc.json"
    assert cli(["--tuned", str(tuned), "--json", str(out)]) == 0  # the command the search prints
    row = json.loads(out.read_text())["buckets"]
    assert [r["bucket"] for r in row] == [256]
    assert row[0]["n_chains"] == trial.n_chains and row[0]["lengths"] == list(trial.lengths)
    assert {k: _r(v) for k, v in row[0]["metrics"].items()} == entry["accuracy"]
    # what it computed before: the deployed buckets alone as the ladder, so L=256 took every chain up
    # to 256, the shorter ones that deployment runs dense included
    folded = evaluate_pattern(cfg, 256, buckets=[256], max_chains=3)
    assert min(folded.lengths) <= 128 and list(folded.lengths) != row[0]["lengths"]


def test_max_chains_on_the_command_line_still_wins(tmp_path):
    entry = {"seq_len": 256, "pattern": PATTERN, "accuracy_chains": {"max_chains": 3, "buckets": LADDER}}
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(yaml.safe_dump({"format": 2, "integrity": integrity_of([entry], [128]),
                                     "infeasible_buckets": [128], "buckets": [entry]}, sort_keys=False))
    out = tmp_path / "acc.json"
    assert cli(["--tuned", str(tuned), "--max-chains", "1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["buckets"][0]
    assert row["n_chains"] == 1 and row["lengths"][0] > 128

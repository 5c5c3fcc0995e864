"""The one verdict (`results.verdict`): targets, the best-per-bucket rule with confirmation, and the
agreement of the search, the export and the report on a real small study."""

from __future__ import annotations

import re

import pytest
import yaml

from search_spaces.space import SpaceError, default_targets, load_space, parse_space
from results.verdict import cell_violations, decide, extrapolated, verdict_lines

CPU = default_targets("cpu")
GOOD_ACC = {"metrics": {"contact_recall_long": 0.608, "output_rel_error": 0.444}, "lengths": [900, 1000]}


def cell(trial, workload="row", bucket=256, speedup=2.0, lo=None, hi=None, peak=1.0, sdpa_peak=1.0, naive=64.0,
         acc=GOOD_ACC, sparsity=0.5):
    return {"trial": trial, "workload": workload, "bucket": bucket, "speedup": speedup, "speedup_lo": lo,
            "speedup_hi": hi, "peak_mib": peak, "sdpa_peak_mib": sdpa_peak, "naive_peak_mib": naive,
            "accuracy": acc, "sparsity": sparsity}


def conf(trial, speedup, lo, hi, workload="row", bucket=256, cid=1):
    return {"id": cid, "trial_number": trial, "workload": workload, "bucket": bucket, "speedup": speedup,
            "speedup_lo": lo, "speedup_hi": hi, "repeats": 41, "complete_trials": 2}


def test_a_noise_winner_is_not_chosen_after_confirmation():
    # trial 1 drew a slow baseline in the search (16.4x); confirmed it is slower than SDPA
    cells = {1: [cell(1, speedup=16.4, lo=1.2, hi=30.0)], 2: [cell(2, speedup=2.0, lo=1.8, hi=2.2)]}
    (v,) = decide(CPU, cells, [256], None)
    assert v.trial == 1 and not v.deploy and "not confirmed" in v.why  # the unconfirmed leader is never "deploy"
    (v,) = decide(CPU, cells, [256], [conf(1, 0.74, 0.70, 0.80), conf(2, 1.9, 1.8, 2.0)])
    assert v.deploy and v.trial == 2 and v.confirmed and v.speedup == pytest.approx(1.9)
    assert "speedup" in v.failed[1]


def test_an_interval_that_does_not_clear_the_target_is_not_chosen():
    cells = {1: [cell(1)]}
    (v,) = decide(CPU, cells, [256], [conf(1, 1.05, 0.95, 1.15)])  # point above 1.0, lower end below
    assert not v.deploy and v.trial is None and "speedup" in v.why
    (v,) = decide(CPU, cells, [256], [conf(1, 1.05, 1.01, 1.15)])
    assert v.deploy and v.trial == 1


def test_the_holdout_gives_the_exported_figures_and_can_veto():
    # trial 1 wins the confirmation on a lucky draw; its hold-out re-measurement is what is exported
    cells = {1: [cell(1, speedup=3.0)], 2: [cell(2, speedup=2.0)]}
    confs = [conf(1, 2.6, 2.3, 2.9, cid=1), conf(2, 2.0, 1.8, 2.2, cid=2)]
    (v,) = decide(CPU, cells, [256], confs + [dict(conf(1, 2.1, 1.9, 2.3, cid=3), stage="holdout")])
    assert v.deploy and v.holdout and v.trial == 1
    assert (v.speedup, v.lo, v.hi) == pytest.approx((2.1, 1.9, 2.3))
    assert v.cells[0]["confirmation"]["speedup"] == pytest.approx(2.6) and v.cells[0]["confirmation_id"] == 3
    # a hold-out interval below the target vetoes the choice (never falls back to an unchecked leader)
    (v,) = decide(CPU, cells, [256], confs + [dict(conf(1, 1.02, 0.9, 1.2, cid=3), stage="holdout")])
    assert not v.deploy and v.trial == 1 and "hold-out" in v.why and v.lo == pytest.approx(0.9)
    assert verdict_lines([v])[0].startswith("L=256: do not deploy: t#1, chosen on the confirmation")
    # without hold-out rows (an older database) the confirmation's figures stand
    (v,) = decide(CPU, cells, [256], confs)
    assert v.deploy and not v.holdout and v.speedup == pytest.approx(2.6)


def test_ties_are_reported():
    cells = {1: [cell(1, speedup=2.1)], 2: [cell(2, speedup=2.0)], 3: [cell(3, speedup=1.9)]}
    (v,) = decide(CPU, cells, [256], [conf(1, 2.0, 1.9, 2.1), conf(2, 1.95, 1.92, 2.0), conf(3, 1.5, 1.4, 1.6)])
    assert v.trial == 1 and v.tied_with == [2]


def test_default_targets_reject_a_pure_block_diagonal():
    block_diag = {"metrics": {"contact_recall_long": 0.278, "output_rel_error": 0.691}, "lengths": [523, 530, 537]}
    viol = cell_violations(CPU, cell(1, bucket=1024, acc=block_diag, lo=2.0))
    assert viol["accuracy.contact_recall_long"] > 0 and viol["accuracy.output_rel_error"] > 0
    viol = cell_violations(CPU, cell(1, bucket=1024, acc=GOOD_ACC, lo=2.0))
    assert all(v <= 0 for v in viol.values())
    cells = {1: [cell(1, bucket=1024, acc=block_diag)]}
    (v,) = decide(CPU, cells, [1024], [])
    assert not v.deploy and "no trial meets" in v.why


def test_memory_targets_use_the_resolution_floor():
    # CPU resident-set readings under the 8 MiB floor compare as equal: no regression
    assert cell_violations(CPU, cell(1, lo=2.0, peak=4.4, sdpa_peak=0.4))["memory_vs_sdpa"] <= 0
    assert cell_violations(CPU, cell(1, lo=2.0, peak=20.0, sdpa_peak=5.0))["memory_vs_sdpa"] > 0  # 20 / 8 = 2.5
    # the headline against naive attention: at least half of materialised attention's memory saved
    assert cell_violations(CPU, cell(1, lo=2.0, peak=10.0, naive=64.0))["memory_vs_naive"] <= 0
    assert cell_violations(CPU, cell(1, lo=2.0, peak=40.0, naive=64.0))["memory_vs_naive"] > 0
    # naive's own peak under the floor: no reduction can be resolved, the target is not held against it
    assert cell_violations(CPU, cell(1, lo=2.0, peak=0.4, naive=6.2))["memory_vs_naive"] <= 0


def test_extrapolated_when_no_chain_comes_near_the_bucket():
    assert extrapolated(cell(1, acc={"metrics": {}, "lengths": [523, 537]}), 1024)
    assert not extrapolated(cell(1, acc={"metrics": {}, "lengths": [523, 900]}), 1024)
    assert extrapolated(cell(1, acc={"metrics": {}, "lengths": [1000], "extrapolated": True}), 1024)


def _space(extra: str) -> str:
    return ("buckets: [64]\npattern: {block_size: 16, window: 0, num_global: 0, stride: 0}\n"
            "workloads: [{name: row, kind: msa_row, heads: 2, head_dim: 16}]\nobjectives: [speedup]\ndevice: cpu\n" + extra)


def test_targets_section_over_device_defaults(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(_space("targets: {speedup: {min: 1.5}, memory_vs_sdpa: null, accuracy: {contact_recall_long: {min: 0.6}}}\n"))
    t = load_space(p).effective_targets()
    assert t.source == "targets" and t.bound("speedup").min == 1.5 and t.bound("memory_vs_sdpa") is None
    assert t.bound("memory_vs_naive").max == 0.5 and t.memory_floor_mib == 8.0
    assert t.accuracy_metrics() == ["contact_recall_long"]
    p.write_text(_space(""))
    assert load_space(p).effective_targets() == default_targets("cpu")
    p.write_text(_space("constraints: {speedup: {min: 1.1}}\n"))
    t = load_space(p).effective_targets()
    assert t.source == "constraints" and t.names() == ["speedup"]
    for bad, key in (("targets: {speed: {min: 1}}\n", "targets.speed"),
                     ("targets: {accuracy: {contact_recall_long: {}}}\n", "targets.accuracy.contact_recall_long"),
                     ("targets: {confidence: 1.5}\n", "targets.confidence")):
        p.write_text(_space(bad))
        with pytest.raises(SpaceError) as e:
            load_space(p)
        assert key in str(e.value) and "\n" not in str(e.value)


def test_shipped_spaces_hold_their_targets():
    for path in ("search_spaces/cpu.yaml", "search_spaces/protein.yaml", "search_spaces/cpu_evoformer.yaml"):
        t = load_space(path).effective_targets()
        assert t.source == "targets" and t.bound("speedup") is not None
        assert {"contact_recall_long", "output_rel_error"} <= set(t.accuracy_metrics())


@pytest.mark.slow
def test_search_export_and_report_agree_per_bucket(tmp_path, capsys):
    """A real small study: the search's end-of-run verdict, the export and the report name the same
    config (or none) at every bucket."""
    from test_search import write_space

    from autotune.export import main as export_main
    from autotune.report.__main__ import main as report_main
    from autotune.search import main as search_main

    space = write_space(tmp_path, constraints={}, targets={
        "speedup": {"min": 0.2}, "memory_vs_sdpa": None, "memory_vs_naive": None,
        "accuracy": {"contact_recall_long": {"min": 0.6}}, "max_chains": 2},
        measure={"warmup": 1, "repeats": 3, "max_repeats": 9, "confirm_repeats": 5, "confirm_max_repeats": 11})
    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert search_main(["--space", str(space), "--trials", "5", "--storage", db, "--executor", "local",
                        "--no-progress"]) == 0
    err = capsys.readouterr().err
    said = {}
    for L, rest in re.findall(r"verdict L=(\d+): (.*)", err):
        m = re.match(r"deploy t#(\d+)", rest)
        said[int(L)] = int(m.group(1)) if m else None
    assert set(said) == {64, 128}
    assert "python -m autotune.export --study tiny" in err and "python -m autotune.report --study tiny" in err

    out = tmp_path / "t.yaml"
    rc = export_main(["--study", "tiny", "--storage", db, "--out", str(out)])
    if any(v is not None for v in said.values()):
        assert rc == 0
        doc = yaml.safe_load(out.read_text())
        exported = {b["seq_len"]: b["source"]["trial"] for b in doc["buckets"]}
        exported.update({int(L): None for L in doc["not_exported"]})
    else:
        assert rc == 2 and not out.exists()
        exported = {L: None for L in said}
    assert "confirming them" not in capsys.readouterr().err  # the search's confirmation is current: no re-measuring

    rep = tmp_path / "R.md"
    assert report_main(["--storage", db, "--out", str(rep)]) == 0
    md = rep.read_text()
    table = md.split("## Recommendation per length bucket", 1)[1].split("\n## ", 1)[0]
    reported = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells and cells[0].isdigit():
            reported[int(cells[0])] = int(cells[2][2:]) if cells[1] == "**deploy**" else None
    assert said == exported == reported

"""Accuracy objective on real proteins: structure reading, contacts, metrics, buckets, CLI."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.accuracy import (
    ACCURACY_METRICS,
    DATA_DIR,
    AccuracyResult,
    Chain,
    ProteinLoadError,
    contact_pairs,
    evaluate_pattern,
    load_proteins,
    load_proteins_report,
    select_chains,
)
from autotune.accuracy.__main__ import run as cli
from autotune.accuracy.structures import read_structure_file
from patterns import PatternConfig

REPO = Path(__file__).resolve().parent.parent
METRIC_KEYS = {
    "contact_recall_short",
    "contact_recall_medium",
    "contact_recall_long",
    "attention_mass_recall",
    "output_rel_error",
}

# ---- hand-built structures ---------------------------------------------------------------------
# 48 residues on a line 10 A apart (no contacts), except that some residues are moved 3 A next to
# a partner. Known contacts (index pairs, separation, range):
#   (1, 14)  13 medium     (20, 35) 15 medium     (10, 17)  7 short
#   (0, 30)  30 long       (5, 45)  40 long
CONTACTS = {"short": {(10, 17)}, "medium": {(1, 14), (20, 35)}, "long": {(0, 30), (5, 45)}}
N = 48


def _points() -> np.ndarray:
    pts = np.array([[10.0 * k, 0.0, 0.0] for k in range(N)])
    for rng in CONTACTS.values():
        for a, b in rng:
            pts[b] = pts[a] + [0.0, 3.0, 0.0]
    return pts


def _atom_line(serial, name, res_name, chain, res_num, xyz, altloc=" ", ins=" ", element="C"):
    return (
        f"ATOM  {serial:5d} {name:<4s}{altloc}{res_name:>3s} {chain}{res_num:4d}{ins}   "
        f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}{1.0:6.2f}{0.0:6.2f}          {element:>2s}"
    )


def hand_pdb(*, gaps: bool = True, glycines: tuple[int, ...] = (0, 17, 30), no_cb: tuple[int, ...] = (20,)) -> str:
    """PDB text of the 48-residue chain. Each residue's representative point is _points()[k]:
    its CB for non-glycines (CA 6 A away in +z / -z for even / odd k, so a CA-based contact map
    would lose the contacts between residues of different parity), its CA for
    glycines and for residues listed in ``no_cb`` (CB missing). With ``gaps`` the residue numbers
    jump (1..10, 21..30, 51..): missing residues, which must not change the indices."""
    lines, serial = [], 1
    pts = _points()
    for k in range(N):
        num = k + 1 + (10 if gaps and k >= 10 else 0) + (20 if gaps and k >= 20 else 0)
        p = pts[k]
        if k in glycines:
            for name, xyz in (("N", p + [1.4, 0, 0]), ("CA", p), ("C", p + [-1.4, 0, 0])):
                lines.append(_atom_line(serial, name, "GLY", "A", num, xyz, element=name[0]))
                serial += 1
        elif k in no_cb:
            lines.append(_atom_line(serial, "CA", "ALA", "A", num, p, element="C"))
            serial += 1
        else:
            ca = p + [0, 0, 6.0 * (-1) ** k]
            lines.append(_atom_line(serial, "CA", "ALA", "A", num, ca, element="C"))
            lines.append(_atom_line(serial + 1, "CB", "ALA", "A", num, p, element="C"))
            serial += 2
    lines += ["TER", "END"]
    return "\n".join(lines) + "\n"


def hand_chain(tmp_path: Path, **kw) -> Chain:
    f = tmp_path / "hand.pdb"
    f.write_text(hand_pdb(**kw))
    (chain,) = read_structure_file(f)
    return chain


def _pairs(chain: Chain) -> dict[str, set]:
    return {r: set(zip(i.tolist(), j.tolist())) for r, (i, j) in contact_pairs(chain).items()}


# ---- reading -----------------------------------------------------------------------------------
def test_hand_built_contacts_exact(tmp_path):
    chain = hand_chain(tmp_path)
    assert chain.length == N
    assert chain.name == "hand"
    assert chain.sequence[0] == "G" and chain.sequence[1] == "A"
    assert _pairs(chain) == CONTACTS


def test_gaps_do_not_shift_indices_and_are_not_contacts(tmp_path):
    with_gaps = hand_chain(tmp_path, gaps=True)
    (tmp_path / "g").mkdir()
    without = hand_chain(tmp_path / "g", gaps=False)
    assert [r for r, _ in with_gaps.residue_ids][:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 21, 22]
    assert _pairs(with_gaps) == _pairs(without) == CONTACTS


def test_glycine_and_missing_cb_use_calpha(tmp_path):
    # residue 17 (GLY, CA at the point) and 20 (ALA without CB) carry contacts (10,17) and (20,35)
    assert _pairs(hand_chain(tmp_path))["short"] == {(10, 17)}
    # as non-glycines with CA 6 A off the point but a CB present, the CB is used: same contacts
    # (CA-based, (1,14), (10,17) and (20,35) would be 12.4 A apart)
    (tmp_path / "b").mkdir()
    assert _pairs(hand_chain(tmp_path / "b", glycines=(), no_cb=())) == CONTACTS


def test_glycine_with_spurious_cb_still_uses_calpha(tmp_path):
    text = "\n".join(
        [
            _atom_line(1, "CA", "GLY", "A", 1, (0, 0, 0)),
            _atom_line(2, "CB", "GLY", "A", 1, (50, 0, 0)),  # ignored: glycine uses CA
        ]
        + [_atom_line(2 + k, "CA", "GLY", "A", 1 + k, (10.0 * k, 20, 0)) for k in range(1, 7)]
        + [_atom_line(9, "CA", "GLY", "A", 8, (0, 3, 0))]
    )
    f = tmp_path / "gly.pdb"
    f.write_text(text + "\nEND\n")
    (chain,) = read_structure_file(f)
    assert chain.length == 8
    assert _pairs(chain)["short"] == {(0, 7)}


def test_altloc_first_and_insertion_codes(tmp_path):
    lines = [
        _atom_line(1, "CA", "GLY", "A", 1, (0, 0, 0)),
        _atom_line(2, "CA", "GLY", "A", 2, (10, 0, 0)),
        _atom_line(3, "CA", "GLY", "A", 2, (10, 0, 0), ins="A"),  # 2A: its own residue
        _atom_line(4, "CA", "GLY", "A", 3, (20, 0, 0)),
        _atom_line(5, "CA", "GLY", "A", 4, (30, 0, 0)),
        _atom_line(6, "CA", "GLY", "A", 5, (40, 0, 0)),
        # residue 6 with two altlocs: A is 3 A from residue 1 (a contact), B is far away
        _atom_line(7, "CA", "GLY", "A", 6, (0, 3, 0), altloc="A"),
        _atom_line(8, "CA", "GLY", "A", 6, (90, 90, 0), altloc="B"),
    ]
    f = tmp_path / "alt.pdb"
    f.write_text("\n".join(lines) + "\nEND\n")
    (chain,) = read_structure_file(f)
    assert chain.residue_ids == ((1, ""), (2, ""), (2, "A"), (3, ""), (4, ""), (5, ""), (6, ""))
    assert _pairs(chain)["short"] == {(0, 6)}  # index 6 (residue 6), separation 6 thanks to 2A


def _write_cif(pdb_text: str, path: Path, *, binary: bool = False) -> None:
    import biotite.structure.io.pdb as pdb
    import biotite.structure.io.pdbx as pdbx

    atoms = pdb.PDBFile.read(io.StringIO(pdb_text)).get_structure(model=1)
    f = pdbx.BinaryCIFFile() if binary else pdbx.CIFFile()
    pdbx.set_structure(f, atoms)
    f.write(str(path))


def test_mmcif_bcif_and_gzip_read_the_same(tmp_path):
    text = hand_pdb()
    (tmp_path / "a.pdb").write_text(text)
    (tmp_path / "b.pdb.gz").write_bytes(gzip.compress(text.encode()))
    _write_cif(text, tmp_path / "c.cif")
    (tmp_path / "d.cif.gz").write_bytes(gzip.compress((tmp_path / "c.cif").read_bytes()))
    _write_cif(text, tmp_path / "e.bcif", binary=True)
    chains = load_proteins(tmp_path)
    assert [c.name for c in chains] == ["a", "b", "c", "d", "e"]
    for c in chains:
        assert c.length == N
        assert np.allclose(c.coords, chains[0].coords, atol=1e-3)
        assert _pairs(c) == CONTACTS


def test_broken_files_reported_and_skipped(tmp_path, caplog):
    (tmp_path / "good.pdb").write_text(hand_pdb())
    (tmp_path / "garbage.pdb").write_text("this is not a structure\n")
    (tmp_path / "truncated.pdb.gz").write_bytes(gzip.compress(hand_pdb().encode())[:40])
    (tmp_path / "bad.cif").write_text("data_x\nloop_\n_atom_site.id\n")
    (tmp_path / "water.pdb").write_text(
        "HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O\nEND\n"
    )
    (tmp_path / "notes.txt").write_text("ignored: not a structure file name")
    with caplog.at_level(logging.WARNING, logger="autotune.accuracy"):
        chains, skipped = load_proteins_report(tmp_path)
    assert [c.name for c in chains] == ["good"]
    assert sorted(name for name, _ in skipped) == ["bad.cif", "garbage.pdb", "truncated.pdb.gz", "water.pdb"]
    for name in ("bad.cif", "garbage.pdb", "truncated.pdb.gz", "water.pdb"):
        assert name in caplog.text
    assert "notes.txt" not in caplog.text


def test_nothing_readable_raises(tmp_path):
    (tmp_path / "garbage.pdb").write_text("nope\n")
    with pytest.raises(ProteinLoadError):
        load_proteins(tmp_path)
    with pytest.raises(ProteinLoadError):
        load_proteins(tmp_path / "missing")


# ---- metrics -----------------------------------------------------------------------------------
def _eval(chain, cfg, **kw) -> AccuracyResult:
    return evaluate_pattern(cfg, N, buckets=[N], chains=[chain], **kw)


def test_exact_recall_on_hand_built_chain(tmp_path):
    chain = hand_chain(tmp_path)
    # block 16, window 0: only diagonal tiles [0,16) [16,32) [32,48): keeps (1,14) only
    m = _eval(chain, PatternConfig(block_size=16)).metrics
    assert (m["contact_recall_short"], m["contact_recall_medium"], m["contact_recall_long"]) == (0.0, 0.5, 0.0)
    # window 16 adds the first off-diagonal tiles: all but (5, 45)
    m = _eval(chain, PatternConfig(block_size=16, window=16)).metrics
    assert (m["contact_recall_short"], m["contact_recall_medium"], m["contact_recall_long"]) == (1.0, 1.0, 0.5)
    # one global residue (residue 0, block 0) adds row/column block 0: (5, 45) too
    m = _eval(chain, PatternConfig(block_size=16, window=16, num_global=1)).metrics
    assert (m["contact_recall_short"], m["contact_recall_medium"], m["contact_recall_long"]) == (1.0, 1.0, 1.0)
    # stride 2: tiles with even block distance: (0,2) keeps (5,45); (0,1) (1,2) dropped
    m = _eval(chain, PatternConfig(block_size=16, stride=2)).metrics
    assert (m["contact_recall_short"], m["contact_recall_medium"], m["contact_recall_long"]) == (0.0, 0.5, 0.5)


def test_dense_layout_is_exact(tmp_path):
    chain = hand_chain(tmp_path)
    for cfg in (PatternConfig(block_size=16, stride=1), PatternConfig(block_size=64), PatternConfig(32, window=100)):
        res = _eval(chain, cfg)
        assert set(res.metrics) == METRIC_KEYS == set(ACCURACY_METRICS)
        assert res.metrics["contact_recall_long"] == 1.0
        assert res.metrics["attention_mass_recall"] == pytest.approx(1.0)
        assert res.metrics["output_rel_error"] == pytest.approx(0.0, abs=1e-6)
        assert (res.n_chains, res.lengths, res.extrapolated) == (1, (N,), False)


def test_sparse_layout_loses_mass_and_has_error(tmp_path):
    res = _eval(hand_chain(tmp_path), PatternConfig(block_size=16))
    assert 0.0 < res.metrics["attention_mass_recall"] < 1.0
    assert 0.0 < res.metrics["output_rel_error"] < 1.5
    assert ACCURACY_METRICS["output_rel_error"] == "min"
    assert all(ACCURACY_METRICS[k] == "max" for k in METRIC_KEYS - {"output_rel_error"})


def test_one_metric_table():
    """The space validates, and the accuracy package computes, the metrics of one table."""
    from search_spaces.objectives import ACCURACY_METRIC_TABLE, BOUND_RANGES
    from search_spaces.space import ACCURACY_METRIC_DIRECTIONS

    assert ACCURACY_METRICS is ACCURACY_METRIC_DIRECTIONS
    assert [m.name for m in ACCURACY_METRIC_TABLE] == list(ACCURACY_METRICS)
    assert all(BOUND_RANGES[m] for m in ACCURACY_METRICS)


def _walk_chain(length: int, seed: int) -> Chain:
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(length, 3))
    steps *= 3.8 / np.linalg.norm(steps, axis=1, keepdims=True)
    coords = np.cumsum(steps, axis=0)
    return Chain(f"walk{seed}", "A", coords, "A" * length, tuple((k + 1, "") for k in range(length)))


@settings(max_examples=15, deadline=None)
@given(
    length=st.integers(30, 160),
    seed=st.integers(0, 10_000),
    block=st.sampled_from([16, 32]),
    windows=st.lists(st.integers(0, 200), min_size=2, max_size=4),
    num_global=st.integers(0, 8),
    placement=st.sampled_from(["first", "spread"]),
)
def test_recall_never_decreases_as_window_grows(length, seed, block, windows, num_global, placement):
    chain = _walk_chain(length, seed)
    prev = None
    for w in sorted(windows):
        cfg = PatternConfig(block_size=block, window=w, num_global=num_global, global_placement=placement)
        m = evaluate_pattern(cfg, 256, buckets=[256], chains=[chain]).metrics
        cur = [m["contact_recall_short"], m["contact_recall_medium"], m["contact_recall_long"], m["attention_mass_recall"]]
        if prev is not None:  # None (no contact of that range) stays None
            assert all((c is None and p is None) or c >= p - 1e-9 for c, p in zip(cur, prev))
        prev = cur


def test_pooled_recall_over_chains(tmp_path):
    # two copies of the hand chain pool to the same recall; a chain without long contacts adds none
    a = hand_chain(tmp_path)
    flat = Chain("flat", "A", np.array([[10.0 * k, 0, 0] for k in range(40)]), "A" * 40, tuple((k, "") for k in range(40)))
    cfg = PatternConfig(block_size=16, window=16)
    m = evaluate_pattern(cfg, N, buckets=[N], chains=[a, flat]).metrics
    assert m["contact_recall_long"] == 0.5
    empty = evaluate_pattern(cfg, N, buckets=[N], chains=[flat]).metrics
    assert empty["contact_recall_long"] is None  # no contact in the range: no data, never a perfect 1.0


# ---- buckets -----------------------------------------------------------------------------------
def _fake(lengths):
    return [_walk_chain(n, k) for k, n in enumerate(lengths)]


def test_bucket_rule_and_extrapolation():
    chains = _fake([60, 200, 300, 700])
    ladder = [256, 512, 1024, 2048]
    sel, ext, _, _ = select_chains(chains, 256, ladder)
    assert [c.length for c in sel] == [60, 200] and not ext
    sel, ext, _, _ = select_chains(chains, 512, ladder)
    assert [c.length for c in sel] == [300] and not ext
    # no chain reaches 1024: the interval's chain (700) is used and the figure is flagged
    sel, ext, note, _ = select_chains(chains, 1024, ladder)
    assert [c.length for c in sel] == [700] and ext and "700" in note
    # nothing in (1024, 2048]: the longest chains available, flagged
    sel, ext, note, _ = select_chains(chains, 2048, ladder)
    assert [c.length for c in sel] == [700] and ext and "longest" in note
    # default ladder (256, 512, ...) fixes the lower edge; an off-ladder bucket gets its own rung
    assert [c.length for c in select_chains(chains, 512)[0]] == [300]
    assert [c.length for c in select_chains(chains, 384, [256, 512])[0]] == [300]
    res = evaluate_pattern(PatternConfig(32, window=32), 2048, buckets=ladder, chains=chains)
    assert res.extrapolated and res.lengths == (700,) and res.note


def test_max_chains_subsample_is_deterministic():
    chains = _fake([50, 60, 70, 80, 90, 100, 110])
    cfg = PatternConfig(16, window=16)
    r1 = evaluate_pattern(cfg, 256, buckets=[256], chains=chains, max_chains=3)
    r2 = evaluate_pattern(cfg, 256, buckets=[256], chains=list(reversed(chains)), max_chains=3)
    assert r1.lengths == r2.lengths == (50, 80, 110)
    assert "subsampled" in r1.note and r1.n_chains == 3


# ---- the packaged set ------------------------------------------------------------------------------
def test_packaged_set_matches_manifest():
    chains = load_proteins()
    assert len(chains) == 127
    with open(DATA_DIR / "manifest.tsv") as fh:
        manifest = {row["file"].replace(".pdb.gz", ""): row for row in csv.DictReader(fh, delimiter="\t")}
    for c in chains:
        assert c.length == int(manifest[c.name]["length"])
        assert c.sequence == manifest[c.name]["sequence"]
    assert load_proteins() is not chains and load_proteins()[0] is chains[0]  # cached


def test_packaged_buckets():
    cfg = PatternConfig(64, window=128, num_global=16, stride=4)
    res = {b: evaluate_pattern(cfg, b) for b in (256, 512, 1024, 2048, 4096)}
    assert res[256].n_chains > 100 and max(res[256].lengths) <= 256 and not res[256].extrapolated
    assert not res[1024].extrapolated and all(512 < n <= 1024 for n in res[1024].lengths)
    assert res[2048].extrapolated and res[4096].extrapolated and res[4096].lengths == (1181,)
    for r in res.values():
        assert set(r.metrics) == METRIC_KEYS
        assert all(0.0 <= v <= 1.0 + 1e-9 for v in r.metrics.values())


# ---- CLI ---------------------------------------------------------------------------------------
def _tiny_folder(tmp_path: Path) -> Path:
    d = tmp_path / "prot"
    d.mkdir()
    (d / "one.pdb").write_text(hand_pdb())
    (d / "two.pdb.gz").write_bytes(gzip.compress(hand_pdb(gaps=False).encode()))
    (d / "broken.pdb").write_text("garbage\n")
    return d


def test_cli_single_pattern(tmp_path, capsys, caplog):
    d = _tiny_folder(tmp_path)
    out_json, out_png = tmp_path / "acc.json", tmp_path / "acc.png"
    rc = cli(["--proteins", str(d), "--block-size", "16", "--window", "16", "--buckets", "64,128",
              "--json", str(out_json), "--png", str(out_png)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "bucket" in captured.out and "long" in captured.out
    assert "broken.pdb" in caplog.text  # the warning line (stderr outside pytest)
    data = json.loads(out_json.read_text())
    assert [b["bucket"] for b in data["buckets"]] == [64, 128]
    first = data["buckets"][0]
    assert first["metrics"]["contact_recall_long"] == 0.5 and first["n_chains"] == 2
    assert data["buckets"][1]["extrapolated"] is True
    assert data["skipped"][0]["file"] == "broken.pdb"
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--proteins", "{tmp}/missing"],
        ["--proteins", "{tmp}/garbage_only"],
        ["--proteins", "{tmp}/prot", "--block-size", "48"],
        ["--proteins", "{tmp}/prot", "--buckets", "a,b"],
    ],
)
def test_cli_bad_input_exit_2(tmp_path, capsys, argv):
    _tiny_folder(tmp_path)
    (tmp_path / "garbage_only").mkdir()
    (tmp_path / "garbage_only" / "x.pdb").write_text("garbage\n")
    rc = cli([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert rc == 2
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1


@pytest.mark.slow
def test_cli_module_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "autotune.accuracy", "--proteins", str(tmp_path / "missing")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_cli_tuned_uses_config_for_each_bucket(tmp_path, capsys, monkeypatch):
    # stands in for kernels.tuned (load_tuned(path) -> object with .buckets and .config_for)
    import types

    calls = []

    class _Tuned:
        buckets = [48, 96]

        def config_for(self, seq_len):
            calls.append(seq_len)
            return PatternConfig(16, window=0 if seq_len <= 48 else 16)

    fake = types.ModuleType("kernels.tuned")
    fake.load_tuned = lambda path: _Tuned()
    monkeypatch.setitem(sys.modules, "kernels.tuned", fake)
    d = _tiny_folder(tmp_path)
    tuned = tmp_path / "protein.yaml"
    tuned.write_text("# read by the stand-in\n")
    out_json = tmp_path / "t.json"
    assert cli(["--tuned", str(tuned), "--proteins", str(d), "--json", str(out_json)]) == 0
    assert calls == [48, 96]
    data = json.loads(out_json.read_text())
    assert [b["config"]["window"] for b in data["buckets"]] == [0, 16]
    assert data["buckets"][0]["metrics"]["contact_recall_long"] == 0.0
    assert cli(["--tuned", str(tmp_path / "missing.yaml"), "--proteins", str(d)]) == 2


def test_cli_tuned_real_file(tmp_path, capsys):
    pytest.importorskip("kernels.tuned")
    d = _tiny_folder(tmp_path)
    tuned = tmp_path / "protein.yaml"
    tuned.write_text(
        "format: 1\n"
        "buckets:\n"
        "  - seq_len: 48\n"
        "    pattern: {block_size: 16, window: 16, num_global: 0, stride: 0, global_placement: first}\n"
        "  - seq_len: 96\n"
        "    pattern: {block_size: 16, window: 16, num_global: 1, stride: 0, global_placement: first}\n"
    )
    out_json = tmp_path / "t.json"
    assert cli(["--tuned", str(tuned), "--proteins", str(d), "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert [b["bucket"] for b in data["buckets"]] == [48, 96]
    assert data["buckets"][0]["metrics"]["contact_recall_long"] == 0.5
    assert data["buckets"][1]["metrics"]["contact_recall_long"] == 1.0  # falls back to the 48s, flagged
    assert data["buckets"][1]["extrapolated"] is True
    (tmp_path / "bad.yaml").write_text("buckets: 3\n")
    assert cli(["--tuned", str(tmp_path / "bad.yaml"), "--proteins", str(d)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error:")


def test_cli_tuned_skips_buckets_that_deploy_dense_attention(tmp_path, capsys):
    pytest.importorskip("kernels.tuned")
    d = _tiny_folder(tmp_path)
    tuned = tmp_path / "protein.yaml"
    tuned.write_text(
        "format: 1\n"
        "infeasible_buckets: [96]\n"
        "buckets:\n"
        "  - seq_len: 48\n"
        "    pattern: {block_size: 16, window: 16, num_global: 0, stride: 0, global_placement: first}\n"
    )
    out_json = tmp_path / "t.json"
    assert cli(["--tuned", str(tuned), "--proteins", str(d), "--buckets", "48,96", "--json", str(out_json)]) == 0
    assert [b["bucket"] for b in json.loads(out_json.read_text())["buckets"]] == [48]
    assert "L=96: the tuned file deploys dense attention" in capsys.readouterr().err
    assert cli(["--tuned", str(tuned), "--proteins", str(d), "--buckets", "96"]) == 2
    assert "dense attention at every requested bucket" in capsys.readouterr().err

"""The report (`autotune.report`) and the benchmark ingestion (`autotune.ingest`).

The slow tests share one small REAL database: a 3-trial search on a tiny CPU space (L = 64, 128;
two attention workloads and a tiny EvoFormer block workload at L = 64 only), exported; a CSV of ``python -m kernels.bench`` at L = 128 and one of ``python -m
autotune.evoformer.bench`` at L = 32, both really run, ingested. The report's numbers are then
checked against the rows they cite.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY_SPACE = """\
name: report-tiny
device: cpu
backend: cpu
dtype: float32
mode: fwd
buckets: [64, 128]
pattern:
  block_size: {choices: [16, 32]}
  window: {low: 0, high: 32, step: 16}
  num_global: {choices: [0, 16]}
  stride: {choices: [0, 4]}
  global_placement: {choices: [first]}
workloads:
  - {name: row, kind: msa_row, heads: 2, head_dim: 16, tokens: 256, bias: true}
  - {name: tri, kind: triangle, heads: 2, head_dim: 16, max_batch: 2, bias: true}
  - {name: evo, kind: evoformer, msa_depth: 2, c_m: 16, c_z: 8, heads: 2, pair_heads: 2, head_dim: 8,
     c_hidden_opm: 4, c_hidden_mul: 8, max_len: 64}
objectives: [speedup, memory_vs_sdpa, accuracy]
constraints:
  speedup: {min: 0.001}
  accuracy: {metric: contact_recall_long, min: 0.0, max_chains: 2}
sampler: {name: random, seed: 0}
budget: {trials: 3, timeout: 120}
measure: {warmup: 1, repeats: 2}
gate: {seq_len: 48, batch: 1}
execution: {workers: 1, threads_per_worker: 1}
"""
STUDY = "report-tiny"
KERNEL_CMD = ["-m", "kernels.bench", "--device", "cpu", "--workloads", "row", "--lengths", "128", "--sparsities", "0,50",
              "--passes", "fwd", "--reps", "2", "--warmup", "0", "--batch", "1"]
EVO_CMD = ["-m", "autotune.evoformer.bench", "--lengths", "32", "--depth", "4", "--dims", "small", "--modes", "fwd",
           "--sparsity", "0.5", "--warmup", "0", "--repeats", "1"]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def _report(argv: list[str]) -> int:
    from autotune.report.__main__ import main

    return main(argv)


def _tables(md: str, first_col: str) -> list[list[dict[str, str]]]:
    """Every Markdown table whose header starts with ``first_col``, as lists of row dicts."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("| " + first_col + " |") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            hdr = [c.strip() for c in ln.strip().strip("|").split(" | ")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in re.split(r"(?<!\\) \| ", lines[i].strip()[2:-2])]
                rows.append(dict(zip(hdr, cells)))
                i += 1
            out.append(rows)
        else:
            i += 1
    return out


def _ids(cell: str, prefix: str) -> list[int]:
    m = re.search(re.escape(prefix) + r"#([\d,]+)", cell)
    return [int(x) for x in m.group(1).split(",")] if m else []


def _num(cell: str) -> float:
    return float(re.match(r"-?[\d.]+(?:e[-+]?\d+)?", cell).group(0))


def _close(shown: str, value: float, rel: float = 6e-4, abs_: float = 0.0) -> bool:
    return math.isclose(_num(shown), value, rel_tol=rel, abs_tol=abs_)


@pytest.fixture(scope="module")
def real_db(tmp_path_factory):
    """(dir, url of the full db, url of the study-only db) from a real tiny search + real benchmarks."""
    d = tmp_path_factory.mktemp("report")
    (d / "space.yaml").write_text(TINY_SPACE)
    db = d / "results.db"
    url = f"sqlite:///{db}"
    env = _env()
    procs = {
        "search": subprocess.Popen([sys.executable, "-m", "autotune.search", "--space", str(d / "space.yaml"),
                                    "--trials", "3", "--study", STUDY, "--storage", url, "--executor", "local",
                                    "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        "kernel": subprocess.Popen([sys.executable, *KERNEL_CMD, "--out", str(d / "kernel.csv")], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        "evo": subprocess.Popen([sys.executable, *EVO_CMD, "--out", str(d / "evo.csv")], cwd=d, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
    }
    for name, p in procs.items():
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"{name} failed:\n{out.decode()[-3000:]}"

    from autotune.export import export

    export(STUDY, url, str(d / "tuned.yaml"))
    study_only = d / "study_only.db"
    shutil.copy(db, study_only)

    from autotune.ingest import main as ingest

    assert ingest(["--storage", url, "--kernel-csv", str(d / "kernel.csv"), "--evoformer-csv", str(d / "evo.csv"),
                   "--command", "python " + " ".join(KERNEL_CMD)]) == 0
    return d, url, f"sqlite:///{study_only}"


@pytest.fixture(scope="module")
def built(real_db):
    d, url, _ = real_db
    out = d / "REPORT.md"
    assert _report(["--storage", url, "--out", str(out)]) == 0
    return d, url, out, out.read_text()


def _rows(url: str, sql: str, args=()) -> list[dict]:
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args).fetchall()]
    finally:
        con.close()


# ---- the report from the real database -------------------------------------------------------------
@pytest.mark.slow
def test_attention_table_matches_kernel_bench_rows(built):
    d, url, out, md = built
    tables = _tables(md, "workload")
    att = next(t for t in tables if t and "ours vs SDPA" in t[0] and "SDPA ms" in t[0])
    db_rows = {r["id"]: r for r in _rows(url, "SELECT * FROM at_kernel_bench")}
    assert len(att) == 2  # row L=128 at sparsity 0 and 50%
    seen = set()
    for row in att:
        ids = _ids(row["source"], "kb")
        assert ids and all(i in db_rows for i in ids)
        seen.update(ids)
        by = {db_rows[i]["backend"]: db_rows[i] for i in ids}
        assert {by[b]["seq_len"] for b in by} == {int(row["L"])}
        assert _close(row["SDPA ms"], by["sdpa"]["ms"])
        assert _close(row["ours ms"], by["cpu"]["ms"])
        assert _close(row["flex ms"], by["flex"]["ms"])
        assert _close(row["ours vs SDPA"], by["sdpa"]["ms"] / by["cpu"]["ms"], rel=0.01, abs_=0.006)
        assert _close(row["flex vs SDPA"], by["sdpa"]["ms"] / by["flex"]["ms"], rel=0.01, abs_=0.006)
        target, actual = row["sparsity (target / actual)"].split(" / ")
        assert _close(target, by["sdpa"]["sparsity_target"], abs_=0.005)
    assert seen == set(db_rows)  # every ingested row is shown


@pytest.mark.slow
def test_recommendation_follows_rule_and_cites_measurements(built):
    d, url, out, md = built
    from search_spaces.space import SearchSpace
    from results.verdict import decide

    rec = next(t for t in _tables(md, "L") if t and "decision" in t[0])
    tuned = {r["bucket"]: r for r in _rows(url, "SELECT * FROM at_tuned")}
    assert [int(r["L"]) for r in rec] == [64, 128]
    # the rule, recomputed from the rows: results.verdict.decide on the study's own targets and its
    # latest confirmation
    (run,) = _rows(url, "SELECT * FROM at_runs")
    targets = SearchSpace.from_dict(json.loads(run["space"])).effective_targets()
    cells: dict = {}
    for c in _rows(url, "SELECT m.*, t.number FROM at_measurements m JOIN at_trials t ON t.id = m.trial_id "
                        "WHERE t.state = 'COMPLETE'"):
        c["accuracy"] = json.loads(c["accuracy"]) if c["accuracy"] else None
        cells.setdefault(c["number"], []).append(c)
    conf = _rows(url, "SELECT * FROM at_confirmations WHERE confirm_id = (SELECT max(confirm_id) FROM at_confirmations)")
    verdicts = {v.bucket: v for v in decide(targets, cells, [64, 128], conf)}
    for row in rec:
        L = int(row["L"])
        v = verdicts[L]
        assert (row["decision"] == "**deploy**") == v.deploy
        if not v.deploy:
            continue
        assert row["trial"] == f"t#{v.trial}" == f"t#{tuned[L]['trial_number']}"
        ids = _ids(row["source"], "m")
        shown_cells = _rows(url, f"SELECT m.*, t.number FROM at_measurements m JOIN at_trials t ON t.id = m.trial_id "
                                 f"WHERE m.id IN ({','.join('?' * len(ids))})", ids)
        assert {c["bucket"] for c in shown_cells} == {L} and {c["number"] for c in shown_cells} == {v.trial}
        # the speedups shown are the confirmed ones, with their intervals, cited by c#
        cids = _ids(row["source"], "c")
        confirmed = {c["workload"]: c for c in conf if c["id"] in cids}
        assert set(confirmed) == {c["workload"] for c in shown_cells}
        for part in row["speedup vs sdpa [interval]"].split("], "):
            w, x, lo, hi = re.match(r"(\w+) ([\d.]+)x \[([\d.]+)x, ([\d.]+)x", part).groups()
            assert _close(x, confirmed[w]["speedup"], rel=0.01, abs_=0.006)
            assert _close(lo, confirmed[w]["speedup_lo"], rel=0.01, abs_=0.006)
        assert row["why"].startswith("meets every target")
        acc = json.loads(shown_cells[0]["accuracy"])["metrics"]
        assert _close(row["contact recall (long)"], acc["contact_recall_long"], abs_=5e-4)


@pytest.mark.slow
def test_accuracy_memory_evoformer_tables_match_rows(built):
    d, url, out, md = built
    acc = next(t for t in _tables(md, "L") if t and "recall long" in t[0])
    for row in acc:
        ids = _ids(row["source"], "m")
        cells = _rows(url, f"SELECT * FROM at_measurements WHERE id IN ({','.join('?' * len(ids))})", ids)
        m = json.loads(cells[0]["accuracy"])["metrics"]
        for col, key in (("recall short", "contact_recall_short"), ("recall medium", "contact_recall_medium"),
                         ("recall long", "contact_recall_long")):
            assert _close(row[col], m[key], abs_=5e-4)
    mem = next(t for t in _tables(md, "L") if t and "ours vs SDPA (ratio)" in t[0] and "SDPA MiB" in t[0])
    for row in mem:
        (c,) = _rows(url, "SELECT * FROM at_measurements WHERE id = ?", _ids(row["source"], "m"))
        assert _close(row["ours MiB"], c["peak_mib"], rel=1e-3)
        floor = 8.0  # the CPU default resolution floor of the study's targets
        assert _close(row["ours vs SDPA (ratio)"], max(c["peak_mib"], floor) / max(c["sdpa_peak_mib"], floor),
                      rel=0.01, abs_=0.006)
    evo = next(t for t in _tables(md, "L") if t and "block ms" in t[0])
    db_evo = {r["id"]: r for r in _rows(url, "SELECT * FROM at_evoformer_bench")}
    assert {r["variant"] for r in evo} == {r["variant"] for r in db_evo.values()}
    for row in evo:
        ids = _ids(row["source"], "eb")
        r, sd = db_evo[ids[0]], db_evo[ids[-1]]
        assert sd["variant"] == "sdpa" and r["variant"] == row["variant"]
        assert _close(row["block ms"], r["median_ms"], rel=1e-3)
        assert _close(row["vs SDPA"], sd["median_ms"] / r["median_ms"], rel=0.01, abs_=0.006)


@pytest.mark.slow
def test_evoformer_search_rows_in_the_evoformer_section(built):
    d, url, out, md = built
    section = md.split("## EvoFormer block", 1)[1].split("\n## ", 1)[0]
    (evo,) = [t for t in _tables(section, "L") if t and "sparse block ms" in t[0]]
    tuned = {r["bucket"]: r["trial_number"] for r in _rows(url, "SELECT * FROM at_tuned")}
    assert [int(r["L"]) for r in evo] == [64]  # max_len 64: no block measured at L = 128
    for row in evo:
        (c,) = _rows(url, "SELECT m.*, t.number, t.pattern FROM at_measurements m JOIN at_trials t ON t.id = m.trial_id "
                          "WHERE m.id = ?", _ids(row["source"], "m"))
        assert c["kind"] == "evoformer" and c["bucket"] == int(row["L"]) and row["trial"] == f"t#{c['number']}"
        assert row["choice"] == "tuned (exported)" and c["number"] == tuned[c["bucket"]]
        assert _close(row["sparse block ms"], c["time_ms"], rel=1e-3) and _close(row["SDPA block ms"], c["sdpa_ms"], rel=1e-3)
        assert _close(row["naive block ms"], c["naive_ms"], rel=1e-3)
        assert _close(row["vs SDPA"], c["speedup"], rel=0.01, abs_=0.006)  # median of the paired per-round ratios
        assert _close(row["sparse MiB"], c["peak_mib"], rel=1e-3, abs_=1e-3)
        assert row["MSA depth"] == "2" and row["pattern"].startswith(f"bs{json.loads(c['pattern'])['block_size']}/")
    assert "EvoFormer block in the search" in md.split("## Recommendation")[0]


@pytest.mark.slow
def test_provenance_targets_and_plots(built):
    d, url, out, md = built
    (run,) = _rows(url, "SELECT * FROM at_runs")
    assert run["command_line"] in md and run["git_revision"] in md
    assert json.loads(run["versions"])["torch"] in md
    assert "python -m kernels.bench" in md  # the recorded benchmark command
    targets = next(t for t in _tables(md, "target"))
    assert [r["target"] for r in targets] == ["speedup", "accuracy"]  # the study's own (its constraints section)
    assert all(r["threshold"] for r in targets) and "dense SDPA" in targets[0]["measured against"]
    assert all(r["L=64"].split()[0] in ("PASS", "FAIL") for r in targets)
    assert "not measured" not in md.split("## Hardware")[0].lower().replace("fail (not measured)", "")
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    names = {Path(p).name for p in pngs}
    assert {"pareto.png", "layout_L64.png", "layout_L128.png"} <= names
    assert any(n.startswith("speedup_vs_L") for n in names)
    for p in pngs:
        f = out.parent / p
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
    assert (d / "REPORT_files").is_dir()


@pytest.mark.slow
def test_pareto_figure_shows_each_trial_at_each_bucket(built, tmp_path):
    """The Pareto figure's points: every complete trial at every bucket, at its speedup and
    accuracy there (not its worst bucket), "meets every target" only when every target is met
    there and it is faster than SDPA; the chosen trial of a bucket is the one the verdict deploys."""
    from results.report.build import Report
    from results.report.data import load

    d, url, out, md = built
    rep = Report(load(url, STUDY), tmp_path / "R.md", tmp_path / "figs", [])
    rep.build()
    pts = rep.bucket_points()
    complete = [r["number"] for r in _rows(url, "SELECT number FROM at_trials WHERE state = 'COMPLETE'")]
    assert sorted(pts) == [64, 128] and all(sorted(p["number"] for p in pts[L]) == sorted(complete) for L in pts)
    for L, ps in pts.items():
        for p in ps:
            cells = _rows(url, "SELECT m.* FROM at_measurements m JOIN at_trials t ON m.trial_id = t.id "
                               "WHERE t.number = ? AND t.study_name = ? AND m.bucket = ?", (p["number"], STUDY, L))
            speedups = [c["speedup"] for c in cells]
            assert math.isclose(p["y"], math.exp(sum(map(math.log, speedups)) / len(speedups)), rel_tol=1e-9)
            assert p["x"] == min(c["accuracy_value"] for c in cells)
            meets = all(v <= 0 for c in cells for v in json.loads(c["violations"]).values())
            assert p["feasible"] == (meets and min(speedups) > 1)  # slower than SDPA: never "meets every target"
    deployed = {x.bucket: x.verdict.trial for x in rep.decisions if x.deploy}
    assert {L: p["number"] for L, ps in pts.items() for p in ps if p["chosen"]} == deployed
    assert (tmp_path / "figs" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_absent_sections_say_not_measured(real_db, tmp_path):
    d, url, study_only = real_db
    out = tmp_path / "r.md"
    assert _report(["--storage", study_only, "--out", str(out), "--plots-dir", str(tmp_path / "figs")]) == 0
    md = out.read_text()
    assert "## Attention kernels" in md and "**attention kernel benchmark: not measured.**" in md
    assert "## EvoFormer block" in md and "**EvoFormer block benchmark: not measured.**" in md
    assert (tmp_path / "figs" / "pareto.png").is_file()
    summary = md.split("## Recommendation")[0]
    assert "Not measured: attention kernel benchmark" in summary


@pytest.mark.slow
def test_the_study_targets_decide_for_report_and_export_alike(real_db, tmp_path, capsys):
    """The thresholds live in the study's space: made stricter there, the report and the export
    both refuse every bucket; the report has no flags to decide otherwise."""
    d, url, _ = real_db
    db = tmp_path / "copy.db"
    shutil.copy(url.removeprefix("sqlite:///"), db)
    con = sqlite3.connect(db)
    (space,) = con.execute("SELECT space FROM at_runs").fetchone()
    space = json.loads(space)
    for b in space["targets"]["bounds"]:
        if b["name"] == "speedup":
            b["min"] = 1000.0
    con.execute("UPDATE at_runs SET space = ?", (json.dumps(space),))
    con.commit()
    con.close()
    curl = f"sqlite:///{db}"
    out = tmp_path / "strict.md"
    assert _report(["--storage", curl, "--out", str(out)]) == 0
    rec = next(t for t in _tables(out.read_text(), "L") if t and "decision" in t[0])
    assert all(r["decision"] == "do not deploy" and "speedup" in r["why"] for r in rec)
    from autotune.export import main as export_main

    assert export_main(["--study", STUDY, "--storage", curl, "--out", str(tmp_path / "t.yaml")]) == 2
    assert "no feasible trial" in capsys.readouterr().err and not (tmp_path / "t.yaml").exists()
    with pytest.raises(SystemExit) as e:
        _report(["--storage", curl, "--out", str(out), "--speedup-target", "0.001"])
    assert e.value.code == 2


# ---- errors (fast) -----------------------------------------------------------------------------------
def test_missing_database_is_exit_2_and_creates_nothing(tmp_path, capsys):
    db = tmp_path / "none.db"
    assert _report(["--storage", f"sqlite:///{db}", "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no database file" in err
    assert not db.exists() and not (tmp_path / "r.md").exists()


def test_empty_database_is_exit_2(tmp_path, capsys):
    from results.db import Database

    db = tmp_path / "empty.db"
    db.touch()
    assert _report(["--storage", f"sqlite:///{db}", "--out", str(tmp_path / "r.md")]) == 2
    assert "no autotune tables" in capsys.readouterr().err
    Database(f"sqlite:///{db}").close()  # tables, no rows
    assert _report(["--storage", f"sqlite:///{db}", "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty" in err
    assert _report(["--storage", f"sqlite:///{db}", "--study", "x", "--out", str(tmp_path / "r.md")]) == 2
    assert "study 'x' not found" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_storage_path_and_bad_url(tmp_path, capsys):
    assert _report(["--storage", str(tmp_path / "none.db"), "--out", str(tmp_path / "r.md")]) == 2
    assert "no database file" in capsys.readouterr().err
    assert _report(["--storage", "sqlite://results/a.db", "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sqlite:///results/a.db" in err[0] and not (tmp_path / "r.md").exists()


# ---- ingestion (fast) ----------------------------------------------------------------------------------
KERNEL_HEADER = ("device,dtype,torch,triton,threads,workload,L,batch,heads,head_dim,block_size,window,num_global,"
                 "stride,sparsity_target,sparsity_actual,pass,backend,status,ms,mib,speedup_vs_sdpa,speedup_vs_flex")
KERNEL_ROWS = [
    "cpu-2cores,float32,2.13.0+cpu,3.9.0,2,row,256,1,8,32,64,64,0,0,0.5,0.5,fwd,sdpa,ok,10.0,0.3,1.0,",
    "cpu-2cores,float32,2.13.0+cpu,3.9.0,2,row,256,1,8,32,64,64,0,0,0.5,0.5,fwd,cpu,ok,5.0,0.2,2.0,",
    "cpu-2cores,float32,2.13.0+cpu,3.9.0,2,row,256,1,8,32,64,64,0,0,0.5,0.5,fwd,naive,skip (memory),,,,",
]


def _count(db: Path, table: str) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_ingest_kernel_csv_and_skip_duplicate(tmp_path, capsys):
    from autotune.ingest import main as ingest

    csv = tmp_path / "k.csv"
    csv.write_text("\n".join([KERNEL_HEADER, *KERNEL_ROWS]) + "\n")
    db = tmp_path / "r.db"
    assert ingest(["--storage", f"sqlite:///{db}", "--kernel-csv", str(csv), "--command", "python -m kernels.bench"]) == 0
    assert _count(db, "at_kernel_bench") == 3 and _count(db, "at_bench_runs") == 1
    con = sqlite3.connect(db)
    run = con.execute("SELECT device, dtype, threads, versions, command FROM at_bench_runs").fetchone()
    skip = con.execute("SELECT status, ms FROM at_kernel_bench WHERE backend = 'naive'").fetchone()
    con.close()
    assert run[:3] == ("cpu-2cores", "float32", 2) and json.loads(run[3])["torch"] == "2.13.0+cpu"
    assert run[4] == "python -m kernels.bench" and skip == ("skip (memory)", None)
    assert ingest(["--storage", f"sqlite:///{db}", "--kernel-csv", str(csv)]) == 0
    assert "already ingested" in capsys.readouterr().err and _count(db, "at_kernel_bench") == 3
    # a database holding only benchmark rows still gives a report, with the study sections "not measured"
    out = tmp_path / "r.md"
    assert _report(["--storage", f"sqlite:///{db}", "--out", str(out)]) == 0
    md = out.read_text()
    assert "**recommendation: not measured.**" in md and "| row | fwd | 256 | 1 | 0.50 / 0.500 |" in md
    assert "| 2.00x |" in md


@pytest.mark.parametrize("mutate, message", [
    (lambda h, rows: (h.replace(",workload", ""), [r.replace(",row,", ",", 1) for r in rows]), "missing column(s) 'workload'"),
    (lambda h, rows: (h, rows[:2] + [rows[2].replace(",64,64,", ",6x4,64,")]), "line 4: column 'block_size'"),
    (lambda h, rows: (h, rows[:1] + [rows[1].replace(",ok,5.0,", ",ok,,")]), "line 3: column 'ms'"),
    (lambda h, rows: (h, rows[:1] + [rows[1].replace("cpu-2cores", "cpu-4cores")]), "line 3: column 'device'"),
    (lambda h, rows: (h, []), "no data rows"),
])
def test_malformed_csv_names_file_and_column_and_writes_nothing(tmp_path, capsys, mutate, message):
    from autotune.ingest import main as ingest

    good = tmp_path / "good.csv"
    good.write_text("\n".join([KERNEL_HEADER, *KERNEL_ROWS]) + "\n")
    header, rows = mutate(KERNEL_HEADER, list(KERNEL_ROWS))
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([header, *rows]) + "\n")
    db = tmp_path / "r.db"
    # the good file is listed first: nothing at all is written when any file is malformed
    assert ingest(["--storage", f"sqlite:///{db}", "--kernel-csv", str(good), "--kernel-csv", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err, err
    assert _count(db, "at_kernel_bench") == 0 and _count(db, "at_bench_runs") == 0


def test_ingest_one_file_is_one_transaction(tmp_path, monkeypatch):
    """A failure while writing a file's rows leaves no trace of that file."""
    from results import bench_tables
    from results.db import Database
    from results.ingest import ingest_file

    csv = tmp_path / "k.csv"
    csv.write_text("\n".join([KERNEL_HEADER, *KERNEL_ROWS]) + "\n")
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    orig = bench_tables.KernelBenchRow.__init__
    calls = []

    def boom(self, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        orig(self, **kw)

    monkeypatch.setattr(bench_tables.KernelBenchRow, "__init__", boom)
    with pytest.raises(RuntimeError):
        ingest_file(db, csv, "kernel")
    db.close()
    assert _count(tmp_path / "r.db", "at_bench_runs") == 0 and _count(tmp_path / "r.db", "at_kernel_bench") == 0


def test_evoformer_csv_columns_match_the_benchmark():
    """The column mapping is kept in one place and matches what the benchmarks write."""
    from results.bench_tables import (EVOFORMER_COLUMNS, EVOFORMER_LEGACY, EVOFORMER_RUN_COLUMNS, KERNEL_COLUMNS,
                                      KERNEL_RUN_COLUMNS)
    from autotune.evoformer.bench import CSV_FIELDS as EVO_FIELDS
    from kernels.bench import CSV_FIELDS as KERNEL_FIELDS

    assert set(KERNEL_FIELDS) == set(KERNEL_COLUMNS) | set(KERNEL_RUN_COLUMNS)
    assert set(EVO_FIELDS) | EVOFORMER_LEGACY == set(EVOFORMER_COLUMNS) | set(EVOFORMER_RUN_COLUMNS)

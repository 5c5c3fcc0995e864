"""One truth about deployment: the search's last lines and the report compare the verdict with the
tuned file on disk and say when it is missing or out of date; a verdict reached while the noise
check fired is provisional in the search's output, the tuned file and the report; the tuned file
carries the report's caveats and what it was tuned for; the printed "next:" commands work and
never carry a password; ``--space NAME`` finds the packaged spaces. Real SQLite, in-process CLIs."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sqlite3

import pytest
import yaml

from autotune.export import main as export_main
from autotune.report.__main__ import main as report_main
from autotune.search import Search, end_of_run, main as search_main, storage_option, study_commands
from kernels.tuned import TunedFile, kernel_fingerprint
from search_spaces.space import SpaceError, load_space
from test_search import write_space

STUDY = "tiny"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """(folder, space, database url) of a real tiny search, its leaders confirmed at the end of the run."""
    d = tmp_path_factory.mktemp("truth")
    space = load_space(write_space(d)).override(trials=4)
    url = f"sqlite:///{d / 'results.db'}"
    s = Search(space, study_name=STUDY, storage=url, executor="local", progress=False, num_cpus=2, log=lambda m: None)
    assert s.run()["completed"] == 4
    return d, space, url


def last_lines(space, url, capsys, **env) -> list[str]:
    """The search's end-of-run lines (verdicts, the tuned file's status, next: commands)."""
    lines: list[str] = []
    s = Search(space, study_name=STUDY, storage=url, executor="local", progress=False, log=lines.append)
    assert end_of_run(s, argparse.Namespace(storage=url)) == 0
    return lines + capsys.readouterr().err.splitlines()


@pytest.mark.slow
def test_search_and_report_say_when_the_tuned_file_is_missing_or_stale(searched, tmp_path, monkeypatch, capsys):
    d, space, url = searched
    monkeypatch.chdir(tmp_path)  # results/tiny.yaml: where the printed export command writes
    lines = last_lines(space, url, capsys)
    assert any(x.startswith("verdict L=64:") for x in lines), lines
    assert "results/tiny.yaml: no tuned file there: the verdict is not deployed yet" in lines, lines
    # the printed export command, run as printed, writes the file: then the two agree
    export = next(x.strip() for x in lines if x.strip().startswith("python -m autotune.export"))
    assert export_main(shlex.split(export)[3:]) == 0
    lines = last_lines(space, url, capsys)
    assert "results/tiny.yaml deploys exactly this verdict" in lines, lines
    assert report_main(["--storage", url, "--study", STUDY, "--out", str(tmp_path / "R.md")]) == 0
    assert "The tuned file `results/tiny.yaml` deploys exactly this verdict." in (tmp_path / "R.md").read_text()

    # another layout in the file (re-sealed: a file the export could have written) -> out of date
    f = TunedFile.from_dict(yaml.safe_load(open("results/tiny.yaml")), "results/tiny.yaml")
    b0 = f.buckets[0]
    other = type(b0.pattern)(**dict(b0.pattern.to_dict(), window=b0.pattern.window + b0.pattern.block_size))
    trial = b0.info["source"]["trial"]
    changed = TunedFile(**{**{k: getattr(f, k) for k in f.__dataclass_fields__ if k != "buckets"},
                           "buckets": (type(b0)(b0.seq_len, other, b0.kernel, b0.heads, b0.head_dims, b0.info),)
                           + f.buckets[1:]})
    changed.write("results/tiny.yaml")
    want = f"results/tiny.yaml is out of date: L={b0.seq_len}: the file's layout or launch config differs from t#{trial}'s"
    assert want in last_lines(space, url, capsys)
    assert report_main(["--storage", url, "--study", STUDY, "--out", str(tmp_path / "R.md")]) == 0
    md = (tmp_path / "R.md").read_text()
    assert "**The tuned file `results/tiny.yaml` is out of date**" in md
    assert f"  - L={b0.seq_len}: the file's layout or launch config differs from t#{trial}'s" in md

    # a bucket missing from the file: it runs dense where the verdict deploys
    TunedFile(**{**{k: getattr(f, k) for k in f.__dataclass_fields__ if k != "buckets"},
                 "buckets": f.buckets[1:]}).write("results/tiny.yaml")
    assert (f"results/tiny.yaml is out of date: L={b0.seq_len}: the file runs dense attention, the verdict deploys "
            f"t#{trial}") in last_lines(space, url, capsys)


@pytest.mark.slow
def test_tuned_file_records_what_it_was_tuned_for(searched, tmp_path):
    d, space, url = searched
    out = tmp_path / "t.yaml"
    assert export_main(["--study", STUDY, "--storage", url, "--out", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["mode"] == space.mode == "fwd" and doc["backend"] == space.backend == "reference"
    assert doc["kernel_fingerprint"] == kernel_fingerprint("reference") != kernel_fingerprint("cpu")
    assert {"torch", "triton", "protein-sparse-autotune"} <= set(doc["versions"])
    assert doc["integrity"]["buckets"] == len(doc["buckets"])
    for b in doc["buckets"]:
        assert b["provisional"] is False and isinstance(b["caveats"], list)
        assert b["accuracy_chains"]["buckets"] == list(space.buckets)


@pytest.mark.slow
def test_noisy_verdict_is_provisional_everywhere(searched, tmp_path, monkeypatch, capsys):
    d, space, url = searched
    db = tmp_path / "noisy.db"
    shutil.copy(d / "results.db", db)
    noisy_url = f"sqlite:///{db}"
    con = sqlite3.connect(db)  # one trial's SDPA baseline at L=64 timed 10x slower: the noise check fires
    con.execute("update at_measurements set sdpa_ms = sdpa_ms * 10 where bucket = 64 and trial_id = "
                "(select min(trial_id) from at_measurements)")
    con.commit()
    con.close()
    monkeypatch.chdir(tmp_path)
    lines = last_lines(space, noisy_url, capsys)
    v64 = next(x for x in lines if x.startswith("verdict L=64:"))
    assert "provisional: the SDPA baseline of" in v64 and "varied more than 2x" in v64, v64
    assert not any("provisional" in x for x in lines if x.startswith("verdict L=128:"))
    out = tmp_path / "t.yaml"
    assert export_main(["--study", STUDY, "--storage", noisy_url, "--out", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    by = {b["seq_len"]: b for b in doc["buckets"]}
    for L, why in (doc.get("not_exported") or {}).items():
        assert ("provisional" in why) == (L == 64)
    assert by[64]["provisional"] is True and any(c.startswith("provisional:") for c in by[64]["caveats"])
    assert all(not b["provisional"] for L, b in by.items() if L != 64)
    assert report_main(["--storage", noisy_url, "--study", STUDY, "--out", str(tmp_path / "R.md")]) == 0
    md = (tmp_path / "R.md").read_text()
    assert "**Provisional at L = 64**" in md and "provisional: the SDPA baseline of" in md


def test_file_status_names_each_difference(tmp_path):
    """`results.export.file_status` on hand-made verdicts (the quick path of the end-to-end tests above)."""
    from types import SimpleNamespace

    from results.export import file_status
    from results.verdict import BucketVerdict

    band = {"block_size": 16, "window": 16, "num_global": 0, "stride": 0, "global_placement": "first"}
    trials = {3: SimpleNamespace(pattern=band, kernel=None), 4: SimpleNamespace(pattern=dict(band, window=32), kernel=None)}
    p = tmp_path / "t.yaml"
    assert file_status(str(p), [], trials, "s") == [f"{p}: no tuned file there: the verdict is not deployed yet"]
    TunedFile.from_dict({"study": "s", "infeasible_buckets": [256], "buckets": [
        {"seq_len": 64, "pattern": band, "source": {"trial": 3}, "provisional": False},
        {"seq_len": 128, "pattern": band, "source": {"trial": 3}, "provisional": False}]}).write(p)
    v = [BucketVerdict(64, True, "ok", trial=3, confirmed=True), BucketVerdict(128, True, "ok", trial=3, confirmed=True),
         BucketVerdict(256, False, "no leader")]
    assert file_status(str(p), v, trials, "s") == []
    v[0].noisy = ["row"]  # provisional now
    v[1] = BucketVerdict(128, True, "ok", trial=4, confirmed=True)
    v[2] = BucketVerdict(256, True, "ok", trial=4, confirmed=True)
    assert file_status(str(p), v, trials, "s") == [
        f"{p} is out of date: L=64: the verdict is provisional, the file does not say so",
        f"{p} is out of date: L=128: the file deploys t#3, the verdict t#4",
        f"{p} is out of date: L=256: the file runs dense attention, the verdict deploys t#4"]
    assert file_status(str(p), v, trials, "other") == [f"{p}: holds study 's''s patterns, not 'other''s"]
    p.write_text(p.read_text().replace("window: 16", "window: 32", 1))  # edited by hand: the seal breaks
    assert file_status(str(p), v, trials, "s")[0].startswith(f"{p}: cannot be read ({p}: integrity.sha256:")


# ---- next: commands ------------------------------------------------------------------------------


def test_next_commands_keep_the_password_out():
    space = load_space("search_spaces/cpu.yaml")
    pg = "postgresql+psycopg://me:s3cr%40t@db:5432/autotune"
    cmds = study_commands("s", pg, space)
    assert not any("s3cr" in c or "***" in c for c in cmds)
    assert all("--storage postgresql+psycopg://me@db:5432/autotune" in c for c in (cmds[0], cmds[2]))
    assert "PGPASSWORD" in storage_option(pg)[1] and "s3cr" not in storage_option(pg)[1]
    other = study_commands("s", "mysql+pymysql://me:pw123@db/a", space)
    assert all('--storage "$AUTOTUNE_STORAGE"' in c for c in (other[0], other[2])) and "pw123" not in "".join(other)
    assert all("--storage" not in c for c in study_commands("s", pg, space, from_env=True))
    assert storage_option("sqlite:///a b.db") == (" --storage 'sqlite:///a b.db'", None)
    # the accuracy command takes its buckets and chain cap from the tuned file
    assert cmds[1] == "python -m autotune.accuracy --tuned results/s.yaml --json results/s_accuracy.json"


@pytest.mark.slow
def test_printed_commands_work_with_the_storage_in_the_environment(searched, tmp_path, monkeypatch, capsys):
    d, space, url = searched
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOTUNE_STORAGE", url)
    lines: list[str] = []
    s = Search(space, study_name=STUDY, storage=url, executor="local", progress=False, log=lines.append)
    assert end_of_run(s, argparse.Namespace(storage=None)) == 0  # the search read $AUTOTUNE_STORAGE
    cmds = [x.strip() for x in capsys.readouterr().err.splitlines() if x.strip().startswith("python -m")]
    assert len(cmds) == 3 and not any("--storage" in c for c in cmds)
    assert export_main(shlex.split(cmds[0])[3:]) == 0 and (tmp_path / "results" / "tiny.yaml").is_file()
    assert report_main(shlex.split(cmds[2])[3:]) == 0 and (tmp_path / "results" / "tiny_REPORT.md").is_file()


# ---- --space NAME ---------------------------------------------------------------------------------


def test_space_name_is_looked_up_in_search_spaces(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not the project root: only the packaged folder has them
    assert load_space("protein.yaml").name == load_space("protein").name
    assert load_space("cpu").backend == "cpu"
    with pytest.raises(SpaceError) as ei:
        load_space("nope")
    msg = str(ei.value)
    assert msg.startswith("nope: (file): no such file here nor in the packaged spaces (") and "protein" in msg
    assert "\n" not in msg
    assert search_main(["--space", "nope.yaml", "--storage", f"sqlite:///{tmp_path}/a.db"]) == 2
    assert "nope.yaml: (file): no such file here nor in the packaged spaces" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SpaceError, match=r"^sub/protein.yaml: \(file\): no such file$"):
        load_space("sub/protein.yaml")  # a path into a folder: only there

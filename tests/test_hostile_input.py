"""Hostile input to the readers and the command lines, as tables: one reading of YAML (the 1.2 core
schema, decimal numbers only), control bytes and lone surrogates, the command line's numbers under
the file's rules, the memory check after ``--device``, one name rule for every command that takes a
study name, sizes checked up front. Every refusal is one line, exit status 2, and leaves no file.
(The space-file cases are also in the tests/data/bad_spaces corpus, run by test_space.)"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from patterns.errors import InputError
from patterns.names import check_study_name, name_problem
from patterns.safeyaml import YAMLInputError, load_yaml

ROOT = Path(__file__).resolve().parent.parent
SPACE = """\
device: {device}
backend: reference
dtype: float32
buckets: [64, 128]
workloads:
  - {{name: row, kind: msa_row, heads: 2, head_dim: 16, tokens: 256}}
objectives: [speedup]
pattern:
  block_size: {{choices: [16, 32]}}
  window: 16
  num_global: {{choices: [0, 16]}}
  stride: {{choices: [0, 2]}}
"""
TUNED = """format: 1
device: cpu
dtype: float32
buckets:
  - seq_len: {seq_len}
    pattern: {{block_size: 64, window: 128, num_global: 16, stride: 0, global_placement: first}}
"""


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---- one reading of YAML --------------------------------------------------------------------

# (text, the value of key a, or the refusal's words)
READINGS = [
    ("a: 1:30", "1:30"),                  # YAML 1.1: sexagesimal 90
    ("a: 1_28", "1_28"),                  # YAML 1.1: 128
    ("a: yes", "yes"), ("a: no", "no"), ("a: on", "on"), ("a: off", "off"), ("a: y", "y"),  # YAML 1.1: booleans
    ("a: 0b101", "0b101"),                # YAML 1.1: 5
    ("a: 2001-12-14", "2001-12-14"),      # YAML 1.1: a date
    ("a: 128", 128), ("a: -7", -7), ("a: +5", 5), ("a: 0", 0),
    ("a: 1e20", 1e20), ("a: 1.5", 1.5), ("a: .5", 0.5), ("a: -.inf", -math.inf),
    ("a: true", True), ("a: FALSE", False), ("a: ~", None), ("a:", None), ("a: '0200'", "0200"),
    ("a: 0200", ValueError("'0200': an integer with a leading zero is refused")),  # 1.1: 128, 1.2: 200
    ("a: [0400]", ValueError("'0400': an integer with a leading zero is refused")),
    ("a: 09", ValueError("'09': an integer with a leading zero is refused")),
    ("a: 0x80", ValueError("'0x80': only decimal numbers are read")),
    ("a: 0o17", ValueError("'0o17': only decimal numbers are read")),
    ("a: !!int 0200", ValueError("leading zero")),
    ("a: !!bool yes", ValueError("'yes' is not a boolean")),
    ("a: !!float 1:30", ValueError("'1:30' is not a number")),
    ("a: !!binary aGk=", ValueError("the tag !!binary is refused")),
    ("a: !!timestamp 2001-12-14", ValueError("the tag !!timestamp is refused")),
    ("a: !!set {x}", ValueError("the tag !!set is refused")),
    ("a: !!python/name:os.system x", ValueError("the tag !!python/name:os.system is refused")),
    ("a: !local x", ValueError("the tag !local is refused")),
    ("a: " + "9" * 200, ValueError("an integer of 200 digits is refused")),
    ("a: 1\nb: \x01", ValueError("line 2: a control character U+0001 at column 4")),
    ("a: x\x7f", ValueError("line 1: a control character U+007F")),
    ("a: x\x9b", ValueError("a control character U+009B")),
    ("# c\u2028a: 1\nb: 2", ValueError("line 1: a line break of YAML 1.1 only (1.2 reads it as a character) U+2028")),
    ("a: x\x85y", ValueError("a line break of YAML 1.1 only")),
    ('a: "x\u2029y"', ValueError("U+2029")),
    ("a: x\udcff", ValueError("a lone surrogate (not UTF-8 text) U+DCFF")),
    ('a: "\\ud800"', ValueError("a lone surrogate in a quoted scalar")),
    ('"a\\u200bb": 1', ValueError("a mapping key must be printable")),
]


@pytest.mark.parametrize("text,want", READINGS, ids=[repr(t) for t, _ in READINGS])
def test_one_reading_of_yaml(text, want):
    if isinstance(want, ValueError):
        with pytest.raises(YAMLInputError) as ei:
            load_yaml(text, "f.yaml")
        msg = str(ei.value)
        assert msg.startswith("f.yaml: ") and "\n" not in msg and str(want) in msg, msg
        return
    got = load_yaml(text, "f.yaml")["a"]
    got = got[0] if isinstance(got, list) else got
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("data,words", [
    (b"a: 1\n\x01\n", "line 2: a control character U+0001"),
    (b"a: \xff\xfe\n", "not UTF-8 text (invalid byte 0xff at offset 3)"),
    (b"a: \xed\xa0\x80\n", "not UTF-8 text"),  # a surrogate encoded in UTF-8
    (b"a: 1\x00", "NUL byte"),
])
def test_bytes_yaml_refuses(data, words):
    with pytest.raises(YAMLInputError, match=None) as ei:
        load_yaml(data, "f.yaml")
    assert words in str(ei.value) and "\n" not in str(ei.value)


# ---- the search command line: the file's rules, nothing written --------------------------------

def _search(tmp_path, space_text: str, *flags: str, name: str = "s.yaml") -> int:
    from autotune.search import main

    space = tmp_path / "in" / name
    space.parent.mkdir(exist_ok=True)
    space.write_text(space_text)
    return main(["--space", str(space), "--storage", f"sqlite:///{tmp_path / 'out' / 'a.db'}", "--executor", "local",
                 "--no-progress", *flags])


FLAGS = [
    (("--trials", "1e20"), "--trials: must be an integer, got number 1e+20"),
    (("--trials", "100000000000000000000"), "--trials: 100000000000000000000 is above the limit 1000000"),
    (("--trials", "0"), "--trials: must be >= 1, got 0"),
    (("--trials", "ten"), "--trials: must be an integer, got string 'ten'"),
    (("--timeout", "nan"), "--timeout: must be a finite number, got nan"),
    (("--timeout", "inf"), "--timeout: must be a finite number, got inf"),
    (("--timeout", "1e400"), "--timeout: must be a finite number"),
    (("--timeout", "0.5"), "--timeout: must be >= 1, got 0.5"),  # budget.timeout's own bound
    (("--workers", "0"), "--workers: must be >= 1, got 0"),
    (("--workers", "100000"), "--workers: 100000 is above the limit 4096"),
    (("--study", "a\u200bb"), "--study: must not contain invisible, bidi-control or separator characters (U+200B"),
    (("--study", "\u202eevil"), "U+202E RIGHT-TO-LEFT OVERRIDE"),
    (("--study", "a\u2028b"), "U+2028 LINE SEPARATOR"),
    (("--study", "a\u2029b"), "U+2029 PARAGRAPH SEPARATOR"),
    (("--study", "a\ufeffb"), "U+FEFF"),
    (("--study", "a\u00a0b"), "U+00A0 NO-BREAK SPACE"),
    (("--study", "a\tb"), "--study: must not contain control characters (U+0009"),
    (("--study", "a\x7fb"), "--study: must not contain control characters (U+007F"),
    (("--study", "a\udcffb"), "--study: must not contain a lone surrogate (U+DCFF"),
    (("--study", ""), "--study: must not be empty"),
    (("--study", "x" * 300), "--study: 300 characters: at most 256"),
]


@pytest.mark.parametrize("flags,words", FLAGS, ids=[repr(f) for f, _ in FLAGS])
def test_search_flags_follow_the_files_rules(tmp_path, capsys, flags, words):
    assert _search(tmp_path, SPACE.format(device="cpu"), "--device", "cpu", *flags) == 2
    line = one_line(capsys)
    assert words in line, line
    assert not (tmp_path / "out").exists()


def test_the_file_refuses_what_the_flag_refuses(tmp_path, capsys):
    assert _search(tmp_path, SPACE.format(device="cpu") + "budget: {trials: 1e20}\n") == 2
    assert "budget.trials: must be an integer, got number 1e+20" in one_line(capsys)


def test_a_space_file_name_that_is_not_utf8_is_refused_before_the_database(tmp_path, capsys):
    """The command line refuses the path; a space loaded by its path takes its default name (the
    file's stem) under the name rule."""
    from search_spaces.space import SpaceError, load_space

    name = os.fsdecode(b"bad\xff.yaml")  # what Python makes of such an argument: a lone surrogate
    assert _search(tmp_path, SPACE.format(device="cpu"), name=name) == 2
    assert "--space: must not contain a lone surrogate (U+DCFF" in one_line(capsys)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SpaceError, match=r"name: must not contain a lone surrogate \(U\+DCFF"):
        load_space(tmp_path / "in" / name)


def test_arguments_that_are_not_utf8_are_refused_before_anything_is_created(tmp_path, capsys):
    """A storage path or a space path given as raw bytes (lone surrogates in Python) could not be
    stored: refused with one line before the database file exists."""
    from autotune.search import main

    space = tmp_path / os.fsdecode(b"sp\xff.yaml")
    space.write_text("name: fine\n" + SPACE.format(device="cpu"))
    good = tmp_path / "good.yaml"
    good.write_text(SPACE.format(device="cpu"))
    db = tmp_path / os.fsdecode(b"db\xfe.db")
    for argv, flag in (([str(space), "--storage", f"sqlite:///{tmp_path / 'a.db'}"], "--space"),
                       ([str(good), "--storage", str(db)], "--storage"),
                       ([str(good), f"--storage=sqlite:///{db}"], "--storage")):
        assert main(["--space", *argv, "--executor", "local", "--no-progress", "--device", "cpu"]) == 2
        assert one_line(capsys).startswith(f"autotune: error: {flag}: must not contain a lone surrogate")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([space.name, "good.yaml"])


HUGE = SPACE.replace("buckets: [64, 128]", "buckets: [64, 65536]").replace(
    "tokens: 256}}", "tokens: 256}}\n  - {{name: tri, kind: triangle, heads: 128, head_dim: 256, max_batch: 65536}}")


def test_the_memory_is_checked_again_after_device_cpu(tmp_path, capsys):
    """A cuda space with 2 TiB of inputs: unchecked where no GPU is visible, checked against this
    machine's memory once --device cpu makes it a CPU run, before anything is written."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the cuda space is checked against the GPU here")
    from search_spaces.space import load_space

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.yaml").write_text(HUGE.format(device="cuda"))
    assert load_space(tmp_path / "in" / "s.yaml").device == "cuda"  # no GPU: no memory to check against
    assert _search(tmp_path, HUGE.format(device="cuda"), "--device", "cpu") == 2
    assert "at bucket 65536 take" in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_the_gates_memory_is_checked_up_front(tmp_path, capsys):
    assert _search(tmp_path, SPACE.format(device="cpu") + "gate: {seq_len: 65536, batch: 65536}\n") == 2
    assert "gate: the correctness gate of row at seq_len 65536, batch 65536 takes" in one_line(capsys)
    assert not (tmp_path / "out").exists()


# ---- one name rule, every command ----------------------------------------------------------------

BAD_NAMES = ["", "  ", "a\x00b", "a\nb", "a\u200bb", "a\u200db", "\u202eab", "a\u2066b", "a\u2028b", "a\u2029b",
             "a\udcffb", "x" * 257]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_the_name_rule(name):
    assert name_problem(name) is not None
    with pytest.raises(InputError) as ei:
        check_study_name(name, "--to-study")
    assert str(ei.value).startswith("--to-study: ") and "\n" not in str(ei.value)


@pytest.mark.parametrize("name", ["protein", "cpu run 2", "étude-α", "タンパク質", "x" * 256])
def test_good_names_pass(name):
    assert check_study_name(name) == name


def _db(tmp_path) -> str:
    from test_bad_input import _db_with_one_run

    return _db_with_one_run(tmp_path / "c.db")


@pytest.mark.parametrize("command", ["export", "report", "copy_study", "copy_study_to"])
@pytest.mark.parametrize("name", ["a\u200bb", "\u202eab", "a\u2028b", "a\x01b", "a\udcffb", "a\u00adb"])
def test_every_command_taking_a_study_name_refuses_it(tmp_path, capsys, command, name):
    from autotune.copy_study import main as copy_main
    from autotune.export import main as export_main
    from autotune.report.__main__ import main as report_main

    url = _db(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out.txt"
    if command == "export":
        rc = export_main(["--study", name, "--storage", url, "--out", str(out)])
    elif command == "report":
        rc = report_main(["--study", name, "--storage", url, "--out", str(out)])
    else:
        to = f"sqlite:///{tmp_path / 'to.db'}"
        rc = copy_main(["--study", "s", "--from", url, "--to", to, "--to-study", name] if command == "copy_study_to"
                       else ["--study", name, "--from", url, "--to", to])
    assert rc == 2
    line = one_line(capsys)
    assert ("--to-study: " if command == "copy_study_to" else "--study: ") in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("command", ["export", "report", "copy_study"])
def test_other_commands_refuse_arguments_that_are_not_utf8(tmp_path, capsys, command):
    from autotune.copy_study import main as copy_main
    from autotune.export import main as export_main
    from autotune.report.__main__ import main as report_main

    url = _db(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    bad = str(tmp_path / os.fsdecode(b"out\xff"))
    if command == "export":
        rc = export_main(["--study", "s", "--storage", url, "--out", bad])
    elif command == "report":
        rc = report_main(["--storage", url, "--out", bad])
    else:
        rc = copy_main(["--study", "s", "--from", url, "--to", bad])
    assert rc == 2
    flag = "--to" if command == "copy_study" else "--out"
    assert one_line(capsys).startswith(f"autotune.{command}: error: {flag}: must not contain a lone surrogate")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---- other commands: sizes and output paths up front; a corrupted database --------------------------

@pytest.mark.parametrize("argv,words", [
    (["--buckets", "100000000"], "--buckets: bucket 100000000 is above 65536"),
    (["--buckets", "256,65537"], "--buckets: bucket 65537 is above 65536"),
    (["--json", "/proc/version"], "--json: cannot write /proc/version"),
    (["--json", "{tmp}"], "it is a folder"),
    (["--json", "{tmp}/file/below.json"], "cannot write"),
    (["--png", "{tmp}"], "--png: "),
    (["--guided", "--json", "/proc/version"], "--json: cannot write /proc/version"),
    (["--guided", "--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    (["--guided", "--seed", "100000000000000000000000"], "--seed must be in [0, 4294967295]"),
])
def test_accuracy_refuses_up_front(tmp_path, capsys, argv, words):
    from autotune.accuracy.__main__ import run

    (tmp_path / "file").write_text("mine\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run(argv + ["--max-chains", "1"]) == 2
    assert words in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "mine\n"


def test_accuracy_refuses_a_tuned_bucket_beyond_the_longest_length(tmp_path, capsys):
    from autotune.accuracy.__main__ import run

    p = tmp_path / "t.yaml"
    p.write_text(TUNED.format(seq_len=70000))
    assert run(["--tuned", str(p)]) == 2
    assert f"tuned file {p}: bucket 70000 is above 65536" in one_line(capsys)


@pytest.mark.parametrize("seq_len,words", [
    ("0400", "'0400': an integer with a leading zero is refused"),  # YAML 1.1 read 256
    ("0x100", "only decimal numbers are read"),
    ("1_024", "seq_len: must be a positive integer, got '1_024'"),
    ("1:30", "seq_len: must be a positive integer, got '1:30'"),
    (str(10**30), "seq_len: 1000000000000000000000000000000 is above the limit 2147483647"),
    ("256\x01", "a control character U+0001"),
])
def test_tuned_files_have_one_reading_and_bounded_lengths(tmp_path, seq_len, words):
    from kernels import load_tuned

    p = tmp_path / "t.yaml"
    p.write_text(TUNED.format(seq_len=seq_len))
    with pytest.raises(ValueError) as ei:
        load_tuned(p)
    assert str(ei.value).startswith(f"{p}: ") and words in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("study", ["1e3", "1.5e3", "0o17", "0x1F", "0200", "yes", "1:30", "+.5", "-.INF", "~"])
def test_a_tuned_file_written_reads_back_as_written(tmp_path, study):
    """The writer quotes every string YAML 1.1 or 1.2 would read as another type: a study named
    like a number gives a tuned file that loads, with its name."""
    from kernels import load_tuned

    p = tmp_path / "t.yaml"
    p.write_text(TUNED.format(seq_len=256) + f"study: {study!r}\n")
    again = tmp_path / "again.yaml"
    again.write_text(load_tuned(p).file.dumps())
    assert load_tuned(again).file == load_tuned(p).file  # equal apart from the integrity seal the writer adds
    assert load_tuned(again).file.to_dict()["study"] == study


def test_tuned_file_length_in_decimal_loads(tmp_path):
    from kernels import load_tuned

    p = tmp_path / "t.yaml"
    p.write_text(TUNED.format(seq_len="400"))
    assert load_tuned(p).buckets == [400]


@pytest.mark.parametrize("damage", ["truncate", "header", "noise"])
def test_report_on_a_corrupted_sqlite_file_is_one_line(tmp_path, capsys, damage):
    from autotune.report.__main__ import main as report_main

    url = _db(tmp_path)
    path = tmp_path / "c.db"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "header":
        data[16:100] = bytes(range(84))
    else:
        data[:] = bytes((i * 7919) % 251 for i in range(len(data)))
    path.write_bytes(bytes(data))
    out = tmp_path / "r.md"
    assert report_main(["--storage", url, "--out", str(out)]) == 2
    one_line(capsys)
    assert not out.exists()
    with pytest.raises(sqlite3.DatabaseError):  # the file is really unreadable, not refused for another reason
        sqlite3.connect(path).execute("select count(*) from at_runs").fetchall()


@pytest.mark.slow  # one report per page of the database (about 5 s)
def test_report_on_a_database_with_one_damaged_page_is_one_line_or_a_report(tmp_path, capsys):
    """Each page of a real study database in turn overwritten with noise: the report is written
    (a page it does not read) or refused with one line and exit status 2, never a traceback; the
    pages of the tables it reads are found damaged."""
    from autotune.report.__main__ import main as report_main

    _db(tmp_path)
    good = (tmp_path / "c.db").read_bytes()
    page = sqlite3.connect(tmp_path / "c.db").execute("pragma page_size").fetchone()[0]
    refused = 0
    for n in range(1, len(good) // page):
        bad = bytearray(good)
        bad[n * page:(n + 1) * page] = bytes((i * 7919 + n) % 251 for i in range(page))
        path = tmp_path / f"p{n}.db"
        path.write_bytes(bytes(bad))
        out = tmp_path / f"r{n}.md"
        rc = report_main(["--storage", str(path), "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        # a report written from a damaged file may fail to link itself in the artifact store (the
        # study's attribute pages): one warning line of its own, never a traceback
        err = [line for line in err if "artifact store" not in line or "Traceback" in line]
        assert rc in (0, 2) and len(err) == 1, (n, err)
        if rc == 2:
            refused += 1
            assert "error: cannot read --storage" in err[0] and not out.exists(), (n, err)
    assert refused >= 3


@pytest.mark.slow  # three interpreters (about 10 s)
@pytest.mark.parametrize("case", ["control byte in the space", "storage name not UTF-8", "trials 1e20"])
def test_the_real_command_line_is_one_line_and_exit_2(tmp_path, case):
    """Through a real interpreter, where arguments are bytes: exit status 2, one line, no file."""
    space = tmp_path / "s.yaml"
    space.write_bytes(SPACE.format(device="cpu").replace("window: 16", "window: 16\x01").encode())
    good = tmp_path / "g.yaml"
    good.write_text(SPACE.format(device="cpu"))
    args = {"control byte in the space": [os.fsencode(space), b"--storage", b"sqlite:///a.db"],
            "storage name not UTF-8": [os.fsencode(good), b"--storage", b"b\xff.db"],
            "trials 1e20": [os.fsencode(good), b"--storage", b"c.db", b"--trials", b"1e20"]}[case]
    before = sorted(tmp_path.iterdir())
    proc = subprocess.run([sys.executable.encode(), b"-m", b"autotune.search", b"--space", *args, b"--executor", b"local",
                           b"--device", b"cpu", b"--no-progress"], cwd=tmp_path, capture_output=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("autotune: error: "), err
    assert sorted(tmp_path.iterdir()) == before

"""What is at an output path is never destroyed: `patterns.output` and every command that writes a file.

The policy (`patterns.output`): a missing path is created, a regular file replaced atomically (a
temporary file beside it, renamed over it, its permission bits kept), a symbolic link written
through to its target; a folder, a device, a FIFO, a path below a file and a place where no file
can be created (``/proc``) are refused with one line before anything is written, and a failed write
(a full disk, a file-size limit) leaves the old file and no temporary file behind.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from patterns.errors import InputError
from patterns.output import OutputPathError, check_output_path, write_output

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- the helper --------------------------------------------------------------------------------------
def test_a_missing_path_is_created_with_its_folders(tmp_path):
    out = tmp_path / "a" / "b" / "out.yaml"
    assert write_output(out, "x: 1\n") == out
    assert out.read_text() == "x: 1\n" and _listing(out.parent) == ["out.yaml"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # as open(path, "w") would make it


def test_a_regular_file_is_replaced_keeping_its_permissions(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    write_output(out, b"new\n")
    assert out.read_text() == "new\n" and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert _listing(tmp_path) == ["out.csv"]  # no temporary file left


def test_a_symbolic_link_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "real" / "tuned.yaml"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert write_output(link, "new\n") == target
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n" and link.read_text() == "new\n"
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "made-by-the-write.yaml")
    write_output(dangling, "x\n")
    assert dangling.is_symlink() and (tmp_path / "made-by-the-write.yaml").read_text() == "x\n"


def _refused(path, *fragments):
    with pytest.raises(OutputPathError) as info:
        write_output(path, "data\n")
    line = str(info.value)
    assert "\n" not in line and isinstance(info.value, InputError)
    for f in fragments:
        assert f in line, line
    with pytest.raises(OutputPathError):
        check_output_path(path)
    return line


def test_a_folder_is_refused_and_left_as_it_is(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    _refused(folder, str(folder), "a folder")
    assert _listing(folder) == ["keep.txt"] and _listing(tmp_path) == ["results"]


def test_a_fifo_is_refused_and_left_as_it_is(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _refused(fifo, "a FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and _listing(tmp_path) == ["pipe"]


def test_a_device_and_a_link_to_it_are_refused(tmp_path):
    _refused("/dev/null", "a character device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    link = tmp_path / "out.yaml"
    link.symlink_to("/dev/null")
    _refused(link, "a link to /dev/null", "a character device")
    assert link.is_symlink() and _listing(tmp_path) == ["out.yaml"]


def test_a_path_below_a_file_is_refused(tmp_path):
    f = tmp_path / "report.md"
    f.write_text("mine")
    _refused(f / "x.yaml", str(f), "not a folder")
    _refused(f / "deeper" / "x.yaml", str(f), "not a folder")
    assert f.read_text() == "mine" and _listing(tmp_path) == ["report.md"]


@pytest.mark.skipif(not os.path.isfile("/proc/version"), reason="no /proc")
def test_proc_is_refused():
    _refused("/proc/version", "/proc/version")
    _refused("/proc/no-such-file.json", "/proc")


@pytest.mark.skipif(IS_ROOT, reason="root may write into any folder")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "out.csv").write_text("old")
    os.chmod(ro, 0o555)
    try:
        _refused(ro / "out.csv", "cannot create a file")
        assert (ro / "out.csv").read_text() == "old"
    finally:
        os.chmod(ro, 0o755)


@pytest.mark.skipif(IS_ROOT, reason="root may write any file")
def test_a_read_only_file_is_refused(tmp_path):
    out = tmp_path / "tuned.yaml"
    out.write_text("protected")
    os.chmod(out, 0o444)
    _refused(out, "read-only")
    assert out.read_text() == "protected"


_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from patterns.output import OutputPathError, write_output
    if sys.argv[2] == "ignore":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # a file may not grow past 4 KiB: a full disk
    try:
        write_output(sys.argv[1], "x" * 100_000)
    except OutputPathError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
""")


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="RLIMIT_FSIZE test for Linux")
@pytest.mark.parametrize("sigxfsz", ["ignore", "default"])
def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, sigxfsz):
    """With the signal ignored by the caller, or left at its default (which kills a writer: the
    helper ignores it while it writes), the write fails with one line and cleans up."""
    out = tmp_path / "tuned.yaml"
    out.write_text("old\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _FULL_DISK, str(out), sigxfsz], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "unchanged" in err[0], r.stderr
    assert out.read_text() == "old\n" and _listing(tmp_path) == ["tuned.yaml"]


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    out.write_text("old")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_output(out, "new")
    assert out.read_text() == "old" and _listing(tmp_path) == ["out.json"]


# ---- the commands ------------------------------------------------------------------------------------
def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _bad_outputs(tmp_path: Path) -> list[tuple[Path, str]]:
    """(path, what the refusal names) for a folder, a FIFO, a path below a file and /proc."""
    folder = tmp_path / "a-folder"
    folder.mkdir(exist_ok=True)
    fifo = tmp_path / "a-fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    below = tmp_path / "a-file"
    below.write_text("mine")
    cases = [(folder, "a folder"), (fifo, "a FIFO"), (below / "out", "not a folder")]
    if os.path.isfile("/proc/version"):
        cases.append((Path("/proc/version"), "/proc"))
    return cases


def _unchanged(tmp_path: Path) -> None:
    assert _listing(tmp_path) == ["a-fifo", "a-file", "a-folder"]
    assert stat.S_ISFIFO(os.lstat(tmp_path / "a-fifo").st_mode) and (tmp_path / "a-file").read_text() == "mine"
    assert _listing(tmp_path / "a-folder") == []


def test_export_refuses_an_output_it_cannot_write_before_opening_the_study(tmp_path, capsys):
    from autotune.export import main as export_main

    db = tmp_path / "a-file"  # not even read: the output is checked first
    for out, what in _bad_outputs(tmp_path):
        assert export_main(["--study", "s", "--storage", str(db), "--out", str(out)]) == 2
        line = _one_line(capsys)
        assert line.startswith("autotune.export: error: ") and what in line, line
    _unchanged(tmp_path)


def test_report_refuses_an_output_it_cannot_write(tmp_path, capsys):
    from autotune.report.__main__ import main as report_main

    for out, what in _bad_outputs(tmp_path):
        assert report_main(["--storage", str(tmp_path / "none.db"), "--out", str(out)]) == 2
        line = _one_line(capsys)
        assert line.startswith("autotune.report: error: ") and what in line, line
    _unchanged(tmp_path)
    below = tmp_path / "a-file"  # the figures' folder is checked too
    assert report_main(["--storage", str(tmp_path / "none.db"), "--out", str(tmp_path / "r.md"),
                        "--plots-dir", str(below / "figs")]) == 2
    assert "not a folder" in _one_line(capsys)
    _unchanged(tmp_path)


def test_accuracy_refuses_an_output_it_cannot_write_before_any_work(tmp_path, capsys):
    from autotune.accuracy.__main__ import run as accuracy_run

    for out, what in _bad_outputs(tmp_path):
        for flag in ("--json", "--png"):
            assert accuracy_run([flag, str(out), "--proteins", str(tmp_path / "none")]) == 2
            line = _one_line(capsys)
            assert what in line, line
    _unchanged(tmp_path)


def test_the_benchmarks_refuse_an_output_they_cannot_write(tmp_path):
    from autotune.evoformer.bench import SMALL_DIMS, run_evoformer_bench
    from kernels.bench import main as bench_main

    for out, what in _bad_outputs(tmp_path):
        with pytest.raises(OutputPathError, match=what):
            bench_main(["--device", "cpu", "--lengths", "64", "--workloads", "row", "--out", str(out)])
        with pytest.raises(OutputPathError, match=what):
            run_evoformer_bench([16], 2, device="cpu", dims=SMALL_DIMS, kinds=["sdpa"], csv_path=out)
    _unchanged(tmp_path)


def test_the_benchmark_csv_is_written_through_a_link(tmp_path):
    from kernels.bench import CSV_FIELDS, _write_csv

    target = tmp_path / "kept" / "bench.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "bench.csv"
    link.symlink_to(target)
    _write_csv(link, [])
    assert link.is_symlink() and target.read_text().splitlines() == [",".join(CSV_FIELDS)]
    assert _listing(target.parent) == ["bench.csv"]

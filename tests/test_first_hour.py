"""What a new user sees in the first hour: a line for every slow phase before the progress bar,
log lines on their own line above the bar (never glued to it), and a search stopped by its time
limit that says so."""

from __future__ import annotations

import re
import time

import pytest

from autotune.search import Search, main
from search_spaces.space import load_space
from test_search import FAST, write_space


def _segments(err: str) -> list[str]:
    """What a terminal shows of ``err``: each line's text after its last carriage return, and
    every carriage-return-separated piece (a log line glued to the bar sits inside one)."""
    return [seg for line in err.split("\n") for seg in line.split("\r") if seg.strip()]


@pytest.mark.slow
def test_log_lines_sit_above_the_progress_bar(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOTUNE_FAULT_INJECT", "raise:0")  # trial 0 fails: a log line while the bar shows
    space = load_space(write_space(tmp_path, **FAST)).override(trials=2)
    Search(space, study_name="bar", storage=f"sqlite:///{tmp_path / 'b.db'}", executor="local", progress=True).run()
    err = capsys.readouterr().err
    logged = [seg for seg in _segments(err) if "autotune: trial 0 failed" in seg]
    assert logged and all(seg.startswith("autotune: trial 0 failed") for seg in logged), logged  # not glued
    assert any("trial" in seg and "|" in seg for seg in _segments(err))  # the bar itself was drawn


def test_first_compile_of_the_c_kernel_is_announced(tmp_path, monkeypatch):
    import kernels.cpu_fused as cpu_fused

    lines: list[str] = []
    space = load_space(write_space(tmp_path, **FAST))
    search = Search(space, study_name="c", storage=f"sqlite:///{tmp_path / 'c.db'}", executor="local",
                    progress=False, log=lines.append)
    monkeypatch.setattr(cpu_fused, "available", lambda: time.sleep(1.5) or True)  # as a first compile takes
    search.startup.prepare_c_kernel()
    assert lines[0] == "compiling the fused C kernel (first use on this machine; cached after) ..."
    assert re.fullmatch(r"fused C kernel compiled in \d+\.\d s", lines[1]), lines
    lines.clear()
    monkeypatch.setattr(cpu_fused, "available", lambda: True)  # cached: nothing to say
    search.startup.prepare_c_kernel()
    assert lines == []


@pytest.mark.slow
def test_time_limit_stop_is_stated(tmp_path, capsys):
    space = write_space(tmp_path, **FAST)
    rc = main(["--space", str(space), "--storage", f"sqlite:///{tmp_path / 't.db'}", "--executor", "local",
               "--trials", "20", "--timeout", "1", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    m = re.search(r"stopped at the time limit \(1 s\): (\d+) of 20 trials", err)
    assert m and 1 <= int(m.group(1)) < 20, err

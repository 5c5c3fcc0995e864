"""The search's own messages around the verdict: one Ctrl-C stops it cleanly, a resumed run says
so, a finished study says how to add trials."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_search import write_space

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", **extra)


def _trial_state(db: Path, number: int):
    if not db.exists():
        return None
    con = sqlite3.connect(db)
    try:
        row = con.execute("select state, reason from at_trials where number = ?", (number,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    return row


@pytest.mark.slow
def test_one_sigint_stops_the_search_cleanly(tmp_path):
    space = write_space(tmp_path, measure={"warmup": 1, "repeats": 2, "max_repeats": 3})
    db = tmp_path / "a.db"
    cmd = [sys.executable, "-m", "autotune.search", "--space", str(space), "--trials", "4", "--storage",
           f"sqlite:///{db}", "--executor", "local", "--no-progress",
           "--allow-repeats"]  # no proposal pruned as a duplicate: trial 1 is the second measured
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(AUTOTUNE_FAULT_INJECT="sleep:1"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (_trial_state(db, 1) or ("",))[0] != "RUNNING":
            time.sleep(0.2)
        assert _trial_state(db, 1)[0] == "RUNNING"
        time.sleep(1.0)  # inside trial 1's injected sleep
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    text = out.decode()
    assert p.returncode == 130, text[-2000:]
    assert time.monotonic() - t0 < 30
    assert "Exception ignored" not in text and "interrupted" in text
    assert _trial_state(db, 1) == ("FAIL", "interrupted")

    # the same command again resumes, says so, and retries the interrupted trial
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming study 'tiny': 1 finished trial(s) kept, 1 interrupted trial(s) retried" in r.stderr
    assert "verdict L=64" in r.stderr and "python -m autotune.export --study tiny" in r.stderr
    # and once more: nothing to do, with the way to add trials
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "nothing to do (raise --trials above 4 to add trials)" in r.stderr

"""Tuned files given to `patterns.load_tuned`: every malformed file in tests/data/bad_tuned is
refused with one line naming the file and its expected message, fast (no hang on alias bombs or
deep nesting); the deployment reader imports neither the autotune package nor optuna/ray/sqlalchemy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patterns import load_tuned

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((ROOT / "tests" / "data" / "bad_tuned").glob("*.yaml"))
GOOD = """format: 1
device: cpu
dtype: float32
buckets:
  - seq_len: 256
    pattern: {block_size: 64, window: 128, num_global: 16, stride: 0, global_placement: first}
    kernel: {block_m: 64, block_n: 64, num_warps: 4, num_stages: 2}
"""


def expected(path: Path) -> str:
    sidecar = path.with_name(path.name + ".expect")
    if sidecar.exists():
        return sidecar.read_text().strip()
    first = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert first.startswith("# expect:"), f"{path} must start with '# expect: <message>'"
    return first.split("expect:", 1)[1].strip()


def test_corpus_size():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_tuned_rejected(path):
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as ei:
        load_tuned(path)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    assert expected(path) in msg, msg
    assert time.perf_counter() - t0 < 5.0


def test_good_file_loads(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(GOOD)
    tuned = load_tuned(p)
    assert tuned.buckets == [256] and tuned.kernel_config_for(100).num_stages == 2


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=rf"^{tmp_path}: \(file\): is a directory, not a file$"):
        load_tuned(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.yaml: no such tuned-patterns file"):
        load_tuned(tmp_path / "nope.yaml")


@pytest.mark.slow
def test_deployment_imports_no_autotune_optuna_ray_sqlalchemy(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(GOOD)
    code = ("import sys; from patterns import load_tuned; load_tuned(sys.argv[1]); "
            "bad = [m for m in ('autotune', 'optuna', 'ray', 'sqlalchemy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, str(p)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""Tuned files given to `kernels.load_tuned`: every malformed file in tests/data/bad_tuned is
refused with one line naming the file and its expected message, fast (no hang on alias bombs or
deep nesting); the deployment reader imports neither the autotune package nor optuna/ray/sqlalchemy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from kernels import KernelConfig, load_tuned
from kernels.tuned import TunedFileWarning
from patterns import GuidedConfig
from test_space import expected  # the corpus convention: "# expect: MESSAGE" or a sidecar

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
    code = ("import sys; from kernels import load_tuned; load_tuned(sys.argv[1]); "
            "bad = [m for m in ('autotune', 'optuna', 'ray', 'sqlalchemy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, str(p)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- the schema object: what the export writes is what the loader reads ----------------------------

HW = {"device": "cpu", "cpu": "Some CPU", "device_name": "Some CPU", "cores": 2}
EXPORTED = {  # the shape of autotune.export's document, every key in the order it writes them
    "format": 2, "study": "s", "rule": "per bucket: ...", "device": "cpu", "device_name": "Some CPU",
    "backend": "cpu", "dtype": "float32", "mode": "fwd", "workloads": [{"name": "row", "kind": "msa_row"}],
    "targets": {"bounds": [{"name": "speedup", "min": 1.2}], "memory_floor_mib": 1.0, "confidence": 0.95,
                "source": "space"},
    "hardware": HW, "versions": {"torch": "2"}, "git_revision": None, "exported_at": "2026-01-01T00:00:00+00:00",
    "infeasible_buckets": [1024], "not_exported": {1024: "no leader"},
    "buckets": [
        {"seq_len": 256, "heads": [4, 8], "head_dims": [32],
         "pattern": {"block_size": 64, "window": 128, "num_global": 16, "stride": 0, "global_placement": "first"},
         "kernel": {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2},
         "source": {"study": "s", "trial": 3, "run_id": 1, "confirmation": [2]}, "sparsity": 0.25,
         "speedup": {"row": {"median": 1.5, "lo": 1.3, "hi": 1.7, "repeats": 9}}, "speedup_min": None,
         "tied_with": [], "hardware": HW},
        {"seq_len": 512, "heads": [4], "head_dims": [32],
         "pattern": {"family": "guided", "block_size": 32, "keep": 0.25, "mass": None, "pool": "max",
                     "spread": "layout", "window": 32, "num_global": 0},
         "kernel": None, "source": {"study": "s", "trial": 5}, "hardware": HW},
    ],
}


def _old_writer(doc, header):
    """How autotune.export wrote the file before the schema object (yaml.dump, plain, no aliases)."""
    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    return header + yaml.dump(doc, Dumper=NoAliases, sort_keys=False, default_flow_style=None, width=110)


def test_tuned_file_writes_the_export_document_byte_for_byte(tmp_path):
    import copy

    from kernels.tuned import TunedFile, integrity_of

    doc = copy.deepcopy(EXPORTED)
    doc["buckets"][1]["pattern"] = GuidedConfig(32, keep=0.25, spread="layout", window=32).to_dict()
    f = TunedFile.from_dict(doc, "t.yaml")
    assert f.to_dict() == doc and list(f.to_dict()) == list(doc)
    assert [list(b.to_dict()) for b in f.buckets] == [list(b) for b in doc["buckets"]]
    header = "Tuned sparse attention patterns, exported from study 's'.\nRule: r.\nRead with kernels.load_tuned(path)."
    # what is written: the document sealed with its integrity field, right after format
    sealed = {"format": 2, "integrity": integrity_of(doc["buckets"], doc["infeasible_buckets"]), **doc}
    assert f.to_dict(seal=True) == sealed and list(f.to_dict(seal=True)) == list(sealed)
    doc = sealed
    old = _old_writer(doc, "# Tuned sparse attention patterns, exported from study 's'.\n# Rule: r.\n"
                           "# Read with kernels.load_tuned(path).\n")
    assert f.dumps(header) == old
    p = f.write(tmp_path / "sub" / "tuned.yaml", header)
    assert p.read_text() == old and not list(p.parent.glob("*.tmp"))
    from kernels.tuned import TunedMismatchWarning

    with pytest.warns(TunedMismatchWarning, match="device_name: tuned on 'Some CPU'"):  # another machine's file
        t = load_tuned(p)  # and the loader reads back the same schema object
    assert t.file == f and t.file.to_dict() == doc
    assert isinstance(t.config_for(300), GuidedConfig) and t.config_for(300).keep == 0.25
    assert t.kernel_config_for(200) == KernelConfig(64, 32, 4, 2) and t.config_for(600) is None
    assert t.infeasible == {1024} and t.device_name == "Some CPU" and t.entries[256].info["sparsity"] == 0.25


def test_tuned_file_round_trips_a_format_1_file(tmp_path):
    from kernels.tuned import TunedFile

    p = tmp_path / "t.yaml"
    p.write_text(GOOD)
    with pytest.warns(TunedFileWarning, match="no integrity field .* re-export it"):  # an older export's file
        t = load_tuned(p)
    assert t.file.format == 1 and t.file.integrity is None and t.file.buckets[0].heads is None and t.file.extra == {}
    again = tmp_path / "again.yaml"
    t.file.write(again)  # written again: sealed, and read back without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_tuned(again).file == t.file and load_tuned(again).file.integrity["buckets"] == 1
    doc = dict(yaml.safe_load(GOOD), note="kept")  # a key this schema does not name: kept, before buckets
    f = TunedFile.from_dict(doc, "x.yaml")
    assert f.extra == {"note": "kept"} and list(f.to_dict())[-2:] == ["note", "buckets"]


def test_tuned_file_errors_are_input_errors():
    from kernels.tuned import TunedFile, TunedFileError, TunedMismatchError
    from patterns.errors import InputError

    assert issubclass(TunedFileError, InputError) and issubclass(TunedMismatchError, InputError)
    # checked in the reader's order: a duplicate bucket is named before its bad pattern
    dup = {"buckets": [{"seq_len": 256, "pattern": {"block_size": 64}}, {"seq_len": 256, "pattern": {"block_size": 48}}]}
    with pytest.raises(TunedFileError, match=r"^x.yaml: buckets\[1\].seq_len: duplicate bucket 256$"):
        TunedFile.from_dict(dup, "x.yaml")
    with pytest.raises(TunedFileError, match=r"^x.yaml: buckets\[0\].seq_len: bucket 256 is also listed in infeasible"):
        TunedFile.from_dict(dict(dup, infeasible_buckets=[256]), "x.yaml")

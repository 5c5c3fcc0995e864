"""Tuned files that know their machine: `load_tuned` / `config_for` check device, device name,
dtype, heads and head dim where the file is used (a warning, or an error when strict); infeasible
and unmeasured buckets mean dense attention, in `config_for` and in the EvoFormer."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml

from models.evoformer.attention import AttentionChoice, EvoformerAttention, attend, sdpa_attention
from autotune.export import _shapes
from search_spaces.space import load_space
from kernels import load_tuned, reference_attention
from kernels.tuned import TunedMismatchError, TunedMismatchWarning, device_name, integrity_of
from patterns import PatternConfig, build_layout

BAND = {"block_size": 16, "window": 16, "num_global": 0, "stride": 0}
WIDE = {"block_size": 32, "window": 64, "num_global": 0, "stride": 0}


def write(tmp_path, seal=True, **doc):
    """A tuned file for this machine with ``doc``'s keys replaced; ``seal``: with its integrity field,
    as the export writes it (False: a file from an older export)."""
    base = {"format": 2, "device": "cpu", "device_name": device_name("cpu"), "dtype": "float32",
            "infeasible_buckets": [64],
            "buckets": [{"seq_len": 128, "heads": [2, 4], "head_dims": [16], "pattern": BAND},
                        {"seq_len": 256, "heads": [4], "head_dims": [32], "pattern": WIDE}]}
    base.update(doc)
    inf = base.get("infeasible_buckets") or []
    if seal and isinstance(base.get("buckets"), list) and isinstance(inf, list) and "integrity" not in doc:
        base = {"integrity": integrity_of(base["buckets"], inf), **base}
    p = tmp_path / "tuned.yaml"
    p.write_text(yaml.safe_dump(base, sort_keys=False))
    return p


def no_warnings():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error")
    return ctx


def test_infeasible_and_unmeasured_buckets_are_dense(tmp_path):
    # the issue's case: L=256 infeasible, L=512 exported -> config_for(256) must not be 512's pattern
    t = load_tuned(write(tmp_path, infeasible_buckets=[256], buckets=[{"seq_len": 512, "pattern": WIDE}]))
    assert t.measured_buckets == [256, 512] and t.buckets == [512]
    for L in (1, 200, 256):
        assert t.bucket_for(L) == 256 and t.config_for(L) is None and t.kernel_config_for(L) is None
    assert t.config_for(257) == PatternConfig(**WIDE) and t.config_for(512) == PatternConfig(**WIDE)
    assert t.bucket_for(513) is None and t.config_for(513) is None  # never measured: unknown -> dense


def test_matching_machine_loads_silently(tmp_path):
    ctx = no_warnings()
    try:
        t = load_tuned(write(tmp_path), strict=True, device="cpu", dtype=torch.float32)
        assert t.config_for(100, device=torch.device("cpu"), dtype=torch.float32, heads=4, head_dim=16) == PatternConfig(**BAND)
        assert t.config_for(200, device="cpu", dtype="float32", heads=4, head_dim=32) == PatternConfig(**WIDE)
    finally:
        ctx.__exit__(None, None, None)


def test_file_for_another_machine_warns_then_strict_raises(tmp_path):
    # the issue's edit: device cuda, an H100's name, bfloat16 - used on this CPU
    p = write(tmp_path, device="cuda", device_name="NVIDIA H100 80GB HBM3", dtype="bfloat16")
    with pytest.warns(TunedMismatchWarning) as rec:
        t = load_tuned(p, device="cpu", dtype=torch.float32)
    msgs = [str(w.message) for w in rec]
    assert any("device: tuned on cuda (NVIDIA H100 80GB HBM3), used on cpu" in m for m in msgs), msgs
    assert any("dtype: tuned in bfloat16, used in float32" in m for m in msgs), msgs
    assert all(m.startswith(f"{p}: ") and "\n" not in m for m in msgs)
    assert t.config_for(100) == PatternConfig(**BAND)  # a warning only: the patterns stay usable
    with pytest.raises(TunedMismatchError, match=r"device: tuned on cuda"):
        load_tuned(p, strict=True, device="cpu")
    with pytest.raises(TunedMismatchError, match=r"dtype: tuned in bfloat16, used in float32"):
        load_tuned(write(tmp_path, dtype="bfloat16"), strict=True, dtype=torch.float32)  # this CPU's own file


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a cuda file on a machine without CUDA")
def test_cuda_file_without_cuda_warns_at_load(tmp_path):
    with pytest.warns(TunedMismatchWarning, match="used on cpu"):
        load_tuned(write(tmp_path, device="cuda", device_name="NVIDIA H100 80GB HBM3"))
    with pytest.raises(TunedMismatchError):
        load_tuned(write(tmp_path, device="cuda"), strict=True)


def test_other_device_name_warns(tmp_path):
    p = write(tmp_path, device_name="Some Other CPU @ 1.0GHz")
    with pytest.warns(TunedMismatchWarning, match=r"device_name: tuned on 'Some Other CPU @ 1.0GHz', used on"):
        load_tuned(p)
    with pytest.raises(TunedMismatchError, match="device_name"):
        load_tuned(p, strict=True)


def test_heads_and_head_dim_checked_per_bucket(tmp_path):
    t = load_tuned(write(tmp_path))
    with pytest.warns(TunedMismatchWarning, match=r"buckets\[seq_len=128\]\.heads: measured with \[2, 4\] heads, used with 8"):
        assert t.config_for(100, heads=8) == PatternConfig(**BAND)
    with pytest.warns(TunedMismatchWarning, match=r"head_dims: measured with head dim \[32\], used with 16"):
        t.config_for(200, head_dim=16)
    ctx = no_warnings()  # each mismatch is warned once per file, not on every forward
    try:
        t.config_for(100, heads=8)
        t.config_for(60, heads=8)  # infeasible bucket: dense, no shapes to check
    finally:
        ctx.__exit__(None, None, None)
    strict = load_tuned(write(tmp_path), strict=True)
    with pytest.raises(TunedMismatchError, match="heads"):
        strict.config_for(100, heads=8)
    assert strict.config_for(100, heads=2, head_dim=16) == PatternConfig(**BAND)


def test_format_1_file_still_read(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump({"format": 1, "device": "cpu", "dtype": "float32",
                                 "hardware": {"device": "cpu", "device_name": "Old CPU"},
                                 "buckets": [{"seq_len": 128, "pattern": BAND}]}))
    with pytest.warns(TunedMismatchWarning, match="device_name: tuned on 'Old CPU'"):
        t = load_tuned(p)  # the device name of format 1 sits in hardware
    assert t.device_name == "Old CPU" and t.entries[128].heads is None
    ctx = no_warnings()
    try:
        assert t.config_for(100, heads=7, head_dim=5) == PatternConfig(**BAND)  # no shapes recorded: not checked
    finally:
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("doc, message", [
    ({"infeasible_buckets": [128]}, "buckets[0].seq_len: bucket 128 is also listed in infeasible_buckets"),
    ({"infeasible_buckets": "x"}, "infeasible_buckets: must be a non-empty list of positive integers"),
    ({"device_name": 3}, "device_name: must be a string"),
    ({"buckets": [{"seq_len": 128, "heads": [0], "pattern": BAND}]}, "buckets[0].heads: must be a non-empty list"),
    ({"buckets": [{"seq_len": 128, "head_dims": [16.0], "pattern": BAND}]}, "buckets[0].head_dims: must be"),
    ({"format": 3}, "format: unsupported format 3 (this reader reads format 1 and 2)"),
])
def test_bad_machine_fields_one_line(tmp_path, doc, message):
    p = write(tmp_path, **doc)
    with pytest.raises(ValueError) as ei:
        load_tuned(p)
    assert str(ei.value) == f"{p}: {message}" or str(ei.value).startswith(f"{p}: {message}"), str(ei.value)
    assert "\n" not in str(ei.value)


def test_export_shapes_per_bucket():
    space = load_space("search_spaces/cpu.yaml")
    assert _shapes(space, 256) == {"heads": [4, 8], "head_dims": [32]}


def test_evoformer_sparse_falls_back_to_dense_where_the_file_says(tmp_path):
    t = load_tuned(write(tmp_path, infeasible_buckets=[64]))
    choice = EvoformerAttention.sparse(t, backend="cpu").msa_row
    torch.manual_seed(0)
    for L, dense in ((48, True), (128, False), (300, True)):  # infeasible, exported, beyond every bucket
        q, k, v = (torch.randn(2, 2, L, 16) for _ in range(3))
        bias = torch.randn(1, 2, L, L)
        out = attend(choice, q, k, v, [bias])
        if dense:
            assert torch.equal(out, sdpa_attention(q, k, v, [bias])), L
        else:
            ref = reference_attention(q, k, v, build_layout(PatternConfig(**BAND), L), bias, 1.0 / 16 ** 0.5)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(out, sdpa_attention(q, k, v, [bias]), atol=1e-3)  # really sparse


def test_evoformer_strict_file_refuses_other_dtype(tmp_path):
    t = load_tuned(write(tmp_path), strict=True)
    choice = AttentionChoice("sparse", t, backend="cpu")
    q = torch.randn(1, 2, 100, 16, dtype=torch.float64)
    with pytest.raises(TunedMismatchError, match="dtype: tuned in float32, used in float64"):
        attend(choice, q, q, q)


def test_reader_and_export_name_this_cpu_alike():
    """The machine name the export records for a CPU study (the run's hardware record) is the one
    the reader compares with: a CPU file tuned here matches here."""
    from autotune.hardware import describe

    assert describe("cpu")["device_name"] == device_name("cpu")

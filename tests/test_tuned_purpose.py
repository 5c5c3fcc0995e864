"""Tuned files that know what they were tuned for: mode (inference or training), backend and the
kernels' fingerprint are checked where the file is used (a warning at the caller's line, or
`TunedMismatchError` when strict); `explain(L)` says in one line why a length gets a pattern or
dense attention; the integrity field refuses a file cut off at a bucket boundary or edited."""

from __future__ import annotations

import warnings

import pytest
import yaml

from kernels import load_tuned
from kernels.tuned import (TunedFileError, TunedFileWarning, TunedMismatchError, TunedMismatchWarning, device_name,
                           integrity_of, kernel_fingerprint)
from models.evoformer.attention import EvoformerAttention
from patterns import PatternConfig

BAND = {"block_size": 16, "window": 16, "num_global": 0, "stride": 0}
WIDE = {"block_size": 32, "window": 64, "num_global": 0, "stride": 0}


def doc(**over):
    """A tuned file as the export writes it for this machine: CPU backend, inference, today's kernels."""
    d = {"format": 2, "study": "s", "device": "cpu", "device_name": device_name("cpu"), "backend": "cpu",
         "dtype": "float32", "mode": "fwd", "kernel_fingerprint": kernel_fingerprint("cpu"),
         "infeasible_buckets": [64, 512],
         "not_exported": {64: "no trial meets the non-speedup targets at every workload (4 complete trial(s))",
                          512: "t#3, chosen on the confirmation, does not clear the speedup target in its "
                               "independent hold-out re-measurement at row"},
         "buckets": [{"seq_len": 128, "pattern": BAND, "source": {"study": "s", "trial": 2}, "speedup_geomean": 1.4,
                      "provisional": False, "caveats": []},
                     {"seq_len": 256, "pattern": WIDE, "source": {"study": "s", "trial": 5}, "speedup_geomean": 1.9,
                      "provisional": True,
                      "caveats": ["speedup above the sparsity bound 1.1/(1-s) at row: a loaded machine or a slow "
                                  "baseline, re-time before quoting"]}]}
    d.update(over)
    return d


def write(tmp_path, d, seal=True, name="tuned.yaml"):
    if seal:
        d = {"integrity": integrity_of(d["buckets"], d.get("infeasible_buckets") or []), **d}
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error")
    return ctx


# ---- mode, backend, kernels -------------------------------------------------------------------------


def test_matching_use_is_silent(tmp_path):
    ctx = quiet()
    try:
        t = load_tuned(write(tmp_path, doc()), strict=True, mode="fwd", backend="cpu")
        assert t.config_for(100, mode="fwd", backend="cpu") == PatternConfig(**BAND)
        EvoformerAttention.sparse(t, backend="cpu", mode="fwd")
    finally:
        ctx.__exit__(None, None, None)


def test_forward_only_file_used_for_training_warns_or_raises(tmp_path):
    p = write(tmp_path, doc())
    t = load_tuned(p)
    with pytest.warns(TunedMismatchWarning, match=r"mode: tuned for inference \(forward only\), used for training"):
        assert t.config_for(100, mode="fwd+bwd") == PatternConfig(**BAND)  # still the pattern: a warning only
    strict = load_tuned(p, strict=True)
    with pytest.raises(TunedMismatchError, match=r"^.*tuned.yaml: mode: tuned for inference"):
        strict.config_for(100, mode="fwd+bwd")
    with pytest.raises(TunedMismatchError, match="mode: tuned for inference"):
        load_tuned(p, strict=True, mode="fwd+bwd")
    with pytest.raises(TunedMismatchError, match="mode: tuned for inference"):  # the deployment entry point
        EvoformerAttention.sparse(strict, mode="fwd+bwd")
    with pytest.raises(ValueError, match="mode must be one of fwd, fwd\\+bwd"):
        t.config_for(100, mode="train")


def test_other_backend_warns_or_raises(tmp_path):
    p = write(tmp_path, doc())
    with pytest.warns(TunedMismatchWarning, match="backend: tuned with the cpu kernels, used with triton"):
        load_tuned(p).config_for(100, backend="triton")
    with pytest.raises(TunedMismatchError, match="backend: tuned with the cpu kernels, used with triton"):
        EvoformerAttention.sparse(load_tuned(p, strict=True), backend="triton")
    EvoformerAttention.sparse(load_tuned(p, strict=True), backend="auto")  # "auto": decided per call, not checked


def test_changed_kernels_warn_or_raise(tmp_path):
    p = write(tmp_path, doc(kernel_fingerprint="sha256:0000000000000000"))
    with pytest.warns(TunedMismatchWarning, match=r"kernel_fingerprint: the cpu kernels changed since it was tuned "
                                                  r"\(sha256:0000000000000000, now sha256:[0-9a-f]{16}\)"):
        load_tuned(p)
    with pytest.raises(TunedMismatchError, match="kernel_fingerprint: the cpu kernels changed"):
        load_tuned(p, strict=True)
    old = dict(doc())
    del old["kernel_fingerprint"]  # a file that records none: not checked
    ctx = quiet()
    try:
        load_tuned(write(tmp_path, old, name="old.yaml"), strict=True)
    finally:
        ctx.__exit__(None, None, None)


def test_fingerprint_follows_the_backend_sources(tmp_path, monkeypatch):
    import kernels.tuned as tuned

    fp = kernel_fingerprint("cpu")
    assert fp.startswith("sha256:") and len(fp) == 7 + 16 and fp == kernel_fingerprint("cpu")
    assert kernel_fingerprint("triton") != fp and kernel_fingerprint("nope") is None
    # a copy of the sources with one byte of the CPU kernel changed gives another fingerprint
    for rel in tuned.KERNEL_SOURCES["shared"] + tuned.KERNEL_SOURCES["cpu"]:
        for f in tuned._source_files(rel):
            dst = tmp_path / f.relative_to(tuned._ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())
    monkeypatch.setattr(tuned, "_ROOT", tmp_path)
    tuned.kernel_fingerprint.cache_clear()
    try:
        assert kernel_fingerprint("cpu") == fp  # same bytes, same paths: same fingerprint
        c = tmp_path / "kernels" / "csrc" / "block_sparse_cpu.c"
        c.write_bytes(c.read_bytes() + b"\n")
        tuned.kernel_fingerprint.cache_clear()
        assert kernel_fingerprint("cpu") != fp
    finally:
        tuned.kernel_fingerprint.cache_clear()


def test_warnings_point_at_the_callers_line(tmp_path):
    p = write(tmp_path, doc(kernel_fingerprint="sha256:0000000000000000"))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = load_tuned(p)
        t.config_for(100, mode="fwd+bwd")
        EvoformerAttention.sparse(t, backend="triton")
        load_tuned(write(tmp_path, doc(), seal=False, name="unsealed.yaml"))
    kinds = {type(x.message) for x in w}
    assert kinds == {TunedMismatchWarning, TunedFileWarning}, [str(x.message) for x in w]
    assert len(w) == 4 and all(x.filename == __file__ for x in w), [(x.filename, x.lineno) for x in w]


# ---- explain -------------------------------------------------------------------------------------


def test_explain_says_why_in_one_line(tmp_path):
    p = write(tmp_path, doc())
    t = load_tuned(p)
    lines = {L: t.explain(L) for L in (10, 64, 100, 200, 300, 600)}
    assert all("\n" not in x and x.startswith(f"{p}: L={L}: ") for L, x in lines.items())
    assert "dense attention: shorter than the smallest bucket (64)" in lines[10]
    assert "bucket 64 was measured without a pattern worth deploying (no trial meets the non-speedup" in lines[10]
    assert t.config_for(10) is None and t.config_for(64) is None
    assert lines[100] == f"{p}: L=100: sparse pattern: decided by bucket 128; its pattern (t#2; 1.4x over SDPA)"
    assert "sparse pattern: decided by bucket 256" in lines[200] and "PROVISIONAL" in lines[200]
    assert "re-time before quoting" in lines[200]  # the bucket's caveats
    assert "dense attention: decided by bucket 512; bucket 512 was measured without a pattern worth deploying " \
           "(t#3, chosen on the confirmation, does not clear" in lines[300] and t.config_for(300) is None
    assert lines[600] == (f"{p}: L=600: dense attention: beyond the tuned range (largest measured bucket 512; longer "
                          f"sequences were never measured)") and t.config_for(600) is None


# ---- integrity -----------------------------------------------------------------------------------


def test_file_cut_off_at_a_bucket_boundary_is_refused(tmp_path):
    p = write(tmp_path, doc())
    text = p.read_text()
    cut = text[:text.index("- seq_len: 256")]  # the file ends after the first bucket: valid YAML, one bucket
    assert yaml.safe_load(cut)["buckets"] and len(yaml.safe_load(cut)["buckets"]) == 1
    p.write_text(cut)
    for strict in (False, True):
        with pytest.raises(TunedFileError) as ei:
            load_tuned(p, strict=strict)
        msg = str(ei.value)
        assert msg.startswith(f"{p}: integrity.buckets: the file holds 1 bucket entries, its integrity field records 2")
        assert "\n" not in msg and "verify=False" in msg


def test_edited_file_is_refused_unless_verify_false(tmp_path):
    p = write(tmp_path, doc())
    p.write_text(p.read_text().replace("window: 64", "window: 96"))
    with pytest.raises(TunedFileError, match=r"integrity.sha256: the buckets differ from what the export wrote"):
        load_tuned(p)
    t = load_tuned(p, verify=False)  # a deliberate edit
    assert t.config_for(200).window == 96
    # deleting the integrity entry: the file loads as an unsealed one, with the re-export warning
    d = yaml.safe_load(p.read_text())
    del d["integrity"]
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    with pytest.warns(TunedFileWarning, match=r"integrity: no integrity field .* re-export it \(python -m autotune.export\)"):
        assert load_tuned(p).config_for(200).window == 96


def test_written_file_is_sealed_before_its_buckets(tmp_path):
    from kernels.tuned import TunedFile

    f = TunedFile.from_dict(doc(), "x.yaml")
    out = f.write(tmp_path / "t.yaml")
    text = out.read_text()
    assert text.index("integrity:") < text.index("buckets:")  # a truncated file keeps its integrity field
    ctx = quiet()
    try:
        assert load_tuned(out, strict=True).file == f
    finally:
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("value", [3, "x", {"buckets": 2}, {"buckets": True, "sha256": "a"}])
def test_malformed_integrity_field_one_line(tmp_path, value):
    p = write(tmp_path, doc(integrity=value), seal=False)
    with pytest.raises(TunedFileError, match=r"integrity: must be a mapping \{buckets: COUNT, sha256: HEX\}"):
        load_tuned(p)


def test_bad_mode_refused(tmp_path):
    with pytest.raises(TunedFileError, match=r"mode: 'train' is not one of fwd, fwd\+bwd"):
        load_tuned(write(tmp_path, doc(mode="train")))

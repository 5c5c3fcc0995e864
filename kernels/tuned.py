"""Deployed tuned patterns: the tuned-file schema (`TunedFile`), written by ``python -m autotune.export``
and read here by `load_tuned`.

    from kernels import load_tuned
    tuned = load_tuned("tuned/protein.yaml")             # strict=True: mismatches raise
    cfg = tuned.config_for(L, device=q.device, dtype=q.dtype, heads=H, head_dim=D)
    if cfg is None:                                      # no pattern pays off here: dense attention
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:                                                # build_layout(cfg, L, signal=bias) for a GuidedConfig
        out = kernels.sparse_attention(q, k, v, build_layout(cfg, L), bias, config=tuned.kernel_config_for(L))

Bucket rule: a sequence of length L is decided by the smallest *measured* bucket >= L - the
exported buckets and the ``infeasible_buckets`` the study measured without finding a pattern worth
running. An exported bucket gives its pattern (a pattern is defined in residues, so it applies to
any length up to the bucket's). An infeasible bucket, or a length beyond every measured bucket (not
measured: unknown), gives ``None`` from `TunedPatterns.config_for` and `kernel_config_for`: use
dense attention there (``EvoformerAttention.sparse(tuned)`` does), never a neighbour's pattern.

File format 2 (YAML; only ``buckets`` and, in each entry, ``seq_len`` and ``pattern`` are required).
`TunedFile` is this schema: one field per top-level key, in the order the export writes them, and
`TunedBucket` per entry of ``buckets``:

    format: 2
    integrity: {buckets: 2, sha256: HEX}  # the bucket count and a digest of the buckets (`integrity_of`)
    study: NAME
    rule: ...                         # informative: how the export chose (not checked)
    device: cuda                      # where it was tuned: cuda or cpu
    device_name: NVIDIA H100 80GB HBM3  # torch.cuda.get_device_name, or the CPU model
    backend: triton                   # the kernels.sparse_attention backend it was tuned with
    dtype: bfloat16
    mode: fwd                         # fwd (inference) or fwd+bwd (training)
    workloads: [...], targets: {...}, hardware: {...}             # informative
    versions: {torch: ..., triton: ..., protein-sparse-autotune: ...}  # informative
    kernel_fingerprint: sha256:0123456789abcdef  # `kernel_fingerprint(backend)` when exported
    git_revision: ..., exported_at: ...                           # informative
    infeasible_buckets: [2048]        # measured, no pattern worth running: dense attention
    not_exported: {2048: why}         # the verdict's reason and caveats (informative)
    buckets:
      - seq_len: 256
        heads: [4, 8]                 # attention heads and head dims it was measured with
        head_dims: [32]
        pattern: {block_size: 64, window: 128, num_global: 16, stride: 0, global_placement: first}
        kernel: {block_m: 64, block_n: 64, num_warps: 4, num_stages: 2}   # or null
        source: {study: NAME, trial: 12}
        speedup: {...}, peak_mib: {...}, accuracy: {...}, accuracy_chains: {...}   # informative
        provisional: false            # decided while the noise check fired (re-run on a quiet machine)
        caveats: [...]                # the verdict's caveats, as the search and the report word them

Format 1 (the previous exporter) is read too: it has no ``device_name`` at the top (taken from
``hardware.device_name`` when there) and no ``heads`` / ``head_dims`` (not checked). A newer format
is refused: its fields may mean something this reader does not know.

Where it is used (`load_tuned(path, device=..., dtype=...)` once; `config_for(L, device=..., dtype=...,
heads=..., head_dim=...)` per call; arguments left out are not checked): the device type must be
the file's ``device``, the device's name its ``device_name`` (the current CUDA device's name, or
this machine's CPU model), the dtype its ``dtype``, and the heads / head dim among the bucket's.
``load_tuned`` without ``device`` checks the file's own device type here (is there a CUDA device
for a ``cuda`` file, is it the same model). A mismatch is a `TunedMismatchWarning` (one line,
once per file and kind of mismatch, attributed to the caller's line: the first frame outside the
project's packages) by default; with ``strict=True`` a `TunedMismatchError` (a
`patterns.errors.InputError`, so a ``ValueError``) - the tuned speedups were measured on another
machine or shape. What it was tuned for is checked the same way: ``mode`` (``config_for(...,
mode="fwd+bwd")`` for training use; `EvoformerAttention.sparse(tuned, mode=...)`), ``backend``
(``config_for(..., backend=...)``) and, in `load_tuned`, ``kernel_fingerprint`` against the kernels
installed here (`kernel_fingerprint`: a digest of the backend's sources, cached). `explain(L)`
says in one line why a length gets a pattern or dense attention (the reason behind a ``None``).

Integrity: the export writes ``integrity`` (the bucket count and the SHA-256 of the buckets and
``infeasible_buckets`` in canonical JSON) before the buckets. `load_tuned` refuses, strict or not,
a file whose entries are fewer or more than recorded (cut off at a bucket boundary) or whose
digest differs (edited): `TunedFileError` ``FILE: integrity.buckets|integrity.sha256: ...``.
A deliberate edit: ``load_tuned(path, verify=False)``, or delete the ``integrity`` entry. A file
without it (older exports) loads with a `TunedFileWarning` saying to re-export it.

Validation (`TunedFile.from_dict`): ``format`` must be 1 or 2 when given, ``dtype`` one of float32 /
bfloat16 / float16, ``device`` cuda or cpu, ``mode`` fwd or fwd+bwd, ``integrity`` a mapping
{buckets, sha256}; pattern and kernel fields must be real integers
(``64.0`` and ``true`` are refused as launch parameters) with the values the kernels support. The
file is read with `patterns.safeyaml` (UTF-8 only, duplicate keys refused, aliases and nesting
bounded). Every problem raises `TunedFileError` (an ``InputError``) with one line
``FILE: KEY: problem``; a missing file raises ``FileNotFoundError`` naming it. The informative
fields are kept as they are, not checked.

Writing (`TunedFile.dumps` / `TunedFile.write`): plain YAML (no anchors or aliases), keys in schema
order, an optional ``#`` comment header; `write` replaces the file atomically.

This module imports only yaml, torch and the project's patterns / kernels packages: it is deployed
without optuna, ray, sqlalchemy or triton (the ``pip install`` core).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from patterns.config import PatternConfig
from patterns.errors import InputError
from patterns.guided import GuidedConfig, pattern_from_dict
from patterns.safeyaml import CoreDumper, YAMLInputError, load_yaml_file

from .config import KernelConfig

__all__ = ["TunedFile", "TunedBucket", "TunedPatterns", "TunedFileError", "TunedMismatchError",
           "TunedMismatchWarning", "TunedFileWarning", "load_tuned", "parse_tuned", "device_name", "cpu_model",
           "kernel_fingerprint", "integrity_of", "FORMAT", "FORMATS", "MODES"]

FORMAT = 2  # what autotune.export writes
FORMATS = (1, 2)  # what this reader reads
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cuda", "cpu")
MODES = ("fwd", "fwd+bwd")  # inference; training (the backward pass timed too)
_KERNEL_KEYS = ("block_m", "block_n", "num_warps", "num_stages")
_PATTERN_INT_KEYS = ("block_size", "window", "num_global", "stride")


class TunedFileError(InputError):
    """A malformed tuned file: one line ``FILE: KEY: problem``."""


class TunedMismatchError(InputError):
    """A tuned file used where it was not tuned (device, device name, dtype, heads, head dim, mode,
    backend, or kernels changed since), in strict mode."""


class TunedMismatchWarning(UserWarning):
    """The same mismatch as `TunedMismatchError`, outside strict mode."""


class TunedFileWarning(UserWarning):
    """A tuned file without an integrity field (written by an older export): it loads, but a cut-off
    or edited file cannot be detected; re-export it."""


# ---- the schema ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunedBucket:
    """One entry of ``buckets``: the pattern (and Triton launch config) for lengths up to ``seq_len``.

    ``heads`` / ``head_dims``: the shapes it was measured with (None: not recorded, format 1).
    ``info``: the informative fields (source, speedups, memory, accuracy, ...), in file order."""

    seq_len: int
    pattern: Union[PatternConfig, GuidedConfig]
    kernel: Optional[KernelConfig] = None
    heads: Optional[tuple[int, ...]] = None
    head_dims: Optional[tuple[int, ...]] = None
    info: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The entry as written: seq_len, heads, head_dims, pattern, kernel, then ``info``."""
        return {
            "seq_len": self.seq_len,
            "heads": None if self.heads is None else list(self.heads),
            "head_dims": None if self.head_dims is None else list(self.head_dims),
            "pattern": self.pattern.to_dict(),
            "kernel": None if self.kernel is None else self.kernel.to_dict(),
            **self.info,
        }


@dataclass(frozen=True)
class TunedFile:
    """A tuned file (module docstring): one field per top-level key, in file order. The fields the
    reader checks and uses are typed; the informative ones (``rule``, ``backend``, ``mode``,
    ``workloads``, ``targets``, ``versions``, ``git_revision``, ``exported_at``, ``not_exported``)
    are kept as written. ``extra``: top-level keys this schema does not name (written before
    ``buckets``). ``format`` None: the file did not say (read as format 1 or 2)."""

    buckets: tuple[TunedBucket, ...]
    format: Optional[int] = FORMAT
    integrity: Optional[dict] = field(default=None, compare=False)  # as read; `dumps` writes it afresh
    study: Optional[str] = None
    rule: Any = None
    device: Optional[str] = None
    device_name: Optional[str] = None
    backend: Any = None
    dtype: Optional[str] = None
    mode: Any = None
    workloads: Any = None
    targets: Any = None
    hardware: Optional[dict] = None
    versions: Any = None
    kernel_fingerprint: Optional[str] = None
    git_revision: Any = None
    exported_at: Any = None
    infeasible_buckets: tuple[int, ...] = ()
    not_exported: Any = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", tuple(self.buckets))
        object.__setattr__(self, "infeasible_buckets", tuple(self.infeasible_buckets))

    def to_dict(self, seal: bool = False) -> dict[str, Any]:
        """The file's mapping, keys in schema order (``format``, ``integrity`` and
        ``kernel_fingerprint`` left out when None, ``extra`` before ``buckets``). ``seal``: with the
        ``integrity`` field computed from the buckets (`integrity_of`; what `dumps` writes)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("buckets", "extra") or (f.name in ("format", "integrity", "kernel_fingerprint")
                                                   and getattr(self, f.name) is None and not (seal and f.name == "integrity")):
                continue
            if f.name == "integrity" and seal:
                out["integrity"] = integrity_of([b.to_dict() for b in self.buckets], self.infeasible_buckets)
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if f.name == "infeasible_buckets" else value
        out.update(self.extra)
        out["buckets"] = [b.to_dict() for b in self.buckets]
        return out

    def dumps(self, header: str = "") -> str:
        """The file's text: ``header`` (each line made a ``#`` comment) then plain YAML (no anchors
        or aliases, keys in schema order, flow style for leaf collections, width 110), sealed: its
        ``integrity`` field (before the buckets, so a cut-off file keeps it) is computed here."""
        import yaml

        class _Dumper(CoreDumper):  # quotes what YAML 1.1 or 1.2 reads as another type
            def ignore_aliases(self, data: Any) -> bool:  # e.g. the hardware, repeated per bucket
                return True

        head = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
        return head + yaml.dump(self.to_dict(seal=True), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=110)

    def write(self, path: Union[str, Path], header: str = "") -> Path:
        """Write `dumps` to ``path`` atomically (`patterns.output.write_output`: a temporary file
        beside it, then renamed; only a regular file is replaced): a reader never sees a
        half-written file."""
        from patterns.output import write_output

        write_output(path, self.dumps(header))
        return Path(path)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<tuned>", verify: bool = True) -> "TunedFile":
        """Validate a parsed tuned file (module docstring) into a `TunedFile`; `TunedFileError`
        naming ``source`` and the key otherwise. ``verify``: check the ``integrity`` field when the
        file has one (`check_integrity`; False: a deliberate edit is accepted)."""
        _check_top(data, source)
        infeasible: tuple[int, ...] = ()
        if data.get("infeasible_buckets") not in (None, []):
            infeasible = _int_list(source, "infeasible_buckets", data["infeasible_buckets"])
        if "buckets" not in data:
            raise _fail(source, "buckets", "required key is missing")
        items = data["buckets"]
        if not isinstance(items, list) or not items:
            raise _fail(source, "buckets", "must be a non-empty list")
        buckets: dict[int, TunedBucket] = {}
        for i, item in enumerate(items):
            b = _bucket(item, source, f"buckets[{i}]", seen=buckets.keys(), infeasible=infeasible)
            buckets[b.seq_len] = b
        if verify:
            check_integrity(data, infeasible, source)
        named = {f.name for f in fields(cls)} - {"buckets", "extra", "infeasible_buckets"}
        kw = {k: data.get(k) for k in named}
        extra = {k: v for k, v in data.items() if k not in named and k not in ("buckets", "infeasible_buckets")}
        return cls(buckets=tuple(buckets.values()), infeasible_buckets=infeasible, extra=extra, **kw)


# ---- validation ------------------------------------------------------------------------------------


def _fail(path: str, key: str, problem: str) -> TunedFileError:
    return TunedFileError(f"{path}: {key}: {problem}")


def _strict_ints(path: str, key: str, d: dict, names: tuple[str, ...]) -> None:
    for k in names:
        if k in d and (isinstance(d[k], bool) or not isinstance(d[k], int)):
            raise _fail(path, f"{key}.{k}", f"must be an integer, got {type(d[k]).__name__} {d[k]!r}")


def _int_list(path: str, key: str, value: Any) -> tuple[int, ...]:
    """A non-empty list of positive integers (a single integer is read as a list of one)."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not items:
        raise _fail(path, key, f"must be a non-empty list of positive integers, got {value!r}")
    for x in items:
        if isinstance(x, bool) or not isinstance(x, int) or x < 1 or x > MAX_TUNED_SEQ_LEN:
            raise _fail(path, key, f"must be a non-empty list of positive integers up to {MAX_TUNED_SEQ_LEN}, "
                                   f"got {str(value)[:60]}")
    return tuple(sorted(set(items)))


def _check_top(data: Any, path: str) -> None:
    """The top-level checks: a mapping with string keys; format, dtype, device, study, device_name
    and hardware of the right kind."""
    if data is None:
        raise _fail(path, "(file)", "the file is empty")
    if not isinstance(data, dict):
        raise _fail(path, "(file)", f"must be a mapping with a 'buckets' list, got {type(data).__name__}")
    for k in data:
        if not isinstance(k, str):
            raise _fail(path, repr(k), "keys must be strings")
    if "format" in data and (isinstance(data["format"], bool) or data["format"] not in FORMATS):
        raise _fail(path, "format", f"unsupported format {data['format']!r} (this reader reads format "
                                    f"{' and '.join(map(str, FORMATS))})")
    if data.get("dtype") is not None and data["dtype"] not in DTYPES:
        raise _fail(path, "dtype", f"{data['dtype']!r} is not one of {', '.join(DTYPES)}")
    if data.get("device") is not None and data["device"] not in DEVICES:
        raise _fail(path, "device", f"{data['device']!r} is not one of {', '.join(DEVICES)}")
    if data.get("mode") is not None and data["mode"] not in MODES:
        raise _fail(path, "mode", f"{data['mode']!r} is not one of {', '.join(MODES)}")
    if data.get("integrity") is not None and not (
            isinstance(data["integrity"], dict) and isinstance(data["integrity"].get("sha256"), str)
            and isinstance(data["integrity"].get("buckets"), int) and not isinstance(data["integrity"]["buckets"], bool)):
        raise _fail(path, "integrity", "must be a mapping {buckets: COUNT, sha256: HEX} (as the export writes it)")
    for k in ("study", "device_name", "backend", "kernel_fingerprint"):
        if data.get(k) is not None and not isinstance(data[k], str):
            raise _fail(path, k, f"must be a string, got {type(data[k]).__name__}")
    for k in ("hardware",):
        if data.get(k) is not None and not isinstance(data[k], dict):
            raise _fail(path, k, f"must be a mapping, got {type(data[k]).__name__}")


#: the longest bucket a tuned file may name: the kernels index positions with 32-bit integers
MAX_TUNED_SEQ_LEN = 2**31 - 1


def _bucket(item: Any, path: str, key: str, seen: Any = (), infeasible: Any = ()) -> TunedBucket:
    """One ``buckets`` entry: seq_len (not one of the buckets ``seen`` before it, nor ``infeasible``),
    pattern (static or ``family: guided``), kernel (fitting the pattern's block size), heads,
    head_dims; the other keys are kept as ``info``."""
    if not isinstance(item, dict):
        raise _fail(path, key, f"must be a mapping, got {type(item).__name__}")
    for req in ("seq_len", "pattern"):
        if req not in item:
            raise _fail(path, f"{key}.{req}", "required key is missing")
    L = item["seq_len"]
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise _fail(path, f"{key}.seq_len", f"must be a positive integer, got {L!r}")
    if L > MAX_TUNED_SEQ_LEN:  # e.g. 10**30: no kernel indexes that far
        raise _fail(path, f"{key}.seq_len", f"{str(L)[:40]} is above the limit {MAX_TUNED_SEQ_LEN} (2**31 - 1)")
    if L in seen:
        raise _fail(path, f"{key}.seq_len", f"duplicate bucket {L}")
    if L in infeasible:
        raise _fail(path, f"{key}.seq_len", f"bucket {L} is also listed in infeasible_buckets")
    if isinstance(item["pattern"], dict):
        _strict_ints(path, f"{key}.pattern", item["pattern"], _PATTERN_INT_KEYS)
        gp = item["pattern"].get("global_placement", "first")
        if not isinstance(gp, str):
            raise _fail(path, f"{key}.pattern.global_placement", f"must be a string, got {type(gp).__name__}")
    try:  # a GuidedConfig is built from the deployed model's pair bias at run time
        pattern = pattern_from_dict(item["pattern"], source=f"{path}: {key}.pattern")
    except (TypeError, ValueError) as e:
        msg = str(e)
        raise TunedFileError(msg if msg.startswith(path) else f"{path}: {key}.pattern: {msg}") from None
    kernel = None
    if item.get("kernel") is not None:
        if not isinstance(item["kernel"], dict):
            raise _fail(path, f"{key}.kernel", f"must be a mapping or null, got {type(item['kernel']).__name__}")
        _strict_ints(path, f"{key}.kernel", item["kernel"], _KERNEL_KEYS)
        try:
            kernel = KernelConfig.from_dict(item["kernel"])
        except (TypeError, ValueError) as e:
            raise _fail(path, f"{key}.kernel", str(e).splitlines()[0]) from None
        # every allowed tile (a power of two) divides a block or is a multiple of it: nothing more to check
    heads = _int_list(path, f"{key}.heads", item["heads"]) if item.get("heads") is not None else None
    head_dims = _int_list(path, f"{key}.head_dims", item["head_dims"]) if item.get("head_dims") is not None else None
    info = {k: v for k, v in item.items() if k not in ("seq_len", "pattern", "kernel", "heads", "head_dims")}
    return TunedBucket(L, pattern, kernel, heads, head_dims, info)


# ---- integrity ------------------------------------------------------------------------------------

_VERIFY_HINT = ("re-export it (python -m autotune.export), or, after a deliberate edit, load it with "
                "load_tuned(..., verify=False) or delete its integrity entry")


def integrity_of(buckets: list, infeasible: Any = ()) -> dict[str, Any]:
    """The ``integrity`` field of a file with these ``buckets`` entries (mappings, as written) and
    ``infeasible`` buckets: ``{buckets: COUNT, sha256: HEX}``, the SHA-256 of their canonical JSON
    (keys sorted, compact; what YAML reads back from the written file gives the same text)."""
    canon = json.dumps({"buckets": list(buckets), "infeasible_buckets": sorted(int(x) for x in infeasible)},
                       sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return {"buckets": len(buckets), "sha256": hashlib.sha256(canon.encode("utf-8")).hexdigest()}


def check_integrity(data: dict, infeasible: Any, path: str) -> None:
    """Refuse (`TunedFileError`, one line naming ``path`` and the key) a file whose ``integrity``
    field disagrees with its buckets: fewer or more entries than recorded (a file cut off at a
    bucket boundary), or another digest (an edit). A file without the field is not checked here
    (`load_tuned` warns about it)."""
    rec = data.get("integrity")
    if rec is None:
        return
    items = data["buckets"]
    if len(items) != rec["buckets"]:
        raise _fail(path, "integrity.buckets", f"the file holds {len(items)} bucket entries, its integrity field "
                                               f"records {rec['buckets']} (cut off or edited): {_VERIFY_HINT}")
    if integrity_of(items, infeasible)["sha256"] != rec["sha256"]:
        raise _fail(path, "integrity.sha256", f"the buckets differ from what the export wrote (edited or "
                                              f"corrupted): {_VERIFY_HINT}")


# ---- the kernels' fingerprint ----------------------------------------------------------------------

_ROOT = Path(__file__).resolve().parent.parent
#: the sources that decide a backend's numerics and speed, relative to the project root: each
#: backend's own modules (and the C kernel of the CPU backend) and what every backend shares
#: (dispatch, plans, launch configs, the layout builder that turns a pattern into blocks)
KERNEL_SOURCES: dict[str, tuple[str, ...]] = {
    "shared": ("kernels/backends.py", "kernels/plans.py", "kernels/config.py", "kernels/opdefs.py",
               "patterns/layout.py", "patterns/config.py", "patterns/guided.py"),
    "cpu": ("kernels/cpu.py", "kernels/cpu_bucket.py", "kernels/cpu_fused.py", "kernels/csrc"),
    "triton": ("kernels/triton_kernels.py", "kernels/triton_bwd_kernels.py", "kernels/triton_op.py"),
    "flex": ("kernels/flex.py",),
    "dense": ("kernels/dense.py",),
    "reference": ("kernels/reference.py",),
}


def _source_files(rel: str) -> list[Path]:
    p = _ROOT / rel
    return sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else ([p] if p.is_file() else [])


@functools.lru_cache(maxsize=None)
def kernel_fingerprint(backend: Optional[str]) -> Optional[str]:
    """``sha256:`` + 16 hex digits: a digest of the sources in `KERNEL_SOURCES` for ``backend``
    (the shared ones and its own; their paths and bytes) and, for Triton, its version - as Triton
    keys its compile cache on the kernel's source and the compiler's version. The export records
    it; `load_tuned` compares it with the kernels installed here. None (not checked) for an unknown
    backend, or Triton where it is not installed. Reads about 100 KB once per backend (cached)."""
    if backend not in KERNEL_SOURCES or backend == "shared":
        return None
    h = hashlib.sha256()
    for rel in KERNEL_SOURCES["shared"] + KERNEL_SOURCES[backend]:
        for f in _source_files(rel):
            h.update(f.relative_to(_ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    if backend == "triton":
        from importlib import metadata

        try:
            h.update(b"triton " + metadata.version("triton").encode())
        except metadata.PackageNotFoundError:
            return None
    return "sha256:" + h.hexdigest()[:16]


# ---- where it is used ------------------------------------------------------------------------------

_LIBRARY = tuple(str(_ROOT / pkg) + os.sep for pkg in ("kernels", "models", "patterns", "search_spaces", "results",
                                                       "autotune"))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` for a `warnings.warn` made by the function calling this one that names the
    first frame outside the project's packages: the user's line that called into the library."""
    try:
        level, f = 1, sys._getframe(2)  # frame 2: the caller of the function that warns
    except ValueError:  # called from the top of the stack
        return 2
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_LIBRARY):
        f, level = f.f_back, level + 1
    return level + 1


def _warn(line: str, category: type = UserWarning) -> None:
    """``warnings.warn(line)`` attributed to the user's line (`_caller_stacklevel`)."""
    warnings.warn(line, category, stacklevel=_caller_stacklevel())



def _dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` / ``"bfloat16"`` -> ``"bfloat16"``."""
    return str(dtype).rsplit(".", 1)[-1]


def _device_type(device: Any) -> str:
    """``torch.device("cuda:1")`` / ``"cuda:1"`` / ``"cuda"`` -> ``"cuda"``."""
    return str(getattr(device, "type", None) or str(device).split(":", 1)[0])


def cpu_model() -> Optional[str]:
    """This machine's CPU model: the ``model name`` line of ``/proc/cpuinfo``, else
    ``platform.processor()``; None if neither says. ``autotune.hardware`` records it as a CPU
    study's ``device_name`` (the export's), so a CPU file tuned here matches here."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def device_name(device: Any = "cpu") -> Optional[str]:
    """This machine's name for ``device``: ``torch.cuda.get_device_name`` of that CUDA device, or the
    CPU model (`cpu_model`, what the export records); None if it has none."""
    if _device_type(device) == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        idx = getattr(device, "index", None)
        if idx is None and ":" in str(device):
            idx = int(str(device).split(":", 1)[1])
        return _cuda_name(torch.cuda.current_device() if idx is None else idx)
    return _cpu_name()


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    import torch

    return torch.cuda.get_device_name(index)


@functools.lru_cache(maxsize=1)
def _cpu_name() -> Optional[str]:
    return cpu_model()


@dataclass
class TunedPatterns:
    """A loaded `TunedFile` and where it is used: the bucket rule and the checks (module
    docstring). ``strict``: mismatches raise `TunedMismatchError` instead of warning."""

    file: TunedFile
    path: Optional[str] = None
    strict: bool = False
    _warned: set = field(default_factory=set, repr=False, compare=False)
    _entries: dict = field(init=False, repr=False, compare=False)
    _measured: list = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.file.buckets:
            raise TunedFileError(f"{self.path or 'TunedPatterns'}: buckets: no bucket given")
        self._entries = {b.seq_len: b for b in self.file.buckets}  # the file is frozen: looked up per call
        self._measured = sorted(set(self._entries) | set(self.file.infeasible_buckets))

    @property
    def entries(self) -> dict[int, TunedBucket]:
        """Exported bucket -> its `TunedBucket`."""
        return dict(self._entries)

    @property
    def infeasible(self) -> frozenset:
        """Buckets the study measured without an exported pattern (dense attention there)."""
        return frozenset(self.file.infeasible_buckets)

    @property
    def meta(self) -> dict:
        """The file's top-level fields other than ``buckets``."""
        d = self.file.to_dict()
        d.pop("buckets")
        return d

    @property
    def buckets(self) -> list[int]:
        """The exported buckets (each with a pattern)."""
        return sorted(self._entries)

    @property
    def measured_buckets(self) -> list[int]:
        """Every bucket the study measured: exported and infeasible."""
        return list(self._measured)

    @property
    def device(self) -> Optional[str]:
        return self.file.device

    @property
    def dtype(self) -> Optional[str]:
        return self.file.dtype

    @property
    def device_name(self) -> Optional[str]:
        name = self.file.device_name
        if name is None and isinstance(self.file.hardware, dict):
            name = self.file.hardware.get("device_name")
        return name

    def bucket_for(self, seq_len: int) -> Optional[int]:
        """The smallest measured bucket >= seq_len (exported or infeasible); None beyond every one."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        for b in self._measured:
            if b >= seq_len:
                return b
        return None

    def entry_for(self, seq_len: int, **where: Any) -> Optional[TunedBucket]:
        """The exported bucket deciding ``seq_len``, or None (infeasible bucket, or beyond every
        measured bucket): use dense attention (`explain` says why). ``where``: device, dtype, heads,
        head_dim, mode, backend to check."""
        b = self.bucket_for(seq_len)
        entry = self._entries.get(b) if b is not None else None
        self.check(entry=entry, **where)
        return entry

    def config_for(self, seq_len: int, *, device: Any = None, dtype: Any = None, heads: Optional[int] = None,
                   head_dim: Optional[int] = None, mode: Optional[str] = None,
                   backend: Optional[str] = None) -> Optional[Union[PatternConfig, GuidedConfig]]:
        """The pattern for length ``seq_len`` (PatternConfig or GuidedConfig), or None: dense attention
        (an infeasible bucket, or a length beyond every measured bucket; ``explain(seq_len)`` gives
        the reason in one line). The arguments given are checked against the file (warning, or
        `TunedMismatchError` when strict): ``mode`` "fwd" (inference) or "fwd+bwd" (training),
        ``backend`` the `kernels.sparse_attention` backend that will run it."""
        e = self.entry_for(seq_len, device=device, dtype=dtype, heads=heads, head_dim=head_dim, mode=mode,
                           backend=backend)
        return None if e is None else e.pattern

    def kernel_config_for(self, seq_len: int, **where: Any) -> Optional[KernelConfig]:
        """The bucket's KernelConfig, or None (backend default, or dense attention there)."""
        e = self.entry_for(seq_len, **where)
        return None if e is None else e.kernel

    def explain(self, seq_len: int) -> str:
        """One line: why ``seq_len`` gets a pattern or dense attention under the bucket rule (beyond
        the tuned range, a bucket measured without a deployable pattern and the verdict's reason,
        shorter than the smallest bucket, a provisional verdict and the bucket's caveats)."""
        b = self.bucket_for(seq_len)
        where = f"{self.path or 'tuned patterns'}: L={seq_len}"
        if b is None:
            return (f"{where}: dense attention: beyond the tuned range (largest measured bucket "
                    f"{self._measured[-1]}; longer sequences were never measured)")
        shorter = (f"shorter than the smallest bucket ({b}), decided by it; " if b == self._measured[0]
                   and seq_len < b else f"decided by bucket {b}; ")
        e = self._entries.get(b)
        if e is None:
            why = (self.file.not_exported or {}).get(b) if isinstance(self.file.not_exported, dict) else None
            return (f"{where}: dense attention: {shorter}bucket {b} was measured without a pattern worth "
                    f"deploying" + (f" ({why})" if why else ""))
        src, sp = e.info.get("source") or {}, e.info.get("speedup_geomean")
        notes = ([f"t#{src['trial']}"] if isinstance(src, dict) and src.get("trial") is not None else [])
        notes += [f"{sp:g}x over SDPA"] if isinstance(sp, (int, float)) else []
        notes += ["PROVISIONAL"] if e.info.get("provisional") else []
        notes += [str(c) for c in e.info.get("caveats") or []]
        return f"{where}: sparse pattern: {shorter}its pattern" + (f" ({'; '.join(notes)})" if notes else "")

    def _mismatches(self, device: Any, dtype: Any, heads: Optional[int], head_dim: Optional[int],
                    mode: Optional[str], backend: Optional[str], entry: Optional[TunedBucket]) -> list[str]:
        problems: list[str] = []
        if device is not None and self.device is not None:
            used = _device_type(device)
            if used != self.device:
                problems.append(f"device: tuned on {self.device} ({self.device_name or 'model not recorded'}), "
                                f"used on {used}")
            elif self.device_name is not None:
                here = device_name(device)
                if here is not None and here != self.device_name:
                    problems.append(f"device_name: tuned on {self.device_name!r}, used on {here!r}")
        if dtype is not None and self.dtype is not None and _dtype_name(dtype) != self.dtype:
            problems.append(f"dtype: tuned in {self.dtype}, used in {_dtype_name(dtype)}")
        if mode is not None and self.file.mode is not None and mode != self.file.mode:
            what = {"fwd": "inference (forward only)", "fwd+bwd": "training (forward and backward)"}
            problems.append(f"mode: tuned for {what.get(self.file.mode, self.file.mode)}, used for "
                            f"{what.get(mode, mode)}")
        if backend is not None and self.file.backend is not None and backend != self.file.backend:
            problems.append(f"backend: tuned with the {self.file.backend} kernels, used with {backend}")
        if entry is not None:
            if heads is not None and entry.heads and heads not in entry.heads:
                problems.append(f"buckets[seq_len={entry.seq_len}].heads: measured with {list(entry.heads)} heads, "
                                f"used with {heads}")
            if head_dim is not None and entry.head_dims and head_dim not in entry.head_dims:
                problems.append(f"buckets[seq_len={entry.seq_len}].head_dims: measured with head dim "
                                f"{list(entry.head_dims)}, used with {head_dim}")
        return problems

    def check_kernels(self) -> list[str]:
        """Whether the kernels installed here are those the file was tuned with: its
        ``kernel_fingerprint`` against `kernel_fingerprint` of its backend (not checked when the
        file records none). A change is a mismatch like the others (warning, or raised when strict)."""
        rec, backend = self.file.kernel_fingerprint, self.file.backend
        now = kernel_fingerprint(backend) if rec is not None else None
        if rec is None or now is None or now == rec:
            return []
        return self._report([f"kernel_fingerprint: the {backend} kernels changed since it was tuned "
                             f"({rec}, now {now})"], "its speedups were measured with other kernels: re-tune, "
                                                     "or re-time before relying on them")

    def check(self, *, device: Any = None, dtype: Any = None, heads: Optional[int] = None,
              head_dim: Optional[int] = None, mode: Optional[str] = None, backend: Optional[str] = None,
              entry: Optional[TunedBucket] = None) -> list[str]:
        """Mismatches between the file and where it is used (arguments left out are not checked):
        device, device name, dtype, heads, head dim, ``mode`` ("fwd" or "fwd+bwd") and ``backend``;
        each warned once (`TunedMismatchWarning`, attributed to the caller's line), or the first
        raised when strict. Returns them."""
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        problems = self._mismatches(device, dtype, heads, head_dim, mode, backend, entry)
        return self._report(problems, "its patterns and speedups were measured elsewhere")

    def _report(self, problems: list[str], consequence: str) -> list[str]:
        for msg in problems:
            line = f"{self.path or 'tuned patterns'}: {msg}: {consequence}"
            if self.strict:
                raise TunedMismatchError(line)
            if line not in self._warned:
                self._warned.add(line)
                _warn(line, TunedMismatchWarning)
        return problems


def parse_tuned(data: Any, path: str = "<tuned>", *, strict: bool = False, verify: bool = True) -> TunedPatterns:
    """Validate the parsed tuned file ``data`` (`TunedFile.from_dict`) into `TunedPatterns`."""
    return TunedPatterns(TunedFile.from_dict(data, path, verify), path, strict)


def load_tuned(path: Union[str, Path], *, strict: bool = False, device: Any = None, dtype: Any = None,
               mode: Optional[str] = None, backend: Optional[str] = None, verify: bool = True) -> TunedPatterns:
    """Read a tuned-patterns file (FileNotFoundError / `TunedFileError` naming the file and the key)
    and check it against where it is used: ``device`` (default: the file's own device type, on this
    machine), ``dtype``, ``mode`` and ``backend`` when given, and the kernels installed here against
    the file's ``kernel_fingerprint``. Mismatches warn (`TunedMismatchWarning`), or raise
    `TunedMismatchError` with ``strict=True``; ``strict`` also holds for later `config_for` calls.
    ``verify``: refuse a file whose integrity field disagrees with its buckets (cut off or edited;
    strict or not); ``verify=False`` accepts a deliberate edit. A file without the field (an older
    export) loads with a `TunedFileWarning` saying to re-export it."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such tuned-patterns file")
    try:
        data = load_yaml_file(p, str(path))
    except YAMLInputError as e:
        raise TunedFileError(str(e)) from None
    tuned = parse_tuned(data, str(path), strict=strict, verify=verify)
    if verify and tuned.file.integrity is None:
        _warn(f"{path}: integrity: no integrity field (written by an older export), so a file cut off or edited "
              f"cannot be detected: re-export it (python -m autotune.export) to add one", TunedFileWarning)
    where = device if device is not None else tuned.device
    if where is not None:
        if _device_type(where) == "cuda" and device is None:
            import torch

            if not torch.cuda.is_available():
                tuned.check(device="cpu")  # a cuda file on a machine without CUDA runs on the CPU
                where = None
        if where is not None:
            tuned.check(device=where)
    tuned.check(dtype=dtype, mode=mode, backend=backend)
    tuned.check_kernels()
    return tuned

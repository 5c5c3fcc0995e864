"""Deployed tuned patterns: read the file written by ``python -m autotune.export``.

    tuned = load_tuned("tuned/protein.yaml")
    cfg = tuned.config_for(L)              # PatternConfig: build_layout(cfg, L) as is; a GuidedConfig
                                           # (pattern: {family: guided, ...}): build_layout(cfg, L, signal=bias)
    kcfg = tuned.kernel_config_for(L)      # KernelConfig or None (backend default)
    out = kernels.sparse_attention(q, k, v, build_layout(cfg, L), bias, config=kcfg)

Bucket rule: a sequence of length L uses the smallest bucket >= L; longer than every bucket, the
largest bucket. (A bucket's config was measured at the bucket's length; a pattern is defined in
residues, so it applies to any length.)

File format (YAML; only ``buckets`` and, in each entry, ``seq_len`` and ``pattern`` are required):

    format: 1
    study: NAME
    device: cuda
    dtype: bfloat16
    hardware: {...}
    buckets:
      - seq_len: 256
        pattern: {block_size: 64, window: 128, num_global: 16, stride: 0, global_placement: first}
        kernel: {block_m: 64, block_n: 64, num_warps: 4, num_stages: 2}   # or null
        source: {study: NAME, trial: 12}
        speedup: {...}, peak_mib: {...}, accuracy: {...}                   # informative

Validation (`parse_tuned`): ``format`` must be 1 when given, ``dtype`` one of float32 / bfloat16 /
float16, ``device`` cuda or cpu; pattern and kernel fields must be real integers (``64.0`` and
``true`` are refused as launch parameters) with the values the kernels support. The file is read
with `patterns.safeyaml` (UTF-8 only, duplicate keys refused, aliases and nesting bounded). Every
problem raises ``ValueError`` with one line ``FILE: KEY: problem``; a missing file raises
``FileNotFoundError`` naming it.

This module imports only yaml and the project's patterns / kernels packages: it is deployed
without optuna, ray or sqlalchemy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .config import PatternConfig
from .safeyaml import YAMLInputError, load_yaml_file

if TYPE_CHECKING:  # kernels imports patterns: import it lazily to keep `import patterns` acyclic
    from kernels.config import KernelConfig

__all__ = ["TunedPatterns", "TunedEntry", "load_tuned", "parse_tuned", "FORMAT"]

FORMAT = 1
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cuda", "cpu")
_KERNEL_KEYS = ("block_m", "block_n", "num_warps", "num_stages")
_PATTERN_INT_KEYS = ("block_size", "window", "num_global", "stride")


@dataclass(frozen=True)
class TunedEntry:
    seq_len: int
    pattern: PatternConfig
    kernel: Optional["KernelConfig"]
    info: dict = field(default_factory=dict, compare=False)


@dataclass
class TunedPatterns:
    """Per-bucket tuned configs (see module docstring for the bucket rule)."""

    entries: dict[int, TunedEntry]
    meta: dict = field(default_factory=dict)
    path: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError(f"{self.path or 'TunedPatterns'}: buckets: no bucket given")

    @property
    def buckets(self) -> list[int]:
        return sorted(self.entries)

    def bucket_for(self, seq_len: int) -> int:
        """The smallest bucket >= seq_len, else the largest bucket."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        for b in self.buckets:
            if b >= seq_len:
                return b
        return self.buckets[-1]

    def entry_for(self, seq_len: int) -> TunedEntry:
        return self.entries[self.bucket_for(seq_len)]

    def config_for(self, seq_len: int) -> PatternConfig:
        return self.entry_for(seq_len).pattern

    def kernel_config_for(self, seq_len: int) -> Optional["KernelConfig"]:
        return self.entry_for(seq_len).kernel


def _pattern(data: Any, source: str):
    """A bucket's pattern: PatternConfig, or GuidedConfig for ``family: guided`` (built from the
    deployed model's pair bias at run time: ``build_layout(cfg, L, signal=bias)``)."""
    from .guided import pattern_from_dict

    return pattern_from_dict(data, source=source)


def _fail(path: str, key: str, problem: str) -> ValueError:
    return ValueError(f"{path}: {key}: {problem}")


def _strict_ints(path: str, key: str, d: dict, names: tuple[str, ...]) -> None:
    for k in names:
        if k in d and (isinstance(d[k], bool) or not isinstance(d[k], int)):
            raise _fail(path, f"{key}.{k}", f"must be an integer, got {type(d[k]).__name__} {d[k]!r}")


def parse_tuned(data: Any, path: str = "<tuned>") -> TunedPatterns:
    """Validate the parsed tuned file ``data`` (module docstring) into `TunedPatterns`."""
    from kernels.config import KernelConfig

    if data is None:
        raise _fail(path, "(file)", "the file is empty")
    if not isinstance(data, dict):
        raise _fail(path, "(file)", f"must be a mapping with a 'buckets' list, got {type(data).__name__}")
    for k in data:
        if not isinstance(k, str):
            raise _fail(path, repr(k), "keys must be strings")
    if "format" in data and (isinstance(data["format"], bool) or data["format"] != FORMAT):
        raise _fail(path, "format", f"unsupported format {data['format']!r} (this reader reads format {FORMAT})")
    if data.get("dtype") is not None and data["dtype"] not in DTYPES:
        raise _fail(path, "dtype", f"{data['dtype']!r} is not one of {', '.join(DTYPES)}")
    if data.get("device") is not None and data["device"] not in DEVICES:
        raise _fail(path, "device", f"{data['device']!r} is not one of {', '.join(DEVICES)}")
    for k in ("study",):
        if data.get(k) is not None and not isinstance(data[k], str):
            raise _fail(path, k, f"must be a string, got {type(data[k]).__name__}")
    for k in ("hardware",):
        if data.get(k) is not None and not isinstance(data[k], dict):
            raise _fail(path, k, f"must be a mapping, got {type(data[k]).__name__}")
    if "buckets" not in data:
        raise _fail(path, "buckets", "required key is missing")
    items = data["buckets"]
    if not isinstance(items, list) or not items:
        raise _fail(path, "buckets", "must be a non-empty list")
    entries: dict[int, TunedEntry] = {}
    for i, item in enumerate(items):
        key = f"buckets[{i}]"
        if not isinstance(item, dict):
            raise _fail(path, key, f"must be a mapping, got {type(item).__name__}")
        for req in ("seq_len", "pattern"):
            if req not in item:
                raise _fail(path, f"{key}.{req}", "required key is missing")
        L = item["seq_len"]
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise _fail(path, f"{key}.seq_len", f"must be a positive integer, got {L!r}")
        if L in entries:
            raise _fail(path, f"{key}.seq_len", f"duplicate bucket {L}")
        if isinstance(item["pattern"], dict):
            _strict_ints(path, f"{key}.pattern", item["pattern"], _PATTERN_INT_KEYS)
            gp = item["pattern"].get("global_placement", "first")
            if not isinstance(gp, str):
                raise _fail(path, f"{key}.pattern.global_placement", f"must be a string, got {type(gp).__name__}")
        try:
            pattern = _pattern(item["pattern"], f"{path}: {key}.pattern")
        except (TypeError, ValueError) as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(path) else f"{path}: {key}.pattern: {msg}") from None
        kernel = None
        if item.get("kernel") is not None:
            if not isinstance(item["kernel"], dict):
                raise _fail(path, f"{key}.kernel", f"must be a mapping or null, got {type(item['kernel']).__name__}")
            _strict_ints(path, f"{key}.kernel", item["kernel"], _KERNEL_KEYS)
            try:
                kernel = KernelConfig.from_dict(item["kernel"])
            except (TypeError, ValueError) as e:
                raise _fail(path, f"{key}.kernel", str(e).splitlines()[0]) from None
            if not kernel.fits(pattern.block_size):
                raise _fail(path, f"{key}.kernel", f"tiles {kernel.block_m}x{kernel.block_n} do not divide block_size={pattern.block_size}")
        info = {k: v for k, v in item.items() if k not in ("seq_len", "pattern", "kernel")}
        entries[L] = TunedEntry(L, pattern, kernel, info)
    meta = {k: v for k, v in data.items() if k != "buckets"}
    return TunedPatterns(entries, meta, path)


def load_tuned(path: Union[str, Path]) -> TunedPatterns:
    """Read a tuned-patterns file (FileNotFoundError / ValueError naming the file and the key)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such tuned-patterns file")
    try:
        data = load_yaml_file(p, str(path))
    except YAMLInputError as e:
        raise ValueError(str(e)) from None
    return parse_tuned(data, str(path))

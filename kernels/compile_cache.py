"""Compile once per study: the launch configs a worker has compiled, and where Triton keeps them.

A Triton kernel is compiled for each distinct set of its compile-time constants (block sizes,
head dim, dtype, ``num_warps`` / ``num_stages``, the padded block count and the even-length flags
that follow from the sequence length) and for the integer specialisations of its launcher (an
argument equal to 1, or divisible by 16). A trial that times a launch config first compiles it;
that time is neither the kernel's speed nor measurement, so trials run a *compile phase* per cell
(`CompileLedger.ensure`): one untimed call of the candidate on the cell's inputs, timed apart
(``compile_s`` of the trial's timing) - only the first time the cell's compile key (`compile_key`)
is met in this worker. Every later trial with the same key finds the kernel in Triton's in-memory
cache and skips the phase. The keys a worker compiled travel back with each trial
(``TrialResult.compiles``) so that the driver counts keys compiled twice in one study (0 with one
worker; with several workers a second worker's first compile of a key is a load from Triton's
on-disk cache, counted apart as ``cache_loads`` when it takes under ``DISK_HIT_S``).

Triton's on-disk cache (``TRITON_CACHE_DIR``) is set by `use_cache_dir` before any Triton import
in a worker: ``$TRITON_CACHE_DIR`` when the user set it, else ``results/triton-cache`` beside the
results database (a local storage) or ``~/.cache/protein-sparse-autotune/triton`` (a remote one),
so a resumed or warm-started study on the same machine loads its kernels instead of compiling them.

A compile phase that fails (Triton's ``OutOfResources``: shared memory or registers beyond the
device, a compiler error) raises `CompileFailed`, which the trial records as failed with that
reason ("compile failed: ...") - never a crash of the search.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

CACHE_ENV = "TRITON_CACHE_DIR"
KERNEL_FILES = ("triton_kernels.py", "triton_bwd_kernels.py")  # the Triton kernels' source (forward, backward)
DISK_HIT_S = 0.05  # a first call under this long found the kernel in Triton's disk cache


class CompileFailed(RuntimeError):
    """A launch config that does not compile or does not fit the device (reason in the message)."""


def kernel_fingerprint() -> str:
    """SHA-256 (12 hex digits) of the Triton kernels' source: a changed kernel gets new keys."""
    h = hashlib.sha256()
    for name in KERNEL_FILES:
        try:
            h.update(Path(__file__).with_name(name).read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:12]


def compile_key(*, backend: str, dtype: str, mode: str, heads: int, head_dim: int, bias: bool, batch: int,
                length: int, block_size: int, kernel: Optional[dict[str, Any]]) -> tuple:
    """What a compiled kernel of one cell depends on (module docstring): the kernels' fingerprint,
    backend, dtype, pass, the shape's compile-time values and the launch config. Sequence length
    and batch enter as the values the launcher specialises on (the padded block count, whether L
    is a multiple of the block, batch == 1), so lengths that share a kernel share a key."""
    nb = -(-length // block_size)
    nb_pad = 1 << max(0, (nb - 1).bit_length())
    cfg = tuple(sorted((kernel or {}).items()))
    return (kernel_fingerprint(), backend, dtype, mode, heads, head_dim, bool(bias), batch == 1,
            block_size, nb_pad, length % block_size == 0, cfg)


@dataclass
class CompileRecord:
    """One compile phase: its key (as a string), seconds, and whether it was a disk-cache load."""

    key: str
    seconds: float
    cache_load: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "seconds": self.seconds, "cache_load": self.cache_load}


@dataclass
class CompileLedger:
    """The compile keys one worker process has met, and what each compile phase cost."""

    seen: dict[str, CompileRecord] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # key -> the reason its compile failed
    hits: int = 0

    def ensure(self, key: tuple, compile_fn: Callable[[], object]) -> Optional[CompileRecord]:
        """Run ``compile_fn`` (one untimed call of the candidate) unless ``key`` was compiled in
        this process; returns its record, None when skipped. Any exception becomes `CompileFailed`
        (out of memory excepted: that stays the trial's own "out of memory" failure), and a key
        that failed once raises the same `CompileFailed` again without compiling."""
        k = repr(key)
        if k in self.seen:
            self.hits += 1
            return None
        if k in self.failed:  # a config that failed to compile fails again without compiling
            self.hits += 1
            raise CompileFailed(self.failed[k])
        t0 = time.perf_counter()
        try:
            compile_fn()
        except Exception as e:  # noqa: BLE001 - the launch config's own failure, with its reason
            from .measure import is_oom

            if is_oom(e):
                raise
            self.failed[k] = f"compile failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            raise CompileFailed(self.failed[k]) from e
        dt = time.perf_counter() - t0
        rec = CompileRecord(k, dt, cache_load=dt < DISK_HIT_S)
        self.seen[k] = rec
        return rec


def study_compile_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Driver side: the compile records of a study's trials -> keys compiled, compiled twice (the
    same key compiled again, not a disk-cache load), disk-cache loads and compile seconds."""
    count: dict[str, int] = {}
    loads = 0
    seconds = 0.0
    for r in records:
        seconds += float(r.get("seconds", 0.0))
        if r.get("cache_load"):
            loads += 1
            continue
        count[r["key"]] = count.get(r["key"], 0) + 1
    return {"compiled": len(count), "compiled_twice": sum(1 for n in count.values() if n > 1),
            "cache_loads": loads, "compile_s": seconds}


def default_cache_dir(storage: Optional[str] = None) -> Path:
    """Where Triton's disk cache goes (module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if storage and storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        return Path(storage[len("sqlite:///"):]).expanduser().resolve().parent / "triton-cache"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "protein-sparse-autotune" / "triton"


def use_cache_dir(storage: Optional[str] = None) -> Path:
    """Set ``TRITON_CACHE_DIR`` (if unset) to `default_cache_dir` and create it; returns it. Call
    before Triton compiles anything in this process; workers inherit the variable."""
    path = default_cache_dir(storage)
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(CACHE_ENV, str(path))
    return path

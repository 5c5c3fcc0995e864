"""The kernel benchmark's rows grouped per configuration (``at_kernel_bench``: one row per backend
of a workload, pass, L, batch and target sparsity), with the ratios the report derives from them:
speedup = ms of one backend / ms of another, memory reduction = 1 - MiB / max(baseline MiB, 1 MiB)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from kernels.baselines import SDPA
from .formatting import MIB_FLOOR, NOT_MEASURED, f_ms, f_pct

OURS = ("triton", "cpu")  # this project's kernel: Triton on CUDA, the CPU kernel on CPU


@dataclass
class KernelCase:
    """One configuration of ``kernels.bench`` and its row per backend."""
    workload: str
    pass_: str
    L: int
    batch: int
    target: float
    actual: float
    rows: dict[str, Any]  # backend -> at_kernel_bench row

    def ms(self, backend: str) -> Optional[float]:
        r = self.rows.get(backend)
        return r.ms if r is not None and r.status == "ok" else None

    def mib(self, backend: str) -> Optional[float]:
        r = self.rows.get(backend)
        return r.mib if r is not None and r.status == "ok" else None

    @property
    def ours(self) -> Optional[str]:
        return next((b for b in OURS if b in self.rows), None)

    def ratio(self, num: str, den: Optional[str]) -> Optional[float]:
        a, b = self.ms(num), (self.ms(den) if den else None)
        return a / b if a is not None and b else None

    def cell(self, backend: Optional[str]) -> str:
        if backend is None or backend not in self.rows:
            return NOT_MEASURED if backend is None else "—"
        r = self.rows[backend]
        return f_ms(r.ms) if r.status == "ok" else r.status


def kernel_cases(rows: list[Any]) -> list[KernelCase]:
    """The rows grouped per (workload, pass, L, batch, target sparsity), in that order."""
    groups: dict[tuple, KernelCase] = {}
    for r in rows:
        key = (r.workload, r.pass_, r.seq_len, r.batch, r.sparsity_target)
        case = groups.setdefault(key, KernelCase(r.workload, r.pass_, r.seq_len, r.batch, r.sparsity_target,
                                               r.sparsity_actual, {}))
        case.rows[r.backend] = r
    return [groups[k] for k in sorted(groups)]


def mem_reduction(case: KernelCase, base: str, who: Optional[str]) -> str:
    """1 - MiB of ``who`` / max(MiB of ``base``, 1 MiB), † where the baseline is under 1 MiB."""
    b, m = case.mib(base), (case.mib(who) if who else None)
    if b is None or m is None:
        return "—"
    return f_pct(1 - m / max(b, MIB_FLOOR)) + ("†" if b < MIB_FLOOR else "")


def above_ideal(case: KernelCase, who: Optional[str]) -> str:
    """‡ where the speedup of ``who`` over SDPA is more than 10% above the ideal 1/(1-s)."""
    r = case.ratio(SDPA, who) if who else None
    return "‡" if r is not None and case.actual < 1 and r > 1.1 / (1 - case.actual) else ""

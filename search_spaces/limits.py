"""What one machine can run: the file's ``limits`` over `LIMITS`, and every (workload, bucket)'s
inputs and the correctness gate within the memory of the space's device (`check_fits`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

from .checks import SpaceChecker
from .schema import LIMITS

if TYPE_CHECKING:
    from .settings import GateSettings
    from .workloads import Workload


def machine_memory_gib(device: str) -> Optional[float]:
    """Physical memory of this machine (device cpu) or of GPU 0 (cuda, when visible), in GiB."""
    try:
        if device == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 2**30
    except (ValueError, OSError, AttributeError, RuntimeError):
        pass
    return None


def parse_limits(check: SpaceChecker, data: dict[str, Any], device: str) -> dict[str, Any]:
    """`LIMITS` with the file's ``limits`` over them; ``max_input_gib`` unset is this machine's memory."""
    lim_in = check.section(data, "limits", set(LIMITS))
    limits = dict(LIMITS)
    for k, v in lim_in.items():
        if v is None:
            continue
        limits[k] = check.number(v, f"limits.{k}", low=1e-3) if k == "max_input_gib" else check.integer(v, f"limits.{k}", low=1)
    if limits["max_input_gib"] is None:
        limits["max_input_gib"] = machine_memory_gib(device)
    return limits


def check_inputs_fit(check: SpaceChecker, workloads: list[Workload], buckets: list[int], limits: dict[str, Any],
                      dtype: str) -> None:
    """Per (workload, bucket): the batch within ``max_batch`` and the inputs within ``max_input_gib``."""
    if limits["max_input_gib"] is None:
        return
    for i, w in enumerate(workloads):
        for b in buckets:
            if not w.applies(b):
                continue
            if w.batch(b) > limits["max_batch"]:  # an EvoFormer's batch (msa_depth) was checked when parsed
                check.fail(f"workloads[{i}]", f"batch {w.batch(b)} at bucket {b} is above the limit "
                       f"{limits['max_batch']} (set max_batch, or raise limits.max_batch)")
            gib = w.input_gib(b, dtype)
            if gib > limits["max_input_gib"]:
                check.fail(f"workloads[{i}]",
                       f"inputs of {w.name} at bucket {b} take {gib:.3g} GiB, above the {limits['max_input_gib']:.3g} GiB "
                       "this machine has (lower tokens/max_batch/buckets, or raise limits.max_input_gib)")


def check_gate_fits(check: SpaceChecker, workloads: list[Workload], gate: "GateSettings", limits: dict[str, Any],
                     dtype: str) -> None:
    """The correctness gate (``gate.seq_len`` x ``gate.batch``, every workload) within ``max_input_gib``."""
    if limits["max_input_gib"] is None:
        return
    for w in workloads:
        gib = w.gate_gib(gate.seq_len, gate.batch, dtype)
        if gib > limits["max_input_gib"]:
            check.fail("gate", f"the correctness gate of {w.name} at seq_len {gate.seq_len}, batch {gate.batch} takes "
                           f"{gib:.3g} GiB (inputs and the dense reference's scores), above the "
                           f"{limits['max_input_gib']:.3g} GiB this machine has (lower gate.seq_len or gate.batch, "
                           "or raise limits.max_input_gib)")


def check_fits(space: Any) -> None:
    """Every (workload, bucket)'s inputs and the gate within the memory of the space's device (the
    file's ``limits`` over this machine's); run again after a command line changes the device.
    ``space`` is a `search_spaces.search_space.SearchSpace` (not imported: it calls this)."""
    check = SpaceChecker(space.source)
    limits = parse_limits(check, space.raw or {}, space.device)
    check_inputs_fit(check, space.workloads, space.buckets, limits, space.dtype)
    check_gate_fits(check, space.workloads, space.gate, limits, space.dtype)

"""How the report names each target of a study (`search_spaces.space.Targets`).

The thresholds themselves are the study's: the space's ``targets`` section over the per-device
defaults (`search_spaces.space.TARGET_DEFAULTS`), stored with every search run. The search's
constraints, the export's rule and the report all read them, so they cannot disagree; the report
takes no thresholds of its own.
"""

from __future__ import annotations

from typing import Any

BASELINE_NAMES = {"sdpa": "dense SDPA (scaled_dot_product_attention, same process)",
                  "naive": "naive attention (materialised softmax(QK^T/sqrt(d) + bias) V)"}


def describe(name: str, targets: Any) -> tuple[str, str]:
    """(what the target is measured against, where the number comes from) for a target name."""
    floor = f"{targets.memory_floor_mib:g} MiB"
    if name == "speedup":
        return (BASELINE_NAMES["sdpa"],
                f"lower end of the paired {targets.confidence:.0%} interval (median of per-round ratios, candidate and "
                f"SDPA interleaved), confirmed figures (at_confirmations), every workload")
    if name == "memory_vs_naive":
        return (BASELINE_NAMES["naive"], f"max(peak, {floor}) / max(naive peak, {floor}), every workload")
    if name == "memory_vs_sdpa":
        return (BASELINE_NAMES["sdpa"], f"max(peak, {floor}) / max(SDPA peak, {floor}): no-regression bound, every workload")
    if name == "sparsity":
        return ("the dense layout", "layout sparsity at the bucket length (at_measurements.sparsity)")
    if name.startswith("accuracy"):
        return ("contacts and dense attention on the protein set",
                "at_measurements.accuracy: chains of the bucket, each at its own length")
    return ("—", "—")

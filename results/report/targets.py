"""How the report names each target of a study (`search_spaces.space.Targets`).

The thresholds themselves are the study's: the space's ``targets`` section over the per-device
defaults (`search_spaces.space.TARGET_DEFAULTS`, from the objectives' records), stored with every search run. The search's
constraints, the export's rule and the report all read them, so they cannot disagree; the report
takes no thresholds of its own.
"""

from __future__ import annotations

from typing import Any

from search_spaces.objectives import OBJECTIVE_BY_NAME


def describe(name: str, targets: Any) -> tuple[str, str]:
    """(what the target is measured against, where the number comes from) for a target name: the
    objective's record (`search_spaces.objectives`), ``accuracy.<metric>`` by the accuracy one."""
    o = OBJECTIVE_BY_NAME.get("accuracy" if name.startswith("accuracy") else name)
    if o is None:
        return ("—", "—")
    floor = f"{targets.memory_floor_mib:g} MiB"
    return (o.against, o.source.format(floor=floor, confidence=targets.confidence))

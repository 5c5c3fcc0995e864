"""Warm start: begin a study with an earlier study's confirmed leaders.

``python -m autotune.search --space FILE --warm-start STUDY [--warm-start-storage URL]`` reads the
earlier study ``STUDY`` (from the results database at ``URL``, default the search's own storage):
per bucket its leaders by the rule of `results.verdict` (step 1: every target but speedup met at
every workload of the bucket, best speedup first), ranked by the latest confirmation pass when one
re-measured them (the confirmed figures, as the export chooses) and by the search's figures
otherwise, ``top`` per bucket (the earlier space's ``measure.confirm_top``). Their parameters are
mapped onto the new space (`map_params`) and enqueued (``study.enqueue_trial``) as the new study's
first trials, so a re-tuning on another GPU or at other lengths starts from the old best and the
sampler learns from those points like from any other trial.

Order (`order_by_length`): the leaders of the earlier study's bucket nearest the new study's lengths
first (by the ratio of lengths: the smallest ``|log(L_old / L_new)|`` over the new buckets; ties by
increasing length), best first within a bucket. A pattern's parameters are lengths in residues and
its speed and accuracy change with the chain's length, so the leaders measured at the nearest length
are the best guess; a study re-tuned at the same buckets keeps the increasing-length order.

Lengths the earlier study did not measure (`length_scaled`): after every leader as it is, the
leaders of the earlier bucket nearest each such new length are enqueued again with their lengths in
residues (block size, window, global tokens; stride is in blocks and stays) times
``L_new / L_old``, snapped to the new space's choices (both neighbours on a tie), the same pattern
relative to the chain. On the replay of ``benchmarks/search_efficiency.py`` (its docstring, 3 and 5)
the optimum of the triangle grid moves with the length (block 32 window 64 at 512, block 64 window
128 at 1024), and these counterparts put every sampler within 5% of the best in 3 trials from 512
to 1024 and back (the leaders alone: 12-42, cold 19-41); on the MSA-row grids, whose two buckets
share their optimum, they change nothing (the leaders are within 5% at trial 1). From the 256
bucket of the triangle grid, whose best is the 2 x 2 tile diagonal of 128-residue blocks, no
transfer measured reaches the longer buckets' best.

Mapping a leader's parameters onto the new space: a parameter the new space searches keeps its
value when the value is one of its choices (or inside its integer range, on its step); a parameter
the new space fixes, or does not have, is dropped (the new space's value applies); a parameter the
new space searches but the leader lacks is left to the sampler. A leader with a value outside the
new space is skipped; one line says which and why. Identical mapped parameter sets are enqueued once.

Trials enqueued this way carry the user attribute ``warm_start`` ("STUDY#NUMBER@L", and
"STUDY#NUMBER@L->L_NEW" for a length-scaled counterpart). Warm start applies to a new study only: a
study that already has trials continues from its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from patterns.errors import InputError


class WarmStartError(InputError):
    """The warm-start study cannot be read (missing, no complete trial): exit status 2."""


@dataclass(frozen=True)
class Leader:
    """One confirmed leader of the earlier study: its bucket, trial number, flat parameters
    (``pattern.<field>`` / ``kernel.<field>``) and speedup (confirmed when ``confirmed``)."""

    bucket: int
    trial: int
    params: dict[str, Any]
    speedup: Optional[float] = None
    confirmed: bool = False
    scaled_to: Optional[int] = None  # a length-scaled counterpart for this new length (`length_scaled`)


#: a pattern's parameters that are lengths in residues (stride is in blocks)
LENGTH_PARAMS = ("pattern.block_size", "pattern.window", "pattern.num_global")


def snapped(choices: list, value: float) -> list:
    """The choices nearest ``value`` (both on an exact tie); 0 stays 0 (it turns a part off), and is
    dropped when the choices cannot turn it off."""
    if value == 0:
        return [0] if 0 in choices else []
    if not choices:
        return []
    gap = min(abs(c - value) for c in choices)
    return [c for c in choices if abs(c - value) == gap]


def scaled_counterparts(space, params: dict[str, Any], src: int, dst: int,
                        names: tuple[str, ...] = LENGTH_PARAMS) -> list[dict[str, Any]]:
    """``params`` with every parameter of ``names`` the space searches (lengths in residues) scaled
    by ``dst / src`` and snapped to its values (`snapped` for choices; an integer range on its step,
    clipped to it); every combination on ties; other parameters as they are."""
    import itertools
    import math

    dists = space.distributions()
    options = []
    for name, value in params.items():
        dist = dists.get(name)
        if name not in names or dist is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            options.append([(name, value)])
            continue
        target = value * dst / src
        if hasattr(dist, "choices"):
            numeric = [c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            options.append([(name, v) for v in snapped(numeric, target)] or [(name, value)])
        elif not isinstance(getattr(dist, "step", None), int):  # a continuous range: no length of ours; kept
            options.append([(name, value)])
        else:  # an integer range: the nearest values on its step, clipped to it
            k = (min(max(target, dist.low), dist.high) - dist.low) / dist.step
            values = sorted({min(dist.low + n * dist.step, dist.high) for n in (math.floor(k), math.ceil(k))})
            gap = min(abs(v - target) for v in values)
            options.append([(name, int(v)) for v in values if abs(v - target) == gap])
    return [dict(combo) for combo in itertools.product(*options)]


def length_scaled(leaders: list[Leader], space, lengths) -> list[Leader]:
    """The length-scaled counterparts (module docstring) of ``leaders`` for each length of
    ``lengths`` that no leader's bucket has: the leaders of the bucket nearest it (by the ratio of
    lengths; ties to the shorter), in their order, each scaled (`scaled_counterparts`)."""
    import math

    buckets = sorted({ld.bucket for ld in leaders})
    out: list[Leader] = []
    for L in sorted({int(x) for x in lengths or []}):
        if not buckets or L in buckets:
            continue
        src = min(buckets, key=lambda b: (round(abs(math.log(b / L)), 12), b))
        for ld in (ld for ld in leaders if ld.bucket == src and ld.scaled_to is None):
            for params in scaled_counterparts(space, ld.params, src, L):
                if params != ld.params:
                    out.append(Leader(src, ld.trial, params, None, False, scaled_to=L))
    return out


def read_leaders(storage: str, study: str, top: Optional[int] = None) -> list[Leader]:
    """The leaders of ``study`` per bucket (module docstring), best first within each bucket,
    buckets in increasing length."""
    from results.verdict import leaders, read_study_at

    if storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        import os

        if not os.path.exists(storage[len("sqlite:///"):]):
            from results.storage import mask_url

            raise WarmStartError(f"--warm-start-storage: no results database at {mask_url(storage)}")
    data = read_study_at(storage, study, create=False)
    if not data.trials:
        raise WarmStartError(f"--warm-start: study {study!r} has no complete trial in the results database")
    targets = data.targets()
    if top is None:
        top = int((data.space or {}).get("measure", {}).get("confirm_top") or 3)
    confirmed: dict[tuple[int, int], list[float]] = {}
    for row in data.latest_confirmation or []:
        if getattr(row, "stage", None) is None:
            confirmed.setdefault((row.bucket, row.trial_number), []).append(float(row.speedup))
    out: list[Leader] = []
    for L in data.buckets:
        ranked = []
        for cand in leaders(targets, data.cells_by_trial, L, top):
            conf = confirmed.get((L, cand.trial))
            sp = _geomean(conf) if conf else cand.speedup
            ranked.append(Leader(L, cand.trial, dict(data.trials[cand.trial].params or {}), sp, bool(conf)))
        ranked.sort(key=lambda ld: (not ld.confirmed, -(ld.speedup or 0.0), ld.trial))
        out.extend(ranked)
    return out


def _geomean(xs: list[float]) -> float:
    import math

    return math.exp(sum(math.log(max(x, 1e-12)) for x in xs) / len(xs))


def map_params(space, params: dict[str, Any]) -> tuple[Optional[dict[str, Any]], str]:
    """``params`` mapped onto ``space`` (module docstring). Returns (mapped, "") or (None, why)."""
    dists = space.distributions()
    out: dict[str, Any] = {}
    for name, value in params.items():
        dist = dists.get(name)
        if dist is None:  # fixed in the new space, or not one of its parameters: its own value applies
            continue
        if hasattr(dist, "choices"):
            if value not in dist.choices:
                return None, f"{name}={value!r} is not one of {list(dist.choices)}"
        elif not (isinstance(value, int) and dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0):
            return None, f"{name}={value!r} is outside {dist.low}..{dist.high} step {dist.step}"
        out[name] = value
    return out, ""


def enqueue_leaders(study, space, leaders: list[Leader], *, source: str = "warm-start",
                    log: Callable[[str], None] = print) -> int:
    """Enqueue ``leaders`` (best first, per bucket) into the Optuna ``study`` after `map_params`;
    skipped leaders and duplicates are not enqueued. Returns the number enqueued."""
    seen: set[tuple] = set()
    skipped: list[str] = []
    n = 0
    for ld in leaders:
        mapped, why = map_params(space, ld.params)
        if mapped is None:
            skipped.append(f"#{ld.trial}@{ld.bucket} ({why})")
            continue
        key = tuple(sorted(mapped.items()))
        if key in seen:
            continue
        seen.add(key)
        tag = f"{source}#{ld.trial}@{ld.bucket}" + (f"->{ld.scaled_to}" if ld.scaled_to is not None else "")
        study.enqueue_trial(mapped, user_attrs={"warm_start": tag}, skip_if_exists=False)
        n += 1
    if skipped:
        log(f"warm start: skipped {len(skipped)} leader(s) outside this space: {'; '.join(skipped)}")
    return n


def order_by_length(leaders: list[Leader], lengths) -> list[Leader]:
    """``leaders`` with the buckets nearest ``lengths`` (the new study's buckets) first (module
    docstring); the order within a bucket is kept."""
    import math

    lengths = [int(L) for L in lengths or []]
    if not lengths:
        return list(leaders)

    def distance(ld: Leader) -> float:
        return min(abs(math.log(ld.bucket / L)) for L in lengths)

    return sorted(leaders, key=lambda ld: (round(distance(ld), 12), ld.bucket))


def warm_start(study, space, source_study: str, storage: str, log: Callable[[str], None] = print) -> int:
    """Read ``source_study``'s leaders from ``storage`` and enqueue them into ``study`` (a new
    Optuna study of ``space``); returns the number enqueued (0 for a study that has trials)."""
    if study.get_trials(deepcopy=False):
        log(f"warm start: study {study.study_name!r} already has trials; it continues from its own (no leaders enqueued)")
        return 0
    leaders = order_by_length(read_leaders(storage, source_study), space.buckets)
    scaled = length_scaled(leaders, space, space.buckets)
    n = enqueue_leaders(study, space, leaders + scaled, source=source_study, log=log)
    log(f"warm start: {n} trial(s) from study {source_study!r} enqueued as the first ({len(leaders)} leader(s) "
        f"read over buckets {sorted({ld.bucket for ld in leaders})}"
        + (f", then {len(scaled)} length-scaled counterpart(s) for {sorted({ld.scaled_to for ld in scaled})}" if scaled else "")
        + ")")
    return n

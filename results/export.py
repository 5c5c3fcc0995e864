"""The export writer: a study's chosen config per bucket as a tuned file (``python -m autotune.export``).

`open_study` reads the study (refusing a missing database, study or complete trial with
`ExportError`), `document` builds the file's content from the one rule of `results.verdict` (also
behind the search's verdict and the report) on the study's targets and its current confirmation,
and `write` writes the file and records each choice in ``at_tuned``. Confirming the leaders when
the study has no current confirmation re-measures, so it is the command's step
(`autotune.export.choose`, with `autotune.confirm`), not this module's.

Choice rule: per bucket, the study's leaders (COMPLETE trials meeting every non-speedup target at
every workload there, by geometric-mean paired speedup over SDPA) are re-measured together with
the baseline; the chosen config is the confirmed leader with the highest confirmed geometric-mean
speedup whose confirmed interval clears the speedup target at every workload and that meets every
other target of the space; its exported speedups are those of a hold-out re-measurement of the
chosen config alone against SDPA (free of the selection's upward bias), which must clear the
speedup target too. A bucket without a choice is left out of the file, listed under
``infeasible_buckets`` and with its reason under ``not_exported`` (a deployment runs dense
attention there, see `kernels.tuned`). The file names the machine it was tuned on (``device``,
``device_name``, ``dtype``) and, per bucket, the ``heads`` and ``head_dims`` measured there;
`kernels.load_tuned` checks them where the file is used (format 2; format 1 files, without these,
are still read). It also records what it was tuned for - ``mode``, ``backend``, ``versions``
(the run's, with the project's) and ``kernel_fingerprint`` (`kernels.tuned.kernel_fingerprint` of
the backend, at export time) - and, per bucket, ``provisional`` and ``caveats``
(`results.verdict.caveats`: what the search's verdict line and the report say) and the chains'
``accuracy_chains.buckets`` ladder (what ``autotune.accuracy --tuned`` re-evaluates); the
writer seals it with its ``integrity`` field. `file_status` compares a tuned file on disk with
the current verdicts (the search's last lines and the report print it).
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any, Callable, Optional

from patterns.errors import InputError
from patterns.output import write_output

from kernels.tuned import FORMAT, TunedFile, kernel_fingerprint

from .aggregate import cell_field
from .storage import mask_url, sqlite_file

RULE = ("per bucket (results.verdict): the confirmed leader - re-measured interleaved with SDPA and the other "
        "leaders - with the highest confirmed geometric-mean speedup over the workloads whose interval clears the "
        "speedup target and that meets every other target at every workload (ties: lower geometric-mean peak "
        "memory, then the earlier trial); its speedups are re-measured once more, alone against SDPA (hold-out: "
        "free of the selection's upward bias), and must clear the speedup target there too")


class ExportError(InputError):
    """The study cannot be exported (missing database or study, nothing to choose): exit status 2."""


def _studies(db) -> list[str]:
    from sqlalchemy import select

    from .db import TrialRow

    with db.Session() as s:
        return sorted(set(s.scalars(select(TrialRow.study_name).distinct()).all()))


def _check_live(db, study: str, storage: str, studies: list[str]) -> None:
    """Refuse a study that Optuna's storage does not hold: its rows would cite trials that do not
    exist (a study removed with ``optuna delete-study`` leaves our tables behind)."""
    live = db.live_study(study)
    if not live.has_optuna:
        raise ExportError(f"study {study!r}: {mask_url(storage)} holds no Optuna study storage, so its trials "
                          "cannot be checked to exist; export from the database the search wrote")
    if not live.exists:
        from .db import live_study

        with db.Session() as s:
            alive = [n for n in studies if live_study(s, n).exists]
        raise ExportError(f"study {study!r} is not in Optuna's storage in {mask_url(storage)} (deleted with optuna "
                          f"delete-study?); its leftover rows are not exported "
                          f"(studies there: {', '.join(alive) if alive else 'none'})")


def _load_live(db, study: str):
    """`results.verdict.load_study`, restricted to the trials Optuna's study holds now."""
    from .db import find_orphans
    from .verdict import load_study, restrict_study_data

    with db.Session() as s:
        orphans = find_orphans(s, study)
        data = load_study(s, study)
        s.expunge_all()
    return restrict_study_data(data, orphans)


def _clean(d: Optional[dict]) -> Optional[dict]:
    return None if d is None else {k: v for k, v in d.items() if v is not None}


def running_trials(db, study: str, alive: Optional[Callable[[Any], bool]] = None) -> int:
    """How many of ``study``'s trials are being measured now: in state RUNNING, of a run (an
    ``at_runs`` row) that has not ended and whose driver ``alive(run)`` says may still be working
    (None: every run that has not ended). A trial left RUNNING by a driver that died is not
    counted: it will not finish, and the next search settles it."""
    from sqlalchemy import select

    from .db import Run, TrialRow
    from .states import TrialState

    running = TrialState.RUNNING.value
    with db.Session() as s:
        runs = s.scalars(select(Run).join(TrialRow, TrialRow.run_id == Run.id).where(
            TrialRow.study_name == study, TrialRow.state == running, Run.ended_at.is_(None))).all()
        counts = {r.id: 0 for r in runs}
        for rid in s.scalars(select(TrialRow.run_id).where(TrialRow.study_name == study, TrialRow.state == running)):
            if rid in counts:
                counts[rid] += 1
        return sum(counts[r.id] for r in runs if alive is None or alive(r))


def open_study(study: str, storage: str, *, log, alive: Optional[Callable[[Any], bool]] = None) -> Any:
    """The study's `results.verdict.StudyData`, restricted to the trials Optuna's study holds now
    (raises ExportError: no database file, no autotune tables, no such study, a study Optuna's
    storage no longer holds, trials still running (`running_trials`, with ``alive``: a search that
    has not ended; nothing is written or measured then), no complete trial). Rows left by a deleted
    study of the same name are removed first (``log`` says so)."""
    from sqlalchemy import inspect

    from .db import Database, TrialRow

    path = sqlite_file(storage)
    if path is not None and not os.path.isfile(path):
        raise ExportError(f"--storage: no database file {path}")
    db = Database(storage, create=False)
    try:
        if not inspect(db.engine).has_table(TrialRow.__tablename__):
            raise ExportError(f"study {study!r}: no autotune tables in {mask_url(storage)}")
        studies = _studies(db)
        if study not in studies:
            raise ExportError(f"study {study!r} does not exist in {mask_url(storage)} "
                              f"(studies there: {', '.join(studies) if studies else 'none'})")
        _check_live(db, study, storage, studies)
        running = running_trials(db, study, alive)
        if running:
            raise ExportError(f"study {study!r}: {running} trial{'s' if running != 1 else ''} still running; export "
                              "again when the search ends (nothing was measured or written)")
        gone = db.drop_orphans(study)  # rows of an earlier study of this name: never cited
        if gone:
            log(f"removed {gone.text()} (left by a deleted study)")
        data = _load_live(db, study)
    finally:
        db.close()
    if not data.trials:
        raise ExportError(f"study {study!r} has no complete trial ({data.n_trials} recorded)")
    return data


def load_live(study: str, storage: str) -> Any:
    """`open_study`'s data read again (after a confirmation pass), without the checks."""
    from .db import Database

    db = Database(storage, create=False)
    try:
        return _load_live(db, study)
    finally:
        db.close()


def document(study: str, data: Any) -> dict[str, Any]:
    """The export document of ``study`` from its data (`open_study`): per bucket, the choice of the
    one rule (`results.verdict.decide` on the study's targets and its current confirmation, which
    must exist: ``data.confirmations``), or the reason under ``not_exported``. Raises ExportError
    when no bucket has a choice."""
    from search_spaces.space import SearchSpace

    from .verdict import caveats, decide

    space = SearchSpace.from_dict(data.space)
    targets = space.effective_targets()
    top = space.measure.confirm_top
    verdicts = decide(targets, data.cells_by_trial, data.buckets, data.confirmations or [], top)
    runs = {r.id: r for r in data.runs}
    out_buckets, not_exported = [], {}
    for v in verdicts:
        if v.deploy:
            out_buckets.append(_bucket(study, v, data.trials[v.trial], runs, space, targets))
        else:  # the reason with every caveat the report shows (a provisional verdict, ...)
            not_exported[v.bucket] = "; ".join([v.why] + caveats(v))
    if not out_buckets:
        raise ExportError(f"study {study!r} has no feasible trial at any bucket ({len(data.trials)} complete of "
                          f"{data.n_trials}): " + "; ".join(f"L={L}: {w}" for L, w in not_exported.items()))
    return _header(study, space, targets, runs.get(out_buckets[0]["source"]["run_id"])) | {
        "infeasible_buckets": sorted(not_exported),
        "not_exported": {int(L): w for L, w in sorted(not_exported.items())},
        "buckets": out_buckets,
    }


def _per_workload(cells: list[Any], key: str) -> dict[str, Optional[float]]:
    return {cell_field(c, "workload"): _r(cell_field(c, key)) for c in cells}


def _bucket(study: str, v: Any, t: Any, runs: dict[int, Any], space: Any, targets: Any) -> dict[str, Any]:
    """One bucket's entry of the file: the chosen trial's pattern and kernel, where it came from, its
    confirmed (or hold-out) speedups, memory, accuracy and the machine."""
    from .verdict import caveats, memory_ratio

    cells = v.cells
    acc = cell_field(cells[0], "accuracy") or {}
    run = runs.get(t.run_id)
    lengths = acc.get("lengths") or []
    sb = targets.bound("speedup")
    floor = targets.memory_floor_mib
    shapes = _shapes(space, v.bucket)
    return {
        "seq_len": v.bucket,
        "heads": shapes["heads"],
        "head_dims": shapes["head_dims"],
        "pattern": dict(t.pattern),
        "kernel": dict(t.kernel) if t.kernel else None,
        "source": {"study": study, "trial": t.number, "run_id": t.run_id,
                   "confirmation": sorted({i for c in cells if (i := cell_field(c, "confirmation_id"))})},
        "sparsity": round(cell_field(cells[0], "sparsity"), 6),
        "speedup": {cell_field(c, "workload"): {"median": _r(cell_field(c, "speedup")),
                                                "lo": _r(cell_field(c, "speedup_lo")),
                                                "hi": _r(cell_field(c, "speedup_hi")),
                                                "repeats": cell_field(c, "repeats")} for c in cells},
        "speedup_geomean": _r(v.speedup),
        "speedup_interval": [_r(v.lo), _r(v.hi)],
        "speedup_from": "holdout" if v.holdout else "confirmation",
        "speedup_min": sb.min if sb is not None else None,
        "tied_with": list(v.tied_with),
        "time_ms": _per_workload(cells, "time_ms"),
        "sdpa_ms": _per_workload(cells, "sdpa_ms"),
        "peak_mib": _per_workload(cells, "peak_mib"),
        "sdpa_peak_mib": _per_workload(cells, "sdpa_peak_mib"),
        "naive_peak_mib": _per_workload(cells, "naive_peak_mib"),
        "memory_vs_naive": {cell_field(c, "workload"): _r(memory_ratio(cell_field(c, "peak_mib"),
                                                                       cell_field(c, "naive_peak_mib"), floor))
                            for c in cells},
        "memory_vs_sdpa": {cell_field(c, "workload"): _r(memory_ratio(cell_field(c, "peak_mib"),
                                                                      cell_field(c, "sdpa_peak_mib"), floor))
                           for c in cells},
        "accuracy": {k: _r(x) for k, x in (acc.get("metrics") or {}).items()},
        "accuracy_chains": {"n": acc.get("n_chains"), "lengths": [min(lengths), max(lengths)] if lengths else None,
                            "sparsity": _r(acc.get("chain_sparsity")), "max_chains": acc.get("max_chains"),
                            "buckets": list(space.buckets),  # the ladder the chains were chosen by
                            "noise": space.accuracy_noise},  # a guided pattern's degraded structure (A)
        "accuracy_extrapolated": bool(v.extrapolated),
        "provisional": v.provisional,  # reached while the noise check fired (results.verdict.caveats)
        "caveats": caveats(v),  # every caveat the search's verdict line and the report show
        "hardware": (run.hardware if run else None),
    }


def _header(study: str, space: Any, targets: Any, first_run: Any) -> dict[str, Any]:
    """The file's head: format, rule, the machine and settings the study measured on, its targets
    and provenance (from the run that measured the first exported bucket)."""
    sd = space.to_dict()
    hw = first_run.hardware if first_run else None
    return {
        "format": FORMAT,
        "study": study,
        "rule": RULE,
        "device": sd.get("device"),
        "device_name": (hw or {}).get("device_name"),
        "backend": sd.get("backend"),
        "dtype": sd.get("dtype"),
        "mode": sd.get("mode"),
        "workloads": [_clean(w) for w in sd.get("workloads") or []],
        "targets": {"bounds": [_clean(b) for b in targets.to_dict()["bounds"]],
                    "memory_floor_mib": targets.memory_floor_mib, "confidence": targets.confidence,
                    "source": targets.source},
        "hardware": first_run.hardware if first_run else None,
        "versions": _versions(first_run),
        "kernel_fingerprint": kernel_fingerprint(sd.get("backend")),
        "git_revision": first_run.git_revision if first_run else None,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _versions(run: Any) -> Optional[dict[str, Any]]:
    """The versions the study measured with (the run's torch, triton, ...) and the project's own."""
    from importlib import metadata

    out = dict(run.versions) if run is not None and isinstance(run.versions, dict) else {}
    try:
        out["protein-sparse-autotune"] = metadata.version("protein-sparse-autotune")
    except metadata.PackageNotFoundError:
        out.setdefault("protein-sparse-autotune", None)
    return out or None


def _shapes(space, bucket: int) -> dict[str, list[int]]:
    """Heads and head dims of the attention the space measured at ``bucket`` (every workload that
    applies there; an EvoFormer workload contributes its MSA and its triangle attention heads)."""
    heads: set[int] = set()
    dims: set[int] = set()
    for w in space.workloads:
        if not w.applies(bucket):
            continue
        heads.add(int(w.heads))
        if getattr(w, "pair_heads", None):
            heads.add(int(w.pair_heads))
        dims.add(int(w.head_dim))
    return {"heads": sorted(heads), "head_dims": sorted(dims)}


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else float(f"{x:.6g}")


def write(doc: dict[str, Any], storage: str, out: str) -> None:
    """Write ``doc`` to ``out`` (YAML with a comment head, by `patterns.output.write_output`: a
    temporary file beside it renamed over it, so a failed write leaves the old file and no half
    one; only a regular file is replaced, a link is written through) and record each bucket's
    choice in ``at_tuned``."""
    from .db import Database, Tuned

    study = doc["study"]
    # one schema object (kernels.tuned.TunedFile) for the file: the document is validated as the
    # reader will read it (a file the loader would refuse is never written), then written atomically
    text = TunedFile.from_dict(doc, str(out)).dumps(header=f"Tuned sparse attention patterns, exported from study "
                                                    f"{study!r}.\nRule: {RULE}.\nRead with kernels.load_tuned(path).")
    write_output(out, text)
    db = Database(storage)
    try:
        with db.session() as s:
            for b in doc["buckets"]:
                s.add(Tuned(study_name=study, bucket=b["seq_len"], trial_number=b["source"]["trial"], pattern=b["pattern"],
                            kernel=b["kernel"], speedup={w: x["median"] for w, x in b["speedup"].items()},
                            peak_mib=b["peak_mib"], accuracy=b["accuracy"],
                            hardware=b["hardware"], rule=RULE, out_path=str(out)))
    finally:
        db.close()


def latest_out_path(study: str, storage: str) -> Optional[str]:
    """Where the study's latest export wrote its tuned file (``at_tuned.out_path``), or None."""
    from sqlalchemy import select

    from .db import Database, Tuned

    db = Database(storage, create=False)
    try:
        with db.Session() as s:
            return s.scalars(select(Tuned.out_path).where(Tuned.study_name == study)
                             .order_by(Tuned.id.desc()).limit(1)).first()
    finally:
        db.close()


def file_status(path: str, verdicts: list, trials: dict[int, Any], study: str) -> list[str]:
    """Whether the tuned file at ``path`` says what the verdicts (`results.verdict.decide`, what an
    export would write now) decide: [] when it does, else one line per difference - the file is
    missing or unreadable, it holds another study, a bucket deploys another trial, layout or launch
    config than the verdict (or deploys where the verdict does not, or the reverse), or its
    provisional mark differs. ``trials``: number -> trial row (``pattern``, ``kernel``).
    Undecided buckets (no current confirmation) are not compared. The search's last lines and
    the report print these lines."""
    import warnings

    from patterns.guided import pattern_from_dict
    from patterns.safeyaml import YAMLInputError, load_yaml_file

    if not os.path.isfile(path):
        return [f"{path}: no tuned file there: the verdict is not deployed yet"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = TunedFile.from_dict(load_yaml_file(path, path), path)
    except (YAMLInputError, InputError, OSError) as e:
        return [f"{path}: cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"]
    if f.study is not None and f.study != study:
        return [f"{path}: holds study {f.study!r}'s patterns, not {study!r}'s"]

    def norm(p: Any) -> Any:
        return None if p is None else pattern_from_dict(dict(p)).to_dict()

    def norm_kernel(k: Any) -> Any:
        from kernels.config import KernelConfig

        return KernelConfig.from_dict(dict(k)).to_dict() if k else None

    entries, out = {b.seq_len: b for b in f.buckets}, []
    for v in verdicts:
        e = entries.pop(v.bucket, None)
        if v.trial is not None and not v.confirmed:
            continue  # undecided: nothing to compare yet
        if not v.deploy:
            if e is not None:
                out.append(f"L={v.bucket}: the file deploys t#{(e.info.get('source') or {}).get('trial')}, "
                           f"the verdict is do not deploy")
            continue
        t = trials.get(v.trial)
        if e is None:
            out.append(f"L={v.bucket}: the file runs dense attention, the verdict deploys t#{v.trial}")
        elif (e.info.get("source") or {}).get("trial") != v.trial:
            out.append(f"L={v.bucket}: the file deploys t#{(e.info.get('source') or {}).get('trial')}, "
                       f"the verdict t#{v.trial}")
        elif t is not None and (e.pattern.to_dict() != norm(t.pattern)
                                or (e.kernel.to_dict() if e.kernel else None) != norm_kernel(t.kernel)):
            out.append(f"L={v.bucket}: the file's layout or launch config differs from t#{v.trial}'s")
        elif bool(e.info.get("provisional")) != v.provisional:
            out.append(f"L={v.bucket}: the verdict is {'' if v.provisional else 'no longer '}provisional, the file "
                       f"{'does not say so' if v.provisional else 'still says provisional'}")
    out += [f"L={L}: in the file, not a bucket of the study" for L in sorted(entries)]
    return [f"{path} is out of date: {line}" for line in out]

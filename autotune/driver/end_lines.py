"""The lines a search run ends with (`autotune.search`, "End of a run"): the summary's overhead,
the leaders confirmed and the verdict per bucket (also stored on the study), the run's rates and
phase shares (`run_stats`, stored on its at_runs row), the tuned file's status and the ``next:``
commands (export, accuracy, report) with the storage option that never prints a password."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from search_spaces.space import SearchSpace


def overhead_text(summary: dict[str, Any]) -> str:
    """Share of the search's wall time spent outside the candidate and baseline timing."""
    wall = summary.get("wall_s") or 0.0
    if wall <= 0:
        return "-"
    timed = summary.get("timed_s", 0.0)
    windows = summary.get("windows_s", 0.0)
    return (f"{100 * (1 - timed / wall):.0f}% of wall time outside the timed calls "
            f"({100 * (1 - windows / wall):.0f}% outside the timing and memory windows)")


def _store_run_stats(search: Any, st: dict[str, Any]) -> None:
    """`run_stats` onto the run's at_runs row (``stats``); a failure is logged, never raised."""
    from results.db import Database

    try:
        db = Database(search.storage)
        try:
            db.set_run_stats(search.run_id, st)
        finally:
            db.close()
    except Exception as e:  # noqa: BLE001 - the line above was printed anyway
        search.log(f"could not store the run's statistics: {e}")


def tuned_path(study: str) -> str:
    """Where the printed export command writes the study's tuned file (and the end of a run looks)."""
    return os.path.join("results", f"{study}.yaml")


def storage_option(storage: str, from_env: bool = False) -> tuple[str, Optional[str]]:
    """(the ``--storage`` option the printed commands carry, a note to print before them or None).
    The password never appears: a URL from ``$AUTOTUNE_STORAGE`` (``from_env``) or the default is
    left out (the commands read the same variable); a PostgreSQL URL with a password is printed
    without it (the driver takes it from ``PGPASSWORD`` or ``~/.pgpass``); any other URL with a
    password becomes ``--storage "$AUTOTUNE_STORAGE"``, which the note says to set."""
    import shlex

    from sqlalchemy.engine import URL, make_url

    from results.db import DEFAULT_STORAGE
    from results.storage import ENV_STORAGE

    if from_env or storage == DEFAULT_STORAGE:
        return "", None
    url = make_url(storage)
    if url.password is None:
        return f" --storage {shlex.quote(storage)}", None
    if url.get_backend_name() == "postgresql":
        bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database,
                          url.query).render_as_string(hide_password=False)
        return (f" --storage {shlex.quote(bare)}",
                f"the password is not printed: give it in PGPASSWORD or ~/.pgpass (or export {ENV_STORAGE}=<the full "
                f"URL> and leave --storage out)")
    return (f' --storage "${ENV_STORAGE}"',
            f"the password is not printed: export {ENV_STORAGE}=<the full --storage URL> before these commands")


def study_commands(study: str, storage: str, space: SearchSpace, from_env: bool = False) -> list[str]:
    """The export, accuracy and report commands for ``study`` (what the end of a run prints), with
    the storage as `storage_option` gives it: never a password. The accuracy command takes what
    it evaluates from the tuned file (the buckets, their chains and chain cap)."""
    import shlex

    st, _ = storage_option(storage, from_env)
    out = tuned_path(study)
    return [
        f"python -m autotune.export --study {shlex.quote(study)}{st} --out {shlex.quote(out)}",
        f"python -m autotune.accuracy --tuned {shlex.quote(out)}"
        + f" --json {shlex.quote(os.path.join('results', study + '_accuracy.json'))}",
        f"python -m autotune.report --study {shlex.quote(study)}{st} --out "
        f"{shlex.quote(os.path.join('results', study + '_REPORT.md'))}",
    ]


def record_verdict(storage: str, study: str, verdicts: list, log=None) -> None:
    """The verdict per bucket as the study's user attributes ``verdict.L<bucket>``: the words the
    search prints (`results.verdict.verdict_lines`, e.g. "deploy t#3: 1.92x over SDPA [1.80, 2.05]
    confirmed"), where Optuna's CLI, ``load_study`` and the dashboard show them next to
    ``best_trials``: the same choice the export writes."""
    import optuna

    from results.verdict import verdict_lines

    from ..trial import ATTR_LIMIT

    doc = {f"verdict.L{v.bucket}": line.split(": ", 1)[-1][:ATTR_LIMIT]
           for v, line in zip(verdicts, verdict_lines(verdicts))}
    try:
        st = optuna.storages.RDBStorage(storage, skip_table_creation=True, skip_compatibility_check=True)
        try:
            s = optuna.load_study(study_name=study, storage=st)
            for key, line in doc.items():
                s.set_user_attr(key, line)
        finally:
            st.remove_session()
            st.engine.dispose()
    except Exception as e:  # noqa: BLE001 - the verdict is printed and exported anyway
        if log:
            log(f"could not record the verdict on the study: {e}")


def run_stats(summary: dict[str, Any], confirm_s: float) -> dict[str, Any]:
    """A run's rates and where its wall time went. Trials per minute: trials finished this run
    (complete or failed) over the search loop's wall time. Shares of the run's capacity (workers x
    the search's wall time, plus the confirmation's wall time, which runs alone in the driver):
    ``compiling`` (the trials' compile phases, `kernels.compile_cache`), ``measuring`` (gate,
    candidate and baseline timing, memory, accuracy), ``confirming`` (the end-of-run confirmation)
    and ``idle`` (the rest: start-up, sampling, database writes, workers waiting)."""
    wall = float(summary.get("wall_s") or 0.0)
    workers = int(summary.get("workers_used") or 1)
    n = int(summary.get("completed", 0)) + int(summary.get("failed", 0))
    capacity = workers * wall + confirm_s
    busy = {"compiling": float(summary.get("compile_s", 0.0)), "measuring": float(summary.get("measure_s", 0.0)),
            "confirming": confirm_s}
    busy["idle"] = max(0.0, capacity - sum(busy.values()))
    return {"trials": n, "search_wall_s": round(wall, 2), "confirm_s": round(confirm_s, 2), "workers": workers,
            "trials_per_min": round(60.0 * n / wall, 2) if wall > 0 else None,
            "share": {k: (round(v / capacity, 4) if capacity > 0 else None) for k, v in busy.items()},
            "compiles": summary.get("compiles"), "sdpa_spread": summary.get("sdpa_spread")}


def run_stats_text(st: dict[str, Any]) -> str:
    """One line of `run_stats`."""
    sh = st["share"]
    pct = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sh.items() if v is not None)
    c = st.get("compiles") or {}
    return (f"{st['trials']} trials, {st['trials_per_min'] or 0:.1f} trials/min; wall time: {pct}; "
            f"{c.get('compiled', 0)} launch configs compiled ({c.get('compiled_twice', 0)} twice, "
            f"{c.get('cache_loads', 0)} disk-cache loads)")


def end_of_run(search: Any, args, summary: Optional[dict[str, Any]] = None) -> int:
    """Confirm the leaders of every bucket (`autotune.confirm.confirm`), print the verdict per
    bucket, the run's rates and phase shares (`run_stats`, also stored on its at_runs row) and the
    commands that export, check and report the study."""
    from ..confirm import current_verdicts
    from results.verdict import verdict_lines

    log = search.log
    t0 = time.perf_counter()
    try:
        verdicts = current_verdicts(search.storage, search.study_name, log=log)
    except RuntimeError as e:
        log(f"confirmation not run: {e}")
        verdicts = []
    if summary is not None:
        st = run_stats(summary, time.perf_counter() - t0)
        log("run: " + run_stats_text(st))
        _store_run_stats(search, st)
    for line in verdict_lines(verdicts):
        log("verdict " + line)
    if not verdicts:
        log("verdict: no complete trial to decide on")
    else:
        record_verdict(search.storage, search.study_name, verdicts, log)
        deployed_file_lines(search, verdicts)
    from_env = getattr(args, "storage", None) is None and bool(os.environ.get("AUTOTUNE_STORAGE"))
    _, note = storage_option(search.storage, from_env)
    log("next:" + (f" ({note})" if note else ""))
    for c in study_commands(search.study_name, search.storage, search.space, from_env):  # no password printed
        print(f"  {c}", file=sys.stderr)
    return 0


def deployed_file_lines(search: Any, verdicts: list) -> None:
    """Compare the verdicts with the tuned file on disk (the latest export's, else
    `tuned_path`; `results.export.file_status`) and say when it is out of date or missing."""
    from results.export import file_status, latest_out_path, load_live

    path = tuned_path(search.study_name)
    try:  # the latest export's file, else where the printed export command writes
        path = latest_out_path(search.study_name, search.storage) or path
        trials = load_live(search.study_name, search.storage).trials
        lines = file_status(path, verdicts, trials, search.study_name)
    except Exception as e:  # noqa: BLE001 - the verdict is printed anyway
        lines = [f"could not compare with the tuned file: {e}"]
    for line in lines:
        search.log(line)
    if not lines:
        search.log(f"{path} deploys exactly this verdict")

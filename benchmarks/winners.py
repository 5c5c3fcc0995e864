"""Do the search's winners hold? Re-time exported configs, repeat the main job, and measure the
search's measurement overhead.

    python benchmarks/winners.py retime --tuned results/protein-cpu.yaml [--repeats 41]
    python benchmarks/winners.py overhead --storage sqlite:///results/autotune.db --study protein-cpu
    python benchmarks/winners.py repeat --space search_spaces/cpu.yaml --runs 3 [--trials N] [--out DIR]

``retime``: every exported (bucket, workload) timed again with ``--repeats`` interleaved rounds of
candidate and SDPA (`kernels.measure.time_paired`, no early stop), on fresh inputs; the speedup
(median of per-round ratios) and its 95% interval, whether it lies inside the exported interval
and whether it clears the exported speedup target. ``overhead``: share of a study's search wall
time (its runs, start to end) spent outside the candidate and baseline timing, two ways: outside
the timed calls themselves (``timing.timed_s``; trials of the paired timer) and outside the timing
and memory windows (``candidate_s + baseline_s``; both old and new trials record these).
``repeat``: the main job ``--runs`` times, each in its own database, then export and ``retime``;
per bucket, are the choices the same config or statistically tied (confirmed intervals overlap)?
Writes JSON to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def retime(tuned: str, repeats: int = 41, seed: int = 0) -> list[dict[str, Any]]:
    import torch
    import yaml

    from kernels.baselines import SDPA
    from kernels.measure import time_paired
    from search_spaces.space import Workload
    from autotune.workloads import DTYPES, nominal_layout, one_pass, random_qkv, workload_layout
    from kernels import KernelConfig, dense_attention, sparse_attention
    from patterns import pattern_from_dict

    doc = yaml.safe_load(Path(tuned).read_text())
    device, dtype, mode, backend = doc["device"], DTYPES[doc["dtype"]], doc["mode"], doc["backend"]
    workloads = {w["name"]: Workload.from_dict(w) for w in doc["workloads"]}
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in doc["buckets"]:
        L = b["seq_len"]
        pattern_config = pattern_from_dict(b["pattern"])  # static, or guided (its layout chosen from the bias per call)
        kernel_config = KernelConfig.from_dict(b["kernel"]).for_block(pattern_config.block_size) if b.get("kernel") else None
        layout = nominal_layout(pattern_config, L)
        for name, exp in b["speedup"].items():
            w = workloads[name]
            if w.kind == "evoformer":
                continue  # whole-block re-timing: python -m autotune.evoformer.bench
            B = w.batch(L)
            q, k, v, bias = random_qkv(B, w.heads, L, w.head_dim, w.bias, device, dtype, gen, mode == "fwd+bwd")
            fns = {SDPA: one_pass(mode, lambda: dense_attention(q, k, v, None, bias), q, k, v, bias),
                   "cand": one_pass(mode, lambda: sparse_attention(
                       q, k, v, workload_layout(pattern_config, L, layout, bias, name), bias, backend=backend, config=kernel_config,
                   ), q, k, v, bias)}
            pt = time_paired(fns, baseline=SDPA, device=device, warmup=3, repeats=repeats, max_repeats=repeats,
                             rel_width=0.0, time_cap_s=1e9)
            r = pt.ratio("cand")
            target = b.get("speedup_min")
            out.append({"bucket": L, "workload": name, "trial": b["source"]["trial"], "sparsity": b["sparsity"],
                        "rounds": pt.rounds, "speedup": r.point, "lo": r.lo, "hi": r.hi, "level": r.level,
                        "sdpa_ms": pt.stats(SDPA)["median_ms"], "cand_ms": pt.stats("cand")["median_ms"],
                        "exported": exp["median"], "exported_lo": exp["lo"], "exported_hi": exp["hi"],
                        "inside_exported_interval": exp["lo"] <= r.point <= exp["hi"],
                        "intervals_overlap": r.lo <= exp["hi"] and exp["lo"] <= r.hi,
                        "speedup_min": target, "clears_target": None if target is None else r.point >= target})
            del q, k, v, bias, fns
    return out


def overhead(storage: str, study: str) -> dict[str, Any]:
    from sqlalchemy import select

    from results.db import Database, Run, TrialRow

    db = Database(storage, create=False)
    try:
        with db.Session() as s:
            runs = s.scalars(select(Run).where(Run.study_name == study)).all()
            trials = s.scalars(select(TrialRow).where(TrialRow.study_name == study)).all()
            wall = sum(((r.ended_at or r.heartbeat_at) - r.started_at).total_seconds() for r in runs)
            timing = [t.timing or {} for t in trials]
    finally:
        db.close()
    timed = sum(t.get("timed_s", 0.0) for t in timing)
    windows = sum(t.get("candidate_s", 0.0) + t.get("baseline_s", 0.0) for t in timing)
    trial = sum(t.get("total_s", 0.0) for t in timing)
    return {"study": study, "runs": len(runs), "trials": len(trials), "wall_s": wall, "trial_s": trial,
            "timed_s": timed or None, "windows_s": windows,
            "overhead_outside_timed_calls": (1 - timed / wall) if wall and timed else None,
            "overhead_outside_timing_windows": (1 - windows / wall) if wall else None}


def repeat(space: str, runs: int, trials: Optional[int], out_dir: Path) -> dict[str, Any]:
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    for i in range(runs):
        db = out_dir / f"repeat{i}.db"
        tuned = out_dir / f"repeat{i}.yaml"
        for p in (db, tuned):
            if p.exists():
                p.unlink()
        cmd = [sys.executable, "-m", "autotune.search", "--space", space, "--storage", f"sqlite:///{db}", "--no-progress"]
        if trials:
            cmd += ["--trials", str(trials)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        verdict = [ln for ln in r.stderr.splitlines() if "verdict" in ln]
        study = yaml.safe_load(Path(space).read_text()).get("name")
        e = subprocess.run([sys.executable, "-m", "autotune.export", "--study", study, "--storage", f"sqlite:///{db}",
                            "--out", str(tuned)], cwd=ROOT, env=env, capture_output=True, text=True)
        doc = yaml.safe_load(tuned.read_text()) if tuned.exists() else {"buckets": [], "not_exported": {}}
        results.append({"run": i, "search_rc": r.returncode, "wall_s": wall, "verdict": verdict,
                        "export_rc": e.returncode, "overhead": overhead(f"sqlite:///{db}", study),
                        "choices": {b["seq_len"]: {"trial": b["source"]["trial"], "pattern": b["pattern"],
                                                   "speedup": b["speedup_geomean"], "interval": b["speedup_interval"]}
                                    for b in doc["buckets"]},
                        "not_exported": doc.get("not_exported", {}),
                        "retime": retime(str(tuned)) if tuned.exists() else []})
    buckets = sorted({L for r in results for L in r["choices"]} | {int(L) for r in results for L in r["not_exported"]})
    agree = {}
    for L in buckets:
        ch = [r["choices"].get(L) for r in results]
        if all(c is None for c in ch):
            agree[L] = "none exported in any run (same verdict)"
        elif any(c is None for c in ch):
            agree[L] = "DIFFERENT: exported in some runs only"
        elif all(c["pattern"] == ch[0]["pattern"] for c in ch):
            agree[L] = "same config"
        else:
            lo = max(c["interval"][0] for c in ch)
            hi = min(c["interval"][1] for c in ch)
            agree[L] = "statistically tied (all intervals overlap)" if lo <= hi else "DIFFERENT (intervals disjoint)"
    return {"space": space, "runs": results, "agreement": agree}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("retime")
    a.add_argument("--tuned", required=True)
    a.add_argument("--repeats", type=int, default=41)
    b = sub.add_parser("overhead")
    b.add_argument("--storage", required=True)
    b.add_argument("--study", required=True)
    c = sub.add_parser("repeat")
    c.add_argument("--space", default="search_spaces/cpu.yaml")
    c.add_argument("--runs", type=int, default=3)
    c.add_argument("--trials", type=int, default=None)
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "winners"))
    args = p.parse_args(argv)
    if args.cmd == "retime":
        res = retime(args.tuned, args.repeats)
    elif args.cmd == "overhead":
        res = overhead(args.storage, args.study)
    else:
        res = repeat(args.space, args.runs, args.trials, Path(args.out))
        Path(args.out, "repeat.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

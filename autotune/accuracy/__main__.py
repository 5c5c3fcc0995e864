"""Command line: accuracy of a tuned pattern set, or of one pattern, on real protein chains.

    python -m autotune.accuracy --tuned tuned/protein.yaml [--proteins DIR]
    python -m autotune.accuracy --block-size 64 --window 128 --num-global 16 --stride 4 \\
        [--global-placement spread] [--buckets 256,512,1024] [--proteins DIR]
        [--json out.json] [--png out.png [--png-chain NAME]] [--max-chains N]

Prints one row per bucket (contact recall per range, attention-mass recall, output error), writes
the same as JSON with ``--json`` and draws one chain's contact map under the layout with ``--png``.
Bad input (missing folder, nothing readable, bad pattern, bad tuned file) prints one line on
stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from patterns import PatternConfig

from . import (
    ACCURACY_METRICS,
    CONTACT_CUTOFF,
    DEFAULT_BUCKETS,
    RANGES,
    ProteinLoadError,
    evaluate_pattern,
    load_proteins_report,
    select_chains,
)
from .metrics import PROBE_DIM, PROBE_HEADS, PROBE_SEED, PROBE_TAUS, layout_for


class _UsageError(Exception):
    pass


def _parse_buckets(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise _UsageError(f"--buckets must be comma-separated positive integers, got {text!r}") from None
    if not out or any(b < 1 for b in out):
        raise _UsageError(f"--buckets must be comma-separated positive integers, got {text!r}")
    return sorted(set(out))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m autotune.accuracy",
        description="Contact recall and attention accuracy of sparse patterns on real protein chains.",
    )
    p.add_argument("--proteins", metavar="DIR", help="folder (or file) of PDB/mmCIF structures, gzip or not "
                   "(default: the packaged set)")
    p.add_argument("--tuned", metavar="YAML", help="tuned pattern file: one pattern per length bucket")
    g = p.add_argument_group("single pattern (when --tuned is not given)")
    g.add_argument("--block-size", type=int, default=64)
    g.add_argument("--window", type=int, default=0, help="local window, residues")
    g.add_argument("--num-global", type=int, default=0, help="global residues")
    g.add_argument("--stride", type=int, default=0, help="strided block diagonals, in blocks (0 = off)")
    g.add_argument("--global-placement", choices=["first", "spread"], default="first")
    p.add_argument("--buckets", help="comma-separated bucket lengths (default: the tuned file's buckets, "
                   f"else {','.join(map(str, DEFAULT_BUCKETS))})")
    p.add_argument("--max-chains", type=int, default=None, help="cap on chains per bucket (deterministic subsample)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.add_argument("--png", metavar="OUT", help="draw one chain's contact map under its layout")
    p.add_argument("--png-chain", metavar="NAME", help="chain to draw (default: the longest evaluated chain)")
    return p


def _configs(args) -> tuple[list[int], dict[int, PatternConfig], str]:
    """(buckets, bucket -> config, description of the pattern source)."""
    if args.tuned:
        try:
            from patterns.tuned import load_tuned
        except ImportError as exc:
            raise _UsageError(f"--tuned needs patterns.tuned, which is not available ({exc})") from None
        if not Path(args.tuned).is_file():
            raise _UsageError(f"tuned file not found: {args.tuned}")
        try:
            tuned = load_tuned(args.tuned)
            buckets = _parse_buckets(args.buckets) if args.buckets else sorted(int(b) for b in tuned.buckets)
            configs = {b: tuned.config_for(b) for b in buckets}
        except _UsageError:
            raise
        except Exception as exc:
            raise _UsageError(f"cannot use tuned file {args.tuned}: {exc}") from None
        if not buckets:
            raise _UsageError(f"tuned file {args.tuned} lists no bucket")
        return buckets, configs, f"tuned:{args.tuned}"
    buckets = _parse_buckets(args.buckets) if args.buckets else list(DEFAULT_BUCKETS)
    try:
        cfg = PatternConfig(
            block_size=args.block_size,
            window=args.window,
            num_global=args.num_global,
            stride=args.stride,
            global_placement=args.global_placement,
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    return buckets, {b: cfg for b in buckets}, "pattern"


def _fmt_cfg(c: PatternConfig) -> str:
    return f"b{c.block_size} w{c.window} g{c.num_global}{'s' if c.global_placement == 'spread' else ''} s{c.stride}"


def run(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    try:
        if args.max_chains is not None and args.max_chains < 1:
            raise _UsageError(f"--max-chains must be >= 1, got {args.max_chains}")
        buckets, configs, source = _configs(args)
        try:
            chains, skipped = load_proteins_report(args.proteins)
        except ProteinLoadError as exc:
            raise _UsageError(str(exc)) from None
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    rows = []
    for b in buckets:
        cfg = configs[b]
        res = evaluate_pattern(cfg, b, buckets=buckets, chains=chains, max_chains=args.max_chains)
        sel, _, _, _ = select_chains(chains, b, buckets)
        dens = [layout_for(cfg, n)[0].density for n in res.lengths]
        rows.append(
            {
                "bucket": b,
                "config": cfg.to_dict(),
                "sparsity_at_bucket": layout_for(cfg, b)[0].sparsity,
                "sparsity_at_chain_lengths": 1.0 - sum(dens) / len(dens),
                "n_chains": res.n_chains,
                "lengths": list(res.lengths),
                "extrapolated": res.extrapolated,
                "note": res.note,
                "metrics": res.metrics,
            }
        )

    names = [f"contact_recall_{r}" for r in RANGES]
    head = (f"{'bucket':>6}  {'pattern':<20} {'sparsity':>8} {'@chains':>8} {'chains':>6} {'lengths':>10}  "
            f"{'short':>6} {'medium':>6} {'long':>6} {'mass':>6} {'out_err':>7}")
    print(f"proteins: {args.proteins or 'packaged set'} ({len(chains)} chains, {len(skipped)} file(s) skipped); "
          f"patterns: {source}")
    print(head)
    print("-" * len(head))
    for r in rows:
        lens = r["lengths"]
        m = r["metrics"]
        span = f"{min(lens)}-{max(lens)}"
        print(
            f"{r['bucket']:>6}  {_fmt_cfg(configs[r['bucket']]):<20} {r['sparsity_at_bucket']:>8.1%} "
            f"{r['sparsity_at_chain_lengths']:>8.1%} {r['n_chains']:>6} {span:>10}  "
            + " ".join(f"{m[n]:>6.3f}" for n in names)
            + f" {m['attention_mass_recall']:>6.3f} {m['output_rel_error']:>7.3f}"
            + ("  *" if r["extrapolated"] else "")
        )
    if any(r["extrapolated"] for r in rows):
        print("* extrapolated: " + " | ".join(f"{r['bucket']}: {r['note']}" for r in rows if r["extrapolated"]))

    if args.json:
        out = {
            "proteins": str(args.proteins) if args.proteins else "packaged",
            "patterns": source,
            "n_chains_loaded": len(chains),
            "skipped": [{"file": f, "reason": why} for f, why in skipped],
            "metric_directions": ACCURACY_METRICS,
            "definitions": {
                "residue_index": "position in the chain's resolved residue list (gaps are absent)",
                "contact": f"C-beta (C-alpha for glycine / missing C-beta) distance < {CONTACT_CUTOFF} A",
                "ranges": {k: list(v) for k, v in RANGES.items()},
                "bucket_rule": "chains with previous bucket < length <= bucket, layout built at each chain's length",
                "contact_recall": "pooled: kept contacts / contacts over the bucket's chains",
                "probe": {
                    "bias": "log sigmoid((8 A - d_ij) / tau_h)",
                    "tau_per_head": list(PROBE_TAUS),
                    "heads": PROBE_HEADS,
                    "head_dim": PROBE_DIM,
                    "seed": PROBE_SEED,
                },
            },
            "buckets": rows,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    if args.png:
        from .plot import draw_contacts

        evaluated = {}
        for r in rows:
            sel, _, _, _ = select_chains(chains, r["bucket"], buckets)
            for c in sel:
                evaluated.setdefault(c.name, (c, r["bucket"]))
        if args.png_chain:
            pick = evaluated.get(args.png_chain)
            if pick is None:
                match = [c for c in chains if c.name == args.png_chain]
                if not match:
                    print(f"error: no chain named {args.png_chain!r}", file=sys.stderr)
                    return 2
                pick = (match[0], buckets[-1])
        else:
            pick = max(evaluated.values(), key=lambda cb: (cb[0].length, cb[0].name))
        chain, b = pick
        draw_contacts(chain, configs[b], args.png)
        print(f"drew {chain.name} (L={chain.length}, bucket {b}) to {args.png}")
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()

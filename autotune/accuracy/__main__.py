"""Command line: accuracy of a tuned pattern set, or of one pattern, on real protein chains.

    python -m autotune.accuracy --tuned tuned/protein.yaml [--proteins DIR]
    python -m autotune.accuracy --block-size 64 --window 128 --num-global 16 --stride 4 \\
        [--global-placement spread] [--buckets 256,512,1024] [--proteins DIR]
        [--json out.json] [--png out.png [--png-chain NAME]] [--max-chains N]
    python -m autotune.accuracy --guided [--noise 0,2,4,8] [--sparsities 50,75,90] [--min-length 128]
        [--guided-block-size 16] [--guided-pool logsumexp] [--guided-spread layout] [--json out.json]
        [--png recall.png] [--max-chains N] [--seed 0] [--min-separation 12]

Prints one row per bucket (contact recall per range, attention-mass recall, output error), writes
the same as JSON with ``--json`` and draws one chain's contact map under the layout with ``--png``.
With ``--guided``: guided patterns at each noise level against the best static pattern and a
random mask, at matched measured sparsity (`autotune.accuracy.guided`); ``--png`` then draws
recall against sparsity. A range with no contact prints "-" (JSON null): no data, not 1.000.
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

from patterns import GuidedConfig, PatternConfig
from patterns.errors import InputError, exit_on_input_error, report_input_error
from patterns.output import check_output_path, write_output

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
from .guided import MIN_SEPARATION
from .metrics import PROBE_DIM, PROBE_HEADS, PROBE_SEED, PROBE_TAUS, layout_and_token_mask


class _UsageError(InputError):
    pass


#: the longest bucket evaluated: a search space's default ``limits.max_seq_len``; the bucket's
#: L x L token mask alone takes L^2 bytes (4 GiB here), so a typo such as 100000000 is refused up front
MAX_BUCKET = 65536


def _check_buckets(buckets: Sequence[int], what: str) -> None:
    """Every bucket within `MAX_BUCKET` (``what`` names the flag or file they came from)."""
    big = [b for b in buckets if b > MAX_BUCKET]
    if big:
        raise _UsageError(f"{what}: bucket {big[0]} is above {MAX_BUCKET}, the longest length evaluated "
                          f"(its {big[0]} x {big[0]} token mask alone would take {big[0] ** 2 / 2**30:.3g} GiB)")


def _parse_buckets(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise _UsageError(f"--buckets must be comma-separated positive integers, got {text!r}") from None
    if not out or any(b < 1 for b in out):
        raise _UsageError(f"--buckets must be comma-separated positive integers, got {text!r}")
    _check_buckets(out, "--buckets")
    return sorted(set(out))


def _check_out(path: Optional[str], flag: str) -> None:
    """An output path that can be written, checked before the evaluation by the one output-path
    policy of every command (`patterns.output.check_output_path`: a regular file or a new one in a
    writable folder; a folder, device, FIFO, /proc, a path below a file refused), named by its flag."""
    if not path:
        return
    try:
        check_output_path(path)
    except InputError as exc:
        raise _UsageError(f"{flag}: {exc}") from None


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
    g = p.add_argument_group("guided patterns (--guided): guided at each noise level, best static and random, "
                             "at matched measured sparsity; --png draws recall against sparsity")
    g.add_argument("--guided", action="store_true", help="evaluate guided patterns instead of one static pattern")
    g.add_argument("--noise", default="0,2,4,8", help="comma-separated noise sigmas in Angstrom (default 0,2,4,8)")
    g.add_argument("--sparsities", default="50,75,90", help="comma-separated target sparsities in percent")
    g.add_argument("--min-length", type=int, default=128, help="only chains of at least this many residues")
    g.add_argument("--guided-block-size", type=int, default=16)
    g.add_argument("--guided-pool", choices=["max", "mean", "logsumexp"], default="logsumexp")
    g.add_argument("--guided-spread", choices=["row", "layout"], default="layout")
    g.add_argument("--guided-window", type=int, default=0, help="forced local window, residues")
    g.add_argument("--guided-global", type=int, default=0, help="forced global residues")
    g.add_argument("--random-sigma", type=float, default=4.0, help="the random floor copies the guided per-row "
                   "budget at this noise (default 4)")
    g.add_argument("--seed", type=int, default=0, help="noise and random-mask seed")
    g.add_argument("--min-separation", type=int, default=MIN_SEPARATION, help="pairs closer along the chain get no "
                   f"contact probability in the guiding signal (default {MIN_SEPARATION}: medium and long range; "
                   "6 is where the contact ranges start)")
    return p


def _parse_floats(text: str, flag: str, lo: float, hi: float, scale: float = 1.0) -> list[float]:
    """Comma-separated numbers in [lo, hi], each divided by ``scale``; sorted, unique."""
    try:
        raw = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise _UsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not raw or any(not (lo <= v <= hi) for v in raw):  # NaN fails the comparison too
        raise _UsageError(f"{flag} must be comma-separated numbers in [{lo:g}, {hi:g}], got {text!r}")
    return sorted(set(v / scale for v in raw))


def _guided_inputs(args) -> tuple[list[float], list[float], list, list]:
    """Step 1 of --guided: (noise sigmas, target sparsities, chains of >= --min-length, skipped
    files), validated; raises _UsageError naming the flag or folder."""
    from . import _subsample

    sigmas = _parse_floats(args.noise, "--noise", 0.0, 100.0)
    targets = _parse_floats(args.sparsities, "--sparsities", 1.0, 99.0, scale=100.0)
    if not 0.0 <= args.random_sigma <= 100.0:
        raise _UsageError(f"--random-sigma must be in [0, 100], got {args.random_sigma}")
    if args.min_length < 1:
        raise _UsageError(f"--min-length must be >= 1, got {args.min_length}")
    if args.min_separation < 0:
        raise _UsageError(f"--min-separation must be >= 0, got {args.min_separation}")
    if not 0 <= args.seed <= 2**32 - 1:  # numpy's seed range, as the space's sampler.seed
        raise _UsageError(f"--seed must be in [0, {2**32 - 1}], got {args.seed}")
    if args.max_chains is not None and args.max_chains < 1:
        raise _UsageError(f"--max-chains must be >= 1, got {args.max_chains}")
    _check_out(args.json, "--json")
    _check_out(args.png, "--png")
    try:
        GuidedConfig(args.guided_block_size, keep=0.5, pool=args.guided_pool, window=args.guided_window,
                     num_global=args.guided_global, spread=args.guided_spread)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    try:
        chains, skipped = load_proteins_report(args.proteins)
    except ProteinLoadError as exc:
        raise _UsageError(str(exc)) from None
    sel = _subsample([c for c in chains if c.length >= args.min_length], args.max_chains)
    if not sel:
        raise _UsageError(f"no chain with at least {args.min_length} residues")
    return sigmas, targets, sel, skipped


def _fmt_spread(pc: Optional[dict]) -> str:
    """Per-chain long-range recall as ``min-max`` for the table ("-": no chain with such contacts)."""
    return f"{'-':>11}" if pc is None else f"{pc['min']:.3f}-{pc['max']:.3f}"


def _print_guided_table(args, rows, sel) -> None:
    """Step 3 of --guided: the header line and one row per (target, method, sigma)."""
    names = [f"contact_recall_{r}" for r in RANGES]
    lens = [c.length for c in sel]
    print(f"proteins: {args.proteins or 'packaged set'}: {len(sel)} chain(s) of {min(lens)}-{max(lens)} residues "
          f"(>= {args.min_length}); guided: block {args.guided_block_size}, pool {args.guided_pool}, "
          f"spread {args.guided_spread}; signal: noisy C-beta contact probabilities from separation "
          f"{args.min_separation}, seed {args.seed}")
    head = (f"{'target':>6}  {'method':<8} {'sigma':>5} {'sparsity':>8}  {'short':>6} {'medium':>6} {'long':>6} "
            f"{'long/chain':>11} {'mass':>6} {'out_err':>7}  detail")
    print(head)
    print("-" * len(head))
    for r in rows:
        m = r.metrics
        sig = "-" if r.sigma is None or r.method == "static" else f"{r.sigma:g}"
        print(f"{r.target:>6.0%}  {r.method:<8} {sig:>5} {r.sparsity:>8.1%}  "
              + " ".join(_fmt_metric(m[n]) for n in names) + f" {_fmt_spread(r.per_chain_long)}"
              + f" {_fmt_metric(m['attention_mass_recall'])} {_fmt_metric(m['output_rel_error'], 7)}  {r.detail}")


def _guided_json(args, rows, sel, skipped, sigmas, targets) -> dict:
    """Step 4 of --guided: the JSON document (settings, definitions, rows)."""
    return {
        "mode": "guided",
        "proteins": args.proteins or "packaged",
        "chains": [{"name": c.name, "length": c.length} for c in sel],
        "skipped": [{"file": f, "reason": why} for f, why in skipped],
        "min_length": args.min_length,
        "noise_sigmas": sigmas,
        "target_sparsities": targets,
        "seed": args.seed,
        "guided": {"block_size": args.guided_block_size, "pool": args.guided_pool, "spread": args.guided_spread,
                   "window": args.guided_window, "num_global": args.guided_global,
                   "min_separation": args.min_separation},
        "metric_directions": ACCURACY_METRICS,
        "definitions": {
            "signal": "log P(d_ij < 8 A | d~_ij, sigma): noncentral chi (3 dof) distribution function of the "
                      "posterior N(x~_ij, 2 sigma^2 I) of the difference vector (flat prior; the nominal sigma is "
                      "given to the selection), floored at 1e-12; d~ from C-beta coordinates plus N(0, sigma^2) "
                      "per coordinate; pairs with |i - j| < min_separation get -1e4",
            "sparsity_matching": "per chain: keep = n / tiles with n (bisection) giving the measured pair "
                                 "sparsity closest to the target; the row's sparsity is pooled over the "
                                 "chains' L x L pairs",
            "guided": "GuidedConfig on that signal, keep chosen per chain for the measured sparsity closest to the target",
            "random": "guided per-row block counts at random_sigma, diagonal forced, other blocks uniform",
            "static": "best of the static families (pattern_for_sparsity per chain length) by long-range "
                      "recall within 0.05 of the target sparsity",
            "sparsity": "measured, pooled over the chains' L x L pairs",
            "per_chain_long": "per-chain long-range contact recall (chains with long-range contacts): min, median, "
                              "max and the chains at the extremes",
            "no_data": "null: a range with no contact in the chains",
        },
        "rows": [r.to_dict() for r in rows],
    }


def _run_guided(args) -> int:
    """The --guided mode (see `autotune.accuracy.guided`): inputs, evaluation, table, JSON, PNG."""
    from .guided import evaluate_guided

    try:
        sigmas, targets, sel, skipped = _guided_inputs(args)
    except InputError as exc:
        return report_input_error(exc)
    rows = evaluate_guided(
        sel, sigmas=sigmas, sparsities=targets, block_size=args.guided_block_size, pool=args.guided_pool,
        spread=args.guided_spread, window=args.guided_window, num_global=args.guided_global,
        random_sigma=args.random_sigma, seed=args.seed, min_separation=args.min_separation,
    )
    _print_guided_table(args, rows, sel)
    if args.json:
        try:
            _write_json(args.json, _guided_json(args, rows, sel, skipped, sigmas, targets))
        except InputError as exc:
            return report_input_error(exc)
    if args.png:
        from .plot import draw_recall_vs_sparsity

        draw_recall_vs_sparsity(rows, args.png, title=f"{len(sel)} chains >= {args.min_length} residues, "
                                f"block {args.guided_block_size}")
        print(f"drew recall against sparsity to {args.png}")
    return 0


def _write_json(path: str, doc: dict) -> None:
    write_output(path, json.dumps(doc, indent=2) + "\n")  # only a regular file is replaced, atomically


def _deployed_plan(tuned, buckets: list[int], max_chains: Optional[int]) -> dict[int, dict]:
    """bucket -> how the search evaluated the pattern the tuned file deploys there (``ladder``: the
    study's bucket ladder, which fixes the bucket's lower edge, so the chains are exactly the
    bucket's - never the shorter ones that deployment runs dense; ``max_chains`` and ``noise`` as
    recorded under the bucket's ``accuracy_chains``; ``max_chains`` given on the command line wins)."""
    measured = list(getattr(tuned, "measured_buckets", None) or tuned.buckets)
    entries = getattr(tuned, "entries", None) or {}
    out = {}
    for b in buckets:
        e = entries.get(b)
        chains = (e.info.get("accuracy_chains") if e is not None else None) or {}
        out[b] = {"ladder": sorted(set(chains.get("buckets") or measured) | {b}),
                  "max_chains": max_chains if max_chains is not None else chains.get("max_chains"),
                  "noise": chains.get("noise")}
    return out


def _configs(args) -> tuple[list[int], dict[int, PatternConfig], str, dict[int, dict]]:
    """(buckets, bucket -> config, description of the pattern source, bucket -> evaluation plan:
    ``ladder``, ``max_chains``, ``noise``; see `_deployed_plan`)."""
    if args.tuned:
        try:
            from kernels.tuned import load_tuned
        except ImportError as exc:
            raise _UsageError(f"--tuned needs kernels.tuned, which is not available ({exc})") from None
        if not Path(args.tuned).is_file():
            raise _UsageError(f"tuned file not found: {args.tuned}")
        try:
            tuned = load_tuned(args.tuned)
            buckets = _parse_buckets(args.buckets) if args.buckets else sorted(int(b) for b in tuned.buckets)
            _check_buckets(buckets, f"tuned file {args.tuned}")
            configs = {b: tuned.config_for(b) for b in buckets}
        except _UsageError:
            raise
        except Exception as exc:
            raise _UsageError(f"cannot use tuned file {args.tuned}: {exc}") from None
        if not buckets:
            raise _UsageError(f"tuned file {args.tuned} lists no bucket")
        dense = [b for b in buckets if configs[b] is None]  # infeasible or unmeasured: dense attention there
        if dense:
            print(f"autotune.accuracy: L={', '.join(map(str, dense))}: the tuned file deploys dense attention there "
                  "(no sparse pattern to evaluate)", file=sys.stderr)
            buckets = [b for b in buckets if configs[b] is not None]
            configs = {b: configs[b] for b in buckets}
            if not buckets:
                raise _UsageError(f"tuned file {args.tuned}: dense attention at every requested bucket, nothing to evaluate")
        return buckets, configs, f"tuned:{args.tuned}", _deployed_plan(tuned, buckets, args.max_chains)
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
    plan = {b: {"ladder": buckets, "max_chains": args.max_chains, "noise": None} for b in buckets}
    return buckets, {b: cfg for b in buckets}, "pattern", plan


def _fmt_cfg(c) -> str:
    if isinstance(c, GuidedConfig):
        budget = f"k{c.keep:g}" if c.keep is not None else f"m{c.mass:g}"
        return f"guided b{c.block_size} {budget} {c.pool[:3]} {c.spread[:3]}"
    return f"b{c.block_size} w{c.window} g{c.num_global}{'s' if c.global_placement == 'spread' else ''} s{c.stride}"


def _fmt_metric(value: Optional[float], width: int = 6) -> str:
    """A metric for the table; None (a range with no contact: no data) prints as "-"."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def _pattern_inputs(args) -> tuple[list[int], dict, str, list, list, dict]:
    """Step 1 of the pattern mode: (buckets, bucket -> config, pattern source, chains, skipped
    files, bucket -> evaluation plan), validated; raises _UsageError naming the flag, file or folder."""
    if args.max_chains is not None and args.max_chains < 1:
        raise _UsageError(f"--max-chains must be >= 1, got {args.max_chains}")
    _check_out(args.json, "--json")
    _check_out(args.png, "--png")
    buckets, configs, source, plan = _configs(args)
    try:
        chains, skipped = load_proteins_report(args.proteins)
    except ProteinLoadError as exc:
        raise _UsageError(str(exc)) from None
    return buckets, configs, source, chains, skipped, plan


def _evaluate_buckets(args, buckets, configs, chains, plan: Optional[dict] = None) -> list[dict]:
    """Step 2: one result row per bucket (`evaluate_pattern` on the bucket's chains, chosen by the
    bucket's ``plan``: the ladder, chain cap and noise the search evaluated the deployed pattern with)."""
    rows = []
    for b in buckets:
        cfg = configs[b]
        pb = (plan or {}).get(b) or {"ladder": buckets, "max_chains": args.max_chains, "noise": None}
        kw = {"noise": pb["noise"]} if pb.get("noise") is not None else {}
        res = evaluate_pattern(cfg, b, buckets=pb["ladder"], chains=chains, max_chains=pb["max_chains"], **kw)
        guided = isinstance(cfg, GuidedConfig)  # a tuned file may hold guided entries
        rows.append(
            {
                "bucket": b,
                "config": cfg.to_dict(),
                # a guided layout depends on each input: no sparsity at the bucket length
                "sparsity_at_bucket": None if guided else layout_and_token_mask(cfg, b)[0].sparsity,
                "sparsity_at_chain_lengths": res.sparsity,
                "n_chains": res.n_chains,
                "lengths": list(res.lengths),
                "extrapolated": res.extrapolated,
                "note": res.note,
                "metrics": res.metrics,
            }
        )
    return rows


def _print_pattern_table(args, rows, configs, source, chains, skipped) -> None:
    """Step 3: the header line, one row per bucket and the extrapolation notes."""
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
            f"{r['bucket']:>6}  {_fmt_cfg(configs[r['bucket']]):<20} "
            + (f"{'-':>8} " if r["sparsity_at_bucket"] is None else f"{r['sparsity_at_bucket']:>8.1%} ")
            + f"{r['sparsity_at_chain_lengths']:>8.1%} {r['n_chains']:>6} {span:>10}  "
            + " ".join(_fmt_metric(m[n]) for n in names)
            + f" {m['attention_mass_recall']:>6.3f} {m['output_rel_error']:>7.3f}"
            + ("  *" if r["extrapolated"] else "")
        )
    if any(r["extrapolated"] for r in rows):
        print("* extrapolated: " + " | ".join(f"{r['bucket']}: {r['note']}" for r in rows if r["extrapolated"]))


def _pattern_json(args, rows, source, chains, skipped) -> dict:
    """Step 4: the JSON document (settings, definitions, one entry per bucket)."""
    return {
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


def _draw_pattern_png(args, rows, buckets, configs, chains) -> int:
    """Step 5: one chain's contact map under its bucket's layout (a guided layout chosen from the
    degraded structure); 2 when --png-chain names no chain."""
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
                return report_input_error(InputError(f"no chain named {args.png_chain!r}"))
            pick = (match[0], buckets[-1])
    else:
        pick = max(evaluated.values(), key=lambda cb: (cb[0].length, cb[0].name))
    chain, b = pick
    cfg = configs[b]
    if isinstance(cfg, GuidedConfig):  # drawn with the layout chosen from the degraded structure
        from patterns import build_layout

        from . import DEFAULT_NOISE
        from .guided import contact_signal

        draw_contacts(chain, cfg, args.png,
                      layout=build_layout(cfg, chain.length, signal=contact_signal(chain, DEFAULT_NOISE)))
    else:
        draw_contacts(chain, cfg, args.png)
    print(f"drew {chain.name} (L={chain.length}, bucket {b}) to {args.png}")
    return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (module docstring): 0 on success, 2 on bad input (one line on stderr)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    try:  # --json / --png that cannot be written (a folder, a device, /proc, ...): refused before any work
        _check_out(args.json, "--json")
        _check_out(args.png, "--png")
    except InputError as exc:
        return report_input_error(exc)
    if args.guided:
        return _run_guided(args)
    try:
        buckets, configs, source, chains, skipped, plan = _pattern_inputs(args)
    except InputError as exc:
        return report_input_error(exc)
    rows = _evaluate_buckets(args, buckets, configs, chains, plan)
    _print_pattern_table(args, rows, configs, source, chains, skipped)
    if args.json:
        try:
            _write_json(args.json, _pattern_json(args, rows, source, chains, skipped))
        except InputError as exc:
            return report_input_error(exc)
    if args.png:
        return _draw_pattern_png(args, rows, buckets, configs, chains)
    return 0


def main() -> None:
    with exit_on_input_error():  # a write that fails late (a full disk): one line, exit status 2
        sys.exit(run())


if __name__ == "__main__":
    main()

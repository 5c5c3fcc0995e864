"""``python -m autotune.report --storage URL --out REPORT.md [options]``.

Options: ``--study NAME`` (default: the study of the latest search run), ``--plots-dir DIR``
(default ``<out stem>_files`` next to the report), ``--targets FILE`` (YAML, see
`autotune.report.targets`), ``--speedup-target X``, ``--speedup-baseline sdpa|naive``,
``--memory-target F`` (fraction, or percent if > 1), ``--memory-baseline sdpa|naive``,
``--accuracy-metric NAME``, ``--accuracy-min X``. Exit status: 0 written; 2 the database is
missing or empty, the study is unknown or a target is invalid (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m autotune.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default=None, help="SQLAlchemy URL or SQLite file (default $AUTOTUNE_STORAGE, "
                   "else sqlite:///results/autotune.db)")
    p.add_argument("--out", default="REPORT.md", help="Markdown report (default REPORT.md)")
    p.add_argument("--study", default=None, help="study to report (default: the latest run's study)")
    p.add_argument("--plots-dir", default=None, help="where the PNGs go (default <out stem>_files/)")
    p.add_argument("--targets", default=None, help="YAML file of targets (keys of autotune.report.targets.Targets)")
    p.add_argument("--speedup-target", type=float, default=None, help="minimum speedup (default 1.2)")
    p.add_argument("--speedup-baseline", choices=("sdpa", "naive"), default=None, help="default sdpa")
    p.add_argument("--memory-target", type=float, default=None,
                   help="minimum memory reduction, fraction or percent (default 0.30)")
    p.add_argument("--memory-baseline", choices=("sdpa", "naive"), default=None, help="default sdpa")
    p.add_argument("--accuracy-metric", default=None, help="extra accuracy floor: metric (default contact_recall_long)")
    p.add_argument("--accuracy-min", type=float, default=None, help="extra accuracy floor: minimum")
    args = p.parse_args(argv)
    from autotune.storage import StorageError, resolve_storage

    from .build import build_report
    from .data import ReportError, load
    from .targets import load_targets

    try:
        targets = load_targets(args.targets, speedup=args.speedup_target, speedup_baseline=args.speedup_baseline,
                               memory_reduction=args.memory_target, memory_baseline=args.memory_baseline,
                               accuracy_metric=args.accuracy_metric, accuracy_min=args.accuracy_min)
        storage = resolve_storage(args.storage, "read")
        data = load(storage.url, args.study)
    except (ReportError, StorageError) as e:
        print(f"autotune.report: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:  # a stored JSON cell that does not decode (hand-edited database)
        print(f"autotune.report: error: cannot read --storage {storage.masked}: a stored value is corrupted "
              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})", file=sys.stderr)
        return 2
    text, figures = build_report(data, targets, args.out, args.plots_dir, argv=argv)
    print(f"autotune.report: wrote {args.out} ({len(text.splitlines())} lines, {len(figures)} figure(s))", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``hostkvm bench``: the harness against a C ``KVM_RUN`` loop, observation overhead, mirror
throughput, VM setup and whole-process cost, side by side on this host (see
:mod:`hostkvm.bench`). Exit status 0 only if every target is met."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (no progress lines)")
    parser.add_argument("--quick", action="store_true",
                        help="few exits and repetitions (checks that the bench works; the figures mean little)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure (at least 5 for real figures)")
    parser.add_argument("--no-suite", action="store_true", help="skip the `hostkvm compare` figures")


def main(args: argparse.Namespace) -> int:
    from hostkvm.bench import BenchConfig, _Progress, format_table, report_json, run_bench

    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    if args.reps is not None:
        if args.reps < 1:
            from hostkvm.errors import PayloadError

            raise PayloadError("--reps must be at least 1")
        cfg.reps = args.reps
    if args.no_suite:
        cfg.suite = False
    progress = _Progress(not args.json and sys.stderr.isatty())
    figures = run_bench(cfg, progress)
    if args.json:
        print(json.dumps(report_json(figures, cfg), indent=1))
    else:
        print(format_table(figures))
        met = sum(f.met for f in figures)
        print(f"\n{met} of {len(figures)} targets met")
    return 0 if all(f.met for f in figures) else 1

"""``hostkvm run PAYLOAD``: run one payload on this host and print every exit."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hostkvm.harness import RecordedExit, RunResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("payload", help="payload .S file (see docs/payload-format.md), or a "
                        "name from the payload library (e.g. store_u32_cpl3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before the run is stopped (default: the payload's timeout:)")
    parser.add_argument("--trace", action="store_true",
                        help="capture kvm/kvmmmu tracepoints in a private tracefs instance and "
                        "attach them to each exit (needs root)")
    parser.add_argument("--timing", action="store_true",
                        help="summarize per-exit latency: first touch vs repeat, per gpa page")
    parser.add_argument("--stats-per-exit", action="store_true",
                        help="attach the vCPU stats delta of each round trip to its exit")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="with --timing, draw the latency histograms (needs matplotlib)")


def format_exit(e: RecordedExit, _cache: dict[tuple[Any, ...], str] | None = None) -> str:
    """One line for an exit (and, when traced or with per-exit stats, its events and stats).
    *_cache* keeps the text of exits that repeat (same access by the same instruction)."""
    key = (e.reason, e.gpa, e.len, e.is_write, e.data, e.port, e.insn_rip, e.insn, e.where)
    body = None if _cache is None else _cache.get(key)
    if body is None:
        if e.reason == "KVM_EXIT_MMIO":
            what = (f"{'write' if e.is_write else 'read '} gpa {e.gpa:#x} len {e.len} "
                    f"data {e.data.hex() if e.is_write else '-'}")
        elif e.reason == "KVM_EXIT_IO":
            what = f"{'out' if e.is_write else 'in '} port {e.port:#x} len {e.len} data {e.data.hex() or '-'}"
        else:
            what = ""
        body = f"{e.reason:<14} {what}  rip {e.insn_rip:#x}  {e.insn}"
        if e.where:
            file, line = e.where.split(":")[:2]
            body += f"  [{file.rsplit('/', 1)[-1]}:{line}]"
        if _cache is not None:
            _cache[key] = body
    line = f"#{e.index:<4} {body}"
    if e.events:
        line += "\n        events: " + " ".join(ev.name for ev in e.events)
    if e.stats:
        line += "\n        stats: " + ", ".join(f"{k} +{v}" for k, v in sorted(e.stats.items()))
    return line


def timing_json(r: RunResult) -> dict[str, Any]:
    """Latency summaries of the MMIO exits of *r* (host ns around KVM_RUN, and kernel-side
    ns from trace timestamps when traced)."""
    from hostkvm import timing

    mmio = r.mmio_exits
    ns = [e.ns for e in mmio]
    gpas = [e.gpa for e in mmio]
    ns_sorted = sorted(ns)  # shared by the summaries of the groups that hold nearly all exits
    by_page = timing.group(ns, [gpa >> timing.PAGE_SHIFT for gpa in gpas], sorted_values=ns_sorted)
    out: dict[str, Any] = {
        "unit": "ns",
        "all": timing.summarize_sorted(ns_sorted),
        "by_class": timing.group(ns, timing.first_touch_classes(gpas), sorted_values=ns_sorted),
        "by_page": {f"{page << timing.PAGE_SHIFT:#x}": s for page, s in by_page.items()},
    }
    kernel = [e.kernel_ns for e in mmio if e.kernel_ns is not None]
    if kernel:
        out["kernel"] = timing.summarize(kernel)
    return out


def result_json(path: str, host: dict[str, Any], r: RunResult, *, with_timing: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {
        "payload": path,
        "host": host,
        "outcome": r.outcome.to_json(),
        "exits": [e.to_json() for e in r.exits],
        "prints": r.prints,
        "stats": {"vcpu": r.vcpu_stats, "vm": r.vm_stats},
        "missing": r.missing,
    }
    if r.trace is not None:
        d["trace"] = {"enabled": list(r.trace.enabled), "absent": list(r.trace.absent),
                      "events": r.trace.total, "mounted_tracefs": r.trace.mounted_here}
    if with_timing:
        d["timing"] = timing_json(r)
    return d


def main(args: argparse.Namespace) -> int:
    from hostkvm._resources import resolve_payload
    from hostkvm.harness import run_payload
    from hostkvm.payload import parse_payload
    from hostkvm.probe import probe
    from hostkvm.system import Kvm

    path = resolve_payload(args.payload)
    payload = parse_payload(path)
    if args.plot and not args.timing:
        from hostkvm.errors import PayloadError

        raise PayloadError("--plot draws the --timing histograms: add --timing")
    with Kvm() as kvm:
        host = probe(kvm)
        r = run_payload(payload, kvm=kvm, timeout=args.timeout, trace=args.trace,
                        stats_per_exit=args.stats_per_exit)
    if args.plot:
        from hostkvm import timing

        mmio = r.mmio_exits
        classes = timing.first_touch_classes([e.gpa for e in mmio])
        series = {c: [e.ns for e, k in zip(mmio, classes) if k == c] for c in ("first_touch", "repeat")}
        timing.plot_histograms(args.plot, series, f"{path.name}: KVM_RUN round trip per MMIO exit")
    if args.json:
        print(json.dumps(result_json(str(path), host, r, with_timing=args.timing), indent=1))
    else:
        if r.trace is not None and r.trace.mounted_here:
            print("note: mounted tracefs at " + (host["tracefs"]["path"] or "/sys/kernel/tracing"))
        for m in r.missing:
            print(f"observation missing: {m}")
        print(f"payload {path}: {payload.mode} cpl{payload.cpl} on {host['backend']}/{host['paging']} "
              f"(mmio_caching {'on' if host['mmio_caching'] else 'off'})")
        for text in r.prints:
            print(f"guest: {text}")
        cache: dict[tuple[Any, ...], str] = {}
        if r.exits:
            sys.stdout.write("\n".join(format_exit(e, cache) for e in r.exits) + "\n")
        print(f"outcome: {r.outcome.describe()}")
        stats = ", ".join(f"{k} +{v}" for k, v in sorted(r.vcpu_stats.items())) or "(none)"
        print(f"vcpu stats: {stats}")
        if r.trace is not None:
            absent = f"; absent on this kernel: {', '.join(r.trace.absent)}" if r.trace.absent else ""
            print(f"trace: {r.trace.total} events, {len(r.trace.outside)} outside any KVM_RUN{absent}")
        if args.timing:
            from hostkvm import timing

            t = timing_json(r)
            print(timing.format_summary("all MMIO exits", t["all"]))
            for name, summ in t["by_class"].items():
                print(timing.format_summary(name, summ))
            if "kernel" in t:
                print(timing.format_summary("kernel-side (trace)", t["kernel"]))
    return 0 if r.outcome.kind == "done" else 1

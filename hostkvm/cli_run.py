"""``hostkvm run PAYLOAD``: run one payload on this host and print every exit."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hostkvm.harness import RecordedExit, RunResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("payload", help="payload .S file (see docs/payload-format.md), or a "
                        "name from the payload library (e.g. store_u32_cpl3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before the run is stopped (default: the payload's timeout:)")


def format_exit(e: RecordedExit) -> str:
    if e.reason == "KVM_EXIT_MMIO":
        what = (f"{'write' if e.is_write else 'read '} gpa {e.gpa:#x} len {e.len} "
                f"data {e.data.hex() if e.is_write else '-'}")
    elif e.reason == "KVM_EXIT_IO":
        what = f"{'out' if e.is_write else 'in '} port {e.port:#x} len {e.len} data {e.data.hex() or '-'}"
    else:
        what = ""
    line = f"#{e.index:<4} {e.reason:<14} {what}  rip {e.insn_rip:#x}  {e.insn}"
    if e.where:
        line += f"  [{e.where.split(':')[0].rsplit('/', 1)[-1]}:{e.where.split(':')[1]}]"
    return line


def result_json(path: str, host: dict[str, Any], r: RunResult) -> dict[str, Any]:
    return {
        "payload": path,
        "host": host,
        "outcome": r.outcome.to_json(),
        "exits": [e.to_json() for e in r.exits],
        "prints": r.prints,
        "stats": {"vcpu": r.vcpu_stats, "vm": r.vm_stats},
    }


def main(args: argparse.Namespace) -> int:
    from hostkvm._resources import resolve_payload
    from hostkvm.harness import run_payload
    from hostkvm.payload import parse_payload
    from hostkvm.probe import probe
    from hostkvm.system import Kvm

    path = resolve_payload(args.payload)
    payload = parse_payload(path)
    with Kvm() as kvm:
        host = probe(kvm)
        r = run_payload(payload, kvm=kvm, timeout=args.timeout)
    if args.json:
        print(json.dumps(result_json(str(path), host, r), indent=1))
    else:
        print(f"payload {path}: {payload.mode} cpl{payload.cpl} on {host['backend']}/{host['paging']} "
              f"(mmio_caching {'on' if host['mmio_caching'] else 'off'})")
        for text in r.prints:
            print(f"guest: {text}")
        for e in r.exits:
            print(format_exit(e))
        print(f"outcome: {r.outcome.describe()}")
        stats = ", ".join(f"{k} +{v}" for k, v in sorted(r.vcpu_stats.items())) or "(none)"
        print(f"vcpu stats: {stats}")
    return 0 if r.outcome.kind == "done" else 1

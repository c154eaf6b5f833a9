"""``hostkvm compare``: run scenarios on a host and on the mirror, report where they disagree.

``--host local`` (default) runs here; ``ref-npt0``/``ref-npt1`` run the same command inside
the reference host (stock KVM under QEMU TCG) and read its JSON back; ``all`` does the three
and prints them side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hostkvm.errors import ScenarioError

HOSTS = ("local", "ref-npt0", "ref-npt1", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="scenarios to run (default: all but the slow ones)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--junit", metavar="FILE", help="also write a JUnit XML file, one test case per scenario")
    parser.add_argument("--host", choices=HOSTS, default="local",
                        help="where to run: this host, a reference-host configuration, or all three")
    parser.add_argument("--slow", action="store_true", help="include the slow scenarios")
    parser.add_argument("--scenarios-from", metavar="FILE.py", action="append", default=[],
                        help="a Python file that registers more scenarios (hostkvm.scenario.register)")
    parser.add_argument("--no-trace", action="store_true", help="compare exits and stats only")


def load_scenario_file(path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"--scenarios-from {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"hostkvm_user_scenarios_{p.stem}", p)
    if spec is None or spec.loader is None:
        raise ScenarioError(f"--scenarios-from {path}: cannot be imported as Python")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except ScenarioError:
        raise
    except Exception as e:  # a user's file: name the file and the error
        raise ScenarioError(f"--scenarios-from {path}: {type(e).__name__}: {e}") from None


def select(names: list[str], slow: bool) -> tuple[list[Any], list[Any]]:
    from hostkvm.scenario import registry

    reg = registry()
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise ScenarioError(f"unknown scenario(s): {', '.join(unknown)} (hostkvm compare --list names them)")
    chosen = [reg[n] for n in names] if names else list(reg.values())
    run = [s for s in chosen if slow or names or not s.slow]
    skipped = [s for s in chosen if s not in run]
    return run, skipped


def run_local(names: list[str], *, slow: bool, trace: bool, progress: bool) -> dict[str, Any]:
    from hostkvm.compare import ScenarioResult, compare_scenario, host_label
    from hostkvm.mirror import HostConfig
    from hostkvm.probe import probe
    from hostkvm.system import Kvm

    scenarios, skipped = select(names, slow)
    t0 = time.perf_counter()
    with Kvm() as kvm:
        pr = probe(kvm)
        cfg = HostConfig.from_probe(pr)
        label = host_label(pr)
        results = []
        for i, s in enumerate(scenarios):
            if progress:
                print(f"[{i + 1}/{len(scenarios)}] {s.name} ...", file=sys.stderr, flush=True)
            results.append(compare_scenario(s, kvm, pr, cfg, host_label=label, trace=trace))
    for s in skipped:
        results.append(ScenarioResult(s.name, "skipped", label, s.description,
                                      missing=["slow scenario: run with --slow or name it"]))
    return {"host_key": "local", "host": pr, "host_label": label, "mirror": cfg.describe(),
            "seconds": round(time.perf_counter() - t0, 2), "scenarios": [r.to_json() for r in results]}


def run_refhost(which: str, names: list[str], *, slow: bool, trace: bool, progress: bool) -> dict[str, Any]:
    from hostkvm.refhost import REFHOST_NAMES, run_in_refhost

    argv = ["python3", "-m", "hostkvm.cli", "compare", "--json", *names]
    if slow:
        argv.append("--slow")
    if not trace:
        argv.append("--no-trace")
    if progress:
        print(f"booting the reference host {which} ...", file=sys.stderr, flush=True)
    status, out = run_in_refhost(argv, REFHOST_NAMES[which])
    try:
        data: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:
        raise ScenarioError(f"{which}: hostkvm compare inside the reference host exited {status} "
                            f"without JSON; its output ends: {out[-500:]!r}") from None
    data["host_key"] = which
    data["host_label"] = f"{which}: " + data.get("host_label", "")
    return data


def junit(report: dict[str, Any], path: str) -> None:
    suites = ET.Element("testsuites")
    for run in report["runs"]:
        cases = run["scenarios"]
        suite = ET.SubElement(suites, "testsuite", name=f"hostkvm compare ({run['host_label']})",
                              tests=str(len(cases)),
                              failures=str(sum(c["verdict"] == "diverge" for c in cases)),
                              errors=str(sum(c["verdict"] == "error" for c in cases)),
                              skipped=str(sum(c["verdict"] == "skipped" for c in cases)))
        for c in cases:
            tc = ET.SubElement(suite, "testcase", classname=f"hostkvm.{run.get('host_key', 'local')}",
                               name=c["name"], time=str(c.get("seconds", 0)))
            if c["verdict"] == "diverge":
                f = ET.SubElement(tc, "failure", message=f"{len(c['divergences'])} divergence(s)")
                f.text = "\n".join(json.dumps(d) for d in c["divergences"])
            elif c["verdict"] == "error":
                ET.SubElement(tc, "error", message=c.get("error", ""))
            elif c["verdict"] == "skipped":
                ET.SubElement(tc, "skipped", message="; ".join(c.get("missing", [])))
    ET.ElementTree(suites).write(path, encoding="unicode", xml_declaration=True)


def format_run(run: dict[str, Any]) -> list[str]:
    from hostkvm.compare import Divergence

    out = [f"host: {run['host_label']}"]
    for c in run["scenarios"]:
        ev = f"events {c['events_matched']}/{c['events_compared']}" if c["events_compared"] else "events -"
        pred = "-" if c["predicted_exits"] is None else c["predicted_exits"]
        line = f"  {c['verdict']:<8} {c['name']:<34} exits {c['exits']:>4}/{pred:<4} {ev:<16}"
        fp = c.get("fastpath", {})
        if any(fp.values()):
            line += " fast path: " + " ".join(f"{k} {v}" for k, v in fp.items() if v)
        if c["divergences"]:
            line += f" divergences {len(c['divergences']) + c.get('more_divergences', 0)}"
        out.append(line)
        if c["verdict"] == "error":
            out.append(f"      error: {c['error']}")
        for d in c["divergences"][:5]:
            dv = Divergence(d["level"], d["index"], d["what"], d["expected"], d["observed"], d["insn"], d["reasoning"])
            out.append("      " + dv.describe().replace("\n", "\n      "))
        for m in c.get("missing", []):
            if c["verdict"] != "skipped":
                out.append(f"      observation missing: {m}")
    verdicts = [c["verdict"] for c in run["scenarios"]]
    out.append("  summary: " + ", ".join(f"{verdicts.count(v)} {v}" for v in ("match", "diverge", "error", "skipped")
                                        if verdicts.count(v)) + f" ({run.get('seconds', 0)} s)")
    return out


# Short names of the mirror's predicted paths (hostkvm.mirror.Path values), for tables.
PATH_SHORT = {
    "per_vcpu_cache_hit": "cache",
    "mmio_spte_hit": "spte",
    "stale_generation_slow_path": "stale",
    "noslot_slow_path_install": "install",
    "noslot_slow_path_no_install": "noslot",
    "ram_hit": "ram",
    "ram_fault_fixed": "fixed",
    "readonly_slot_write": "ro",
    "retry": "retry",
    "emulated": "emul",
}


def side_by_side(runs: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in runs:
        for c in r["scenarios"]:
            if c["name"] not in names:
                names.append(c["name"])
    labels = [r.get("host_key", "local") for r in runs]
    width = max(len(n) for n in names) if names else 10
    table: list[list[str]] = []
    for n in names:
        cells = []
        for r in runs:
            c = next((c for c in r["scenarios"] if c["name"] == n), None)
            if c is None:
                cells.append("-")
                continue
            paths = ",".join(sorted(PATH_SHORT.get(k, k) for k in c.get("paths", {})))
            cells.append(f"{c['verdict']} {c['exits']}x" + (f" [{paths}]" if paths else ""))
        table.append(cells)
    cw = max([len(x) for row in table for x in row] + [len(lab) for lab in labels])
    out = [f"{'scenario':<{width}}  " + "  ".join(f"{lab:<{cw}}" for lab in labels).rstrip()]
    for n, cells in zip(names, table, strict=True):
        out.append((f"{n:<{width}}  " + "  ".join(f"{x:<{cw}}" for x in cells)).rstrip())
    for r, lab in zip(runs, labels, strict=True):
        label = r["host_label"]
        out.append(label if label.startswith(f"{lab}:") else f"{lab}: {label}")
    out.append("paths: " + ", ".join(f"{v} = {k}" for k, v in PATH_SHORT.items()))
    return out


def main(args: argparse.Namespace) -> int:
    from hostkvm.scenario import registry

    for f in args.scenarios_from:
        load_scenario_file(f)
    if args.list:
        for s in registry().values():
            slow = " (slow, opt-in)" if s.slow else ""
            print(f"{s.name:<34} {s.description}{slow}")
        return 0
    progress = sys.stderr.isatty() and not args.json
    hosts = ["local", "ref-npt0", "ref-npt1"] if args.host == "all" else [args.host]
    runs = []
    for h in hosts:
        if h == "local":
            runs.append(run_local(args.scenarios, slow=args.slow, trace=not args.no_trace, progress=progress))
        else:
            runs.append(run_refhost(h, args.scenarios, slow=args.slow, trace=not args.no_trace, progress=progress))
    report = runs[0] if len(runs) == 1 else {"runs": runs}
    if args.junit:
        junit({"runs": runs}, args.junit)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for r in runs:
            print("\n".join(format_run(r)))
        if len(runs) > 1:
            print()
            print("\n".join(side_by_side(runs)))
    ok = all(c["verdict"] in ("match", "skipped") for r in runs for c in r["scenarios"])
    return 0 if ok else 1

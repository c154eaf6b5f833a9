"""``hostkvm report A.json B.json …``: merge ``hostkvm compare --json`` runs from several
hosts into one side-by-side table."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hostkvm.errors import ScenarioError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE.json", help="outputs of hostkvm compare --json")
    parser.add_argument("--json", action="store_true", help="print the merged runs as one JSON object")


def load_runs(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ScenarioError(f"{path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ScenarioError(f"{path}: not JSON ({e.msg} at line {e.lineno}); give hostkvm compare --json output") from None
    runs = data.get("runs", [data]) if isinstance(data, dict) else None
    if not runs or not all(isinstance(r, dict) and "scenarios" in r and "host_label" in r for r in runs):
        raise ScenarioError(f"{path}: not the output of hostkvm compare --json (no 'scenarios'/'host_label')")
    return runs


def main(args: argparse.Namespace) -> int:
    from hostkvm.cli_compare import side_by_side

    runs = [r for f in args.files for r in load_runs(f)]
    keys = [r.get("host_key", "local") for r in runs]
    for i, r in enumerate(runs):  # two runs of one host kind stay apart in the table
        r["host_key"] = keys[i] if keys.count(keys[i]) == 1 else f"{keys[i]}#{i + 1}"
    if args.json:
        print(json.dumps({"runs": runs}, indent=1))
    else:
        print("\n".join(side_by_side(runs)))
    ok = all(c["verdict"] in ("match", "skipped") for r in runs for c in r["scenarios"])
    return 0 if ok else 1

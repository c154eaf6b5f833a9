"""``hostkvm`` command line.

Each subcommand lives in its own module that exposes ``add_arguments(parser)``
and ``main(args) -> int``; modules are imported only for the command that runs,
so ``hostkvm run`` pays for nothing else.

Exit statuses shared by every command:

==  ==========================================================
0   success (``done`` outcome, every scenario matched, targets met)
1   the experiment ran and its result is negative (an outcome other
    than ``done``, a divergence, a missed target)
2   bad input: usage, malformed payload or scenario
3   ``/dev/kvm`` is missing or cannot be opened
4   any other hostkvm error (failed ioctl, tracefs, reference host)
130 interrupted (Ctrl-C)
==  ==========================================================
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hostkvm.errors import HostKvmError, KvmUnavailableError, PayloadError, ScenarioError

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_BAD_INPUT = 2
EXIT_NO_KVM = 3
EXIT_HOST_ERROR = 4
EXIT_INTERRUPTED = 130

# name -> (module, one-line help). Order is the order of `hostkvm --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "probe": ("hostkvm.probe", "describe this host's KVM: backend, paging, mmio caching, caps"),
    "compare": ("hostkvm.cli_compare", "run scenarios on this host (or the reference host) and on the mirror; report divergences"),
    "report": ("hostkvm.cli_report", "merge hostkvm compare --json runs from several hosts into one table"),
    "run": ("hostkvm.cli_run", "run one payload on this host and print every exit and the outcome"),
    "bench": ("hostkvm.cli_bench", "measure the harness against a C KVM_RUN loop, observation overhead, mirror throughput, VM setup and whole-process cost"),
    "refhost": ("hostkvm.refhost.cli", "build the reference host (stock KVM under QEMU TCG) and run commands inside it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hostkvm",
        description="Drive this host's /dev/kvm with small guest payloads and compare its MMIO "
        "behaviour with a mirror of KVM's mmio-spte fast path.",
        epilog="exit status: 0 ok, 1 negative result, 2 bad input, 3 no usable /dev/kvm, "
        "4 other host error, 130 interrupted",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def _parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    # Import only the module of the command being run (fast start-up for `hostkvm run`);
    # fall back to the full parser for --help, typos and the like.
    if argv and argv[0] in COMMANDS:
        parser = argparse.ArgumentParser(prog="hostkvm")
        sub = parser.add_subparsers(dest="command", required=True)
        module, help_text = COMMANDS[argv[0]]
        p = sub.add_parser(argv[0], help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
        return parser
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser_for(args_list)
    args = parser.parse_args(args_list)
    try:
        return int(args._module.main(args))
    except KvmUnavailableError as e:
        print(f"hostkvm: {e}", file=sys.stderr)
        return EXIT_NO_KVM
    except (PayloadError, ScenarioError) as e:
        print(f"hostkvm: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HostKvmError as e:
        print(f"hostkvm: {e}", file=sys.stderr)
        return EXIT_HOST_ERROR
    except KeyboardInterrupt:
        print("hostkvm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`hostkvm ... | head`): stop quietly, as a filter does.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

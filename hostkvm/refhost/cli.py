"""``hostkvm refhost``: build the reference host, run a command inside it.

``hostkvm refhost build [--force] [--json]`` builds (or finds cached) the image;
``hostkvm refhost run --npt 0|1 [--timeout S] -- CMD...`` boots it and runs CMD,
passing on its output and its exit status.
"""

from __future__ import annotations

import argparse
import json
import sys

from hostkvm.refhost import _run

EXIT_OK = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="refhost_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build and cache the reference host (kernel, initramfs, Python root)",
                       description="Build the reference host from the machine's package indexes and cache it "
                       "under $XDG_CACHE_HOME/hostkvm/refhost (default ~/.cache).")
    b.add_argument("--force", action="store_true", help="rebuild even when a build for this package index is cached")
    b.add_argument("--json", action="store_true", help="print the cache entry as JSON; no progress")
    b.set_defaults(_refhost=_main_build)

    r = sub.add_parser("run", help="boot the reference host and run a command inside it",
                       description="Boot the reference host (QEMU TCG, CPU model %s, kvm_amd npt=N) with this "
                       "checkout mounted read-only and on PYTHONPATH, run CMD as root, pass on its output, "
                       "and exit with its status." % _run.CPU_MODEL)
    r.add_argument("--npt", type=int, choices=(0, 1), required=True, help="kvm_amd npt= (1: TDP MMU, 0: shadow MMU)")
    r.add_argument("--timeout", type=float, default=_run.DEFAULT_TIMEOUT, metavar="S",
                   help="stop the guest after S seconds (default %(default)g)")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command to run in the guest")
    r.set_defaults(_refhost=_main_run)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _main_build(args: argparse.Namespace) -> int:
    from hostkvm.refhost import _build

    image, built = _build.ensure_image(force=args.force, progress=_build._quiet if args.json else _progress)
    if args.json:
        doc = {"path": str(image.path), "key": image.key, "built": built, **image.manifest}
        print(json.dumps(doc, indent=2))
    elif not built:
        print(f"refhost: cached at {image.path}", file=sys.stderr)
    return EXIT_OK


def _main_run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("hostkvm refhost run: no command given (usage: hostkvm refhost run --npt 1 -- CMD...)",
              file=sys.stderr)
        return 2
    result = _run.run_in_refhost(cmd, args.npt, args.timeout, stream_stdout=sys.stdout,
                                 stream_stderr=sys.stderr, progress=_progress)
    return result.status


def main(args: argparse.Namespace) -> int:
    return int(args._refhost(args))

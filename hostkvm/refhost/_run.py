"""Boot the reference host under QEMU TCG, run one command inside, always stop QEMU.

The guest's console (ttyS0, QEMU's stdout here) carries the boot messages, the
command's stderr and the marker lines of :mod:`hostkvm.refhost._guest`; the
command's stdout goes to a file in a read-write 9p share (so it arrives byte
for byte, apart from the console's line discipline) and is streamed back as it
grows. QEMU runs in its own process group, dies with its parent
(``PR_SET_PDEATHSIG``), and is killed as a group on every way out of
:func:`run_in_refhost`.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import dataclasses
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

from hostkvm.errors import RefHostError
from hostkvm.refhost import _build, _guest

DEFAULT_TIMEOUT = 600.0
DEFAULT_MEMORY_MIB = 2048
# An emulated AMD CPU with SVM and nested paging, so kvm_amd loads with npt=1.
CPU_MODEL = "qemu64,+svm,+npt"
CONSOLE_TAIL_LINES = 40


class RefHostResult(NamedTuple):
    """What a command run in the reference host gave: its exit status and its stdout."""

    status: int
    stdout: str


def kernel_cmdline(npt: int, nonce: str) -> str:
    """The guest kernel's command line: serial console, quiet, panic powers off, the run's npt/nonce."""
    if npt not in (0, 1):
        raise ValueError(f"refhost: npt must be 0 or 1, not {npt!r}")
    if not re.fullmatch(r"[0-9a-f]{8,64}", nonce):
        raise ValueError(f"refhost: nonce must be lowercase hex, not {nonce!r}")
    return f"console=ttyS0 panic=-1 quiet loglevel=4 hostkvm.npt={npt} hostkvm.nonce={nonce}"


def _opt(value: str) -> str:
    """Escape a value for a QEMU ``key=value,...`` option (commas are doubled)."""
    return value.replace(",", ",,")


@dataclasses.dataclass(frozen=True)
class QemuConfig:
    kernel: Path
    initramfs: Path
    root: Path
    checkout: Path
    rundir: Path
    npt: int
    nonce: str
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpu: str = CPU_MODEL


def qemu_argv(cfg: QemuConfig, qemu: str = _build.QEMU_BINARY) -> list[str]:
    """The ``qemu-system-x86_64`` command line for one run."""

    def virtfs(path: Path, tag: str, readonly: bool) -> list[str]:
        v = f"local,path={_opt(str(path))},mount_tag={tag},security_model=none"
        return ["-virtfs", v + (",readonly=on" if readonly else "")]

    return [
        qemu,
        "-accel", "tcg",
        "-cpu", cfg.cpu,
        "-m", str(cfg.memory_mib),
        "-smp", "1",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",
        "-chardev", "stdio,id=con,signal=off",
        "-serial", "chardev:con",
        "-kernel", str(cfg.kernel),
        "-initrd", str(cfg.initramfs),
        "-append", kernel_cmdline(cfg.npt, cfg.nonce),
        *virtfs(cfg.root, _guest.TAG_ROOT, True),
        *virtfs(cfg.checkout, _guest.TAG_CHECKOUT, True),
        *virtfs(cfg.rundir, _guest.TAG_RUN, False),
    ]


class ConsoleParser:
    """Split the guest console into boot noise, the command's stderr and the marker lines.

    :meth:`feed` takes raw console bytes and returns the text to pass on as the
    command's stderr: only what comes after ``START`` and before ``EXIT``.
    """

    def __init__(self, nonce: str, tail_lines: int = CONSOLE_TAIL_LINES) -> None:
        self.nonce = nonce
        self.started = False
        self.status: int | None = None
        self.failure: str | None = None
        self.kvm_params: dict[str, str] = {}
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        m = re.escape(_guest.MARKER)
        n = re.escape(nonce)
        self._exit_re = re.compile(rf"^(.*){m}-EXIT {n} (\d+)$")
        self._start_re = re.compile(rf"^{m}-START {n}$")
        self._kvm_re = re.compile(rf"^{m}-KVM {n} (.*)$")
        self._fail_re = re.compile(rf"^{m}-FAIL {n} (.*)$")

    @property
    def done(self) -> bool:
        return self.status is not None or self.failure is not None

    def feed(self, data: bytes) -> str:
        text = self._partial + self._decoder.decode(data)
        lines = text.split("\n")
        self._partial = lines.pop()
        return "".join(self._line(line.rstrip("\r")) for line in lines)

    def finish(self) -> str:
        """Flush an unterminated last line (call once, when the console has closed)."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return self._line(rest.rstrip("\r"), terminated=False) if rest else ""

    def _line(self, line: str, terminated: bool = True) -> str:
        if self.done:
            return ""
        self.tail.append(line)
        line = line.rstrip()
        if not self.started:
            if self._start_re.match(line):
                self.started = True
            elif m := self._kvm_re.match(line):
                self.kvm_params = dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
            elif m := self._fail_re.match(line):
                self.failure = m.group(1)
            return ""
        if m := self._exit_re.match(line):
            self.status = int(m.group(2))
            self.tail.pop()
            return m.group(1)
        return line + ("\n" if terminated else "")

    def tail_text(self) -> str:
        lines = [x for x in self.tail if x.strip()]
        return "\n".join("    " + x for x in lines)


def guest_checkout_path(checkout: Path, root_entries: Sequence[str]) -> str:
    """Where the checkout is mounted in the guest: its host path, unless that would land in the root."""
    parts = checkout.parts
    if len(parts) < 2 or parts[1] in root_entries or parts[1] in ("dev", "proc", "sys", "tmp", "root", "run"):
        return "/checkout"
    return str(checkout)


def guest_cwd(host_cwd: Path, checkout: Path, guest_checkout: str) -> str:
    """The command's working directory in the guest: the same place in the checkout, or its top."""
    try:
        rel = host_cwd.relative_to(checkout)
    except ValueError:
        return guest_checkout
    return guest_checkout if str(rel) == "." else f"{guest_checkout}/{rel}"


def default_checkout() -> Path:
    """The directory that contains the ``hostkvm`` package being run."""
    import hostkvm

    return Path(hostkvm.__file__).resolve().parent.parent


def guest_env(npt: int, guest_checkout: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": _guest.GUEST_PATH,
        "HOME": "/root",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "PYTHONPATH": guest_checkout,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HOSTKVM_REFHOST": f"ref-npt{npt}",
    }
    env.update(extra or {})
    return env


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort; the process-group kill still applies
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not take this long
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class _TermAsInterrupt:
    """While running, turn SIGTERM/SIGHUP into KeyboardInterrupt (main thread, default handlers only)."""

    def __enter__(self) -> _TermAsInterrupt:
        self.saved: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) is signal.SIG_DFL:
                    self.saved[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def run_in_refhost(
    argv: Sequence[str],
    npt: int,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    stream_stdout: TextIO | None = None,
    stream_stderr: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    checkout: Path | None = None,
    image: _build.RefHostImage | None = None,
    progress: _build.Progress = _build._quiet,
) -> RefHostResult:
    """Run ``argv`` inside the reference host booted with ``kvm_amd npt=<npt>``.

    The checkout (by default the one this ``hostkvm`` comes from) is mounted
    read-only at the same path (or ``/checkout``) and is on ``PYTHONPATH``; the
    command starts in the same directory of the checkout as the caller (else its
    top), as root, with ``tracefs`` mounted and ``/dev/kvm`` ready.

    ``stream_stdout``/``stream_stderr`` receive the command's output as it
    comes. Returns the command's exit status and its whole stdout. Builds the
    image first when it is not cached. Raises :class:`RefHostError` when the
    guest does not boot, does not finish within ``timeout`` seconds, or comes up
    with a ``kvm_amd`` that ignored ``npt``. QEMU is stopped on every way out.
    """
    if not argv:
        raise RefHostError("refhost: no command to run")
    _build.check_host_tools((_build.QEMU_BINARY,))
    if image is None:
        image = _build.newest_image(progress=progress)
    checkout = (checkout or default_checkout()).resolve()
    root_entries = sorted(p.name for p in image.root.iterdir())
    gco = guest_checkout_path(checkout, root_entries)
    nonce = secrets.token_hex(8)
    rundir = Path(tempfile.mkdtemp(prefix="hostkvm-refhost-"))
    try:
        (rundir / "cmd.sh").write_text(
            _guest.render_cmd_script(
                argv, checkout=gco, cwd=guest_cwd(Path.cwd(), checkout, gco), env=guest_env(npt, gco, env)
            )
        )
        out_path = rundir / "stdout"
        out_path.touch()
        cfg = QemuConfig(image.kernel, image.initramfs, image.root, checkout, rundir, npt, nonce)
        return _drive(qemu_argv(cfg), cfg, out_path, timeout, stream_stdout, stream_stderr)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def _drive(
    argv: list[str],
    cfg: QemuConfig,
    out_path: Path,
    timeout: float,
    stream_stdout: TextIO | None,
    stream_stderr: TextIO | None,
) -> RefHostResult:
    parser = ConsoleParser(cfg.nonce)
    out_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out_chunks: list[str] = []
    out_offset = 0

    def pump_stdout() -> None:
        nonlocal out_offset
        with open(out_path, "rb") as f:
            f.seek(out_offset)
            data = f.read()
        if data:
            out_offset += len(data)
            text = out_decoder.decode(data)
            out_chunks.append(text)
            if stream_stdout is not None and text:
                stream_stdout.write(text)
                stream_stdout.flush()

    def emit_stderr(text: str) -> None:
        if text and stream_stderr is not None:
            stream_stderr.write(text)
            stream_stderr.flush()

    deadline = time.monotonic() + timeout
    with _TermAsInterrupt():
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_set_pdeathsig,
            )
        except OSError as e:
            raise RefHostError(f"{argv[0]}: cannot start ({e})") from None
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            eof = False
            while not parser.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RefHostError(
                        f"refhost: timed out after {timeout:g} s "
                        f"({'command still running' if parser.started else 'guest still booting'}, npt={cfg.npt}); "
                        f"last console lines:\n{parser.tail_text()}"
                    )
                ready, _, _ = select.select([fd], [], [], min(left, 0.1))
                if ready:
                    data = os.read(fd, 65536)
                    if not data:
                        eof = True
                        emit_stderr(parser.finish())
                        break
                    emit_stderr(parser.feed(data))
                elif proc.poll() is not None:
                    # QEMU is gone but something holds its console open; what it wrote has been read.
                    emit_stderr(parser.finish())
                    break
                if parser.started:
                    pump_stdout()
        finally:
            _kill_group(proc)
    pump_stdout()
    out_chunks.append(out_decoder.decode(b"", final=True))
    if parser.failure is not None:
        raise RefHostError(
            f"refhost: guest init failed: {parser.failure} (npt={cfg.npt}); last console lines:\n{parser.tail_text()}"
        )
    if parser.status is None:
        what = "the command finished without an exit marker" if parser.started else "the guest did not boot"
        raise RefHostError(
            f"refhost: {what}; QEMU exited with status {proc.returncode}"
            f"{' (end of console)' if eof else ''}; last console lines:\n{parser.tail_text()}"
        )
    want = "Y" if cfg.npt else "N"
    if parser.kvm_params.get("npt") != want:
        raise RefHostError(
            f"kvm_amd: loaded with npt={cfg.npt} but /sys/module/kvm_amd/parameters/npt is "
            f"{parser.kvm_params.get('npt', '?')} (does the CPU model {cfg.cpu} offer npt?)"
        )
    return RefHostResult(parser.status, "".join(out_chunks))

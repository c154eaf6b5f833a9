"""The reference host for real: build (or reuse the cache), boot once per npt, run commands.

Needs qemu-system-x86_64 (and, for a first build, apt and the package index);
the host's own /dev/kvm is not used (the guest runs under TCG).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostkvm.errors import RefHostError
from hostkvm.refhost import build_refhost, run_in_refhost

pytestmark = [pytest.mark.refhost, pytest.mark.slow]

if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)", allow_module_level=True)


@pytest.fixture(scope="module")
def image() -> object:
    return build_refhost()[0]


def _qemu_pids_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and text.encode() in cmd:
                pids.append(int(d.name))
    return pids


@pytest.mark.parametrize(("npt", "paging"), [(1, "npt"), (0, "shadow")])
def test_probe_inside_shows_svm_with_mmio_caching(image: object, npt: int, paging: str) -> None:
    status, out = run_in_refhost(["python3", "-m", "hostkvm.cli", "probe", "--json"], npt=npt, timeout=120)
    assert status == 0, out
    doc = json.loads(out)
    assert doc["backend"] == "svm"
    assert doc["paging"] == paging
    assert doc["mmio_caching"] is True


def test_exit_status_stdout_and_stderr_come_back_exactly(image: object, tmp_path: Path) -> None:
    import io

    err = io.StringIO()
    script = "printf 'out 1\\nout 2'; echo 'err line' >&2; exit 42"
    status, out = run_in_refhost(["sh", "-c", script], npt=1, timeout=120, stream_stderr=err)
    assert status == 42
    assert out == "out 1\nout 2"
    assert err.getvalue() == "err line\n"


def test_timeout_leaves_no_qemu_behind(image: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the run directory, hence QEMU's command line, names tmp_path
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(RefHostError, match="timed out after 2 s"):
        run_in_refhost(["sleep", "600"], npt=1, timeout=2)
    assert _qemu_pids_mentioning(str(tmp_path)) == []


def test_ctrl_c_on_the_cli_leaves_no_qemu_behind(image: object, tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    code = (
        "import sys; from hostkvm.refhost import run_in_refhost; "
        "run_in_refhost(['sh', '-c', 'echo ready >&2; sleep 600'], npt=0, timeout=300, stream_stderr=sys.stderr)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the guest's first stderr line: QEMU is up and the command runs
        assert line == "ready\n"
        assert _qemu_pids_mentioning(str(tmp_path)) != []
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    deadline = time.monotonic() + 10
    while _qemu_pids_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _qemu_pids_mentioning(str(tmp_path)) == []

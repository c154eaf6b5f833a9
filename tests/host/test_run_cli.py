"""hostkvm run as a user runs it: the JSON of a traced run, exit statuses, and that the
global tracing state and the tracefs instance list are left exactly as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm

TRACEFS = Path("/sys/kernel/tracing")
GLOBAL_STATE = ("tracing_on", "set_event", "buffer_size_kb", "current_tracer", "trace_clock", "set_event_pid")

FIFTY_WRITES = """\
;@ description: 50 four-byte stores to MMIO from CPL3
;@ mmio: 0x10000000+0x1000
;@ expect: done
;@ exits: 50
    mov rax, 0x10000000
    mov ecx, 50
again:
    mov dword ptr [rax], ecx
    dec ecx
    jnz again
"""


def hostkvm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hostkvm.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def tracing_snapshot() -> dict[str, str]:
    snap = {name: (TRACEFS / name).read_text() for name in GLOBAL_STATE}
    snap["instances"] = " ".join(sorted(os.listdir(TRACEFS / "instances")))
    return snap


@pytest.mark.skipif(os.geteuid() != 0, reason="tracing needs root")
def test_traced_run_of_50_writes(tmp_path: Path) -> None:
    f = tmp_path / "fifty.S"
    f.write_text(FIFTY_WRITES)
    before = tracing_snapshot() if (TRACEFS / "instances").is_dir() else None
    r = hostkvm("run", str(f), "--trace", "--timing", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["outcome"] == "done"
    assert out["host"]["backend"] in ("pvm", "vmx", "svm", "other")
    exits = out["exits"]
    assert len(exits) == 50
    for i, e in enumerate(exits):
        assert (e["reason"], e["gpa"], e["len"], e["is_write"]) == ("KVM_EXIT_MMIO", 0x10000000, 4, True)
        assert e["data"] == (50 - i).to_bytes(4, "little").hex()
        assert e["insn"] == "mov dword ptr [rax], ecx"
        names = [ev["name"] for ev in e["events"]]
        assert "kvm_mmio" in names and "vcpu_match_mmio" in names
        assert all("ts" in ev for ev in e["events"])
        mmio = next(ev for ev in e["events"] if ev["name"] == "kvm_mmio")
        assert (mmio["gpa"], mmio["len"], mmio["val"]) == (0x10000000, 4, 50 - i)
    assert out["stats"]["vcpu"]["mmio_exits"] == 50
    assert out["stats"]["vcpu"]["pf_taken"] >= 50
    assert out["timing"]["all"]["count"] == 50
    assert set(out["timing"]["by_class"]) == {"first_touch", "repeat"}
    assert out["missing"] == []
    if before is not None:
        assert tracing_snapshot() == before


def test_run_exit_statuses(tmp_path: Path) -> None:
    ok = tmp_path / "ok.S"
    ok.write_text(";@ mmio: 0x10000000+0x1000\nmov rax, 0x10000000\nmov byte ptr [rax], 1\n")
    r = hostkvm("run", str(ok))
    assert r.returncode == 0, r.stderr
    assert "outcome: done" in r.stdout
    assert "#0    KVM_EXIT_MMIO  write gpa 0x10000000 len 1 data 01" in r.stdout

    fail = tmp_path / "fail.S"
    fail.write_text("lea rdi, [rip + m]\nmov rsi, 4\ncall ucall_fail\nm:\n.ascii \"nope\"\n")
    r = hostkvm("run", str(fail), "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["outcome"] == {"kind": "fail", "message": "nope"}

    bad = tmp_path / "bad.S"
    bad.write_text(";@ mode: long64\n;@ mmio: 0x10000000+0x1000\n;@ colour: blue\nnop\n")
    r = hostkvm("run", str(bad))
    assert r.returncode == 2
    assert r.stderr.startswith(f"hostkvm: {bad}:3: ") and "Traceback" not in r.stderr

    asm = tmp_path / "asm.S"
    asm.write_text("nop\nfrobnicate rax, 1\n")
    r = hostkvm("run", str(asm))
    assert r.returncode == 2
    assert f"{asm}:2:" in r.stderr and "frobnicate rax, 1" in r.stderr

    spin = tmp_path / "spin.S"
    spin.write_text(";@ timeout: 0.5\nspin:\njmp spin\n")
    r = hostkvm("run", str(spin), "--json", timeout=30)
    assert r.returncode == 1
    assert json.loads(r.stdout)["outcome"]["kind"] == "timeout"

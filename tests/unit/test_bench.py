"""hostkvm bench without KVM: the guest image format of the C loop, the hot loop's exit
layout, the figures' verdicts and the fast ioctl path."""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from hostkvm import _syscall, bench
from hostkvm._uapi.ioctls import KvmIoctl
from hostkvm._uapi.structs import kvm_regs, kvm_run, kvm_sregs
from hostkvm.errors import KvmIoctlError
from hostkvm.exits import MMIO_DATA_OFFSET, MMIO_EXIT_REGS, MMIO_EXIT_REGS_OFFSET


def test_mmio_exit_regs_reads_the_kernel_fields() -> None:
    run = kvm_run()
    run.exit_reason = 6
    run.mmio.phys_addr = 0xD0000008
    run.mmio.data[:] = list(range(1, 9))
    run.mmio.len = 4
    run.mmio.is_write = 1
    page = bytearray(bytes(run))
    regs = kvm_regs(rcx=0x1234, rip=0x800C, rdx=0xFFFF, rflags=0xFFFF)  # neighbours must not leak in
    page[kvm_run.s.offset : kvm_run.s.offset + ctypes.sizeof(regs)] = bytes(regs)  # kvm_run.s.regs.regs
    assert MMIO_EXIT_REGS.unpack_from(page, MMIO_EXIT_REGS_OFFSET) == (
        6, 0xD0000008, bytes(range(1, 9)), 4, 1, 0x1234, 0x800C)
    assert MMIO_DATA_OFFSET == kvm_run.u.offset + 8


class _Mem:
    def __init__(self, size: int, contents: bytes) -> None:
        self.buf = contents + bytes(size - len(contents))

    def read(self, gpa: int, length: int) -> bytes:
        return self.buf[:length]


def _fake_machine() -> SimpleNamespace:
    regs = kvm_regs(rip=0x8000, rsp=0x50000, rflags=0x3002)
    sregs = kvm_sregs(cr0=0x80000011, cr3=0x60000, efer=0xD00)
    slots = {
        1: SimpleNamespace(slot=1, flags=2, gpa=0x100000, size=0x1000, memory=_Mem(0x1000, b"\x01\x00\x02")),
        0: SimpleNamespace(slot=0, flags=0, gpa=0, size=0x80000, memory=_Mem(0x80000, b"")),
    }
    vcpu = SimpleNamespace(get_regs=lambda: regs, get_sregs=lambda: sregs)
    payload = SimpleNamespace(read_data=lambda n: (0x1122334455667788).to_bytes(8, "little")[:n])
    return SimpleNamespace(vm=SimpleNamespace(memslots=slots), vcpus=[vcpu],
                           image=SimpleNamespace(ucall_port=0x6A00, payload=payload))


def test_image_round_trip(tmp_path: Path) -> None:
    path = bench.write_image(_fake_machine(), tmp_path / "g.img")
    blob = path.read_bytes()
    assert blob.startswith(b"HKVMIMG1")
    img = bench.parse_image(blob)
    assert [(s["slot"], s["flags"], s["gpa"], s["size"], s["data"]) for s in img["slots"]] == [
        (0, 0, 0, 0x80000, b""), (1, 2, 0x100000, 0x1000, b"\x01\x00\x02")]  # trailing zeros trimmed
    assert (img["regs"].rip, img["regs"].rsp, img["regs"].rflags) == (0x8000, 0x50000, 0x3002)
    assert (img["sregs"].cr0, img["sregs"].cr3, img["sregs"].efer) == (0x80000011, 0x60000, 0xD00)
    assert (img["ucall_port"], img["read_len"], img["read_value"]) == (0x6A00, 8, bytes.fromhex("8877665544332211"))
    with pytest.raises(bench.BenchError):
        bench.parse_image(blob + b"x")
    with pytest.raises(bench.BenchError):
        bench.parse_image(b"NOTANIMG" + blob[8:])


def test_image_without_vm_is_refused() -> None:
    with pytest.raises(bench.BenchError, match="closed"):
        bench.image_bytes(SimpleNamespace(vm=None, vcpus=[]))


def test_c_loop_reads_what_write_image_writes() -> None:
    """The C reader's order and field sizes, as its header comment and code state them."""
    src = bench.c_loop_source().read_text()
    assert '"HKVMIMG1"' in src
    assert "struct { uint32_t slot, flags; uint64_t gpa, size, len; } __attribute__((packed))" in src
    reads = re.findall(r'rd\(f, [^;]*"([^"]+)"\)', src)
    assert reads == ["magic", "nslots", "slot", "slot contents", "kvm_regs", "kvm_sregs",
                     "ucall port", "read length", "read value"]
    assert bench._SLOT.size == 32 and bench._TAIL.size == 12


def test_figure_verdicts() -> None:
    S = bench.Summary
    ratio = bench.Figure("rt", "us/exit", "<=", 1.05, S([10.0, 10.2, 12.0]), S([10.0, 10.0, 10.0]),
                         S([1.0, 1.02, 1.2]))
    assert ratio.met and ratio.judged == 1.02 and ratio.target_text == "ratio <= 1.05"
    ratio.ratio = S([1.06, 1.07, 1.0])
    assert not ratio.met
    thr = bench.Figure("mirror", "accesses/s", ">=", 200_000, S([150_000, 250_000, 260_000]))
    assert thr.met and thr.judged == 250_000
    missing = bench.Figure("suite", "s", "<=", 30.0, note="not measured: no compare")
    assert not missing.met
    d = missing.to_json()
    assert {"name", "ours", "reference", "ratio", "target", "unit", "met"} <= d.keys()
    assert d["ours"] is None and d["met"] is False and d["measured"] is False
    d = ratio.to_json()
    assert d["ours"] == 10.2 and d["reference"] == 10.0 and d["ratio_detail"] == {
        "min": 1.0, "median": 1.06, "max": 1.07, "n": 3}
    table = bench.format_table([ratio, thr, missing])
    assert "not measured" in table and "**no**" in table and "| yes |" in table
    report = bench.report_json([thr, missing], bench.BenchConfig.quick())
    assert report["all_met"] is False and len(report["benchmarks"]) == 2


def test_interleaving_alternates_sides() -> None:
    calls: list[str] = []

    def ours() -> float:
        calls.append("o")
        return 2.0

    def ref() -> float:
        calls.append("r")
        return 1.0

    o, r, q = bench._interleaved(4, ours, ref)
    assert calls == ["o", "r", "r", "o", "o", "r", "r", "o"]
    assert q.values == [2.0] * 4 and o.median == 2.0 and r.median == 1.0


def test_bench_payload_scales_the_library_loop() -> None:
    p = bench.bench_payload(3, 1234)
    assert p.cpl == 3 and p.expect is not None and p.expect.exits == 1234
    assert bench.bench_payload(0, bench.BENCH_EXITS).expect.exits == bench.BENCH_EXITS  # type: ignore[union-attr]


def test_cli_arguments() -> None:
    from hostkvm import cli_bench

    parser = argparse.ArgumentParser()
    cli_bench.add_arguments(parser)
    args = parser.parse_args(["--json", "--quick", "--reps", "7", "--no-suite"])
    assert args.json and args.quick and args.reps == 7 and args.no_suite


def test_fast_ioctl_path_keeps_the_error_contract() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)  # any KVM ioctl on it fails with ENOTTY
    try:
        with pytest.raises(KvmIoctlError) as e:
            _syscall.ioctl(fd, KvmIoctl.KVM_GET_API_VERSION, 0, "ctx")
        assert e.value.errno == errno.ENOTTY and "KVM_GET_API_VERSION" in str(e.value) and "ctx" in str(e.value)
        run = _syscall.ioctl_noarg(fd, KvmIoctl.KVM_RUN)
        with pytest.raises(OSError) as raw:
            run()
        assert not isinstance(raw.value, KvmIoctlError)
        err = _syscall.ioctl_error(KvmIoctl.KVM_RUN, raw.value, lambda: "vcpu 0")
        assert isinstance(err, KvmIoctlError) and err.errno == errno.ENOTTY and "vcpu 0" in str(err)
        with pytest.raises(TypeError, match="KVM_GET_REGS"):
            _syscall.ioctl(fd, KvmIoctl.KVM_GET_REGS, ctypes.c_uint8(0))
    finally:
        os.close(fd)

"""Pure parts of the KVM layer: stats ABI parsing, exit decoding, guest memory bounds,
error messages, probe parsing and the CLI's exit statuses. No /dev/kvm needed."""

from __future__ import annotations

import ctypes
import mmap
import struct
import subprocess
import sys

import pytest

from hostkvm import probe as probe_mod
from hostkvm._uapi.constants import KvmExitReason
from hostkvm._uapi.structs import kvm_run, kvm_stats_desc, kvm_stats_header
from hostkvm.errors import GuestMemoryError, GuestSetupError, KvmAbiError, KvmIoctlError
from hostkvm.exits import (
    HltExit,
    InternalErrorExit,
    IoExit,
    MmioExit,
    UnhandledExit,
    decode_exit,
)
from hostkvm.memory import GuestMemory
from hostkvm.stats import parse_stats_layout, stats_delta

NAME_SIZE = 48


def stats_blob(descs: list[tuple[str, int, int, int, int, int]], ident: str = "kvm-1234",
               header_flags: int = 0) -> bytes:
    """Build a stats fd image: descs are (name, flags, exponent, size, offset, bucket_size)."""
    hdr_size = ctypes.sizeof(kvm_stats_header)
    id_off = hdr_size
    desc_off = id_off + NAME_SIZE
    stride = ctypes.sizeof(kvm_stats_desc) + NAME_SIZE
    data_off = desc_off + stride * len(descs)
    data_off = (data_off + 7) & ~7
    hdr = kvm_stats_header(header_flags, NAME_SIZE, len(descs), id_off, desc_off, data_off)
    out = bytearray(bytes(hdr))
    out += ident.encode().ljust(NAME_SIZE, b"\0")
    for name, flags, exp, size, off, bucket in descs:
        d = kvm_stats_desc(flags, exp, size, off, bucket)
        out += bytes(d) + name.encode().ljust(NAME_SIZE, b"\0")
    out = out.ljust(data_off, b"\0")
    return bytes(out)


GOOD = [("exits", 0, 0, 1, 0, 0), ("halt_wait_hist", 0x4 | 0x20, -9, 32, 8, 0), ("pf_taken", 0, 0, 1, 264, 0)]


def test_stats_layout_parses_good_blob() -> None:
    ident, descs, data_off, data_size = parse_stats_layout(stats_blob(GOOD))
    assert ident == "kvm-1234"
    assert [d.name for d in descs] == ["exits", "halt_wait_hist", "pf_taken"]
    assert descs[1].is_histogram and descs[1].size == 32 and descs[1].exponent == -9
    assert data_size == 272
    assert data_off % 8 == 0


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (stats_blob(GOOD, header_flags=1), "header flags 0x1"),
        (stats_blob(GOOD, ident="xyz"), "does not start with 'kvm-'"),
        (stats_blob([("a", 0x7, 0, 1, 0, 0)]), "bad flags"),
        (stats_blob([("a", 0, 3, 1, 0, 0)]), "unitless stat with exponent 3"),
        (stats_blob([("a", 0, 0, 2, 0, 0)]), "non-histogram with size 2"),
        (stats_blob([("a", 0x3, 0, 4, 0, 0)]), "linear histogram with bucket_size 0"),
        (stats_blob([("a", 0, 0, 1, 4, 0)]), "not 8-byte aligned"),
        (stats_blob([("a", 0, 0, 1, 0, 0), ("a", 0, 0, 1, 8, 0)]), "duplicate stat names"),
        (stats_blob([("", 0, 0, 1, 0, 0)]), "empty name"),
        (b"\0" * 8, "short header"),
    ],
)
def test_stats_layout_rejects_abi_violations(blob: bytes, message: str) -> None:
    with pytest.raises(KvmAbiError, match=message):
        parse_stats_layout(blob)


def test_stats_delta_skips_histograms_and_zeros() -> None:
    before = {"a": 1, "b": 5, "h": (1, 2)}
    after = {"a": 4, "b": 5, "h": (3, 2), "new": 9}
    assert stats_delta(before, after) == {"a": 3}
    assert stats_delta(before, after, nonzero=False) == {"a": 3, "b": 0}


def _page(reason: int) -> mmap.mmap:
    page = mmap.mmap(-1, 4096)
    page[kvm_run.exit_reason.offset : kvm_run.exit_reason.offset + 4] = struct.pack("<I", reason)
    return page


def test_decode_mmio_exit() -> None:
    page = _page(KvmExitReason.KVM_EXIT_MMIO)
    struct.pack_into("<Q8sIB", page, kvm_run.u.offset, 0xFEE00010, b"\x11\x22\x33\x44\x55\x66\x77\x88", 4, 1)
    assert decode_exit(page) == MmioExit(0xFEE00010, 4, True, b"\x11\x22\x33\x44")


def test_decode_io_exit_reads_out_data_at_data_offset() -> None:
    page = _page(KvmExitReason.KVM_EXIT_IO)
    struct.pack_into("<BBHIQ", page, kvm_run.u.offset, 1, 2, 0x3F8, 2, 0x1000 - 8)
    page[0x1000 - 8 : 0x1000 - 4] = b"abcd"
    assert decode_exit(page) == IoExit(True, 2, 0x3F8, 2, 0x1000 - 8, b"abcd")


def test_decode_internal_error_with_instruction_bytes() -> None:
    page = _page(KvmExitReason.KVM_EXIT_INTERNAL_ERROR)
    struct.pack_into("<IIQB15s", page, kvm_run.u.offset, 1, 3, 1, 4, b"\x66\x0f\x74\xc1" + b"\0" * 11)
    e = decode_exit(page)
    assert isinstance(e, InternalErrorExit)
    assert e.suberror_name == "KVM_INTERNAL_ERROR_EMULATION"
    assert e.insn_bytes == b"\x66\x0f\x74\xc1"


def test_decode_unknown_reason_is_unhandled_not_an_error() -> None:
    page = _page(999)
    e = decode_exit(page)
    assert isinstance(e, UnhandledExit) and e.reason == 999 and e.reason_name == "exit reason 999"
    assert len(e.raw) == 256
    assert decode_exit(_page(KvmExitReason.KVM_EXIT_HLT)) == HltExit()


def test_guest_memory_bounds() -> None:
    with GuestMemory(0x10000, 0x2000) as mem:
        mem.write(0x11FFC, b"abcd")
        assert mem.read(0x11FFC, 4) == b"abcd"
        mem.write_u64(0x10000, 0x1122334455667788)
        assert mem.read_u64(0x10000) == 0x1122334455667788
        with pytest.raises(GuestMemoryError, match=r"gpa 0x11ffd\+0x4 is outside guest memory \[0x10000, 0x12000\)"):
            mem.write(0x11FFD, b"abcd")
        with pytest.raises(GuestMemoryError):
            mem.read(0xFFFF, 1)
    with pytest.raises(GuestMemoryError, match="closed"):
        mem.read(0x10000, 1)
    with pytest.raises(GuestSetupError, match="page aligned"):
        GuestMemory(0x10, 0x1000)


def test_ioctl_error_is_oserror_with_kernel_name_first() -> None:
    e = KvmIoctlError("KVM_RUN", 4, "vcpu 0")
    assert isinstance(e, OSError) and e.errno == 4
    assert str(e) == "KVM_RUN failed: errno 4 (Interrupted system call, EINTR) (vcpu 0)"


CPUINFO = "processor\t: 0\nflags\t\t: fpu vme svm npt sme\naddress sizes\t: 43 bits physical, 48 bits virtual\n"


def test_probe_parsers() -> None:
    assert probe_mod.host_maxphyaddr(CPUINFO) == 43
    flags = probe_mod.cpu_flags(CPUINFO)
    assert {"svm", "npt", "sme"} <= flags
    assert probe_mod.detect_backend({"kvm_pvm": {}}, flags) == "pvm"
    assert probe_mod.detect_backend({"kvm_amd": {"npt": "1"}}, set()) == "svm"
    assert probe_mod.detect_backend({"kvm_intel": {"ept": "Y"}}, set()) == "vmx"
    assert probe_mod.detect_backend({}, {"vmx"}) == "vmx"
    assert probe_mod.detect_backend({}, set()) == "other"
    assert probe_mod.detect_paging("svm", {"kvm_amd": {"npt": "1"}}) == "npt"
    assert probe_mod.detect_paging("svm", {"kvm_amd": {"npt": "0"}}) == "shadow"
    assert probe_mod.detect_paging("vmx", {"kvm_intel": {"ept": "Y"}}) == "ept"
    assert probe_mod.detect_paging("vmx", {"kvm_intel": {"ept": "N"}}) == "shadow"
    assert probe_mod.detect_paging("pvm", {"kvm_pvm": {}}) == "shadow"


def test_cli_missing_dev_kvm_is_one_line_and_status_3(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "kvm"
    r = subprocess.run([sys.executable, "-m", "hostkvm.cli", "probe"], capture_output=True, text=True,
                       env={"HOSTKVM_DEV_KVM": str(missing), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 3
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"hostkvm: {missing} does not exist")


def test_cli_usage_error_is_status_2() -> None:
    r = subprocess.run([sys.executable, "-m", "hostkvm.cli", "no-such-command"], capture_output=True, text=True)
    assert r.returncode == 2

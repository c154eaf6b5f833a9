"""Typed ``KVM_RUN`` exits, decoded from ``struct kvm_run`` in one place.

:func:`decode_exit` turns the shared ``kvm_run`` page into one of the frozen dataclasses
below. An exit reason hostkvm does not decode becomes :class:`UnhandledExit`, never an error.
The common exits (MMIO, port I/O) are decoded with precompiled ``struct`` formats at the
kernel's offsets, the rare ones through a per-call ctypes view.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass

from hostkvm._uapi.constants import (
    KVM_EXIT_IO_OUT,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KvmExitReason,
    KvmInternalError,
    KvmSystemEvent,
)
from hostkvm._uapi.structs import kvm_run

_EXIT_REASON_OFF = kvm_run.exit_reason.offset
_U_OFF = kvm_run.u.offset  # the exit union
_reason = struct.Struct("<I").unpack_from
_mmio = struct.Struct("<Q8sIB").unpack_from  # phys_addr, data[8], len, is_write
_io = struct.Struct("<BBHIQ").unpack_from  # direction, size, port, count, data_offset
MMIO_DATA_OFFSET = _U_OFF + 8  # kvm_run.mmio.data


def _mmio_exit_regs_struct() -> struct.Struct:
    from hostkvm._uapi.structs import kvm_regs

    rcx = kvm_run.s.offset + kvm_regs.rcx.offset
    rip = kvm_run.s.offset + kvm_regs.rip.offset
    assert _EXIT_REASON_OFF + 4 <= _U_OFF and _U_OFF + 21 <= rcx < rip
    return struct.Struct(
        f"<I{_U_OFF - _EXIT_REASON_OFF - 4}xQ8sIB{rcx - _U_OFF - 21}xQ{rip - rcx - 8}xQ"
    )


#: For hot run loops: one unpack at :data:`MMIO_EXIT_REGS_OFFSET` of the ``kvm_run`` page
#: gives ``(exit_reason, mmio.phys_addr, mmio.data (8 bytes), mmio.len, mmio.is_write,
#: s.regs.rcx, s.regs.rip)``; the mmio fields mean something only for ``KVM_EXIT_MMIO``,
#: the registers only with ``KVM_SYNC_X86_REGS`` set in ``kvm_valid_regs``.
MMIO_EXIT_REGS = _mmio_exit_regs_struct()
MMIO_EXIT_REGS_OFFSET = _EXIT_REASON_OFF


@dataclass(frozen=True, slots=True)
class MmioExit:
    """``KVM_EXIT_MMIO``: the guest touched *gpa* where no memslot (or a readonly one) is.

    ``data`` holds the *len* bytes written (lowest address first); for reads it is what
    the kernel left there, and userspace completes the read before the next ``KVM_RUN``.
    """

    gpa: int
    len: int
    is_write: bool
    data: bytes
    reason = KvmExitReason.KVM_EXIT_MMIO


@dataclass(frozen=True, slots=True)
class IoExit:
    """``KVM_EXIT_IO``: *count* accesses of *size* bytes to *port*; ``data`` for OUT."""

    is_out: bool
    size: int
    port: int
    count: int
    data_offset: int
    data: bytes
    reason = KvmExitReason.KVM_EXIT_IO


@dataclass(frozen=True, slots=True)
class HltExit:
    reason = KvmExitReason.KVM_EXIT_HLT


@dataclass(frozen=True, slots=True)
class ShutdownExit:
    """Triple fault or similar: the vCPU cannot continue."""

    reason = KvmExitReason.KVM_EXIT_SHUTDOWN


@dataclass(frozen=True, slots=True)
class IntrExit:
    """``KVM_RUN`` returned for a signal (``KVM_EXIT_INTR`` or ``-EINTR``), e.g. a timeout kick
    or ``immediate_exit``."""

    reason = KvmExitReason.KVM_EXIT_INTR


@dataclass(frozen=True, slots=True)
class FailEntryExit:
    hardware_entry_failure_reason: int
    cpu: int
    reason = KvmExitReason.KVM_EXIT_FAIL_ENTRY


@dataclass(frozen=True, slots=True)
class ExceptionExit:
    exception: int
    error_code: int
    reason = KvmExitReason.KVM_EXIT_EXCEPTION


@dataclass(frozen=True, slots=True)
class DebugExit:
    exception: int
    pc: int
    dr6: int
    dr7: int
    reason = KvmExitReason.KVM_EXIT_DEBUG


@dataclass(frozen=True, slots=True)
class InternalErrorExit:
    """``KVM_EXIT_INTERNAL_ERROR``. For ``KVM_INTERNAL_ERROR_EMULATION`` with instruction
    bytes, ``insn_bytes`` holds the instruction the emulator could not handle."""

    suberror: int
    data: tuple[int, ...]
    insn_bytes: bytes
    reason = KvmExitReason.KVM_EXIT_INTERNAL_ERROR

    @property
    def suberror_name(self) -> str:
        try:
            return KvmInternalError(self.suberror).name
        except ValueError:
            return f"suberror {self.suberror}"


@dataclass(frozen=True, slots=True)
class SystemEventExit:
    type: int
    data: tuple[int, ...]
    reason = KvmExitReason.KVM_EXIT_SYSTEM_EVENT

    @property
    def type_name(self) -> str:
        try:
            return KvmSystemEvent(self.type).name
        except ValueError:
            return f"type {self.type}"


@dataclass(frozen=True, slots=True)
class UnhandledExit:
    """An exit reason hostkvm does not decode; ``raw`` is the 256-byte exit union."""

    exit_reason: int
    raw: bytes

    @property
    def reason(self) -> int:  # type: ignore[override]
        return self.exit_reason

    @property
    def reason_name(self) -> str:
        try:
            return KvmExitReason(self.exit_reason).name
        except ValueError:
            return f"exit reason {self.exit_reason}"


Exit = (
    MmioExit
    | IoExit
    | HltExit
    | ShutdownExit
    | IntrExit
    | FailEntryExit
    | ExceptionExit
    | DebugExit
    | InternalErrorExit
    | SystemEventExit
    | UnhandledExit
)

_HLT = HltExit()
_SHUTDOWN = ShutdownExit()
_INTR = IntrExit()


def exit_reason_name(reason: int) -> str:
    try:
        return KvmExitReason(reason).name
    except ValueError:
        return f"exit reason {reason}"


def decode_exit(page: mmap.mmap) -> Exit:
    """Decode the exit currently described by the ``kvm_run`` page *page*."""
    (reason,) = _reason(page, _EXIT_REASON_OFF)
    if reason == 6:  # KVM_EXIT_MMIO
        gpa, data, length, is_write = _mmio(page, _U_OFF)
        return MmioExit(gpa, length, bool(is_write), data[:length])
    if reason == 2:  # KVM_EXIT_IO
        direction, size, port, count, data_offset = _io(page, _U_OFF)
        n = size * count
        data = page[data_offset : data_offset + n] if direction == KVM_EXIT_IO_OUT else b""
        return IoExit(direction == KVM_EXIT_IO_OUT, size, port, count, data_offset, data)
    if reason == KvmExitReason.KVM_EXIT_HLT:
        return _HLT
    if reason == KvmExitReason.KVM_EXIT_SHUTDOWN:
        return _SHUTDOWN
    if reason == KvmExitReason.KVM_EXIT_INTR:
        return _INTR
    run = kvm_run.from_buffer_copy(page[: ctypes.sizeof(kvm_run)])
    if reason == KvmExitReason.KVM_EXIT_INTERNAL_ERROR:
        ef = run.emulation_failure
        insn = b""
        if (
            ef.suberror == KvmInternalError.KVM_INTERNAL_ERROR_EMULATION
            and ef.ndata >= 1
            and ef.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
        ):
            insn = bytes(ef.insn_bytes[: min(ef.insn_size, 15)])
        ndata = min(run.internal.ndata, 16)
        return InternalErrorExit(run.internal.suberror, tuple(run.internal.data[:ndata]), insn)
    if reason == KvmExitReason.KVM_EXIT_FAIL_ENTRY:
        fe = run.fail_entry
        return FailEntryExit(fe.hardware_entry_failure_reason, fe.cpu)
    if reason == KvmExitReason.KVM_EXIT_EXCEPTION:
        return ExceptionExit(run.ex.exception, run.ex.error_code)
    if reason == KvmExitReason.KVM_EXIT_DEBUG:
        a = run.debug.arch
        return DebugExit(a.exception, a.pc, a.dr6, a.dr7)
    if reason == KvmExitReason.KVM_EXIT_SYSTEM_EVENT:
        se = run.system_event
        return SystemEventExit(se.type, tuple(se.data[: min(se.ndata, 16)]))
    return UnhandledExit(reason, bytes(page[_U_OFF : _U_OFF + 256]))

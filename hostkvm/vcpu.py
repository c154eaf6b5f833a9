"""``Vcpu``: one KVM vCPU file descriptor and its shared ``kvm_run`` page."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import struct
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hostkvm import _syscall
from hostkvm._uapi.constants import KvmExitReason
from hostkvm._uapi.cpuid import kvm_cpuid2_with, kvm_cpuid_entry2
from hostkvm._uapi.ioctls import KvmIoctl
from hostkvm._uapi.structs import kvm_coalesced_mmio, kvm_fpu, kvm_regs, kvm_run, kvm_sregs
from hostkvm.errors import HostKvmError
from hostkvm.exits import MMIO_DATA_OFFSET, Exit, IntrExit, decode_exit
from hostkvm.stats import StatsFd

if TYPE_CHECKING:
    from hostkvm.vm import Vm

_IMMEDIATE_EXIT_OFF = kvm_run.immediate_exit.offset
_VALID_REGS_OFF = kvm_run.kvm_valid_regs.offset
_SYNC_REGS_OFF = kvm_run.s.offset  # kvm_run.s.regs.regs: struct kvm_regs comes first
_SYNC_RIP_OFF = _SYNC_REGS_OFF + kvm_regs.rip.offset
_u64 = struct.Struct("<Q").unpack_from
_EXIT_REASON_OFF = kvm_run.exit_reason.offset
_INTR = IntrExit()
_KVM_RUN = KvmIoctl.KVM_RUN
_ioctl = _syscall.ioctl

# Signal used to kick a vCPU thread out of KVM_RUN (like QEMU's SIG_IPI). Its handler does
# nothing: the point is that KVM_RUN returns -EINTR.
KICK_SIGNAL = signal.SIGRTMIN + 4  # type: ignore[operator]
_kick_installed = False
_kick_lock = threading.Lock()


def _install_kick_handler() -> None:
    global _kick_installed
    with _kick_lock:
        if _kick_installed:
            return
        if threading.current_thread() is not threading.main_thread():
            raise HostKvmError(
                "the vCPU kick signal handler must be installed from the main thread: "
                "create the first Vcpu (or call hostkvm.vcpu.prepare_kick()) there"
            )
        signal.signal(KICK_SIGNAL, lambda signum, frame: None)
        _kick_installed = True


def prepare_kick() -> None:
    """Install the kick signal handler (call from the main thread before starting vCPU threads)."""
    _install_kick_handler()


def _close_vcpu(fd: int, run_map: mmap.mmap) -> None:
    run_map.close()
    os.close(fd)


@dataclass(frozen=True, slots=True)
class CoalescedMmio:
    """One entry of the coalesced MMIO ring."""

    gpa: int
    len: int
    pio: bool
    data: bytes


class Vcpu:
    """A vCPU of *vm*. Created by :meth:`hostkvm.vm.Vm.create_vcpu`.

    ``run()`` issues one ``KVM_RUN`` and returns the decoded exit. :meth:`deadline`
    arms a per-run timeout that kicks a runaway guest out of ``KVM_RUN``.
    """

    def __init__(self, vm: Vm, vcpu_id: int, fd: int, mmap_size: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.fd = fd
        try:
            _install_kick_handler()
            self._run = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._finalizer = weakref.finalize(self, _close_vcpu, fd, self._run)
        # A from_buffer view pins the mapping; take the address and drop the view at once.
        view = ctypes.c_char.from_buffer(self._run)
        self._run_addr = ctypes.addressof(view)
        del view
        self._kvm_run = _syscall.ioctl_noarg(fd, _KVM_RUN)
        self._stats: StatsFd | None = None
        self._thread_ident: int | None = None
        self._timed_out = False
        self._coalesced_page_offset = 0

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the stats fd, unmap ``kvm_run`` and close the vCPU fd. Idempotent."""
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        self._finalizer()

    def __enter__(self) -> Vcpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Vcpu(id={self.id}, fd={self.fd})"

    # --- registers -----------------------------------------------------------------------
    def get_regs(self) -> kvm_regs:
        """``KVM_GET_REGS``."""
        regs = kvm_regs()
        _ioctl(self.fd, KvmIoctl.KVM_GET_REGS, regs, f"vcpu {self.id}")
        return regs

    def set_regs(self, regs: kvm_regs) -> None:
        """``KVM_SET_REGS``."""
        _ioctl(self.fd, KvmIoctl.KVM_SET_REGS, regs, f"vcpu {self.id}")

    def get_sregs(self) -> kvm_sregs:
        """``KVM_GET_SREGS``."""
        sregs = kvm_sregs()
        _ioctl(self.fd, KvmIoctl.KVM_GET_SREGS, sregs, f"vcpu {self.id}")
        return sregs

    def set_sregs(self, sregs: kvm_sregs) -> None:
        """``KVM_SET_SREGS``."""
        _ioctl(
            self.fd,
            KvmIoctl.KVM_SET_SREGS,
            sregs,
            lambda: f"vcpu {self.id}, cr0 {sregs.cr0:#x}, cr4 {sregs.cr4:#x}, efer {sregs.efer:#x}",
        )

    def get_fpu(self) -> kvm_fpu:
        """``KVM_GET_FPU``."""
        fpu = kvm_fpu()
        _ioctl(self.fd, KvmIoctl.KVM_GET_FPU, fpu, f"vcpu {self.id}")
        return fpu

    def set_fpu(self, fpu: kvm_fpu) -> None:
        """``KVM_SET_FPU``."""
        _ioctl(self.fd, KvmIoctl.KVM_SET_FPU, fpu, f"vcpu {self.id}")

    def set_cpuid2(self, entries: list[kvm_cpuid_entry2]) -> None:
        """``KVM_SET_CPUID2`` with *entries* (e.g. :meth:`hostkvm.system.Kvm.get_supported_cpuid`)."""
        buf = kvm_cpuid2_with(len(entries))
        for i, e in enumerate(entries):
            buf.entries[i] = e  # type: ignore[attr-defined]
        _ioctl(self.fd, KvmIoctl.KVM_SET_CPUID2, buf, f"vcpu {self.id}, {len(entries)} entries")

    # --- running -------------------------------------------------------------------------
    def run(self) -> Exit:
        """``KVM_RUN`` once; return the decoded exit (:class:`IntrExit` on ``-EINTR``)."""
        try:
            self._kvm_run()
        except OSError as e:
            if e.errno == errno.EINTR:
                self._run[_IMMEDIATE_EXIT_OFF] = 0
                return _INTR
            raise _syscall.ioctl_error(_KVM_RUN, e, f"vcpu {self.id}") from None
        return decode_exit(self._run)

    def run_handles(self) -> tuple[Callable[[], int], mmap.mmap]:
        """``(kvm_run, page)`` for a hot run loop: *kvm_run* issues one ``KVM_RUN`` (it
        raises a plain ``OSError``; ``EINTR`` means a kick, see :meth:`clear_immediate_exit`)
        and *page* is the shared ``kvm_run`` page to decode the exit from."""
        return self._kvm_run, self._run

    def run_page_address(self) -> int:
        """Host address of the ``kvm_run`` page, for the native run loop (valid until close)."""
        return self._run_addr

    def clear_immediate_exit(self) -> None:
        """Reset ``kvm_run.immediate_exit`` after a kick (what :meth:`run` does on ``EINTR``)."""
        self._run[_IMMEDIATE_EXIT_OFF] = 0

    def set_sync_regs(self, valid: int) -> None:
        """Ask KVM to store the registers named by *valid* (``KVM_SYNC_X86_*``) in
        ``kvm_run.s`` on every exit (``KVM_CAP_SYNC_REGS``), so reading them costs no ioctl."""
        self._run[_VALID_REGS_OFF : _VALID_REGS_OFF + 8] = valid.to_bytes(8, "little")

    def synced_rip(self) -> int:
        """Guest RIP at the last exit, from ``kvm_run.s.regs`` (needs ``KVM_SYNC_X86_REGS``)."""
        return _u64(self._run, _SYNC_RIP_OFF)[0]

    def synced_regs(self) -> kvm_regs:
        """Guest registers at the last exit, from ``kvm_run.s.regs`` (needs ``KVM_SYNC_X86_REGS``)."""
        return kvm_regs.from_buffer_copy(self._run[_SYNC_REGS_OFF : _SYNC_REGS_OFF + ctypes.sizeof(kvm_regs)])

    @property
    def timed_out(self) -> bool:
        """True once the deadline armed by :meth:`deadline` has expired."""
        return self._timed_out

    @property
    def exit_reason(self) -> int:
        """Raw ``kvm_run.exit_reason`` of the last exit (reads the shared page, no syscall)."""
        return int.from_bytes(self._run[_EXIT_REASON_OFF : _EXIT_REASON_OFF + 4], "little")

    def complete_mmio_read(self, data: bytes) -> None:
        """Give a pending MMIO read its value: ``kvm_run.mmio.data`` before the next KVM_RUN."""
        if len(data) > 8:
            raise ValueError(f"an MMIO read completes with at most 8 bytes, got {len(data)}")
        self._run[MMIO_DATA_OFFSET : MMIO_DATA_OFFSET + len(data)] = data

    def complete_io_in(self, data_offset: int, data: bytes) -> None:
        """Give a pending port-I/O IN its bytes at ``kvm_run`` + *data_offset*."""
        self._run[data_offset : data_offset + len(data)] = data

    def kick(self) -> None:
        """Make the current or next ``KVM_RUN`` return ``-EINTR`` (immediate_exit + signal)."""
        self._run[_IMMEDIATE_EXIT_OFF] = 1
        ident = self._thread_ident
        if ident is not None:
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Within the block, ``KVM_RUN`` calls from this thread are kicked out after *seconds*
        (``run()`` then returns :class:`IntrExit` and :attr:`timed_out` is true).

        Repeated kicks every 50 ms cover the window where the signal lands between two
        ``KVM_RUN`` calls.
        """
        self._timed_out = False
        self._run[_IMMEDIATE_EXIT_OFF] = 0
        self._thread_ident = threading.get_ident()
        stop = threading.Event()

        def watchdog() -> None:
            if stop.wait(seconds):
                return
            self._timed_out = True
            while not stop.is_set():
                self.kick()
                stop.wait(0.05)

        t = threading.Thread(target=watchdog, name=f"hostkvm-vcpu{self.id}-deadline", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            self._thread_ident = None
            if not self.closed:
                self._run[_IMMEDIATE_EXIT_OFF] = 0

    # --- coalesced MMIO ring ---------------------------------------------------------------
    def set_coalesced_mmio_page_offset(self, page_offset: int) -> None:
        self._coalesced_page_offset = page_offset

    def drain_coalesced_mmio(self) -> list[CoalescedMmio]:
        """Read and consume every entry of the coalesced MMIO ring (oldest first)."""
        if not self._coalesced_page_offset:
            raise HostKvmError("KVM_CAP_COALESCED_MMIO: the ring page offset is unknown (no zone registered)")
        base = self._coalesced_page_offset * mmap.PAGESIZE
        page = mmap.PAGESIZE
        entry = ctypes.sizeof(kvm_coalesced_mmio)
        max_entries = (page - 8) // entry
        first, last = int.from_bytes(self._run[base : base + 4], "little"), int.from_bytes(
            self._run[base + 4 : base + 8], "little"
        )
        out: list[CoalescedMmio] = []
        while first != last:
            off = base + 8 + first * entry
            e = kvm_coalesced_mmio.from_buffer_copy(self._run[off : off + entry])
            out.append(CoalescedMmio(e.phys_addr, e.len, bool(e.pio), bytes(e.data[: e.len])))
            first = (first + 1) % max_entries
            self._run[base : base + 4] = first.to_bytes(4, "little")
        return out

    # --- stats -------------------------------------------------------------------------------
    def stats(self) -> StatsFd:
        """The vCPU's binary stats fd (``KVM_GET_STATS_FD``), opened on first use."""
        if self._stats is None:
            fd = _ioctl(self.fd, KvmIoctl.KVM_GET_STATS_FD, 0, f"vcpu {self.id}")
            self._stats = StatsFd(fd)
        return self._stats


__all__ = ["CoalescedMmio", "KICK_SIGNAL", "KvmExitReason", "Vcpu", "prepare_kick"]

"""``Vm``: one KVM VM file descriptor: memslots, dirty log, ioeventfds, coalesced MMIO,
vCPUs and the VM's binary stats."""

from __future__ import annotations

import ctypes
import os
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hostkvm import _syscall
from hostkvm._uapi.constants import (
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    KvmCap,
    KvmIoeventfdFlag,
    KvmMemFlag,
)
from hostkvm._uapi.ioctls import KvmIoctl
from hostkvm._uapi.structs import (
    kvm_clear_dirty_log,
    kvm_coalesced_mmio_zone,
    kvm_dirty_log,
    kvm_enable_cap,
    kvm_ioeventfd,
    kvm_userspace_memory_region,
)
from hostkvm.errors import GuestMemoryError, GuestSetupError, HostKvmError
from hostkvm.memory import PAGE_SIZE, GuestMemory
from hostkvm.stats import StatsFd
from hostkvm.vcpu import Vcpu

if TYPE_CHECKING:
    from hostkvm.system import Kvm

_ioctl = _syscall.ioctl


@dataclass(slots=True)
class Memslot:
    """A memslot as userspace last set it: slot id, gpa, size, flags and its backing."""

    slot: int
    gpa: int
    size: int
    flags: KvmMemFlag
    memory: GuestMemory

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def npages(self) -> int:
        return self.size // PAGE_SIZE


@dataclass(slots=True)
class Ioeventfd:
    """A registered ioeventfd: ``count()`` reads how often it fired since the last read."""

    vm: Vm
    addr: int
    len: int
    datamatch: int | None
    pio: bool
    fd: int
    _open: bool = field(default=True)

    def count(self) -> int:
        """How many times the eventfd was signalled since the last call (0 if never)."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Deassign (``KVM_IOEVENTFD`` with ``KVM_IOEVENTFD_FLAG_DEASSIGN``) and close. Idempotent."""
        if not self._open:
            return
        self._open = False
        try:
            if not self.vm.closed:
                self.vm._ioeventfd(self.addr, self.len, self.datamatch, self.pio, self.fd, deassign=True)
        finally:
            os.close(self.fd)


def _close_fd(fd: int) -> None:
    os.close(fd)


class Vm:
    """A VM created by :meth:`hostkvm.system.Kvm.create_vm`.

    Owns its vCPUs, memslot backings, ioeventfds and stats fd; :meth:`close` closes the
    vCPUs first, then the VM fd, then unmaps guest memory.
    """

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self._finalizer = weakref.finalize(self, _close_fd, fd)
        self.vcpus: list[Vcpu] = []
        self.memslots: dict[int, Memslot] = {}
        self._ioeventfds: list[Ioeventfd] = []
        self._stats: StatsFd | None = None
        self._coalesced_zones: list[tuple[int, int, bool]] = []

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Close vCPUs, ioeventfds, stats, the VM fd, then unmap guest memory. Idempotent."""
        for v in self.vcpus:
            v.close()
        for ev in self._ioeventfds:
            try:
                ev.close()
            except HostKvmError:
                pass
        self._ioeventfds.clear()
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        self._finalizer()
        for ms in self.memslots.values():
            ms.memory.close()

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Vm(fd={self.fd}, memslots={len(self.memslots)}, vcpus={len(self.vcpus)})"

    # --- memslots ------------------------------------------------------------------------------
    def set_user_memory_region(self, slot: int, flags: int, gpa: int, size: int, hva: int) -> None:
        """``KVM_SET_USER_MEMORY_REGION`` as the kernel takes it (size 0 deletes the slot)."""
        region = kvm_userspace_memory_region(slot, flags, gpa, size, hva)
        _ioctl(
            self.fd,
            KvmIoctl.KVM_SET_USER_MEMORY_REGION,
            region,
            lambda: f"slot {slot}, flags {flags:#x}, gpa {gpa:#x}, size {size:#x}",
        )

    def _free_slot(self) -> int:
        slot = 0
        while slot in self.memslots:
            slot += 1
        return slot

    def add_memslot(
        self,
        gpa: int,
        size: int,
        *,
        flags: int = 0,
        slot: int | None = None,
        memory: GuestMemory | None = None,
    ) -> Memslot:
        """Create a memslot at *gpa* backed by fresh zeroed memory (or *memory*)."""
        if slot is None:
            slot = self._free_slot()
        elif slot in self.memslots:
            raise GuestSetupError(f"memslot {slot} already exists ({self.memslots[slot]})")
        own = memory is None
        mem = GuestMemory(gpa, size) if memory is None else memory
        if mem.size != size:
            raise GuestSetupError(f"memslot size {size:#x} differs from its memory ({mem.size:#x})")
        try:
            self.set_user_memory_region(slot, flags, gpa, size, mem.hva)
        except BaseException:
            if own:
                mem.close()
            raise
        ms = Memslot(slot, gpa, size, KvmMemFlag(flags), mem)
        self.memslots[slot] = ms
        return ms

    def _slot(self, slot: int) -> Memslot:
        try:
            return self.memslots[slot]
        except KeyError:
            raise GuestSetupError(f"no memslot {slot} (have {sorted(self.memslots)})") from None

    def delete_memslot(self, slot: int, *, keep_memory: bool = False) -> GuestMemory:
        """Delete *slot* (size 0). Unmaps its memory unless *keep_memory*; returns it."""
        ms = self._slot(slot)
        self.set_user_memory_region(slot, 0, ms.gpa, 0, 0)
        del self.memslots[slot]
        if not keep_memory:
            ms.memory.close()
        return ms.memory

    def move_memslot(self, slot: int, new_gpa: int) -> Memslot:
        """Move *slot* to *new_gpa* (same backing, same flags): ``KVM_MR_MOVE``."""
        ms = self._slot(slot)
        self.set_user_memory_region(slot, ms.flags, new_gpa, ms.size, ms.memory.hva)
        ms.gpa = new_gpa
        ms.memory.gpa = new_gpa
        return ms

    def set_memslot_flags(self, slot: int, flags: int) -> Memslot:
        """Change *slot*'s flags in place (``KVM_MR_FLAGS_ONLY``): only LOG_DIRTY_PAGES may change."""
        ms = self._slot(slot)
        self.set_user_memory_region(slot, flags, ms.gpa, ms.size, ms.memory.hva)
        ms.flags = KvmMemFlag(flags)
        return ms

    def memslot_at(self, gpa: int) -> Memslot | None:
        for ms in self.memslots.values():
            if ms.gpa <= gpa < ms.end:
                return ms
        return None

    def read(self, gpa: int, length: int) -> bytes:
        """Read guest memory at *gpa* through whichever memslot backs it."""
        ms = self.memslot_at(gpa)
        if ms is None:
            raise GuestMemoryError(f"no memslot backs gpa {gpa:#x}")
        return ms.memory.read(gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        """Write guest memory at *gpa* through whichever memslot backs it."""
        ms = self.memslot_at(gpa)
        if ms is None:
            raise GuestMemoryError(f"no memslot backs gpa {gpa:#x}")
        ms.memory.write(gpa, data)

    # --- dirty log -------------------------------------------------------------------------------
    def get_dirty_log(self, slot: int) -> list[int]:
        """``KVM_GET_DIRTY_LOG``: the gpas of the pages of *slot* dirtied since the last call."""
        ms = self._slot(slot)
        nwords = (ms.npages + 63) // 64
        bitmap = (ctypes.c_uint64 * nwords)()
        log = kvm_dirty_log(slot, 0, ctypes.addressof(bitmap))
        _ioctl(self.fd, KvmIoctl.KVM_GET_DIRTY_LOG, log, f"slot {slot}")
        return [ms.gpa + PAGE_SIZE * (w * 64 + b)
                for w, word in enumerate(bitmap) if word
                for b in range(64) if word >> b & 1]

    def enable_cap(self, cap: KvmCap, *args: int, flags: int = 0) -> None:
        """``KVM_ENABLE_CAP`` on the VM."""
        ec = kvm_enable_cap(cap, flags)
        for i, a in enumerate(args):
            ec.args[i] = a
        _ioctl(self.fd, KvmIoctl.KVM_ENABLE_CAP, ec, f"{cap.name}, args {list(args)}")

    def enable_manual_dirty_log_protect(self) -> None:
        """``KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2``: GET_DIRTY_LOG stops re-protecting; use
        :meth:`clear_dirty_log`."""
        self.enable_cap(KvmCap.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, pages: list[int] | None = None) -> None:
        """``KVM_CLEAR_DIRTY_LOG`` for pages ``first_page .. first_page+num_pages`` of *slot*
        (all of them, or only the page indexes in *pages*, relative to the slot)."""
        nwords = (num_pages + 63) // 64
        bitmap = (ctypes.c_uint64 * nwords)()
        for p in range(num_pages) if pages is None else (q - first_page for q in pages):
            bitmap[p // 64] |= 1 << (p % 64)
        arg = kvm_clear_dirty_log(slot, num_pages, first_page, ctypes.addressof(bitmap))
        _ioctl(
            self.fd,
            KvmIoctl.KVM_CLEAR_DIRTY_LOG,
            arg,
            f"slot {slot}, first_page {first_page}, num_pages {num_pages}",
        )

    # --- ioeventfd -------------------------------------------------------------------------------
    def _ioeventfd(self, addr: int, length: int, datamatch: int | None, pio: bool, fd: int,
                   *, deassign: bool = False) -> None:
        flags = 0
        if datamatch is not None:
            flags |= KvmIoeventfdFlag.KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= KvmIoeventfdFlag.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= KvmIoeventfdFlag.KVM_IOEVENTFD_FLAG_DEASSIGN
        arg = kvm_ioeventfd(datamatch or 0, addr, length, fd, flags)
        _ioctl(
            self.fd,
            KvmIoctl.KVM_IOEVENTFD,
            arg,
            lambda: f"{'pio' if pio else 'mmio'} addr {addr:#x}, len {length}, "
            f"datamatch {'none' if datamatch is None else hex(datamatch)}, "
            f"{'deassign' if deassign else 'assign'}",
        )

    def register_ioeventfd(self, addr: int, length: int, *, datamatch: int | None = None,
                           pio: bool = False) -> Ioeventfd:
        """``KVM_IOEVENTFD``: a guest write of *length* bytes to *addr* (matching *datamatch*,
        if given) signals an eventfd instead of exiting to userspace."""
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self._ioeventfd(addr, length, datamatch, pio, fd)
        except BaseException:
            os.close(fd)
            raise
        ev = Ioeventfd(self, addr, length, datamatch, pio, fd)
        self._ioeventfds.append(ev)
        return ev

    def unregister_ioeventfd(self, ev: Ioeventfd) -> None:
        ev.close()
        if ev in self._ioeventfds:
            self._ioeventfds.remove(ev)

    # --- coalesced MMIO ------------------------------------------------------------------------
    def register_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """``KVM_REGISTER_COALESCED_MMIO``: writes to the zone are queued in the ring
        (read them with :meth:`hostkvm.vcpu.Vcpu.drain_coalesced_mmio`), not exited."""
        zone = kvm_coalesced_mmio_zone(addr, size, int(pio))
        _ioctl(self.fd, KvmIoctl.KVM_REGISTER_COALESCED_MMIO, zone,
               f"addr {addr:#x}, size {size:#x}, {'pio' if pio else 'mmio'}")
        self._coalesced_zones.append((addr, size, pio))
        page_offset = self.kvm.coalesced_mmio_page_offset
        for v in self.vcpus:
            v.set_coalesced_mmio_page_offset(page_offset)

    def unregister_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        zone = kvm_coalesced_mmio_zone(addr, size, int(pio))
        _ioctl(self.fd, KvmIoctl.KVM_UNREGISTER_COALESCED_MMIO, zone,
               f"addr {addr:#x}, size {size:#x}, {'pio' if pio else 'mmio'}")
        self._coalesced_zones.remove((addr, size, pio))

    # --- vCPUs -----------------------------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int | None = None) -> Vcpu:
        """``KVM_CREATE_VCPU``; maps its ``kvm_run`` page."""
        if vcpu_id is None:
            vcpu_id = len(self.vcpus)
        fd = _ioctl(self.fd, KvmIoctl.KVM_CREATE_VCPU, vcpu_id, f"vcpu id {vcpu_id}")
        vcpu = Vcpu(self, vcpu_id, fd, self.kvm.vcpu_mmap_size)
        if self._coalesced_zones:
            vcpu.set_coalesced_mmio_page_offset(self.kvm.coalesced_mmio_page_offset)
        self.vcpus.append(vcpu)
        return vcpu

    def set_tss_addr(self, gpa: int) -> None:
        """``KVM_SET_TSS_ADDR`` (VMX needs three pages there for real-mode emulation)."""
        _ioctl(self.fd, KvmIoctl.KVM_SET_TSS_ADDR, gpa, f"gpa {gpa:#x}")

    # --- stats -------------------------------------------------------------------------------------
    def stats(self) -> StatsFd:
        """The VM's binary stats fd (``KVM_GET_STATS_FD``), opened on first use."""
        if self._stats is None:
            fd = _ioctl(self.fd, KvmIoctl.KVM_GET_STATS_FD, 0, "vm")
            self._stats = StatsFd(fd)
        return self._stats

"""``Kvm``: the ``/dev/kvm`` system file descriptor."""

from __future__ import annotations

import errno
import os
import weakref

from hostkvm import _syscall
from hostkvm._uapi.constants import KVM_API_VERSION, KvmCap
from hostkvm._uapi.cpuid import KVM_MAX_CPUID_ENTRIES, kvm_cpuid2_with, kvm_cpuid_entry2
from hostkvm._uapi.ioctls import KvmIoctl
from hostkvm.errors import KvmAbiError, KvmIoctlError, KvmUnavailableError
from hostkvm.vm import Vm

_ioctl = _syscall.ioctl

DEV_KVM = "/dev/kvm"
DEV_KVM_ENV = "HOSTKVM_DEV_KVM"  # overrides the device path (another node, or tests)

# CPUID.80000001H:EDX bit 26: 1-GByte pages (PDPE1GB)
X86_FEATURE_GBPAGES = (0x80000001, "edx", 26)


def _close_fd(fd: int) -> None:
    os.close(fd)


def open_dev_kvm(path: str) -> int:
    """Open *path* read-write; a missing or unopenable device raises KvmUnavailableError
    with what to do about it."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KvmUnavailableError(
            f"{path} does not exist: this host has no KVM (load kvm_intel/kvm_amd, enable "
            "virtualization in the firmware, or run on a host that exposes /dev/kvm)"
        ) from None
    except PermissionError:
        raise KvmUnavailableError(
            f"{path}: permission denied: run as root or add this user to the group that owns "
            f"{path} (usually 'kvm')"
        ) from None
    except OSError as e:
        raise KvmUnavailableError(f"{path} cannot be opened: {os.strerror(e.errno or 0)}") from None


class Kvm:
    """The KVM system fd.

    Opening checks ``KVM_GET_API_VERSION`` == 12 and requires ``KVM_CAP_IMMEDIATE_EXIT``
    (as the kernel's selftests do). ``vcpu_mmap_size`` and ``coalesced_mmio_page_offset``
    are read once here.
    """

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            path = os.environ.get(DEV_KVM_ENV, DEV_KVM)
        self.path = path
        self.fd = open_dev_kvm(path)
        self._finalizer = weakref.finalize(self, _close_fd, self.fd)
        try:
            self.api_version = _ioctl(self.fd, KvmIoctl.KVM_GET_API_VERSION, 0, path)
            if self.api_version != KVM_API_VERSION:
                raise KvmAbiError(
                    f"KVM_GET_API_VERSION returned {self.api_version}, hostkvm speaks {KVM_API_VERSION}"
                )
            if not self.check_extension(KvmCap.KVM_CAP_IMMEDIATE_EXIT):
                raise KvmAbiError("KVM_CAP_IMMEDIATE_EXIT is required (per-run timeouts rely on it)")
            self.vcpu_mmap_size = _ioctl(self.fd, KvmIoctl.KVM_GET_VCPU_MMAP_SIZE, 0, path)
            self.coalesced_mmio_page_offset = self.check_extension(KvmCap.KVM_CAP_COALESCED_MMIO)
        except BaseException:
            self.close()
            raise
        self._cpuid: list[kvm_cpuid_entry2] | None = None

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Close ``/dev/kvm``. Idempotent; VMs created from it stay usable."""
        self._finalizer()

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_extension(self, cap: KvmCap | int) -> int:
        """``KVM_CHECK_EXTENSION`` on ``/dev/kvm``: 0 if unsupported, else a cap-specific value."""
        name = cap.name if isinstance(cap, KvmCap) else f"cap {cap}"
        return _ioctl(self.fd, KvmIoctl.KVM_CHECK_EXTENSION, int(cap), name)

    def get_supported_cpuid(self) -> list[kvm_cpuid_entry2]:
        """``KVM_GET_SUPPORTED_CPUID`` (cached after the first call)."""
        if self._cpuid is None:
            nent = 64
            while True:
                buf = kvm_cpuid2_with(nent)
                try:
                    _ioctl(self.fd, KvmIoctl.KVM_GET_SUPPORTED_CPUID, buf, f"nent {nent}")
                except KvmIoctlError as e:
                    if e.errno == errno.E2BIG and nent < KVM_MAX_CPUID_ENTRIES * 4:
                        nent *= 2
                        continue
                    raise
                break
            self._cpuid = [kvm_cpuid_entry2.from_buffer_copy(e) for e in buf.entries[: buf.nent]]  # type: ignore[attr-defined]
        return list(self._cpuid)

    def cpuid_has(self, feature: tuple[int, str, int]) -> bool:
        """Whether the supported CPUID offers *feature* ``(function, register, bit)``."""
        function, reg, bit = feature
        for e in self.get_supported_cpuid():
            if e.function == function and e.index == 0:
                return bool(getattr(e, reg) >> bit & 1)
        return False

    def create_vm(self, vm_type: int = 0) -> Vm:
        """``KVM_CREATE_VM``."""
        fd = _ioctl(self.fd, KvmIoctl.KVM_CREATE_VM, vm_type, f"type {vm_type}")
        return Vm(self, fd)

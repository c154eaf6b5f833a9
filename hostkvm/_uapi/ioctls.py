"""KVM ioctl request numbers, built with ``ioctl-opt`` exactly as ``linux/kvm.h`` builds them."""

from __future__ import annotations

import enum

from ioctl_opt import IO, IOR, IOW, IOWR

from hostkvm._uapi.constants import KVMIO
from hostkvm._uapi.cpuid import kvm_cpuid2
from hostkvm._uapi.structs import (
    kvm_clear_dirty_log,
    kvm_coalesced_mmio_zone,
    kvm_dirty_log,
    kvm_enable_cap,
    kvm_fpu,
    kvm_ioeventfd,
    kvm_regs,
    kvm_sregs,
    kvm_userspace_memory_region,
)


class KvmIoctl(enum.IntEnum):
    """Every ioctl hostkvm issues; ``.name`` is the kernel's spelling."""

    # /dev/kvm
    KVM_GET_API_VERSION = IO(KVMIO, 0x00)
    KVM_CREATE_VM = IO(KVMIO, 0x01)
    KVM_CHECK_EXTENSION = IO(KVMIO, 0x03)
    KVM_GET_VCPU_MMAP_SIZE = IO(KVMIO, 0x04)
    KVM_GET_SUPPORTED_CPUID = IOWR(KVMIO, 0x05, kvm_cpuid2)
    # VM fd
    KVM_CREATE_VCPU = IO(KVMIO, 0x41)
    KVM_GET_DIRTY_LOG = IOW(KVMIO, 0x42, kvm_dirty_log)
    KVM_SET_USER_MEMORY_REGION = IOW(KVMIO, 0x46, kvm_userspace_memory_region)
    KVM_SET_TSS_ADDR = IO(KVMIO, 0x47)
    KVM_REGISTER_COALESCED_MMIO = IOW(KVMIO, 0x67, kvm_coalesced_mmio_zone)
    KVM_UNREGISTER_COALESCED_MMIO = IOW(KVMIO, 0x68, kvm_coalesced_mmio_zone)
    KVM_IOEVENTFD = IOW(KVMIO, 0x79, kvm_ioeventfd)
    KVM_ENABLE_CAP = IOW(KVMIO, 0xA3, kvm_enable_cap)
    KVM_CLEAR_DIRTY_LOG = IOWR(KVMIO, 0xC0, kvm_clear_dirty_log)
    KVM_GET_STATS_FD = IO(KVMIO, 0xCE)
    # vCPU fd
    KVM_RUN = IO(KVMIO, 0x80)
    KVM_GET_REGS = IOR(KVMIO, 0x81, kvm_regs)
    KVM_SET_REGS = IOW(KVMIO, 0x82, kvm_regs)
    KVM_GET_SREGS = IOR(KVMIO, 0x83, kvm_sregs)
    KVM_SET_SREGS = IOW(KVMIO, 0x84, kvm_sregs)
    KVM_GET_FPU = IOR(KVMIO, 0x8C, kvm_fpu)
    KVM_SET_FPU = IOW(KVMIO, 0x8D, kvm_fpu)
    KVM_SET_CPUID2 = IOW(KVMIO, 0x90, kvm_cpuid2)


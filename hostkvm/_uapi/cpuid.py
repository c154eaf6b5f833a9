"""``struct kvm_cpuid_entry2`` / ``struct kvm_cpuid2`` (asm/kvm.h)."""

from __future__ import annotations

import ctypes

from hostkvm._uapi.structs import u32

KVM_MAX_CPUID_ENTRIES = 256


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):
    """Header; ``nent`` entries follow. Use :func:`kvm_cpuid2_with` for a sized buffer."""

    _fields_ = [("nent", u32), ("padding", u32)]


def kvm_cpuid2_with(nent: int) -> ctypes.Structure:
    """A ``kvm_cpuid2`` followed by room for *nent* entries, as one ctypes object."""

    class _kvm_cpuid2_n(ctypes.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * nent)]

    obj = _kvm_cpuid2_n()
    obj.nent = nent
    return obj

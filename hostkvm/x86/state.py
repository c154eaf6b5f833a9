"""Plain dataclasses for vCPU state, named field for field after ``kvm_regs``,
``kvm_sregs``, ``kvm_segment`` and ``kvm_dtable`` (``arch/x86/include/uapi/asm/kvm.h``),
so the KVM layer can copy them into its ctypes structs with a loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

#: the fields of ``struct kvm_regs``, in header order
KVM_REGS_FIELDS: tuple[str, ...] = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "rflags",
)

#: the ``struct kvm_segment`` members of ``struct kvm_sregs``, in header order
KVM_SREGS_SEGMENTS: tuple[str, ...] = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
#: the ``struct kvm_dtable`` members of ``struct kvm_sregs``
KVM_SREGS_DTABLES: tuple[str, ...] = ("gdt", "idt")
#: the scalar members of ``struct kvm_sregs`` that a recipe sets (``apic_base`` and
#: ``interrupt_bitmap`` are left as ``KVM_GET_SREGS`` returned them)
KVM_SREGS_SCALARS: tuple[str, ...] = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")


@dataclass(frozen=True)
class Segment:
    """One ``struct kvm_segment``: the hidden (cached) part of a segment register.

    ``limit`` is the byte-granular limit as KVM takes it (``0xffffffff`` for a flat
    4 GiB segment with ``g=1``), not the 20-bit descriptor field.
    """

    base: int = 0
    limit: int = 0
    selector: int = 0
    type: int = 0
    present: int = 0
    dpl: int = 0
    db: int = 0
    s: int = 0
    l: int = 0  # noqa: E741 - kvm_segment's name
    g: int = 0
    avl: int = 0
    unusable: int = 0


@dataclass(frozen=True)
class DescriptorTable:
    """One ``struct kvm_dtable`` (GDTR or IDTR)."""

    base: int = 0
    limit: int = 0


def _zero_regs() -> dict[str, int]:
    return {name: 0 for name in KVM_REGS_FIELDS}


@dataclass
class CpuState:
    """Initial vCPU state: ``regs`` holds every ``kvm_regs`` field; the rest are
    ``kvm_sregs`` fields of the same names.

    Apply it as ``KVM_GET_SREGS`` → overwrite ``cs``…``ldt``, ``gdt``, ``idt``,
    ``cr0``…``efer`` → ``KVM_SET_SREGS``, then ``KVM_SET_REGS`` with ``regs``.
    """

    regs: dict[str, int] = field(default_factory=_zero_regs)
    cs: Segment = Segment()
    ds: Segment = Segment()
    es: Segment = Segment()
    fs: Segment = Segment()
    gs: Segment = Segment()
    ss: Segment = Segment()
    tr: Segment = Segment()
    ldt: Segment = Segment()
    gdt: DescriptorTable = DescriptorTable()
    idt: DescriptorTable = DescriptorTable()
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0

    def segments(self) -> dict[str, Segment]:
        """``{"cs": Segment, …}`` in ``kvm_sregs`` order."""
        return {name: getattr(self, name) for name in KVM_SREGS_SEGMENTS}

    def copy(self) -> CpuState:
        return dataclasses.replace(self, regs=dict(self.regs))

    @property
    def cpl(self) -> int:
        """The CPL this state starts at (``ss.dpl``, which equals ``cs.dpl`` here)."""
        return self.ss.dpl

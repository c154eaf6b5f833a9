"""Pure x86 builders: page tables, descriptors, CPU-state recipes. No KVM calls."""

from hostkvm.x86.descriptors import (
    encode_descriptor,
    encode_idt_gate32,
    encode_idt_gate64,
    encode_io_bitmap,
    encode_ivt_entry,
    encode_system_descriptor64,
    encode_tss32,
    encode_tss64,
    segment_descriptor,
    system_segment_descriptor64,
)
from hostkvm.x86.modes import (
    MODE_BITS,
    MODES,
    flat_gdt,
    flat_segments,
    long64_state,
    prot32_state,
    real16_state,
)
from hostkvm.x86.paging import Mapping, PageTables32, PageTables64
from hostkvm.x86.state import (
    KVM_REGS_FIELDS,
    KVM_SREGS_DTABLES,
    KVM_SREGS_SCALARS,
    KVM_SREGS_SEGMENTS,
    CpuState,
    DescriptorTable,
    Segment,
)

__all__ = [
    "KVM_REGS_FIELDS", "KVM_SREGS_DTABLES", "KVM_SREGS_SCALARS", "KVM_SREGS_SEGMENTS",
    "MODES", "MODE_BITS",
    "CpuState", "DescriptorTable", "Mapping", "PageTables32", "PageTables64", "Segment",
    "encode_descriptor", "encode_idt_gate32", "encode_idt_gate64", "encode_io_bitmap",
    "encode_ivt_entry", "encode_system_descriptor64", "encode_tss32", "encode_tss64",
    "flat_gdt", "flat_segments", "long64_state", "prot32_state", "real16_state",
    "segment_descriptor", "system_segment_descriptor64",
]

"""ctypes mirrors of the ``linux/kvm.h`` and ``asm/kvm.h`` (x86-64) structures hostkvm uses.

Field names and order are the kernel's. ``tests/unit/test_uapi_layout.py`` compiles a C
probe against the machine's headers and checks every size and every field offset below.
"""

from __future__ import annotations

import ctypes

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64
s16 = ctypes.c_int16
s32 = ctypes.c_int32


class kvm_regs(ctypes.Structure):
    _fields_ = [
        (name, u64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(ctypes.Structure):
    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class kvm_ioeventfd(ctypes.Structure):
    _fields_ = [
        ("datamatch", u64),
        ("addr", u64),
        ("len", u32),
        ("fd", s32),
        ("flags", u32),
        ("pad", u8 * 36),
    ]


class kvm_coalesced_mmio_zone(ctypes.Structure):
    # The kernel's anonymous union {pad; pio} is flattened to `pio`.
    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_coalesced_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


class kvm_coalesced_mmio_ring(ctypes.Structure):
    """Header of the ring page; entries (``kvm_coalesced_mmio``) follow at offset 8."""

    _fields_ = [("first", u32), ("last", u32)]


class kvm_dirty_log(ctypes.Structure):
    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]


class kvm_clear_dirty_log(ctypes.Structure):
    _fields_ = [("slot", u32), ("num_pages", u32), ("first_page", u64), ("dirty_bitmap", u64)]


class kvm_enable_cap(ctypes.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_stats_header(ctypes.Structure):
    _fields_ = [
        ("flags", u32),
        ("name_size", u32),
        ("num_desc", u32),
        ("id_offset", u32),
        ("desc_offset", u32),
        ("data_offset", u32),
    ]


class kvm_stats_desc(ctypes.Structure):
    """Fixed part of a stats descriptor; ``name_size`` bytes of name follow it."""

    _fields_ = [
        ("flags", u32),
        ("exponent", s16),
        ("size", u16),
        ("offset", u32),
        ("bucket_size", u32),
    ]


# --- kvm_run and its exit union -------------------------------------------------------


class kvm_run_hw(ctypes.Structure):
    _fields_ = [("hardware_exit_reason", u64)]


class kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_ex(ctypes.Structure):
    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_run_io(ctypes.Structure):
    _fields_ = [
        ("direction", u8),
        ("size", u8),
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),
    ]


class kvm_debug_exit_arch(ctypes.Structure):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class kvm_run_debug(ctypes.Structure):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class kvm_run_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_hypercall(ctypes.Structure):
    _fields_ = [("nr", u64), ("args", u64 * 6), ("ret", u64), ("longmode", u32), ("pad", u32)]


class kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_emulation_failure(ctypes.Structure):
    _fields_ = [
        ("suberror", u32),
        ("ndata", u32),
        ("flags", u64),
        ("insn_size", u8),
        ("insn_bytes", u8 * 15),
    ]


class kvm_run_system_event(ctypes.Structure):
    # The kernel's union {flags; data[16]} is exposed as `data`; data[0] is `flags`.
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_msr(ctypes.Structure):
    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class kvm_run_notify(ctypes.Structure):
    _fields_ = [("flags", u32)]


class kvm_run_exit(ctypes.Union):
    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("ex", kvm_run_ex),
        ("io", kvm_run_io),
        ("debug", kvm_run_debug),
        ("mmio", kvm_run_mmio),
        ("hypercall", kvm_run_hypercall),
        ("internal", kvm_run_internal),
        ("emulation_failure", kvm_run_emulation_failure),
        ("system_event", kvm_run_system_event),
        ("msr", kvm_run_msr),
        ("notify", kvm_run_notify),
        ("padding", ctypes.c_char * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("u", kvm_run_exit),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("s", ctypes.c_char * SYNC_REGS_SIZE_BYTES),
    ]


# Every struct above, by kernel name, for the layout test. Nested exit structs are checked
# through their kvm_run field paths (e.g. "u.mmio.phys_addr" ↔ C "mmio.phys_addr").
ALL_STRUCTS: dict[str, type[ctypes.Structure]] = {
    cls.__name__: cls
    for cls in (
        kvm_regs,
        kvm_segment,
        kvm_dtable,
        kvm_sregs,
        kvm_fpu,
        kvm_userspace_memory_region,
        kvm_ioeventfd,
        kvm_coalesced_mmio_zone,
        kvm_coalesced_mmio,
        kvm_coalesced_mmio_ring,
        kvm_dirty_log,
        kvm_clear_dirty_log,
        kvm_enable_cap,
        kvm_stats_header,
        kvm_stats_desc,
        kvm_debug_exit_arch,
        kvm_run,
    )
}

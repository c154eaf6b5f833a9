"""CPU-state recipes per mode (real16, prot32, long64) and CPL, over one flat GDT.

The host loads the vCPU straight into the final mode and CPL through
``KVM_SET_SREGS``/``KVM_SET_REGS``: no guest code runs to get there (on PVM every
ring-0 instruction is emulated, so a CPL3 payload starts with no ring-0 code run).
Segments are the hidden parts KVM takes (``kvm_segment``); :func:`flat_gdt` encodes
the very same segments, so a later reload from the GDT gives the same state.

GDT layout (selectors)::

    0x00 null
    0x08 GDT_KERNEL_CS32   32-bit code, DPL0        0x10 GDT_KERNEL_DS   data, DPL0
    0x18 GDT_KERNEL_CS64   64-bit code, DPL0        0x20 GDT_USER_CS32   32-bit code, DPL3
    0x28 GDT_USER_DS       data, DPL3               0x30 GDT_USER_CS64   64-bit code, DPL3
    0x38 GDT_TSS           TSS (16 bytes in long mode, 8 in protected mode)
"""

from __future__ import annotations

from typing import Literal

from hostkvm.errors import GuestSetupError
from hostkvm.x86.constants import (
    DESC_LDT,
    DESC_TSS_BUSY,
    EFER_LMA,
    EFER_LME,
    EFER_NX,
    SEG_TYPE_CODE_XRA,
    SEG_TYPE_DATA_RWA,
    X86_CR0_ET,
    X86_CR0_MP,
    X86_CR0_NE,
    X86_CR0_PE,
    X86_CR0_PG,
    X86_CR0_WP,
    X86_CR4_OSFXSR,
    X86_CR4_OSXMMEXCPT,
    X86_CR4_PAE,
    X86_CR4_PSE,
    X86_EFLAGS_FIXED,
    X86_EFLAGS_IOPL,
)
from hostkvm.x86.descriptors import segment_descriptor, system_segment_descriptor64
from hostkvm.x86.state import CpuState, DescriptorTable, Segment

Mode = Literal["real16", "prot32", "long64"]
MODES: tuple[str, ...] = ("real16", "prot32", "long64")
#: operand size of each mode, for the assembler and the decoder
MODE_BITS: dict[str, int] = {"real16": 16, "prot32": 32, "long64": 64}

GDT_KERNEL_CS32 = 0x08
GDT_KERNEL_DS = 0x10
GDT_KERNEL_CS64 = 0x18
GDT_USER_CS32 = 0x20
GDT_USER_DS = 0x28
GDT_USER_CS64 = 0x30
GDT_TSS = 0x38
GDT_SIZE = 0x48

FLAT_LIMIT = 0xFFFFFFFF
REAL_LIMIT = 0xFFFF

#: RFLAGS every recipe starts with: the fixed bit and IOPL=3, so ``out`` to the ucall
#: port works at CPL3 without an I/O bitmap (and at CPL0 anyway). IF stays clear.
INITIAL_RFLAGS = X86_EFLAGS_FIXED | X86_EFLAGS_IOPL

CR0_PROTECTED = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE
CR0_PAGED = CR0_PROTECTED | X86_CR0_WP | X86_CR0_PG
CR4_SSE = X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT


def _code(selector: int, dpl: int, *, long: bool) -> Segment:
    return Segment(
        base=0, limit=FLAT_LIMIT, selector=selector | dpl, type=SEG_TYPE_CODE_XRA, present=1,
        dpl=dpl, db=0 if long else 1, s=1, l=1 if long else 0, g=1,
    )


def _data(selector: int, dpl: int) -> Segment:
    return Segment(
        base=0, limit=FLAT_LIMIT, selector=selector | dpl, type=SEG_TYPE_DATA_RWA, present=1,
        dpl=dpl, db=1, s=1, g=1,
    )


def flat_segments() -> dict[int, Segment]:
    """The code/data segments of the flat GDT, keyed by GDT offset (RPL = DPL)."""
    return {
        GDT_KERNEL_CS32: _code(GDT_KERNEL_CS32, 0, long=False),
        GDT_KERNEL_DS: _data(GDT_KERNEL_DS, 0),
        GDT_KERNEL_CS64: _code(GDT_KERNEL_CS64, 0, long=True),
        GDT_USER_CS32: _code(GDT_USER_CS32, 3, long=False),
        GDT_USER_DS: _data(GDT_USER_DS, 3),
        GDT_USER_CS64: _code(GDT_USER_CS64, 3, long=True),
    }


def tss_segment(base: int, limit: int) -> Segment:
    """TR as loaded by ``ltr`` (busy TSS; 32- and 64-bit share type 0xb)."""
    return Segment(base=base, limit=limit, selector=GDT_TSS, type=DESC_TSS_BUSY, present=1,
                   s=0, g=0)


def flat_gdt(*, tss_base: int, tss_limit: int, long_mode: bool) -> bytes:
    """The GDT bytes (``GDT_SIZE`` long) holding :func:`flat_segments` and the TSS."""
    gdt = bytearray(GDT_SIZE)
    for offset, seg in flat_segments().items():
        gdt[offset: offset + 8] = segment_descriptor(seg)
    tss = tss_segment(tss_base, tss_limit)
    if long_mode:
        gdt[GDT_TSS: GDT_TSS + 16] = system_segment_descriptor64(tss)
    else:
        if tss_base >> 32:
            raise GuestSetupError(f"32-bit TSS base {tss_base:#x} is above 4 GiB")
        gdt[GDT_TSS: GDT_TSS + 8] = segment_descriptor(tss)
    return bytes(gdt)


_UNUSABLE_LDT = Segment(selector=0, type=DESC_LDT, unusable=1)


def _check_cpl(cpl: int) -> None:
    if cpl not in (0, 3):
        raise GuestSetupError(f"CPL must be 0 or 3, not {cpl}")


def real16_state(*, ip: int, sp: int, ss: int = 0, ivt_limit: int = 0x3FF) -> CpuState:
    """Real mode, CPL0, CS = DS = ES = FS = GS = 0, ``SS:SP`` = ``ss:sp``.

    IDTR points at the real-mode IVT at linear 0. CR0 has only ET (no PE); CR4 enables
    SSE (OSFXSR/OSXMMEXCPT) so that SSE payloads need no setup.
    """
    if not 0 <= ip <= 0xFFFF or not 0 <= sp <= 0xFFFF or not 0 <= ss <= 0xFFFF:
        raise GuestSetupError(f"real mode ip {ip:#x} / ss:sp {ss:#x}:{sp:#x} must be 16-bit")

    def real(selector: int, type_: int) -> Segment:
        return Segment(base=selector << 4, limit=REAL_LIMIT, selector=selector, type=type_,
                       present=1, dpl=0, db=0, s=1, g=0)

    state = CpuState(
        cs=real(0, SEG_TYPE_CODE_XRA), ds=real(0, SEG_TYPE_DATA_RWA),
        es=real(0, SEG_TYPE_DATA_RWA), fs=real(0, SEG_TYPE_DATA_RWA),
        gs=real(0, SEG_TYPE_DATA_RWA), ss=real(ss, SEG_TYPE_DATA_RWA),
        tr=Segment(base=0, limit=REAL_LIMIT, selector=0, type=DESC_TSS_BUSY, present=1),
        ldt=_UNUSABLE_LDT,
        gdt=DescriptorTable(0, 0xFFFF), idt=DescriptorTable(0, ivt_limit),
        cr0=X86_CR0_ET, cr4=CR4_SSE, efer=0,
    )
    state.regs.update(rip=ip, rsp=sp, rflags=INITIAL_RFLAGS)
    return state


def _protected_segments(cpl: int, *, long: bool) -> dict[str, Segment]:
    segs = flat_segments()
    if cpl == 0:
        cs = segs[GDT_KERNEL_CS64 if long else GDT_KERNEL_CS32]
        ds = segs[GDT_KERNEL_DS]
    else:
        cs = segs[GDT_USER_CS64 if long else GDT_USER_CS32]
        ds = segs[GDT_USER_DS]
    return {"cs": cs, "ds": ds, "es": ds, "fs": ds, "gs": ds, "ss": ds}


def prot32_state(
    *, cpl: int, entry: int, stack: int, gdt: DescriptorTable, idt: DescriptorTable,
    tss_base: int, tss_limit: int, cr3: int | None, pse: bool = True,
) -> CpuState:
    """Flat 32-bit protected mode at ``cpl``; paging (32-bit, non-PAE) when ``cr3`` is
    given, with CR4.PSE for 4 MiB pages when ``pse``."""
    _check_cpl(cpl)
    state = CpuState(
        **_protected_segments(cpl, long=False),
        tr=tss_segment(tss_base, tss_limit), ldt=_UNUSABLE_LDT, gdt=gdt, idt=idt,
        cr0=CR0_PAGED if cr3 is not None else CR0_PROTECTED,
        cr3=cr3 or 0,
        cr4=CR4_SSE | (X86_CR4_PSE if cr3 is not None and pse else 0),
        efer=0,
    )
    state.regs.update(rip=entry, rsp=stack, rflags=INITIAL_RFLAGS)
    return state


def long64_state(
    *, cpl: int, entry: int, stack: int, gdt: DescriptorTable, idt: DescriptorTable,
    tss_base: int, tss_limit: int, cr3: int, nx: bool = True,
) -> CpuState:
    """64-bit long mode at ``cpl`` with 4-level paging rooted at ``cr3``; EFER.NX when
    ``nx`` (needed for NX mappings)."""
    _check_cpl(cpl)
    state = CpuState(
        **_protected_segments(cpl, long=True),
        tr=tss_segment(tss_base, tss_limit), ldt=_UNUSABLE_LDT, gdt=gdt, idt=idt,
        cr0=CR0_PAGED, cr3=cr3, cr4=CR4_SSE | X86_CR4_PAE,
        efer=EFER_LME | EFER_LMA | (EFER_NX if nx else 0),
    )
    state.regs.update(rip=entry, rsp=stack, rflags=INITIAL_RFLAGS)
    return state

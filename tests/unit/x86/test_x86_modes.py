import pytest

from hostkvm.x86.constants import (
    EFER_LMA,
    EFER_LME,
    EFER_NX,
    X86_CR0_PE,
    X86_CR0_PG,
    X86_CR4_PAE,
    X86_CR4_PSE,
    X86_EFLAGS_IOPL,
)
from hostkvm.errors import GuestSetupError
from hostkvm.x86.modes import (
    GDT_SIZE,
    GDT_TSS,
    flat_gdt,
    long64_state,
    prot32_state,
    real16_state,
)
from hostkvm.x86.state import KVM_REGS_FIELDS, DescriptorTable, Segment

GDT = DescriptorTable(0x1000, GDT_SIZE - 1)
IDT = DescriptorTable(0x2000, 511)


def decode(gdt: bytes, selector: int) -> Segment:
    """Load a segment from GDT bytes the way the CPU does (32-bit base)."""
    d = int.from_bytes(gdt[selector & ~7: (selector & ~7) + 8], "little")
    raw = (d & 0xFFFF) | ((d >> 48) & 0xF) << 16
    g = (d >> 55) & 1
    return Segment(
        base=((d >> 16) & 0xFFFFFF) | (d >> 56) << 24,
        limit=(raw << 12 | 0xFFF) if g else raw, selector=selector, type=(d >> 40) & 0xF,
        present=(d >> 47) & 1, dpl=(d >> 45) & 3, db=(d >> 54) & 1, s=(d >> 44) & 1,
        l=(d >> 53) & 1, g=g, avl=(d >> 52) & 1,
    )


@pytest.mark.parametrize("cpl", [0, 3])
def test_long64_state(cpl):
    st = long64_state(cpl=cpl, entry=0x8000, stack=0x50000, gdt=GDT, idt=IDT, tss_base=0x3000,
                      tss_limit=103, cr3=0x60000)
    assert st.efer == EFER_LME | EFER_LMA | EFER_NX
    assert st.cr0 & (X86_CR0_PE | X86_CR0_PG) == X86_CR0_PE | X86_CR0_PG
    assert st.cr4 & X86_CR4_PAE and st.cr3 == 0x60000
    assert st.cs.l == 1 and st.cs.db == 0 and st.cs.dpl == cpl and st.cs.selector & 3 == cpl
    assert st.ss.dpl == cpl and st.cpl == cpl
    assert st.regs["rip"] == 0x8000 and st.regs["rsp"] == 0x50000
    assert st.regs["rflags"] & X86_EFLAGS_IOPL == X86_EFLAGS_IOPL
    assert set(st.regs) == set(KVM_REGS_FIELDS)
    assert st.tr.selector == GDT_TSS and st.tr.type == 0xB and st.tr.s == 0
    assert st.ldt.unusable == 1
    gdt = flat_gdt(tss_base=0x3000, tss_limit=103, long_mode=True)
    for name, seg in st.segments().items():
        if name in ("tr", "ldt"):
            continue
        assert decode(gdt, seg.selector) == seg, name
    tr = decode(gdt, GDT_TSS)
    assert (tr.base, tr.limit, tr.type) == (0x3000, 103, 0xB)


@pytest.mark.parametrize("cr3", [None, 0x60000])
def test_prot32_state(cr3):
    st = prot32_state(cpl=3, entry=0x8000, stack=0x50000, gdt=GDT, idt=IDT, tss_base=0x3000,
                      tss_limit=103, cr3=cr3)
    assert st.efer == 0 and st.cs.db == 1 and st.cs.l == 0 and st.cs.dpl == 3
    assert bool(st.cr0 & X86_CR0_PG) == (cr3 is not None)
    assert bool(st.cr4 & X86_CR4_PSE) == (cr3 is not None)
    assert not st.cr4 & X86_CR4_PAE
    gdt = flat_gdt(tss_base=0x3000, tss_limit=103, long_mode=False)
    assert decode(gdt, st.cs.selector) == st.cs and decode(gdt, st.ss.selector) == st.ss


def test_real16_state():
    st = real16_state(ip=0x8000, sp=0xFFF0, ss=0x4000)
    assert st.cr0 & X86_CR0_PE == 0 and st.efer == 0
    assert st.ss.base == 0x40000 and st.ss.selector == 0x4000 and st.cs.base == 0
    assert st.cs.limit == 0xFFFF and st.cs.db == 0 and st.cpl == 0
    assert st.idt == DescriptorTable(0, 0x3FF)
    with pytest.raises(GuestSetupError):
        real16_state(ip=0x10000, sp=0)


def test_bad_cpl():
    with pytest.raises(GuestSetupError, match="CPL"):
        long64_state(cpl=1, entry=0, stack=0, gdt=GDT, idt=IDT, tss_base=0, tss_limit=103,
                     cr3=0)

"""Architectural constants, spelled as the kernel spells them.

Names come from ``arch/x86/include/uapi/asm/processor-flags.h`` (``X86_CR0_*``,
``X86_CR4_*``, ``X86_EFLAGS_*``), ``arch/x86/include/asm/msr-index.h``
(``EFER_*``), ``arch/x86/kvm/mmu.h`` (``PT_*_MASK``), ``arch/x86/include/asm/desc_defs.h``
(``DESC_*``, ``GATE_*``) and ``arch/x86/include/asm/trapnr.h`` (``X86_TRAP_*``).
"""

from __future__ import annotations

# CR0 (processor-flags.h)
X86_CR0_PE = 1 << 0
X86_CR0_MP = 1 << 1
X86_CR0_EM = 1 << 2
X86_CR0_TS = 1 << 3
X86_CR0_ET = 1 << 4
X86_CR0_NE = 1 << 5
X86_CR0_WP = 1 << 16
X86_CR0_AM = 1 << 18
X86_CR0_NW = 1 << 29
X86_CR0_CD = 1 << 30
X86_CR0_PG = 1 << 31

# CR4 (processor-flags.h)
X86_CR4_PSE = 1 << 4
X86_CR4_PAE = 1 << 5
X86_CR4_PGE = 1 << 7
X86_CR4_OSFXSR = 1 << 9
X86_CR4_OSXMMEXCPT = 1 << 10

# EFER (msr-index.h)
MSR_EFER = 0xC0000080
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NX = 1 << 11

# RFLAGS (processor-flags.h)
X86_EFLAGS_FIXED = 1 << 1
X86_EFLAGS_IF = 1 << 9
X86_EFLAGS_IOPL = 3 << 12
X86_EFLAGS_IOPL_BIT = 12

# Page-table entry bits (kvm mmu.h / paging_tmpl.h)
PT_PRESENT_MASK = 1 << 0
PT_WRITABLE_MASK = 1 << 1
PT_USER_MASK = 1 << 2
PT_PWT_MASK = 1 << 3
PT_PCD_MASK = 1 << 4
PT_ACCESSED_MASK = 1 << 5
PT_DIRTY_MASK = 1 << 6
PT_PAGE_SIZE_MASK = 1 << 7
PT_GLOBAL_MASK = 1 << 8
PT64_NX_MASK = 1 << 63
#: bits 51:12 of a 64-bit entry hold the frame address (52-bit architectural MAXPHYADDR)
PT64_BASE_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF
#: bits 31:12 of a 32-bit (non-PAE) entry
PT32_BASE_ADDR_MASK = 0xFFFFF000
#: bits 31:22 of a 32-bit PDE that maps a 4 MiB page (PSE, no PSE-36)
PT32_DIR_BASE_ADDR_MASK = 0xFFC00000
PT64_ENT_PER_PAGE = 512
PT32_ENT_PER_PAGE = 1024

PAGE_SIZE = 1 << 12
PMD_SIZE = 1 << 21  # 2 MiB
PUD_SIZE = 1 << 30  # 1 GiB
PGDIR32_SIZE = 1 << 22  # 4 MiB (32-bit PSE)

# Descriptor types (desc_defs.h for the system ones; SDM vol. 3 table 3-1 for code/data)
DESC_TSS = 0x9  # available 32/64-bit TSS
DESC_LDT = 0x2
DESC_TSS_BUSY = 0xB  # busy 32/64-bit TSS: what TR holds once loaded
GATE_TASK = 0x5
GATE_CALL = 0xC
GATE_INTERRUPT = 0xE
GATE_TRAP = 0xF
#: code segment, execute/read, accessed
SEG_TYPE_CODE_XRA = 0xB
#: data segment, read/write, accessed
SEG_TYPE_DATA_RWA = 0x3

# Exception vectors (trapnr.h)
X86_TRAP_DE = 0
X86_TRAP_DB = 1
X86_TRAP_NMI = 2
X86_TRAP_BP = 3
X86_TRAP_OF = 4
X86_TRAP_BR = 5
X86_TRAP_UD = 6
X86_TRAP_NM = 7
X86_TRAP_DF = 8
X86_TRAP_OLD_MF = 9
X86_TRAP_TS = 10
X86_TRAP_NP = 11
X86_TRAP_SS = 12
X86_TRAP_GP = 13
X86_TRAP_PF = 14
X86_TRAP_SPURIOUS = 15
X86_TRAP_MF = 16
X86_TRAP_AC = 17
X86_TRAP_MC = 18
X86_TRAP_XF = 19
X86_TRAP_VE = 20
X86_TRAP_CP = 21
X86_TRAP_VC = 29
X86_TRAP_SX = 30

NR_EXCEPTION_VECTORS = 32

#: mnemonic of each architectural exception vector (``#PF`` is written ``PF``)
EXCEPTION_NAMES: dict[int, str] = {
    0: "DE", 1: "DB", 2: "NMI", 3: "BP", 4: "OF", 5: "BR", 6: "UD", 7: "NM", 8: "DF",
    9: "OLD_MF", 10: "TS", 11: "NP", 12: "SS", 13: "GP", 14: "PF", 15: "SPURIOUS", 16: "MF",
    17: "AC", 18: "MC", 19: "XF", 20: "VE", 21: "CP", 28: "HV", 29: "VC", 30: "SX",
}

#: vectors for which the CPU pushes an error code in protected and long mode
EXCEPTIONS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})

# #PF error code bits (arch/x86/include/asm/trap_pf.h)
X86_PF_PROT = 1 << 0
X86_PF_WRITE = 1 << 1
X86_PF_USER = 1 << 2
X86_PF_RSVD = 1 << 3
X86_PF_INSTR = 1 << 4

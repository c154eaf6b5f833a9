;@ description: instruction fetch from MMIO at CPL0 (jmp to an MMIO address): KVM cannot
;@ description: fetch an instruction from an address no memslot backs, so emulation fails:
;@ description: KVM_EXIT_INTERNAL_ERROR suberror 1 (KVM_INTERNAL_ERROR_EMULATION) with RIP at
;@ description: the MMIO address, no instruction bytes and no MMIO exit. (Upstream KVM on
;@ description: bare metal ends the same way: there is no MMIO exit for code fetches.)
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xd0000000+0x1000
;@ read: 0x90
;@ expect: internal_error 1
;@ exits: 0
    mov rax, 0xd0000000
    jmp rax

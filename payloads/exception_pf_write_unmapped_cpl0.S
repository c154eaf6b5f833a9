;@ description: long mode CPL0: a store to an unmapped gva raises #PF with CR2 = that gva and
;@ description: error code 2 (supervisor, write, not present), as KVM's emulator walks the
;@ description: guest page tables itself here.
;@ mode: long64
;@ cpl: 0
;@ expect: exception #PF error=0x2 cr2=0x900000
;@ exits: 0
    mov rax, 0x900000
    mov dword ptr [rax], eax

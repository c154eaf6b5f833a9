;@ description: long mode CPL3: a load from an unmapped gva raises #PF with CR2 = that gva
;@ description: and error code 4 (user, read, not present).
;@ mode: long64
;@ cpl: 3
;@ expect: exception #PF error=0x4 cr2=0x900000
;@ exits: 0
    mov rax, 0x900000
    mov eax, dword ptr [rax]

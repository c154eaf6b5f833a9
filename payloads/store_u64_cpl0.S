;@ description: one 8-byte store (qword ptr [reg], rax) to MMIO at CPL0 in long mode:
;@ description: exactly one write exit of 8 bytes with the stored value, lowest byte first.
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xd0000000+0x1000
;@ expect: done
;@ exits: 1
;@ exit: write 0xd0000010 8 0x0123456789abcdef
    mov rbx, 0xd0000010
    mov rax, 0x0123456789abcdef
    mov qword ptr [rbx], rax

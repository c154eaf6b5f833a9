;@ description: one 2-byte store (word ptr [reg], ax) to MMIO at CPL3 in long mode:
;@ description: exactly one write exit of 2 bytes with the stored value, lowest byte first.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ expect: done
;@ exits: 1
;@ exit: write 0xd0000010 2 0xbeef
    mov rbx, 0xd0000010
    mov rax, 0xbeef
    mov word ptr [rbx], ax

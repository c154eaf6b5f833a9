;@ description: one 1-byte store (byte ptr [reg], al) to MMIO at CPL0 in long mode:
;@ description: exactly one write exit of 1 bytes with the stored value, lowest byte first.
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xd0000000+0x1000
;@ expect: done
;@ exits: 1
;@ exit: write 0xd0000010 1 0x5a
    mov rbx, 0xd0000010
    mov rax, 0x5a
    mov byte ptr [rbx], al

;@ description: one 4-byte store (dword ptr [reg], eax) to MMIO at CPL3 in long mode:
;@ description: exactly one write exit of 4 bytes with the stored value, lowest byte first.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ expect: done
;@ exits: 1
;@ exit: write 0xd0000010 4 0xcafef00d
    mov rbx, 0xd0000010
    mov rax, 0xcafef00d
    mov dword ptr [rbx], eax

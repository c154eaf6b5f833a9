;@ description: rep movsb of 8 bytes from RAM into MMIO at CPL0: 8 one-byte write exits
;@ description: carrying the source bytes in order.
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xd0000000+0x1000
;@ expect: done
;@ exits: 8
;@ exit: write 0xd0000200 1 0x10
;@ exit: write 0xd0000201 1 0x21
;@ exit: write 0xd0000202 1 0x32
;@ exit: write 0xd0000203 1 0x43
;@ exit: write 0xd0000204 1 0x54
;@ exit: write 0xd0000205 1 0x65
;@ exit: write 0xd0000206 1 0x76
;@ exit: write 0xd0000207 1 0x87
    lea rsi, [rip + src]
    mov rdi, 0xd0000200
    mov ecx, 8
    cld
    rep movsb
    jmp end
src: .byte 0x10, 0x21, 0x32, 0x43, 0x54, 0x65, 0x76, 0x87
end:

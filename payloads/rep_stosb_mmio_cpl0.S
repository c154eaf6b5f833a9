;@ description: rep stosb of 16 bytes into MMIO at CPL0: 16 one-byte write exits at
;@ description: consecutive addresses.
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xd0000000+0x1000
;@ expect: done
;@ exits: 16
;@ exit: 16x write 0xd0000100 1 0xa5 stride=1
    mov rdi, 0xd0000100
    mov al, 0xa5
    mov ecx, 16
    cld
    rep stosb

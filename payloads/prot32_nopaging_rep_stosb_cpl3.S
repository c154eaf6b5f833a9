;@ description: 32-bit protected mode without paging at CPL3: rep stosb of 8 bytes into
;@ description: MMIO gives 8 one-byte write exits.
;@ mode: prot32
;@ cpl: 3
;@ paging: off
;@ mmio: 0xd0000000+0x1000
;@ expect: done
;@ exits: 8
;@ exit: 8x write 0xd0000100 1 0x77 stride=1
    mov edi, 0xd0000100
    mov al, 0x77
    mov ecx, 8
    cld
    rep stosb

;@ description: real mode: rep stosb of 4 bytes to the legacy VGA window through ES = 0xa000:
;@ description: 4 one-byte write exits at 0xa0000.. (linear = ES * 16 + DI).
;@ mode: real16
;@ cpl: 0
;@ mmio: 0xa0000+0x10000
;@ expect: done
;@ exits: 4
;@ exit: 4x write 0xa0000 1 0x41 stride=1
    mov ax, 0xa000
    mov es, ax
    xor di, di
    mov al, 0x41
    mov cx, 4
    cld
    rep stosb

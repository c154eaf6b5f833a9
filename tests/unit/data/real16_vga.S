;@ description: real mode byte stores to the legacy VGA window
;@ mode: real16
;@ cpl: 0
;@ mmio: 0xa0000+0x10000
;@ expect: done
;@ exits: 3
;@ exit: 3x write 0xa0000 1 0x41 stride=1
    mov ax, 0xa000
    mov es, ax
    xor di, di
    mov al, 0x41
    mov cx, 3
    cld
    rep stosb

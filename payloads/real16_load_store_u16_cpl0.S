;@ description: real mode: a 2-byte load and a 2-byte store through a segment (DS = 0xb800):
;@ description: one read exit at 0xb8010 and one write exit at 0xb8012 with the value read
;@ description: plus one.
;@ mode: real16
;@ cpl: 0
;@ mmio: 0xb8000+0x8000
;@ read: 0x1234
;@ expect: done
;@ exits: 2
;@ exit: read 0xb8010 2 *
;@ exit: write 0xb8012 2 0x1235
    mov ax, 0xb800
    mov ds, ax
    mov ax, word ptr [0x10]
    inc ax
    mov word ptr [0x12], ax

;@ description: real mode: a word load at DS:0xffff crosses the 64 KiB segment limit and
;@ description: raises #GP (reported with error code 0: real mode pushes none).
;@ mode: real16
;@ cpl: 0
;@ expect: exception #GP error=0 cr2=0
;@ exits: 0
    mov ax, word ptr [0xffff]

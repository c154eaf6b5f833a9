;@ description: one gpa reached through two gvas, at CPL0, with a sync point
;@ cpl: 0
;@ mmio: 0xfee00000+0x1000
;@ map: 0x40000000+0x1000 -> 0xfee00000
;@ expect: done
;@ exits: 2
;@ exit: 2x write 0xfee00000 1 0x5a
    mov al, 0x5a
    movabs byte ptr [0xfee00000], al  ; movabs: [0xfee00000] as disp32 would be sign-extended
    mov edi, 7
    call ucall_sync
    mov byte ptr [0x40000000], 0x5a

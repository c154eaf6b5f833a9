;@ description: 32-bit protected mode at CPL0: loading DS with selector 0x55 (beyond the
;@ description: GDT limit) raises #GP with the selector's index as error code (0x54).
;@ mode: prot32
;@ cpl: 0
;@ paging: off
;@ expect: exception #GP error=0x54 cr2=0
;@ exits: 0
    mov ax, 0x55
    mov ds, ax

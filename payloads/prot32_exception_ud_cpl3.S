;@ description: 32-bit protected mode without paging at CPL3: ud2 raises #UD, delivered
;@ description: through a 32-bit interrupt gate onto the TSS's ESP0 stack.
;@ mode: prot32
;@ cpl: 3
;@ paging: off
;@ expect: exception #UD error=0 cr2=0
;@ exits: 0
    ud2

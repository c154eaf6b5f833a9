;@ description: long mode CPL3: ud2 raises #UD (error code 0, CR2 0), delivered through a
;@ description: 64-bit interrupt gate onto the TSS's RSP0 stack.
;@ mode: long64
;@ cpl: 3
;@ expect: exception #UD error=0 cr2=0
;@ exits: 0
    ud2

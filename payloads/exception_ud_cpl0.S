;@ description: long mode CPL0: ud2 raises #UD (error code 0, CR2 0).
;@ mode: long64
;@ cpl: 0
;@ expect: exception #UD error=0 cr2=0
;@ exits: 0
    ud2

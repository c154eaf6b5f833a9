;@ description: long mode CPL3: int3 raises #BP through its DPL-3 gate; the reported RIP is
;@ description: the return address (the instruction after int3), as the CPU pushes it.
;@ mode: long64
;@ cpl: 3
;@ expect: exception #BP error=0 cr2=0
;@ exits: 0
    int3
    nop

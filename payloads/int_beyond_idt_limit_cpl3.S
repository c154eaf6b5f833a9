;@ description: long mode CPL3: int 0x40 names a vector past the IDT limit (32 gates). On
;@ description: bare metal this raises #GP with error code 0x202 (IDT, vector 0x40); this
;@ description: host's PVM reports #UD with error code 0 instead (a host deviation, kept
;@ description: as observed). A DPL-0 gate (int 0x1e) gives #UD here as well.
;@ mode: long64
;@ cpl: 3
;@ expect: exception #UD error=0 cr2=0
;@ exits: 0
    int 0x40

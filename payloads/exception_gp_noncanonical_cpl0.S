;@ description: long mode CPL0: a load from the non-canonical address 0x8000000000000000
;@ description: raises #GP with error code 0.
;@ mode: long64
;@ cpl: 0
;@ expect: exception #GP error=0 cr2=0
;@ exits: 0
    mov rax, 0x8000000000000000
    mov rax, qword ptr [rax]

;@ description: read-modify-write add dword ptr [mmio], 5 at CPL3: one 4-byte read exit,
;@ description: then one 4-byte write exit with the read: value plus 5.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ read: 0x10000000
;@ expect: done
;@ exits: 2
;@ exit: read 0xd0000400 4 *
;@ exit: write 0xd0000400 4 0x10000005
    mov rbx, 0xd0000400
    add dword ptr [rbx], 5

;@ description: one MMIO gpa reached through two gvas at CPL0 (its identity mapping and
;@ description: the alias at 0x40000000): two 1-byte write exits, both at the same gpa.
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xfee00000+0x1000
;@ map: 0x40000000+0x1000 -> 0xfee00000
;@ expect: done
;@ exits: 2
;@ exit: write 0xfee00080 1 0x5a
;@ exit: write 0xfee00080 1 0xa5
    mov rbx, 0xfee00080
    mov byte ptr [rbx], 0x5a
    mov rbx, 0x40000080
    mov byte ptr [rbx], 0xa5

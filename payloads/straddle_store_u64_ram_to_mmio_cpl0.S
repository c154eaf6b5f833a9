;@ description: an 8-byte store at CPL0 across the end of a RAM slot into MMIO (4 bytes
;@ description: each side): one 4-byte write exit for the bytes past the slot only; the
;@ description: guest checks that the low 4 bytes landed in RAM.
;@ mode: long64
;@ cpl: 0
;@ ram: 0x200000+0x1000
;@ mmio: 0x201000+0x1000
;@ expect: done
;@ exits: 1
;@ exit: write 0x201000 4 0x88776655
    mov rbx, 0x200ffc
    mov rax, 0x8877665544332211
    mov qword ptr [rbx], rax
    cmp dword ptr [rbx], 0x44332211
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "straddle: RAM half not written"
msg_end:

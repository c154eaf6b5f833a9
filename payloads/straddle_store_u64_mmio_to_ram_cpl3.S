;@ description: an 8-byte store at CPL3 across the end of an MMIO range into a RAM slot
;@ description: (4 bytes each side): one 4-byte write exit for the MMIO bytes only; the
;@ description: guest checks that the high 4 bytes landed in RAM.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0x1ff000+0x1000
;@ ram: 0x200000+0x1000
;@ expect: done
;@ exits: 1
;@ exit: write 0x1ffffc 4 0x44332211
    mov rbx, 0x1ffffc
    mov rax, 0x8877665544332211
    mov qword ptr [rbx], rax
    mov rdx, 0x200000
    cmp dword ptr [rdx], 0x88776655
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "straddle: RAM half not written"
msg_end:

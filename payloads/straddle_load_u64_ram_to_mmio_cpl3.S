;@ description: an 8-byte load at CPL3 across the end of a RAM slot into MMIO: one 4-byte
;@ description: read exit for the bytes past the slot; the guest checks that rax joins the
;@ description: RAM bytes (low half) and the read: value (high half).
;@ mode: long64
;@ cpl: 3
;@ ram: 0x200000+0x1000
;@ mmio: 0x201000+0x1000
;@ read: 0xddccbbaa
;@ expect: done
;@ exits: 1
;@ exit: read 0x201000 4 *
    mov rbx, 0x200ffc
    mov dword ptr [rbx], 0x44332211
    mov rax, qword ptr [rbx]
    mov rcx, 0xddccbbaa44332211
    cmp rax, rcx
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "straddle load: wrong value"
msg_end:

;@ description: one 4-byte load (eax, dword ptr [reg]) from MMIO at CPL0 in long mode:
;@ description: exactly one read exit of 4 bytes; the guest checks that eax holds the
;@ description: low 4 bytes of the read: value (it fails with a message otherwise).
;@ description: (The read exit's data is left unchecked: it is the host's own reply.)
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xd0000000+0x1000
;@ read: 0x8877665544332211
;@ expect: done
;@ exits: 1
;@ exit: read 0xd0000020 4 *
    mov rbx, 0xd0000020
    xor eax, eax
    mov eax, dword ptr [rbx]
    mov rcx, 0x44332211
    cmp rax, rcx
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "load: wrong value"
msg_end:

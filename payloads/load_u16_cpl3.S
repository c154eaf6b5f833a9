;@ description: one 2-byte load (ax, word ptr [reg]) from MMIO at CPL3 in long mode:
;@ description: exactly one read exit of 2 bytes; the guest checks that ax holds the
;@ description: low 2 bytes of the read: value (it fails with a message otherwise).
;@ description: (The read exit's data is left unchecked: it is the host's own reply.)
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ read: 0x8877665544332211
;@ expect: done
;@ exits: 1
;@ exit: read 0xd0000020 2 *
    mov rbx, 0xd0000020
    xor eax, eax
    mov ax, word ptr [rbx]
    mov rcx, 0x2211
    cmp rax, rcx
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "load: wrong value"
msg_end:

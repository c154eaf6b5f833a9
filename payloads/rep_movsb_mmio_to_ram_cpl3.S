;@ description: rep movsb of 8 bytes from MMIO into RAM at CPL3: 8 one-byte read exits;
;@ description: every byte read is the low byte of read: (0x5c), which the guest checks in RAM.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ ram: 0x100000+0x1000
;@ read: 0x5c
;@ expect: done
;@ exits: 8
;@ exit: 8x read 0xd0000300 1 * stride=1
    mov rsi, 0xd0000300
    mov rdi, 0x100000
    mov ecx, 8
    cld
    rep movsb
    mov rax, 0x5c5c5c5c5c5c5c5c
    mov rdx, 0x100000
    cmp qword ptr [rdx], rax
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "rep movsb: wrong bytes in RAM"
msg_end:

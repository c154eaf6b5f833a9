;@ description: one 16-byte SSE load (movdqu xmm0, xmmword ptr [reg]) from MMIO at CPL3:
;@ description: two 8-byte read exits; the guest stores xmm0 to RAM and checks both halves.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ ram: 0x100000+0x1000
;@ read: 0x8877665544332211
;@ expect: done
;@ exits: 2
;@ exit: read 0xd0000040 8 *
;@ exit: read 0xd0000048 8 *
    mov rbx, 0xd0000040
    movdqu xmm0, xmmword ptr [rbx]
    mov rdx, 0x100000
    movdqu xmmword ptr [rdx], xmm0
    mov rcx, 0x8877665544332211
    cmp qword ptr [rdx], rcx
    jne bad
    cmp qword ptr [rdx + 8], rcx
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "sse load: wrong value"
msg_end:

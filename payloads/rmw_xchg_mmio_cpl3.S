;@ description: xchg qword ptr [mmio], rax at CPL3 (implicitly locked): one 8-byte read
;@ description: exit, then one 8-byte write exit with the old rax; the guest checks that rax
;@ description: now holds the read: value.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ read: 0x1111111122222222
;@ expect: done
;@ exits: 2
;@ exit: read 0xd0000500 8 *
;@ exit: write 0xd0000500 8 0xfeedfacecafebeef
    mov rbx, 0xd0000500
    mov rax, 0xfeedfacecafebeef
    xchg qword ptr [rbx], rax
    mov rcx, 0x1111111122222222
    cmp rax, rcx
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "xchg: wrong old value"
msg_end:

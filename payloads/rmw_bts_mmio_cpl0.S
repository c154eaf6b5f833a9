;@ description: bts dword ptr [mmio], 3 at CPL0: one 4-byte read exit, then one 4-byte
;@ description: write exit with bit 3 set in the read: value; the guest checks CF (the old
;@ description: bit 3, clear in 0x41).
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xd0000000+0x1000
;@ read: 0x41
;@ expect: done
;@ exits: 2
;@ exit: read 0xd0000700 4 *
;@ exit: write 0xd0000700 4 0x49
    mov rbx, 0xd0000700
    bts dword ptr [rbx], 3
    jc bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "bts: CF set, but bit 3 of 0x41 is clear"
msg_end:

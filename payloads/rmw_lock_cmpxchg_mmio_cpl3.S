;@ description: lock cmpxchg dword ptr [mmio], ecx at CPL3 where the comparison succeeds
;@ description: (eax equals the read: value): one 4-byte read exit, then one 4-byte write
;@ description: exit with ecx; the guest checks ZF. KVM cannot do an atomic compare-exchange
;@ description: on MMIO, so it emulates it as a read and a plain write.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ read: 0x600d
;@ expect: done
;@ exits: 2
;@ exit: read 0xd0000600 4 *
;@ exit: write 0xd0000600 4 0x0000beef
    mov rbx, 0xd0000600
    mov eax, 0x600d
    mov ecx, 0xbeef
    lock cmpxchg dword ptr [rbx], ecx
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "cmpxchg: comparison failed"
msg_end:

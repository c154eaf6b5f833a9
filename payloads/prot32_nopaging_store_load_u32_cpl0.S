;@ description: 32-bit protected mode without paging at CPL0: a 4-byte store and a 4-byte
;@ description: load to MMIO (absolute addresses: disp32 is not sign-extended in 32-bit
;@ description: mode). PVM emulates this mode instruction by instruction even at CPL3
;@ description: (no shadow page fault: pf_taken stays 0).
;@ mode: prot32
;@ cpl: 0
;@ paging: off
;@ mmio: 0xd0000000+0x1000
;@ read: 0x44332211
;@ expect: done
;@ exits: 2
;@ exit: write 0xd0000000 4 0x11223344
;@ exit: read 0xd0000004 4 *
    mov dword ptr [0xd0000000], 0x11223344
    mov eax, dword ptr [0xd0000004]
    cmp eax, 0x44332211
    jne bad
    call ucall_done
bad:
    lea edi, [msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "prot32 load: wrong value"
msg_end:

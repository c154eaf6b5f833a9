;@ description: a KVM_MEM_READONLY slot at CPL0: a load from it is plain RAM (no exit), a
;@ description: 4-byte store to it exits as one KVM_EXIT_MMIO write and leaves the memory
;@ description: unchanged; the guest checks both loads read 0.
;@ mode: long64
;@ cpl: 0
;@ ram: 0x300000+0x1000 ro
;@ expect: done
;@ exits: 1
;@ exit: write 0x300010 4 0x12345678
    mov rbx, 0x300010
    mov eax, dword ptr [rbx]
    test eax, eax
    jnz bad
    mov dword ptr [rbx], 0x12345678
    mov eax, dword ptr [rbx]
    test eax, eax
    jnz bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "readonly slot: a load saw a non-zero value"
msg_end:

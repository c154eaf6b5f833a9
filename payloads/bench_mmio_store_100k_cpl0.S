;@ description: benchmark: a loop of 100000 4-byte MMIO stores to one address at CPL0:
;@ description: 100000 write exits, all alike (one KVM_RUN round trip each).
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xd0000000+0x1000
;@ timeout: 120
;@ expect: done
;@ exits: 100000
;@ exit: 100000x write 0xd0000000 4 0x600df00d
    mov rbx, 0xd0000000
    mov eax, 0x600df00d
    mov ecx, 100000
again:
    mov dword ptr [rbx], eax
    dec ecx
    jnz again

;@ description: a loop of 1000 4-byte MMIO stores to one address at CPL3, for timing:
;@ description: 1000 write exits, all alike.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ expect: done
;@ exits: 1000
;@ exit: 1000x write 0xd0000000 4 0x600df00d
    mov rbx, 0xd0000000
    mov eax, 0x600df00d
    mov ecx, 1000
again:
    mov dword ptr [rbx], eax
    dec ecx
    jnz again

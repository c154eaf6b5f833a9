;@ description: one 16-byte SSE store (movdqu xmmword ptr [reg], xmm0) to MMIO at CPL0:
;@ description: KVM splits it into two 8-byte write exits, low half first.
;@ mode: long64
;@ cpl: 0
;@ mmio: 0xd0000000+0x1000
;@ expect: done
;@ exits: 2
;@ exit: write 0xd0000040 8 0x0706050403020100
;@ exit: write 0xd0000048 8 0x0f0e0d0c0b0a0908
    lea rax, [rip + pattern]
    movdqu xmm0, xmmword ptr [rax]
    mov rbx, 0xd0000040
    movdqu xmmword ptr [rbx], xmm0
    jmp end
pattern: .byte 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
end:

;@ description: CPL3: pcmpeqb with an MMIO memory operand must be emulated, and KVM's x86
;@ description: emulator lacks it: KVM_EXIT_INTERNAL_ERROR suberror 1, no MMIO exit. The
;@ description: same instruction on registers at CPL3 runs natively (see the last line,
;@ description: never reached). Upstream KVM on bare metal fails the same way.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ expect: internal_error 1
;@ exits: 0
    pcmpeqb xmm0, xmm1                ; registers only: native at CPL3
    mov rbx, 0xd0000000
    pcmpeqb xmm0, xmmword ptr [rbx]

;@ description: CPL0 on PVM: every ring-0 instruction goes through KVM's x86 emulator, which
;@ description: lacks pcmpeqb: KVM_EXIT_INTERNAL_ERROR suberror 1 on a register-only
;@ description: instruction. (On bare-metal KVM, CPL0 code runs natively and this is done.)
;@ mode: long64
;@ cpl: 0
;@ expect: internal_error 1
;@ exits: 0
    pcmpeqb xmm0, xmm1

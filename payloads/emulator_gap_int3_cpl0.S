;@ description: CPL0 on PVM: software interrupts (int3, int N) go through KVM's x86
;@ description: emulator, which handles them only in real mode: KVM_EXIT_INTERNAL_ERROR
;@ description: suberror 1. (On bare-metal KVM this raises #BP through the IDT.)
;@ mode: long64
;@ cpl: 0
;@ expect: internal_error 1
;@ exits: 0
    int3

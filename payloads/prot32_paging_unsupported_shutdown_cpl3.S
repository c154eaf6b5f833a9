;@ description: 32-bit protected mode WITH paging (non-PAE, CR0.PG without EFER.LME). This
;@ description: host's PVM supports paging only in long mode: KVM_SET_SREGS silently keeps
;@ description: CR0.PG clear (the kernel log says so) and the vCPU shuts down on its first
;@ description: KVM_RUN, before any instruction: outcome shutdown, no exits. On bare-metal
;@ description: KVM this payload gets one read exit and then #PF error=4 cr2=0x900000.
;@ mode: prot32
;@ cpl: 3
;@ paging: on
;@ mmio: 0xe0000000+0x2000
;@ expect: shutdown
;@ exits: 0
    mov ax, word ptr [0xe0001000]
    mov eax, dword ptr [0x900000]     ; not mapped: #PF on a host that supports this mode

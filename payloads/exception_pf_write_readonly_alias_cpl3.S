;@ description: long mode CPL3: a store through a read-only alias of MMIO raises #PF error 7
;@ description: (present, write, user) with CR2 = the alias gva, and no MMIO exit: the guest
;@ description: page-table permission check comes before KVM's MMIO handling.
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ map: 0x40000000+0x1000 -> 0xd0000000 ro
;@ expect: exception #PF error=0x7 cr2=0x40000008
;@ exits: 1
;@ exit: read 0xd0000008 4 *
    mov rbx, 0x40000008
    mov eax, dword ptr [rbx]          ; reading through the alias is allowed: one exit
    mov dword ptr [rbx], eax          ; writing is not

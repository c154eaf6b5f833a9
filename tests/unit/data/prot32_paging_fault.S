;@ description: 32-bit paging at CPL3; a read of an unmapped page raises #PF (on upstream KVM; PVM hosts support paging only in long mode and shut this down: see payloads/prot32_paging_unsupported_shutdown_cpl3.S)
;@ mode: prot32
;@ cpl: 3
;@ paging: on
;@ ram: 0x400000+4M
;@ mmio: 0xe0000000+0x2000
;@ expect: exception #PF error=0x4 cr2=0x900000
;@ exits: 1
;@ exit: 1x read 0xe0001000 2
    mov ax, word ptr [0xe0001000]
    mov dword ptr [0x400010], eax
    mov eax, dword ptr [0x900000]     ; not mapped: #PF

;@ description: one 4-byte store and one 8-byte load to MMIO from CPL3, then a print
;@ mode: long64
;@ cpl: 3
;@ mmio: 0xd0000000+0x1000
;@ ram: 0x100000+0x1000
;@ read: 0x1122334455667788
;@ timeout: 5
;@ expect: done
;@ exit: write 0xd0000000 4 0xcafef00d
;@ exit: read 0xd0000008 8 8877665544332211
    mov eax, 0xcafef00d
    mov dword ptr [0xd0000000], eax   ; MMIO write (keystone picks movabs for eax)
    movabs rax, qword ptr [0xd0000008] ; MMIO read (movabs: an 8-byte address)
    mov rbx, rax
    mov qword ptr [0x100000], rbx     ; into RAM
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_print
    jmp done
msg: .ascii "stored"
msg_end:
done:

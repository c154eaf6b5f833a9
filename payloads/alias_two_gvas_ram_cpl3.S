;@ description: one RAM gpa reached through two gvas at CPL3: a store through the alias is
;@ description: seen through the identity mapping; no exits.
;@ mode: long64
;@ cpl: 3
;@ ram: 0x100000+0x1000
;@ map: 0x40000000+0x1000 -> 0x100000
;@ expect: done
;@ exits: 0
    mov rbx, 0x40000010
    mov dword ptr [rbx], 0x600dcafe
    mov rdx, 0x100010
    cmp dword ptr [rdx], 0x600dcafe
    jne bad
    call ucall_done
bad:
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
msg: .ascii "alias: store not seen through the identity mapping"
msg_end:

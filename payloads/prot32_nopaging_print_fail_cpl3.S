;@ description: 32-bit protected mode without paging at CPL3: a print ucall, then a fail
;@ description: ucall with its message (both ucalls are port I/O, not MMIO exits).
;@ mode: prot32
;@ cpl: 3
;@ paging: off
;@ expect: fail prot32 says no
;@ exits: 0
    lea edi, [hello]
    mov esi, hello_end - hello
    call ucall_print
    lea edi, [msg]
    mov esi, msg_end - msg
    call ucall_fail
hello: .ascii "prot32 says hello"
hello_end:
msg: .ascii "prot32 says no"
msg_end:

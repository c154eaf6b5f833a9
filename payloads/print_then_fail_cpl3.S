;@ description: long mode CPL3: a print ucall, then a fail ucall with its message; ucalls
;@ description: are port I/O through the TSS I/O bitmap and never MMIO exits.
;@ mode: long64
;@ cpl: 3
;@ expect: fail long64 says no
;@ exits: 0
    lea rdi, [rip + hello]
    mov esi, hello_end - hello
    call ucall_print
    lea rdi, [rip + msg]
    mov esi, msg_end - msg
    call ucall_fail
hello: .ascii "long64 says hello"
hello_end:
msg: .ascii "long64 says no"
msg_end:

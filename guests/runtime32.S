; hostkvm guest runtime for 32-bit protected mode.
;
; Assembled by hostkvm.guest at RUNTIME_GPA with keystone (Intel syntax). The host
; predefines UCALL_PORT, UCALL_DONE, UCALL_FAIL, UCALL_PRINT, UCALL_SYNC,
; UCALL_EXCEPTION and EXC_FRAME.
; Plain integer instructions only: at CPL0 every instruction goes through KVM's
; x86 emulator, which lacks some others.

; ---- ucalls ---------------------------------------------------------------------
; The ucall number goes out as one byte to UCALL_PORT; arguments travel in
; edi (arg0), esi (arg1), ebx (arg2), ecx (arg3), ebp (arg4), which the host reads
; with KVM_GET_REGS at the KVM_EXIT_IO. Works at CPL0 and at CPL3 with IOPL=3.

; ucall_done: the payload finished. Never returns.
ucall_done:
    mov eax, UCALL_DONE
    mov edx, UCALL_PORT
    out dx, al
    jmp ucall_done

; ucall_fail: edi = address of the message, esi = its length in bytes. Never returns.
ucall_fail:
    mov eax, UCALL_FAIL
    mov edx, UCALL_PORT
    out dx, al
    jmp ucall_fail

; ucall_print: edi = address of the text, esi = its length in bytes. Preserves registers.
ucall_print:
    push eax
    push edx
    mov eax, UCALL_PRINT
    mov edx, UCALL_PORT
    out dx, al
    pop edx
    pop eax
    ret

; ucall_sync: edi = argument. The host may act (and change registers or memory)
; before it resumes the vCPU; returns with eax as the host left it (UCALL_SYNC
; unless the host wrote another value).
ucall_sync:
    push edx
    mov eax, UCALL_SYNC
    mov edx, UCALL_PORT
    out dx, al
    pop edx
    ret

; ---- exceptions ------------------------------------------------------------------
; As in runtime64.S, with 4-byte frame words: the CPU pushes ESP and SS only when
; the privilege level changes (from CPL3). EXC_FRAME slots stay 8 bytes wide; only
; their low halves are written. Reports edi = vector, esi = error code, ebx = CR2,
; ecx = faulting EIP, ebp = faulting CS.

exc_0:  ; #DE
    push 0
    push 0
    jmp exc_common

exc_1:  ; #DB
    push 0
    push 1
    jmp exc_common

exc_2:  ; #NMI
    push 0
    push 2
    jmp exc_common

exc_3:  ; #BP
    push 0
    push 3
    jmp exc_common

exc_4:  ; #OF
    push 0
    push 4
    jmp exc_common

exc_5:  ; #BR
    push 0
    push 5
    jmp exc_common

exc_6:  ; #UD
    push 0
    push 6
    jmp exc_common

exc_7:  ; #NM
    push 0
    push 7
    jmp exc_common

exc_8:  ; #DF
    push 8
    jmp exc_common

exc_9:  ; #OLD_MF
    push 0
    push 9
    jmp exc_common

exc_10:  ; #TS
    push 10
    jmp exc_common

exc_11:  ; #NP
    push 11
    jmp exc_common

exc_12:  ; #SS
    push 12
    jmp exc_common

exc_13:  ; #GP
    push 13
    jmp exc_common

exc_14:  ; #PF
    push 14
    jmp exc_common

exc_15:  ; #SPURIOUS
    push 0
    push 15
    jmp exc_common

exc_16:  ; #MF
    push 0
    push 16
    jmp exc_common

exc_17:  ; #AC
    push 17
    jmp exc_common

exc_18:  ; #MC
    push 0
    push 18
    jmp exc_common

exc_19:  ; #XF
    push 0
    push 19
    jmp exc_common

exc_20:  ; #VE
    push 0
    push 20
    jmp exc_common

exc_21:  ; #CP
    push 21
    jmp exc_common

exc_22:  ; reserved
    push 0
    push 22
    jmp exc_common

exc_23:  ; reserved
    push 0
    push 23
    jmp exc_common

exc_24:  ; reserved
    push 0
    push 24
    jmp exc_common

exc_25:  ; reserved
    push 0
    push 25
    jmp exc_common

exc_26:  ; reserved
    push 0
    push 26
    jmp exc_common

exc_27:  ; reserved
    push 0
    push 27
    jmp exc_common

exc_28:  ; #HV
    push 0
    push 28
    jmp exc_common

exc_29:  ; #VC
    push 29
    jmp exc_common

exc_30:  ; #SX
    push 30
    jmp exc_common

exc_31:  ; reserved
    push 0
    push 31
    jmp exc_common

exc_common:
    ; [esp] vector, +4 error code, +8 EIP, +12 CS, +16 EFLAGS, (+20 ESP, +24 SS from CPL3)
    mov dword ptr [EXC_FRAME + 0], eax
    mov dword ptr [EXC_FRAME + 8], ebx
    mov dword ptr [EXC_FRAME + 16], ecx
    mov dword ptr [EXC_FRAME + 24], edx
    mov dword ptr [EXC_FRAME + 32], esi
    mov dword ptr [EXC_FRAME + 40], edi
    mov dword ptr [EXC_FRAME + 56], ebp
    mov ebp, dword ptr [esp + 12]
    mov dword ptr [EXC_FRAME + 168], ebp
    test ebp, 3
    jz exc_same_ring
    mov eax, dword ptr [esp + 20]
    mov dword ptr [EXC_FRAME + 48], eax
    mov eax, dword ptr [esp + 24]
    mov dword ptr [EXC_FRAME + 176], eax
    jmp exc_ring_done
exc_same_ring:
    lea eax, [esp + 20]
    mov dword ptr [EXC_FRAME + 48], eax
    mov eax, ss
    mov dword ptr [EXC_FRAME + 176], eax
exc_ring_done:
    mov ecx, dword ptr [esp + 8]
    mov dword ptr [EXC_FRAME + 128], ecx
    mov eax, dword ptr [esp + 16]
    mov dword ptr [EXC_FRAME + 136], eax
    mov edi, dword ptr [esp]
    mov dword ptr [EXC_FRAME + 144], edi
    mov esi, dword ptr [esp + 4]
    mov dword ptr [EXC_FRAME + 152], esi
    mov ebx, cr2
    mov dword ptr [EXC_FRAME + 160], ebx
exc_report:
    mov eax, UCALL_EXCEPTION
    mov edx, UCALL_PORT
    out dx, al
    jmp exc_report

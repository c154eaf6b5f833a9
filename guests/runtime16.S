; hostkvm guest runtime for 16-bit real mode.
;
; Assembled by hostkvm.guest at RUNTIME_GPA with keystone (Intel syntax). The host
; predefines UCALL_PORT, UCALL_DONE, UCALL_FAIL, UCALL_PRINT, UCALL_SYNC,
; UCALL_EXCEPTION.
; Plain integer instructions only: at CPL0 every instruction goes through KVM's
; x86 emulator, which lacks some others.
;
; Real mode: this code runs with CS = 0 (addresses are linear addresses below
; 64 KiB); the IVT at linear 0 points vectors 0..31 at exc_<n> and every other
; vector at exc_other.
; keystone encodes `call`/`ret` here with operand size 32 (66 e8 / 66 c3); the
; pairs match, so near calls into these helpers work.

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
; Real mode pushes FLAGS, CS, IP and never an error code. Reports edi = vector
; (256 for a vector above 31), esi = 0, ebx = 0 (no CR2), ecx = faulting IP,
; ebp = faulting CS. No register frame is saved in real mode.

exc_0:  ; #DE
    mov edi, 0
    jmp exc_common

exc_1:  ; #DB
    mov edi, 1
    jmp exc_common

exc_2:  ; #NMI
    mov edi, 2
    jmp exc_common

exc_3:  ; #BP
    mov edi, 3
    jmp exc_common

exc_4:  ; #OF
    mov edi, 4
    jmp exc_common

exc_5:  ; #BR
    mov edi, 5
    jmp exc_common

exc_6:  ; #UD
    mov edi, 6
    jmp exc_common

exc_7:  ; #NM
    mov edi, 7
    jmp exc_common

exc_8:  ; #DF
    mov edi, 8
    jmp exc_common

exc_9:  ; #OLD_MF
    mov edi, 9
    jmp exc_common

exc_10:  ; #TS
    mov edi, 10
    jmp exc_common

exc_11:  ; #NP
    mov edi, 11
    jmp exc_common

exc_12:  ; #SS
    mov edi, 12
    jmp exc_common

exc_13:  ; #GP
    mov edi, 13
    jmp exc_common

exc_14:  ; #PF
    mov edi, 14
    jmp exc_common

exc_15:  ; #SPURIOUS
    mov edi, 15
    jmp exc_common

exc_16:  ; #MF
    mov edi, 16
    jmp exc_common

exc_17:  ; #AC
    mov edi, 17
    jmp exc_common

exc_18:  ; #MC
    mov edi, 18
    jmp exc_common

exc_19:  ; #XF
    mov edi, 19
    jmp exc_common

exc_20:  ; #VE
    mov edi, 20
    jmp exc_common

exc_21:  ; #CP
    mov edi, 21
    jmp exc_common

exc_22:  ; reserved
    mov edi, 22
    jmp exc_common

exc_23:  ; reserved
    mov edi, 23
    jmp exc_common

exc_24:  ; reserved
    mov edi, 24
    jmp exc_common

exc_25:  ; reserved
    mov edi, 25
    jmp exc_common

exc_26:  ; reserved
    mov edi, 26
    jmp exc_common

exc_27:  ; reserved
    mov edi, 27
    jmp exc_common

exc_28:  ; #HV
    mov edi, 28
    jmp exc_common

exc_29:  ; #VC
    mov edi, 29
    jmp exc_common

exc_30:  ; #SX
    mov edi, 30
    jmp exc_common

exc_31:  ; reserved
    mov edi, 31
    jmp exc_common

exc_other:
    mov edi, 256
exc_common:
    ; [sp] IP, +2 CS, +4 FLAGS
    mov bp, sp
    xor ecx, ecx
    mov cx, word ptr ss:[bp]
    xor eax, eax
    mov ax, word ptr ss:[bp + 2]
    mov ebp, eax
    xor esi, esi
    xor ebx, ebx
exc_report:
    mov eax, UCALL_EXCEPTION
    mov edx, UCALL_PORT
    out dx, al
    jmp exc_report

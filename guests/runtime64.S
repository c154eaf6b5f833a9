; hostkvm guest runtime for 64-bit long mode.
;
; Assembled by hostkvm.guest at RUNTIME_GPA with keystone (Intel syntax). The host
; predefines UCALL_PORT, UCALL_DONE, UCALL_FAIL, UCALL_PRINT, UCALL_SYNC,
; UCALL_EXCEPTION and EXC_FRAME.
; Plain integer instructions only: at CPL0 every instruction goes through KVM's
; x86 emulator, which lacks some others.

; ---- ucalls ---------------------------------------------------------------------
; The ucall number goes out as one byte to UCALL_PORT; arguments travel in
; rdi (arg0), rsi (arg1), rbx (arg2), rcx (arg3), rbp (arg4), which the host reads
; with KVM_GET_REGS at the KVM_EXIT_IO. Works at CPL0 and at CPL3 with IOPL=3.

; ucall_done: the payload finished. Never returns.
ucall_done:
    mov eax, UCALL_DONE
    mov edx, UCALL_PORT
    out dx, al
    jmp ucall_done

; ucall_fail: rdi = address of the message, rsi = its length in bytes. Never returns.
ucall_fail:
    mov eax, UCALL_FAIL
    mov edx, UCALL_PORT
    out dx, al
    jmp ucall_fail

; ucall_print: rdi = address of the text, rsi = its length in bytes. Preserves registers.
ucall_print:
    push rax
    push rdx
    mov eax, UCALL_PRINT
    mov edx, UCALL_PORT
    out dx, al
    pop rdx
    pop rax
    ret

; ucall_sync: rdi = argument. The host may act (and change registers or memory)
; before it resumes the vCPU; returns with rax as the host left it (UCALL_SYNC
; unless the host wrote another value).
ucall_sync:
    push rdx
    mov eax, UCALL_SYNC
    mov edx, UCALL_PORT
    out dx, al
    pop rdx
    ret

; ---- exceptions ------------------------------------------------------------------
; One stub per vector 0..31: push 0 where the CPU pushes no error code, push the
; vector, join exc_common. exc_common runs at CPL0 (on RSP0 from CPL3, on IST1 for
; #DF), saves the interrupted registers to EXC_FRAME (kvm_regs order, 8 bytes each,
; then vector, error code, CR2, CS, SS) and reports UCALL_EXCEPTION with
; rdi = vector, rsi = error code, rbx = CR2, rcx = faulting RIP, rbp = faulting CS.
; It never returns to the payload.

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

exc_6:  ; #UD; also the kernel-service entry (ud2 with rax = KERNEL_SERVICE_MAGIC)
    cmp rax, KERNEL_SERVICE_MAGIC
    je kernel_service
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
    ; [rsp] vector, +8 error code, +16 RIP, +24 CS, +32 RFLAGS, +40 RSP, +48 SS
    mov qword ptr [EXC_FRAME + 0], rax
    mov qword ptr [EXC_FRAME + 8], rbx
    mov qword ptr [EXC_FRAME + 16], rcx
    mov qword ptr [EXC_FRAME + 24], rdx
    mov qword ptr [EXC_FRAME + 32], rsi
    mov qword ptr [EXC_FRAME + 40], rdi
    mov rax, qword ptr [rsp + 40]
    mov qword ptr [EXC_FRAME + 48], rax
    mov qword ptr [EXC_FRAME + 56], rbp
    mov qword ptr [EXC_FRAME + 64], r8
    mov qword ptr [EXC_FRAME + 72], r9
    mov qword ptr [EXC_FRAME + 80], r10
    mov qword ptr [EXC_FRAME + 88], r11
    mov qword ptr [EXC_FRAME + 96], r12
    mov qword ptr [EXC_FRAME + 104], r13
    mov qword ptr [EXC_FRAME + 112], r14
    mov qword ptr [EXC_FRAME + 120], r15
    mov rcx, qword ptr [rsp + 16]
    mov qword ptr [EXC_FRAME + 128], rcx
    mov rax, qword ptr [rsp + 32]
    mov qword ptr [EXC_FRAME + 136], rax
    mov rdi, qword ptr [rsp]
    mov qword ptr [EXC_FRAME + 144], rdi
    mov rsi, qword ptr [rsp + 8]
    mov qword ptr [EXC_FRAME + 152], rsi
    mov rbx, cr2
    mov qword ptr [EXC_FRAME + 160], rbx
    mov rbp, qword ptr [rsp + 24]
    mov qword ptr [EXC_FRAME + 168], rbp
    mov rax, qword ptr [rsp + 48]
    mov qword ptr [EXC_FRAME + 176], rax
exc_report:
    mov eax, UCALL_EXCEPTION
    mov edx, UCALL_PORT
    out dx, al
    jmp exc_report

; ---- kernel services (long64) ----------------------------------------------------
; kernel_remap: rdi = gva, rsi = gpa, rdx = flush (0 none, 1 INVLPG, 2 CR3 reload).
; Rewrites the 4 KiB PTE that maps gva so that it points at gpa (flags kept), as the
; guest kernel would, then flushes. Callable at CPL3: it enters CPL0 through #UD (a
; `ud2` with rax = KERNEL_SERVICE_MAGIC; PVM does not deliver `int N` from CPL3), and
; returns past the ud2. Preserves every register but rflags.
kernel_remap:
    push rax
    mov rax, KERNEL_SERVICE_MAGIC
    ud2
    pop rax
    ret

kernel_service:
    push rax
    push rbx
    push rcx
    push rsi
    mov rcx, 0x000ffffffffff000
    mov rax, cr3
    and rax, rcx
    mov rbx, rdi
    shr rbx, 39
    and rbx, 0x1ff
    mov rax, qword ptr [rax + rbx*8]
    and rax, rcx
    mov rbx, rdi
    shr rbx, 30
    and rbx, 0x1ff
    mov rax, qword ptr [rax + rbx*8]
    and rax, rcx
    mov rbx, rdi
    shr rbx, 21
    and rbx, 0x1ff
    mov rax, qword ptr [rax + rbx*8]
    and rax, rcx
    mov rbx, rdi
    shr rbx, 12
    and rbx, 0x1ff
    lea rax, [rax + rbx*8]
    and rsi, rcx
    not rcx
    mov rbx, qword ptr [rax]
    and rbx, rcx
    or rbx, rsi
    mov qword ptr [rax], rbx
    cmp rdx, 1
    jne kernel_service_cr3
    invlpg byte ptr [rdi]
    jmp kernel_service_out
kernel_service_cr3:
    cmp rdx, 2
    jne kernel_service_out
    mov rax, cr3
    mov cr3, rax
kernel_service_out:
    add qword ptr [rsp + 32], 2
    pop rsi
    pop rcx
    pop rbx
    pop rax
    iretq

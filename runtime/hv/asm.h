/*
 * Register save and restore for the hypervisor's assembly, one macro per
 * layout (as Linux's PUSH_REGS in arch/x86/entry/calling.h).
 */
#ifndef UEFI_HV_ASM_H
#define UEFI_HV_ASM_H

/* The first fields of struct hv_cpu (hv.h), which the VM-exit entry reads
 * and counts (exits.c checks the offsets at compile time). */
#define HV_CPU_DUE         0 /* 8 bytes: an NMI, its window, an INVEPT; 0 when nothing is due */
#define HV_CPU_EXIT_REASON 8
#define HV_CPU_EXIT_COUNT  16

#ifdef __ASSEMBLER__

/* The System V ABI's callee-saved registers, around a launch whose guest
 * returns through the same frame (vmexit.S, svm_entry.S). */
.macro PUSH_CALLEE_SAVED
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
.endm

.macro POP_CALLEE_SAVED
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
.endm

/* struct hv_guest_regs (hv.h), from RAX at the lowest address: the x86
 * register-number order, RSP a placeholder (the guest's is GUEST_RSP). */
.macro PUSH_GUEST_REGS
    push %r15
    push %r14
    push %r13
    push %r12
    push %r11
    push %r10
    push %r9
    push %r8
    push %rdi
    push %rsi
    push %rbp
    push $0
    push %rbx
    push %rdx
    push %rcx
    push %rax
.endm

/* The host's own frame for an exception or NMI in VMX root: the registers a
 * C handler may change (and RBX, RBP), RAX at the lowest address (struct
 * hv_exception_frame, host_env.c). */
.macro PUSH_HOST_REGS
    push %r11
    push %r10
    push %r9
    push %r8
    push %rdi
    push %rsi
    push %rbp
    push %rbx
    push %rdx
    push %rcx
    push %rax
.endm

.macro POP_HOST_REGS
    pop %rax
    pop %rcx
    pop %rdx
    pop %rbx
    pop %rbp
    pop %rsi
    pop %rdi
    pop %r8
    pop %r9
    pop %r10
    pop %r11
.endm

.macro POP_GUEST_REGS
    pop %rax
    pop %rcx
    pop %rdx
    pop %rbx
    add $8, %rsp
    pop %rbp
    pop %rsi
    pop %rdi
    pop %r8
    pop %r9
    pop %r10
    pop %r11
    pop %r12
    pop %r13
    pop %r14
    pop %r15
.endm

/* What an interrupt handler that calls C must save: the System V ABI's
 * caller-saved registers (the C code saves the rest), and RBP, which
 * CALL_ALIGNED uses. 80 bytes. */
.macro PUSH_SCRATCH_REGS
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %rbp
.endm

.macro POP_SCRATCH_REGS
    pop %rbp
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
.endm

/* Call `function` with RSP aligned to 16 as the System V ABI wants it;
 * RBP keeps the RSP to come back to (saved by PUSH_SCRATCH_REGS). */
.macro CALL_ALIGNED function
    mov %rsp, %rbp
    and $-16, %rsp
    call \function
    mov %rbp, %rsp
.endm

#endif /* __ASSEMBLER__ */
#endif /* UEFI_HV_ASM_H */

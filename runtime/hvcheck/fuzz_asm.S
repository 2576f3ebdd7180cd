# The fuzzer's instructions (fuzz.c), each of which may fault (asm.h:
# the routine returns the vector, or 0; hvcheck_try_wrmsr is hvcheck_asm.S's).
# The same in ring 3, where the handlers run on the TSS's RSP0 stack and
# IRETQ back.

#include "asm.h"

    .text

# UINT64 fuzz_vmcall(UINT64 regs[4]): RAX, RBX, RCX, RDX in and out.
    .globl fuzz_vmcall
fuzz_vmcall:
    push %rbx
    mov %rdi, %r8
    FAULT_RESUMES_AT 1f
    mov 0(%r8), %rax
    mov 8(%r8), %rbx
    mov 16(%r8), %rcx
    mov 24(%r8), %rdx
    HYPERCALL
    mov %rax, 0(%r8)
    mov %rbx, 8(%r8)
    mov %rcx, 16(%r8)
    mov %rdx, 24(%r8)
1:  RETURN_FAULT_VECTOR
    pop %rbx
    ret

# UINT64 fuzz_rdmsr(UINT32 msr, UINT64 *value)
    .globl fuzz_rdmsr
fuzz_rdmsr:
    FAULT_RESUMES_AT 1f
    mov %edi, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, (%rsi)
1:  RETURN_FAULT_VECTOR
    ret

# UINT64 fuzz_xsetbv(UINT32 xcr, UINT64 value)
    .globl fuzz_xsetbv
fuzz_xsetbv:
    FAULT_RESUMES_AT 1f
    mov %edi, %ecx
    mov %rsi, %rax
    mov %rsi, %rdx
    shr $32, %rdx
    xsetbv
1:  RETURN_FAULT_VECTOR
    ret

# UINT64 fuzz_mov_cr0(UINT64 value), fuzz_mov_cr4(UINT64 value)
    .globl fuzz_mov_cr0
fuzz_mov_cr0:
    FAULT_RESUMES_AT 1f
    mov %rdi, %cr0
1:  RETURN_FAULT_VECTOR
    ret

    .globl fuzz_mov_cr4
fuzz_mov_cr4:
    FAULT_RESUMES_AT 1f
    mov %rdi, %cr4
1:  RETURN_FAULT_VECTOR
    ret

# UINT64 fuzz_lock_or_zero(UINT64 *address): a write that leaves the word as
# it was, atomically (LOCK OR of 0), for pages that may not be hidden yet.
    .globl fuzz_lock_or_zero
fuzz_lock_or_zero:
    FAULT_RESUMES_AT 1f
    lock orq $0, (%rdi)
1:  RETURN_FAULT_VECTOR
    ret

# UINT64 fuzz_store(UINT64 *address, UINT64 value)
    .globl fuzz_store
fuzz_store:
    FAULT_RESUMES_AT 1f
    mov %rsi, (%rdi)
1:  RETURN_FAULT_VECTOR
    ret

# void fuzz_in_ring3(void (*fn)(void *), void *arg, UINT64 user_cs,
#                    UINT64 user_ss)
# fn(arg) at CPL 3 with interrupts off (IRETQ to a frame of our own, SDM 6.14.2),
# on this stack below the saved state. Its return is a UD2 at fuzz_ring3_done,
# which fuzz_ud_handler turns into the return to ring 0: the stack and the
# selectors (IRETQ to ring 3 cleared DS to GS, the fault left SS null) back.
    .globl fuzz_in_ring3
fuzz_in_ring3:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %ds, ring0_ds(%rip)
    mov %es, ring0_es(%rip)
    mov %fs, ring0_fs(%rip)
    mov %gs, ring0_gs(%rip)
    mov %ss, ring0_ss(%rip)
    mov %rsp, ring0_rsp(%rip)
    lea -64(%rsp), %rax
    and $-16, %rax
    push %rcx                    # SS
    push %rax                    # RSP
    pushq $2                     # RFLAGS: IF = 0, IOPL = 0
    push %rdx                    # CS
    lea 1f(%rip), %rax
    push %rax                    # RIP
    mov %rdi, %rax
    mov %rsi, %rdi
    iretq
1:  call *%rax
fuzz_ring3_done:
    ud2
fuzz_back_in_ring0:
    mov ring0_ss(%rip), %ss
    mov ring0_rsp(%rip), %rsp
    mov ring0_ds(%rip), %ds
    mov ring0_es(%rip), %es
    mov ring0_fs(%rip), %fs
    mov ring0_gs(%rip), %gs
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

# The #UD handler while the fuzzer runs: hvcheck_ud_handler's, but a #UD at
# fuzz_ring3_done is ring 3's work done.
    .globl fuzz_ud_handler
fuzz_ud_handler:
    push %rax
    lea fuzz_ring3_done(%rip), %rax
    cmp %rax, 8(%rsp)            # the saved RIP
    pop %rax
    je fuzz_back_in_ring0
    jmp hvcheck_ud_handler

    .data
    .balign 8
ring0_rsp:
    .quad 0
ring0_ds:
    .word 0
ring0_es:
    .word 0
ring0_fs:
    .word 0
ring0_gs:
    .word 0
ring0_ss:
    .word 0

    .section .note.GNU-stack, "", @progbits

# The fuzzer's instructions (fuzz.c), each of which may fault: a #UD or #GP
# resumes after it (fuzz_ud_handler, fuzz_gp_handler in IDT vectors 6 and 13
# while the fuzzer runs), and the routine returns the vector, or 0.

    .text

# The routine's resume point, and no fault yet.
.macro FAULT_RESUMES_AT label
    lea \label(%rip), %rax
    mov %rax, fuzz_resume(%rip)
    movq $0, fuzz_vector(%rip)
.endm

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
    vmcall
    mov %rax, 0(%r8)
    mov %rbx, 8(%r8)
    mov %rcx, 16(%r8)
    mov %rdx, 24(%r8)
1:  mov fuzz_vector(%rip), %rax
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
1:  mov fuzz_vector(%rip), %rax
    ret

# UINT64 fuzz_wrmsr(UINT32 msr, UINT64 value)
    .globl fuzz_wrmsr
fuzz_wrmsr:
    FAULT_RESUMES_AT 1f
    mov %edi, %ecx
    mov %rsi, %rax
    mov %rsi, %rdx
    shr $32, %rdx
    wrmsr
1:  mov fuzz_vector(%rip), %rax
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
1:  mov fuzz_vector(%rip), %rax
    ret

# UINT64 fuzz_mov_cr0(UINT64 value), fuzz_mov_cr4(UINT64 value)
    .globl fuzz_mov_cr0
fuzz_mov_cr0:
    FAULT_RESUMES_AT 1f
    mov %rdi, %cr0
1:  mov fuzz_vector(%rip), %rax
    ret

    .globl fuzz_mov_cr4
fuzz_mov_cr4:
    FAULT_RESUMES_AT 1f
    mov %rdi, %cr4
1:  mov fuzz_vector(%rip), %rax
    ret

    .globl fuzz_ud_handler
fuzz_ud_handler:
    movq $6, fuzz_vector(%rip)
    jmp 1f
    .globl fuzz_gp_handler
fuzz_gp_handler:
    add $8, %rsp                 # the error code
    movq $13, fuzz_vector(%rip)
1:  push %rax
    mov fuzz_resume(%rip), %rax
    mov %rax, 8(%rsp)            # the saved RIP: the routine's resume point
    pop %rax
    iretq

    .data
    .balign 8
fuzz_resume:
    .quad 0
fuzz_vector:
    .quad 0

    .section .note.GNU-stack, "", @progbits

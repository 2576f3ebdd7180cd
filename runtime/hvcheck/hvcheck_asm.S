# hvcheck's assembly: the VMCALL wrapper, the instructions it tries that may
# fault (asm.h) and the handlers that resume after them, and the
# handlers of the single-step and NMI checks.

#include "asm.h"

    .text

# void hvcheck_vmcall(UINT64 function, UINT64 rbx, UINT64 rcx, UINT64 out[4])
# The interface of docs/vmcall.md: RAX = function, RBX/RCX = arguments;
# out = RAX (status), RBX, RCX, RDX after the call.
    .globl hvcheck_vmcall
hvcheck_vmcall:
    push %rbx
    mov %rcx, %r8
    mov %rdi, %rax
    mov %rsi, %rbx
    mov %rdx, %rcx
    xor %edx, %edx
    HYPERCALL
    mov %rax, 0(%r8)
    mov %rbx, 8(%r8)
    mov %rcx, 16(%r8)
    mov %rdx, 24(%r8)
    pop %rbx
    ret

# The #UD and #GP handlers of asm.h: the vector and the RFLAGS image
# the fault pushed recorded, the saved RIP replaced by the routine's resume
# point (with the error code of #GP dropped first).
    .globl hvcheck_ud_handler
hvcheck_ud_handler:
    movq $6, hvcheck_fault_vector(%rip)
    jmp 1f
    .globl hvcheck_gp_handler
hvcheck_gp_handler:
    add $8, %rsp                 # the error code
    movq $13, hvcheck_fault_vector(%rip)
1:  push %rax
    mov 24(%rsp), %rax           # the RFLAGS image
    mov %rax, hvcheck_fault_rflags(%rip)
    mov hvcheck_fault_resume(%rip), %rax
    mov %rax, 8(%rsp)            # the saved RIP
    pop %rax
    iretq

# UINT64 hvcheck_try_vmxon(void)
    .globl hvcheck_try_vmxon
hvcheck_try_vmxon:
    FAULT_RESUMES_AT 1f
    sub $16, %rsp
    movq $0, (%rsp)
    vmxon (%rsp)
1:  add $16, %rsp
    RETURN_FAULT_VECTOR
    ret

# UINT64 hvcheck_try_vmx(UINT64 which): the VMX instruction `which`: 0 VMCLEAR,
# 1 VMPTRLD, 2 VMPTRST, 3 VMREAD, 4 VMWRITE, 5 VMLAUNCH, 6 VMRESUME, 7 VMXOFF,
# 8 INVEPT, 9 INVVPID (memory operands on the stack, zeroed).
    .globl hvcheck_try_vmx
hvcheck_try_vmx:
    FAULT_RESUMES_AT 2f
    sub $16, %rsp
    movq $0, (%rsp)
    movq $0, 8(%rsp)
    xor %ecx, %ecx
    lea 1f(%rip), %rax
    lea (%rax,%rdi,8), %rax
    jmp *%rax
    .balign 8
1:  vmclear (%rsp)
    jmp 3f
    .balign 8
    vmptrld (%rsp)
    jmp 3f
    .balign 8
    vmptrst (%rsp)
    jmp 3f
    .balign 8
    vmread %rcx, %rdx
    jmp 3f
    .balign 8
    vmwrite %rcx, %rcx
    jmp 3f
    .balign 8
    vmlaunch
    jmp 3f
    .balign 8
    vmresume
    jmp 3f
    .balign 8
    vmxoff
    jmp 3f
    .balign 8
    invept (%rsp), %rcx
    jmp 3f
    .balign 8
    invvpid (%rsp), %rcx
    jmp 3f
3:
2:  add $16, %rsp
    RETURN_FAULT_VECTOR
    ret

# UINT64 hvcheck_try_svm(UINT64 which): the SVM instruction `which`: 0 VMRUN,
# 1 VMLOAD, 2 VMSAVE, 3 STGI, 4 CLGI, 5 SKINIT, 6 INVLPGA (RAX = 0, ECX = 0).
    .globl hvcheck_try_svm
hvcheck_try_svm:
    FAULT_RESUMES_AT 2f
    xor %ecx, %ecx
    lea 1f(%rip), %rax
    lea (%rax,%rdi,8), %rdx
    xor %eax, %eax
    jmp *%rdx
    .balign 8
1:  vmrun %rax
    jmp 2f
    .balign 8
    vmload %rax
    jmp 2f
    .balign 8
    vmsave %rax
    jmp 2f
    .balign 8
    stgi
    jmp 2f
    .balign 8
    clgi
    jmp 2f
    .balign 8
    skinit %eax
    jmp 2f
    .balign 8
    invlpga %rax, %ecx
    jmp 2f
2:  RETURN_FAULT_VECTOR
    ret

# UINT64 hvcheck_try_rdmsr(UINT32 msr)
    .globl hvcheck_try_rdmsr
hvcheck_try_rdmsr:
    FAULT_RESUMES_AT 1f
    mov %edi, %ecx
    rdmsr
1:  RETURN_FAULT_VECTOR
    ret

# UINT64 hvcheck_try_getsec(void): GETSEC with EAX = 0 (CAPABILITIES).
    .globl hvcheck_try_getsec
hvcheck_try_getsec:
    push %rbx
    FAULT_RESUMES_AT 1f
    xor %eax, %eax
    xor %ebx, %ebx
    getsec
1:  pop %rbx
    RETURN_FAULT_VECTOR
    ret

# UINT64 hvcheck_try_tpause(UINT64 deadline): ECX = 0: the C0.2 state, until
# the TSC reaches `deadline` (EDX:EAX).
    .globl hvcheck_try_tpause
hvcheck_try_tpause:
    FAULT_RESUMES_AT 1f
    mov %rdi, %rax
    mov %rdi, %rdx
    shr $32, %rdx
    xor %ecx, %ecx
    tpause %ecx
1:  RETURN_FAULT_VECTOR
    ret

# UINT64 hvcheck_try_wrmsr(UINT32 msr, UINT64 value)
    .globl hvcheck_try_wrmsr
hvcheck_try_wrmsr:
    FAULT_RESUMES_AT 1f
    mov %edi, %ecx
    mov %rsi, %rax
    mov %rsi, %rdx
    shr $32, %rdx
    wrmsr
1:  RETURN_FAULT_VECTOR
    ret

# UINT64 hvcheck_step_cpuid(void): CPUID with RFLAGS.TF set (POPF sets it,
# so the instruction after POPF, CPUID, is the one that traps); returns the
# address right after CPUID, where the single-step #DB must come.
    .globl hvcheck_step_cpuid
hvcheck_step_cpuid:
    push %rbx
    pushfq
    orq $0x100, (%rsp)
    xor %eax, %eax
    xor %ecx, %ecx
    popfq
    cpuid
1:  lea 1b(%rip), %rax
    pop %rbx
    ret

# The #DB handler of the single-step check: counts, keeps the RIP of the
# trap, clears TF in the frame.
    .globl hvcheck_db_handler
hvcheck_db_handler:
    lock incq hvcheck_db_count(%rip)
    push %rax
    mov 8(%rsp), %rax
    mov %rax, hvcheck_db_rip(%rip)
    pop %rax
    andq $-257, 16(%rsp)        # RFLAGS.TF off
    iretq

# The guest's NMI handler during the NMI check: counts, nothing else.
    .globl hvcheck_nmi_handler
hvcheck_nmi_handler:
    lock incq hvcheck_nmi_count(%rip)
    iretq

    .data
    .balign 8
    .globl hvcheck_fault_resume
    .hidden hvcheck_fault_resume
hvcheck_fault_resume:
    .quad 0
    .globl hvcheck_fault_vector
    .hidden hvcheck_fault_vector
hvcheck_fault_vector:
    .quad 0
    .globl hvcheck_db_count
hvcheck_db_count:
    .quad 0
    .globl hvcheck_db_rip
hvcheck_db_rip:
    .quad 0
    .globl hvcheck_nmi_count
hvcheck_nmi_count:
    .quad 0
    .globl hvcheck_fault_rflags
hvcheck_fault_rflags:
    .quad 0
    .globl hvcheck_amd
    .hidden hvcheck_amd
hvcheck_amd:
    .byte 0

    .section .note.GNU-stack, "", @progbits

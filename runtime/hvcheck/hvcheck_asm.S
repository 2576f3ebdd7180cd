# hvcheck's assembly: the VMCALL wrapper and a VMXON that survives its #UD.

    .text

# The try routines below: a #UD of the instruction they try resumes at
# `label` with RAX = 1 (hvcheck_ud_handler).
.macro UD_RESUMES_AT label
    lea \label(%rip), %rax
    mov %rax, hvcheck_ud_resume(%rip)
.endm

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
    vmcall
    mov %rax, 0(%r8)
    mov %rbx, 8(%r8)
    mov %rcx, 16(%r8)
    mov %rdx, 24(%r8)
    pop %rbx
    ret

# One #UD handler for the instructions hvcheck tries (installed in IDT vector
# 6 for each test): the try routine returns 1, from the address it put in
# hvcheck_ud_resume before the instruction. It and the #GP handler keep the
# RFLAGS image of the fault in hvcheck_fault_rflags.
    .globl hvcheck_ud_handler
hvcheck_ud_handler:
    mov $1, %eax
    mov 16(%rsp), %rdx           # the RFLAGS image the fault pushed
    mov %rdx, hvcheck_fault_rflags(%rip)
    mov hvcheck_ud_resume(%rip), %rdx
    mov %rdx, (%rsp)             # the saved RIP: past the instruction
    iretq

# UINT64 hvcheck_try_vmxon(void): 1 when VMXON raised #UD, else 0.
    .globl hvcheck_try_vmxon
hvcheck_try_vmxon:
    UD_RESUMES_AT 1f
    xor %eax, %eax
    sub $16, %rsp
    movq $0, (%rsp)
    vmxon (%rsp)
1:  add $16, %rsp
    ret

# UINT64 hvcheck_try_vmx(UINT64 which): 1 when the VMX instruction `which`
# raised #UD, else 0: 0 VMCLEAR, 1 VMPTRLD, 2 VMPTRST, 3 VMREAD, 4 VMWRITE,
# 5 VMLAUNCH, 6 VMRESUME, 7 VMXOFF, 8 INVEPT, 9 INVVPID (memory operands
# on the stack, zeroed).
    .globl hvcheck_try_vmx
hvcheck_try_vmx:
    UD_RESUMES_AT 2f
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
3:  xor %eax, %eax
2:  add $16, %rsp
    ret

# UINT64 hvcheck_try_getsec(void): 1 when GETSEC (EAX = 0, CAPABILITIES)
# raised #UD, else 0.
    .globl hvcheck_try_getsec
hvcheck_try_getsec:
    UD_RESUMES_AT 1f
    push %rbx
    xor %eax, %eax
    xor %ebx, %ebx
    getsec
    xor %eax, %eax
1:  pop %rbx
    ret

# UINT64 hvcheck_try_tpause(UINT64 deadline): 1 when TPAUSE raised #UD, else
# 0. ECX = 0: the C0.2 state, until the TSC reaches `deadline` (EDX:EAX).
    .globl hvcheck_try_tpause
hvcheck_try_tpause:
    UD_RESUMES_AT 1f
    mov %rdi, %rax
    mov %rdi, %rdx
    shr $32, %rdx
    xor %ecx, %ecx
    tpause %ecx
    xor %eax, %eax
1:  ret

# UINT64 hvcheck_try_wrmsr(UINT32 msr, UINT64 value): 1 when WRMSR raised
# #GP (the handler below, in IDT vector 13 for the test, resumes there).
    .globl hvcheck_try_wrmsr
hvcheck_try_wrmsr:
    mov %edi, %ecx
    mov %rsi, %rax
    mov %rsi, %rdx
    shr $32, %rdx
    wrmsr
    xor %eax, %eax
    ret
hvcheck_wrmsr_faulted:
    mov $1, %eax
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

    .globl hvcheck_gp_handler
hvcheck_gp_handler:
    add $8, %rsp                 # the error code
    mov 16(%rsp), %rax           # the RFLAGS image the fault pushed
    mov %rax, hvcheck_fault_rflags(%rip)
    lea hvcheck_wrmsr_faulted(%rip), %rax
    mov %rax, (%rsp)
    iretq

    .data
    .balign 8
hvcheck_ud_resume:
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

    .section .note.GNU-stack, "", @progbits

# The hypervisor's assembly: the VM-exit entry point, the launch routine,
# the host exception stubs and the fault-tolerant MSR/XCR accessors.

#include "vmx.h"        /* VMCS encodings, from the spec's catalogue */
#include "spec.h"       /* HV_FAST_CPUID */
#include "asm.h"

    .text

# ---------------------------------------------------------------------------
# hv_vmexit_entry: HOST_RIP. The processor arrives here with RSP = HOST_RSP (SDM
# 29.5.3 "Loading Host RIP, RSP, RFLAGS, and SSP"); the slot at HOST_RSP holds
# this CPU's struct hv_cpu *. The exit reason is read once, into the struct.
#
# The short path first (HV_FAST_CPUID, from the spec): a CPUID exit, the one
# that comes by the thousand (firmware, an OS at boot, every idle BSP), is
# answered here with two scratch registers, when its leaf is one the spec
# passes through as it is and nothing else is due: no NMI to inject or window
# to close (nmi.c), no INVEPT due since pages were hidden (protect.c),
# no STI or MOV SS blocking that the instruction's end must clear (SDM 26.4.2)
# and no single step to trap (RFLAGS.TF). Its VMREADs: the reason, the
# interruptibility state and RFLAGS for those two checks, the instruction's
# length and RIP to step over it. Anything else takes the full path.
#
# The full path saves the guest's GPRs in the x86 register-number order
# (struct hv_guest_regs) and calls hv_vmexit_handler. Nothing else: the
# hypervisor's C touches no x87/SSE/AVX register (-mgeneral-regs-only), so the
# guest's stay in place.
# ---------------------------------------------------------------------------
    .globl hv_vmexit_entry
hv_vmexit_entry:
    push %rsi
    push %rdi
    mov 16(%rsp), %rsi                  # struct hv_cpu *
    mov $VM_EXIT_REASON, %edi
    vmread %rdi, %rdi
#if HV_FAST_CPUID
    cmp $EXIT_REASON_CPUID, %edi
    jne .Lfull_path
    cmpq $0, HV_CPU_DUE(%rsi)           # an NMI or an INVEPT due
    jne .Lcpuid_full_path
    lea -0x40000000(%rax), %edi         # the leaf: 0x400000xx is the hypervisor's
    cmp $0xFF, %edi
    jbe .Lcpuid_full_path
    .irp leaf, HV_CPUID_FULL_PATH_LEAVES
    cmp $\leaf, %eax
    je .Lcpuid_full_path
    .endr
    mov $GUEST_INTERRUPTIBILITY_INFO, %edi
    vmread %rdi, %rdi
    test $3, %edi                       # blocking by STI, by MOV SS
    jnz .Lcpuid_full_path
    mov $GUEST_RFLAGS, %edi
    vmread %rdi, %rdi
    test $0x100, %edi                   # TF
    jnz .Lcpuid_full_path
    cpuid                               # the guest's EAX and ECX in, its EAX-EDX out
    incq (HV_CPU_EXIT_COUNT + 8 * EXIT_REASON_CPUID)(%rsi)
    mov $VM_EXIT_INSTRUCTION_LEN, %edi
    vmread %rdi, %rdi
    mov $GUEST_RIP, %esi
    vmread %rsi, -8(%rsp)               # below RSP: the NMI and #MC handlers have IST stacks
    add %rdi, -8(%rsp)
    vmwrite -8(%rsp), %rsi
    pop %rdi
    pop %rsi
    vmresume
    jmp .Lvmresume_failed
.Lcpuid_full_path:
    mov $EXIT_REASON_CPUID, %edi
#endif
.Lfull_path:
    mov %edi, HV_CPU_EXIT_REASON(%rsi)
    pop %rdi
    pop %rsi
    PUSH_GUEST_REGS
    mov %rsp, %rdi              # struct hv_guest_regs *
    mov 128(%rsp), %rsi         # struct hv_cpu *
    call hv_vmexit_handler
    POP_GUEST_REGS
    vmresume
    # VMRESUME failed (VMfailInvalid/VMfailValid, SDM 32.3 "VMX Instructions"): report it.
.Lvmresume_failed:
    mov (%rsp), %rdi
    call hv_vmresume_failed
1:  cli
    hlt
    jmp 1b

# ---------------------------------------------------------------------------
# UINT64 hv_vmlaunch(UINT64 guest_rflags)
# The launch trick: the guest starts exactly where this routine returns, on
# this stack, with the caller's callee-saved registers and RFLAGS. Returns 0
# in the guest; 1 (VMfailInvalid) or 2 (VMfailValid) when VMLAUNCH fails; 3
# (HV_LAUNCH_ENTRY_FAILED) when VM entry failed on the guest state: the exit
# handler turns VMX off and resumes at hv_vmlaunch_done natively.
# ---------------------------------------------------------------------------
    .globl hv_vmlaunch
hv_vmlaunch:
    PUSH_CALLEE_SAVED
    mov $GUEST_RFLAGS, %rax
    vmwrite %rdi, %rax
    lea .Lguest_starts_here(%rip), %rdx
    mov $GUEST_RIP, %rax
    vmwrite %rdx, %rax
    mov $GUEST_RSP, %rax
    vmwrite %rsp, %rax
    vmlaunch
    mov $1, %eax
    jc .Llaunch_done
    mov $2, %eax
    jmp .Llaunch_done
.Lguest_starts_here:
    xor %eax, %eax
    .globl hv_vmlaunch_done
hv_vmlaunch_done:
.Llaunch_done:
    POP_CALLEE_SAVED
    ret

# ---------------------------------------------------------------------------
# void hv_resume_native(const UINT64 frame[5], const struct hv_guest_regs *regs)
# After VMXOFF (hv_devirtualize): the guest's GPRs, then IRETQ to its RIP,
# CS, RFLAGS, RSP and SS (its x87/SSE/AVX state never left the registers).
# ---------------------------------------------------------------------------
    .globl hv_resume_native
hv_resume_native:
    pushq 32(%rdi)              # SS
    pushq 24(%rdi)              # RSP
    pushq 16(%rdi)              # RFLAGS
    pushq 8(%rdi)               # CS
    pushq 0(%rdi)               # RIP
    mov %rsi, %rax
    mov 8(%rax), %rcx
    mov 16(%rax), %rdx
    mov 24(%rax), %rbx
    mov 40(%rax), %rbp
    mov 48(%rax), %rsi
    mov 56(%rax), %rdi
    mov 64(%rax), %r8
    mov 72(%rax), %r9
    mov 80(%rax), %r10
    mov 88(%rax), %r11
    mov 96(%rax), %r12
    mov 104(%rax), %r13
    mov 112(%rax), %r14
    mov 120(%rax), %r15
    mov 0(%rax), %rax
    iretq

# ---------------------------------------------------------------------------
# Fault-tolerant accessors: a #GP on the marked instruction resumes at the
# matching .L*_fault label (see hv_host_exception_common), which returns 1.
# ---------------------------------------------------------------------------
    .globl hv_safe_rdmsr
hv_safe_rdmsr:                  # (UINT32 msr, UINT64 *value)
    mov %edi, %ecx
.Lrdmsr_insn:
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, (%rsi)
    xor %eax, %eax
    ret
.Lrdmsr_fault:
    mov $1, %eax
    ret

    .globl hv_safe_wrmsr
hv_safe_wrmsr:                  # (UINT32 msr, UINT64 value)
    mov %edi, %ecx
    mov %rsi, %rax
    mov %rsi, %rdx
    shr $32, %rdx
.Lwrmsr_insn:
    wrmsr
    xor %eax, %eax
    ret
.Lwrmsr_fault:
    mov $1, %eax
    ret

    .globl hv_safe_xsetbv
hv_safe_xsetbv:                 # (UINT32 xcr, UINT64 value)
    mov %edi, %ecx
    mov %rsi, %rax
    mov %rsi, %rdx
    shr $32, %rdx
.Lxsetbv_insn:
    xsetbv
    xor %eax, %eax
    ret
.Lxsetbv_fault:
    mov $1, %eax
    ret

# ---------------------------------------------------------------------------
# Host IDT: 32 exception stubs, 16 bytes apart. Those whose exception pushes
# no error code push 0 (SDM 7.13 "Error Code"), so every frame has the same shape.
# ---------------------------------------------------------------------------
    .globl hv_host_exception_stubs
    .balign 16
hv_host_exception_stubs:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    push $\vec
    .else
    push $0
    push $\vec
    .endif
    jmp hv_host_exception_common
    .endr

# The host's NMI gate, on this CPU's NMI stack (IST 1): the NMI is the
# guest's; hv_host_nmi() counts it, with this CPU's struct hv_cpu * from the
# word above the interrupt frame (host_env.c puts it there).
    .globl hv_host_nmi_stub
    .balign 16
hv_host_nmi_stub:
    PUSH_HOST_REGS
    mov 128(%rsp), %rdi         # 11 registers, then RIP CS RFLAGS RSP SS: the word above
    call hv_host_nmi
    POP_HOST_REGS
    iretq

# void hv_iret_to_self(void): IRET to the next instruction, in the same mode
# and stack: what unblocks NMIs after an NMI VM exit (SDM 7.7.1 "Handling
# Multiple NMIs").
    .globl hv_iret_to_self
hv_iret_to_self:
    mov %rsp, %rax
    xor %ecx, %ecx
    mov %ss, %cx
    push %rcx                   # SS
    push %rax                   # RSP, as before the frame
    pushfq
    mov %cs, %cx
    push %rcx                   # CS
    lea 1f(%rip), %rax
    push %rax                   # RIP
    iretq
1:  ret

    .globl hv_host_interrupt_stub
    .balign 16
hv_host_interrupt_stub:
    push $0
    push $255
    jmp hv_host_exception_common

hv_host_exception_common:
    PUSH_HOST_REGS
    # A single-step trap of the guest's last instruction (its RFLAGS.TF) that
    # arrives in the host after #VMEXIT, as Bochs 3 delivers it on SVM: the
    # guest's, whose #DB the exit handler injects itself (svm.c); the host
    # goes on.
    cmpq $1, 88(%rsp)           # vector
    je .Lresume
    cmpq $13, 88(%rsp)
    jne .Lnot_fixable
    mov 104(%rsp), %rax         # faulting RIP
    lea .Lrdmsr_insn(%rip), %rcx
    lea .Lrdmsr_fault(%rip), %rdx
    cmp %rcx, %rax
    je .Lfixup
    lea .Lwrmsr_insn(%rip), %rcx
    lea .Lwrmsr_fault(%rip), %rdx
    cmp %rcx, %rax
    je .Lfixup
    lea .Lxsetbv_insn(%rip), %rcx
    lea .Lxsetbv_fault(%rip), %rdx
    cmp %rcx, %rax
    je .Lfixup
.Lnot_fixable:
    mov %rsp, %rdi
    and $-16, %rsp
    call hv_host_exception
1:  cli
    hlt
    jmp 1b
.Lfixup:
    mov %rdx, 104(%rsp)
.Lresume:
    POP_HOST_REGS
    add $16, %rsp               # vector, error code
    iretq

    .section .note.GNU-stack, "", @progbits

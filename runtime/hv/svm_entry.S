# The SVM backend's assembly (svm.c): the launch and the VMRUN loop.
#
# VMRUN saves the host's RAX, RSP, RIP, RFLAGS, control registers, EFER and
# descriptor tables in the host save area and #VMEXIT restores them (APM
# vol. 2, 15.5 "VMRUN Instruction"); the other GPRs are neither saved nor
# loaded: the loop keeps the guest's in struct hv_guest_regs on the host
# stack. The guest's RAX, RSP and RIP are in its VMCB. FS, GS, TR, LDTR and
# the system-call MSRs are switched with VMLOAD and VMSAVE (APM 15.5.2).
# The host runs with GIF clear after #VMEXIT: interrupts and NMIs wait
# until the next VMRUN sets it and are then taken by the guest.

#include "svm.h"        /* VMCB offsets, from the spec's catalogue */
#include "asm.h"

    .text

# The host stack, from its top (HOST_RSP, 16-byte aligned) down:
#   HOST_RSP       struct hv_cpu *          (host_env.c puts it there)
#   HOST_RSP - 8   the host VMCB's address
#   HOST_RSP - 16  the guest VMCB's address
#   below          struct hv_guest_regs     (RSP points here in the loop)
#define LOOP_GUEST_VMCB 128
#define LOOP_HOST_VMCB  136
#define LOOP_CPU        144

#if HV_SVM
# ---------------------------------------------------------------------------
# UINT64 hv_svm_launch(UINT8 *vmcb, UINT8 *host_vmcb, UINT64 host_rsp, UINT64 host_cr3)
# The guest goes on where this routine returns, on this stack, with the
# caller's callee-saved registers: it returns 0 there. The host (its GDT,
# IDT, TR and GS base already loaded by svm.c) takes its page tables and
# stack and enters the loop. When VMRUN refuses the guest state, svm.c puts
# the CPU back natively at hv_svm_launch_done with RAX = 1.
# ---------------------------------------------------------------------------
    .globl hv_svm_launch
hv_svm_launch:
    PUSH_CALLEE_SAVED
    mov %rsp, VMCB_RSP(%rdi)
    lea .Lguest_starts_here(%rip), %rax
    mov %rax, VMCB_RIP(%rdi)
    movq $0, VMCB_RAX(%rdi)
    mov %rcx, %cr3
    mov %rdx, %rsp
    push %rsi                   # HOST_RSP - 8: the host VMCB
    push %rdi                   # HOST_RSP - 16: the guest VMCB
    mov %rsi, %rax
    vmsave %rax                 # the host's FS, GS, TR, LDTR, system-call MSRs
    PUSH_GUEST_REGS             # the guest's, as they are now: only the callee-saved matter
    jmp .Lrun

.Lguest_starts_here:
    xor %eax, %eax
    .globl hv_svm_launch_done
hv_svm_launch_done:
    POP_CALLEE_SAVED
    ret

# ---------------------------------------------------------------------------
# The loop: VMRUN until the machine stops. Each #VMEXIT saves the guest's
# GPRs, gives the host its FS, GS and TR back and calls
# hv_svm_exit_handler(regs, cpu).
# ---------------------------------------------------------------------------
.Lrun:
    mov LOOP_GUEST_VMCB(%rsp), %rax
    vmload %rax
    mov 8(%rsp), %rcx
    mov 16(%rsp), %rdx
    mov 24(%rsp), %rbx
    mov 40(%rsp), %rbp
    mov 48(%rsp), %rsi
    mov 56(%rsp), %rdi
    mov 64(%rsp), %r8
    mov 72(%rsp), %r9
    mov 80(%rsp), %r10
    mov 88(%rsp), %r11
    mov 96(%rsp), %r12
    mov 104(%rsp), %r13
    mov 112(%rsp), %r14
    mov 120(%rsp), %r15
    vmrun %rax
    # #VMEXIT: RAX is the guest VMCB's address again, RSP the host's.
    mov %rcx, 8(%rsp)
    mov %rdx, 16(%rsp)
    mov %rbx, 24(%rsp)
    mov %rbp, 40(%rsp)
    mov %rsi, 48(%rsp)
    mov %rdi, 56(%rsp)
    mov %r8, 64(%rsp)
    mov %r9, 72(%rsp)
    mov %r10, 80(%rsp)
    mov %r11, 88(%rsp)
    mov %r12, 96(%rsp)
    mov %r13, 104(%rsp)
    mov %r14, 112(%rsp)
    mov %r15, 120(%rsp)
    vmsave %rax
    mov LOOP_HOST_VMCB(%rsp), %rax
    vmload %rax
    mov %rsp, %rdi              # struct hv_guest_regs *
    mov LOOP_CPU(%rsp), %rsi    # struct hv_cpu *
    call hv_svm_exit_handler
    jmp .Lrun
#endif

    .section .note.GNU-stack, "", @progbits

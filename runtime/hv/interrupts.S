# The seed's interrupt path, its assembly half (interrupts.c has the C half):
# the call of a host IDT handler with a hand-built interrupt frame, and the
# host handlers of vectors 32..255 that queue the interrupt for the guest.

#include "spec.h"
#include "asm.h"

#if HV_ACTION_DISPATCH_IDT

    .text

# ---------------------------------------------------------------------------
# void hv_irq_call_handler(UINT64 handler) As KVM's vmx_do_interrupt_irqoff():
# the frame an interrupt in 64-bit mode would push (SDM 7.14.2 "64-Bit Mode
# Stack Frame": RSP aligned to 16, then SS, RSP, RFLAGS, CS, RIP), the RIP
# pushed by the CALL. The handler's IRETQ pops all five and comes back here with
# RFLAGS as they were (IF clear: a VM exit clears it, SDM 29.5.3 "Loading Host
# RIP, RSP, RFLAGS, and SSP").
# ---------------------------------------------------------------------------
    .globl hv_irq_call_handler
hv_irq_call_handler:
    push %rbp
    mov %rsp, %rbp
    and $-16, %rsp
    mov %ss, %eax               # PUSH SS is not encodable in 64-bit mode
    push %rax
    push %rbp                   # the RSP the IRETQ restores
    pushfq
    mov %cs, %eax
    push %rax
    call *%rdi
    leave
    ret

# ---------------------------------------------------------------------------
# Host IDT vectors 32..255 (host_env.c points the gates here): one 16-byte
# stub each, which pushes its vector and joins the common part. Vectors from
# 128 push an imm32 (an imm8 would sign-extend), 10 bytes in all.
# ---------------------------------------------------------------------------
    .globl hv_irq_stubs
    .balign 16
hv_irq_stubs:
    vector = 32
    .rept 224
    .balign 16
    pushq $vector
    jmp hv_irq_stub_common
    vector = vector + 1
    .endr

# An interrupt handler: every register it touches is saved (the caller-saved
# ones; the C code saves the rest), then hv_irq_arrived(vector, frame).
hv_irq_stub_common:
    PUSH_SCRATCH_REGS
    mov 80(%rsp), %rdi          # vector
    lea 88(%rsp), %rsi          # the interrupt frame: RIP, CS, RFLAGS, RSP, SS
    CALL_ALIGNED hv_irq_arrived
    POP_SCRATCH_REGS
    add $8, %rsp                # vector
    iretq
#if HV_OWNED_VECTORS

# The gate of every vector the spec owns (`own`): hv_irq_owned() sends the EOI.
    .globl hv_irq_owned_stub
    .balign 16
hv_irq_owned_stub:
    PUSH_SCRATCH_REGS
    CALL_ALIGNED hv_irq_owned
    POP_SCRATCH_REGS
    iretq
#endif /* HV_OWNED_VECTORS */
#endif /* HV_ACTION_DISPATCH_IDT */

    .section .note.GNU-stack, "", @progbits

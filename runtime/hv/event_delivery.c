/*
 * An event whose delivery a VM exit interrupted (SDM 29.2.4 "Information for
 * VM Exits That Occur During Event Delivery"): the guest's own exception or
 * interrupt, or one the last VM entry injected (an NMI from nmi.c, an
 * interrupt from interrupts.c). It was not delivered; the CPU only reports it
 * in the IDT-vectoring information, and it is injected again before anything
 * else, in every spec. The one exit that completes the delivery itself is a
 * task switch through a task gate (task_switch.c).
 *
 * An exit in the middle of an IRET that had unblocked NMIs leaves them
 * unblocked although the IRET will run again (SDM 29.2.3 "Information About
 * NMI Unblocking Due to IRET"): blocking by NMI is set back, as KVM does.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"

static void restore_nmi_blocking(struct hv_cpu *cpu, UINT32 reason, UINT32 idt)
{
    BOOLEAN unblocked = FALSE;
    if (!(cpu->controls[HV_CTL_PIN] & HV_PIN_VIRTUAL_NMIS))
        return;
    if (reason == EXIT_REASON_EXCEPTION_OR_NMI) {
        UINT32 info = (UINT32)vmread(VM_EXIT_INTR_INFO);
        unblocked = (info & INTR_INFO_VALID) && (info & INTR_INFO_NMI_UNBLOCKED) &&
                    INTR_INFO_VECTOR(info) != VECTOR_DF;
    } else if (reason == EXIT_REASON_EPT_VIOLATION) {
        unblocked = (vmread(EXIT_QUALIFICATION) & INTR_INFO_NMI_UNBLOCKED) && !(idt & INTR_INFO_VALID);
    }
    if (unblocked)
        vmwrite(GUEST_INTERRUPTIBILITY_INFO, vmread(GUEST_INTERRUPTIBILITY_INFO) | BLOCKING_BY_NMI);
}

void hv_redeliver_interrupted_event(struct hv_cpu *cpu, UINT32 reason)
{
    UINT32 idt = (UINT32)vmread(IDT_VECTORING_INFO_FIELD);
    restore_nmi_blocking(cpu, reason, idt);
    if (!(idt & INTR_INFO_VALID) || reason == EXIT_REASON_TASK_SWITCH ||
        (vmread(VM_ENTRY_INTR_INFO_FIELD) & INTR_INFO_VALID))
        return;
    UINT32 type = INTR_INFO_TYPE(idt);
    if (idt & INTR_INFO_ERROR_CODE)
        vmwrite(VM_ENTRY_EXCEPTION_ERROR_CODE, vmread(IDT_VECTORING_ERROR_CODE));
    if (type == INTR_TYPE_SOFT_INTR || type == INTR_TYPE_PRIV_SOFT_EXC || type == INTR_TYPE_SOFT_EXC)
        vmwrite(VM_ENTRY_INSTRUCTION_LEN, vmread(VM_EXIT_INSTRUCTION_LEN));
    vmwrite(VM_ENTRY_INTR_INFO_FIELD, idt & ~INTR_INFO_NMI_UNBLOCKED); /* bit 12 is reserved on entry */
}

/*
 * NMIs. The hypervisor sends none and wants none: every NMI is the guest's,
 * whichever mode it finds the CPU in (the Linux NMI watchdog, perf, kdump and
 * a machine check's broadcast all send them).
 *
 * - In VMX root, the host IDT's NMI gate (an IST stack, vmexit.S) counts it
 *   for this CPU (hv_host_nmi) and returns.
 * - In VMX non-root, with "NMI exiting" (the default spec requires it), the
 *   NMI exits (reason 0, the `nmi` action) and is counted the same way.
 *
 * At the end of every exit, hv_nmi_before_entry injects one counted NMI when
 * the guest can take it. While it cannot (virtual-NMI blocking: it is still in
 * its NMI handler; STI or MOV SS blocking; another event being injected),
 * "NMI-window exiting" makes the CPU exit as soon as it can ("virtual NMIs",
 * SDM 26.6.1 "Pin-Based VM-Execution Controls", 27.2 "Other Causes of VM
 * Exits"). As on hardware, NMIs that arrive while one is pending collapse
 * into it; at most one waits behind the one being handled.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"

static void set_nmi_window(struct hv_cpu *cpu, BOOLEAN on)
{
    if (!(cpu->controls[HV_CTL_PIN] & HV_PIN_VIRTUAL_NMIS))
        return; /* without virtual NMIs there is no NMI window: the next exit injects */
    UINT64 proc = vmread(CPU_BASED_VM_EXEC_CONTROL);
    vmwrite(CPU_BASED_VM_EXEC_CONTROL,
            on ? proc | HV_PROC_NMI_WINDOW_EXITING : proc & ~(UINT64)HV_PROC_NMI_WINDOW_EXITING);
    __atomic_store_n(&cpu->nmi_window, on, __ATOMIC_SEQ_CST);
}

/* Called from the host IDT's NMI stub (vmexit.S), on this CPU's NMI stack,
 * and for an NMI exit. The NMI may have interrupted the very end of an exit,
 * after hv_nmi_before_entry looked: the NMI window it opens here makes the
 * guest exit again as soon as it can take the NMI. */
void hv_host_nmi(struct hv_cpu *cpu)
{
    __atomic_store_n(&cpu->nmi_pending, 1, __ATOMIC_SEQ_CST); /* one waits at most, as in a CPU */
    if (__atomic_load_n(&cpu->status, __ATOMIC_SEQ_CST) == HV_CPU_LAUNCHED) /* its VMCS is current */
        set_nmi_window(cpu, TRUE);
}

/* The last step before VM entry (hv_vmexit_handler), so on every exit: with
 * no NMI waiting and no window open it touches no VMCS field. */
void hv_nmi_before_entry(struct hv_cpu *cpu)
{
    if (!__atomic_load_n(&cpu->nmi_pending, __ATOMIC_SEQ_CST)) {
        if (!__atomic_load_n(&cpu->nmi_window, __ATOMIC_SEQ_CST))
            return; /* an NMI from here on opens its window itself */
        set_nmi_window(cpu, FALSE);
        if (!__atomic_load_n(&cpu->nmi_pending, __ATOMIC_SEQ_CST))
            return;
        /* An NMI came in between: its window may just have been closed. */
    }
    UINT64 activity = vmread(GUEST_ACTIVITY_STATE);
    if (activity == HV_ACTIVITY_WAIT_FOR_SIPI) { /* NMIs are blocked there (SDM 26.4.2) */
        __atomic_store_n(&cpu->nmi_pending, 0, __ATOMIC_SEQ_CST);
        set_nmi_window(cpu, FALSE);
        return;
    }
    /* SDM 28.3.1.5 "Checks on Guest Non-Register State": no NMI injection
     * under STI or MOV SS blocking, nor under (virtual-)NMI blocking. */
    if ((vmread(VM_ENTRY_INTR_INFO_FIELD) & INTR_INFO_VALID) ||
        (vmread(GUEST_INTERRUPTIBILITY_INFO) & (BLOCKING_BY_STI_MOV_SS | BLOCKING_BY_NMI))) {
        set_nmi_window(cpu, TRUE);
        return;
    }
    if (activity == HV_ACTIVITY_HLT || activity == HV_ACTIVITY_SHUTDOWN)
        vmwrite(GUEST_ACTIVITY_STATE, HV_ACTIVITY_ACTIVE); /* an NMI wakes a halted CPU */
    __atomic_store_n(&cpu->nmi_pending, 0, __ATOMIC_SEQ_CST);
    vmwrite(VM_ENTRY_INTR_INFO_FIELD, VECTOR_NMI | INTR_TYPE_NMI << 8 | INTR_INFO_VALID);
    /* Another may come while this one is delivered: the window after it. */
    set_nmi_window(cpu, FALSE);
    if (__atomic_load_n(&cpu->nmi_pending, __ATOMIC_SEQ_CST))
        set_nmi_window(cpu, TRUE);
}

#if HV_ACTION_NMI
/* An NMI in VMX non-root (NMI exiting). The exit leaves physical NMIs
 * blocked, as the delivery of an NMI does, until an IRET: one to itself
 * unblocks them, as KVM's host NMI handler does for the same exit. Exceptions
 * do not exit (the exception bitmap is 0). */
enum hv_exit_result hv_action_nmi(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)regs;
    UINT32 info = (UINT32)vmread(VM_EXIT_INTR_INFO);
    if (!(info & INTR_INFO_VALID) || INTR_INFO_TYPE(info) != INTR_TYPE_NMI) {
        hv_log_fatal("uefi-hv: cpu %u: exception exit, interruption information 0x%x\n", cpu->index, info);
        return HV_STOP;
    }
    hv_host_nmi(cpu);
    hv_iret_to_self();
    return HV_RESUME_SAME;
}

/* The guest can take an NMI now: hv_nmi_before_entry, at the exit's tail, injects it. */
enum hv_exit_result hv_action_nmi_window(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)cpu;
    (void)regs;
    return HV_RESUME_SAME;
}
#endif

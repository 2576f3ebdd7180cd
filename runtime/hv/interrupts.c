/* The seed's interrupt path (docs/interrupts.md). With "external-interrupt
 * exiting" and "acknowledge interrupt on exit" an interrupt that arrives while
 * the guest runs causes a VM exit, and the exit itself acknowledges the
 * interrupt controller: the vector is in VM_EXIT_INTR_INFO (SDM 29.2.2
 * "Information for VM Exits Due to Vectored Events") and the interrupt is this
 * CPU's to handle. As KVM's vmx_do_interrupt_irqoff() does, the hypervisor
 * calls the handler that its host IDT holds for the vector, with an interrupt
 * frame built by hand (interrupts.S). Every host gate from 32 up points at a
 * stub that queues the vector for the guest (unless the spec owns the vector:
 * `own`, then it ends in the hypervisor): a 256-bit pending bitmap per CPU,
 * drained at the tail of every exit, highest vector first, when the guest can
 * take an interrupt, and at the interrupt-window exit otherwise. */
#include "hv.h"
#include "cpu.h"
#include "exits.h"
#include "interrupts.h"
#if HV_ACTION_DISPATCH_IDT

/* One CPU's share: written only by that CPU, in VMX root with interrupts off. */
struct hv_irq_state {
    UINT64 pending[4]; /* bit v: vector v waits for the guest */
    UINT64 count[256]; /* external-interrupt exits by vector */
    BOOLEAN window;    /* interrupt-window exiting is set */
    BOOLEAN tpr_watch; /* CR8-load exiting is set: a vector waits for the TPR */
    BOOLEAN counting;  /* the host window is open: count what arrives */
};

static struct hv_irq_state *irq_state; /* [hv.cpu_count], EfiRuntimeServicesData */

extern UINT8 hv_irq_stubs[]; /* interrupts.S: vectors 32..255, 16 bytes apart */
void hv_irq_call_handler(UINT64 handler);
void hv_irq_arrived(UINT64 vector, const UINT64 *frame);

EFI_STATUS hv_irq_init(void)
{
    UINTN bytes = hv.cpu_count * sizeof(struct hv_irq_state);
    irq_state = hv_alloc_pages((bytes + HV_PAGE_SIZE - 1) / HV_PAGE_SIZE);
    return irq_state ? EFI_SUCCESS : EFI_OUT_OF_RESOURCES;
}

#if HV_OWNED_VECTORS
/* The spec's `own` vectors (spec.h): the hypervisor's. */
static const UINT64 owned[4] = HV_OWNED_VECTOR_MASKS;
extern void hv_irq_owned_stub(void); /* interrupts.S: calls hv_irq_owned() */
void hv_irq_owned(void);

#endif
UINT64 hv_irq_host_gate(UINT32 vector)
{
#if HV_OWNED_VECTORS
    if ((owned[vector >> 6] >> (vector & 63)) & 1)
        return (UINT64)hv_irq_owned_stub;
#endif
    return (UINT64)&hv_irq_stubs[(vector - 32) * 16];
}
#if HV_OWNED_VECTORS

/* A vector the hypervisor owns ends here: the exit counted it, the guest never
 * sees it, and the in-service bit the acknowledgement set is cleared with an
 * EOI to the local APIC (SDM 12.8.5 "Signaling Interrupt Servicing
 * Completion"), through its MSR in x2APIC mode (SDM 12.12.1 "Detecting and
 * Enabling x2APIC Mode"). Local-APIC interrupts only (IPIs, the APIC timer,
 * MSIs): an 8259 interrupt would want the PIC's EOI. */
void hv_irq_owned(void)
{
    UINT64 base = rdmsr(MSR_IA32_APIC_BASE);
    if (base & (1ULL << 10)) /* EXTD: x2APIC mode */
        wrmsr(MSR_IA32_X2APIC_EOI, 0);
    else
        *(volatile UINT32 *)((base & 0x000FFFFFFFFFF000ULL) + 0xB0) = 0;
}
#endif /* HV_OWNED_VECTORS */

/* --- the dispatch: the one place the host IDT is read ---------------------
 * The gate is found through the spec's global (HV_DISPATCH_IDT_BASE, hv.h:
 * host_idt_base in the default spec), captured once with
 * SIDT (hv_capture_globals) and also what HOST_IDTR_BASE was written from: the
 * seed (KVM 2342080cd675). An external interrupt is the hottest exit there is,
 * and a VMREAD of HOST_IDTR_BASE to find the same address would be paid on
 * every one of them. A 64-bit gate holds the handler's offset in bits 15:0,
 * 63:48 of its first quadword and 31:0 of its second (SDM 7.14.1 "64-Bit Mode IDT"). */
void hv_irq_exit(struct hv_cpu *cpu)
{
    UINT32 info = (UINT32)vmread(VM_EXIT_INTR_INFO);
    if (!(info & INTR_INFO_VALID)) {
        /* Not acknowledged on exit: the interrupt still waits in the
         * controller. Let the CPU deliver it through the host IDT, to the
         * same handlers, during a one-instruction window; the guest's
         * vectors are counted as they arrive (the hypervisor's are not: its
         * stub is not told the vector). The handler saves the
         * general-purpose registers, and no code of the hypervisor uses
         * another (-mgeneral-regs-only). */
        irq_state[cpu->index].counting = TRUE;
        __asm__ volatile("sti; nop; cli" ::: "memory", "cc");
        irq_state[cpu->index].counting = FALSE;
        return;
    }
    UINT32 vector = INTR_INFO_VECTOR(info);
    irq_state[cpu->index].count[vector]++;
    const UINT64 *gate = (const UINT64 *)(HV_DISPATCH_IDT_BASE + 16 * vector);
    UINT64 handler = (gate[0] & 0xFFFF) | ((gate[0] >> 48) & 0xFFFF) << 16 | (gate[1] & 0xFFFFFFFFULL) << 32;
    hv_irq_call_handler(handler);
}

/* The host handler of vectors 32..255 (interrupts.S): queue the vector for
 * this CPU's guest. The host runs with interrupts off, so it is reached only
 * from hv_irq_call_handler, on the host stack of the CPU that took the exit:
 * that stack says which CPU this is. */
void hv_irq_arrived(UINT64 vector, const UINT64 *frame)
{
    UINT64 rsp = (UINT64)frame;
    for (UINT32 i = 0; i < hv.cpu_count; i++) {
        struct hv_cpu *c = hv.cpus[i];
        if (c && rsp >= (UINT64)c->host_stack && rsp < (UINT64)c->host_stack + HV_HOST_STACK_SIZE) {
            irq_state[i].pending[vector >> 6] |= 1ULL << (vector & 63);
            if (irq_state[i].counting)
                irq_state[i].count[vector]++;
            return;
        }
    }
}

UINT64 hv_irq_count(const struct hv_cpu *cpu, UINT32 vector)
{
    return vector < 256 ? irq_state[cpu->index].count[vector] : 0;
}

/* VMCALL RAISE_VECTOR (docs/vmcall.md): the hypervisor's own notification to
 * the calling CPU's guest, as an external interrupt. It sets the bit an
 * acknowledged interrupt sets, so the rest is the same path: the tail of the
 * VMCALL's own exit injects it if the guest can take it, or turns on
 * interrupt-window exiting. It does not come through the local APIC: no IRR or
 * ISR bit, so the guest's handler must not EOI it (an EOI retires the highest
 * vector in service, SDM 12.8.5 "Signaling Interrupt Servicing Completion":
 * another interrupt's). Vectors 0..31 are exceptions; the spec's own vectors
 * never reach the guest. A vector that is raised again while it waits is
 * delivered once, as a second edge on a set IRR bit is: callers use a vector no
 * device uses. */
BOOLEAN hv_irq_raise(struct hv_cpu *cpu, UINT32 vector)
{
    if (vector < 32 || vector > 255)
        return FALSE;
#if HV_OWNED_VECTORS
    if ((owned[vector >> 6] >> (vector & 63)) & 1)
        return FALSE;
#endif
    irq_state[cpu->index].pending[vector >> 6] |= 1ULL << (vector & 63);
    return TRUE;
}

/* --- delivery to the guest ------------------------------------------------ */

/* A processor-based exiting control on or off; `*on_now` remembers which,
 * so that nothing is read or written when it does not change. */
static void set_exiting(BOOLEAN *on_now, UINT32 control, BOOLEAN on)
{
    if (*on_now == on)
        return;
    UINT64 proc = vmread(CPU_BASED_VM_EXEC_CONTROL);
    vmwrite(CPU_BASED_VM_EXEC_CONTROL, on ? proc | control : proc & ~(UINT64)control);
    *on_now = on;
}

static void set_window(struct hv_irq_state *s, BOOLEAN on)
{
    set_exiting(&s->window, HV_PROC_INTERRUPT_WINDOW_EXITING, on);
}

/* MOV to CR8 exits while a vector waits for the guest's TPR to drop. */
static void set_tpr_watch(struct hv_irq_state *s, BOOLEAN on)
{
    set_exiting(&s->tpr_watch, HV_PROC_CR8_LOAD_EXITING, on);
}

/* The highest pending vector: the highest priority (SDM 12.8.3.1 "Task and
 * Processor Priorities"). */
static INT32 highest_pending(const struct hv_irq_state *s)
{
    for (INT32 word = 3; word >= 0; word--)
        if (s->pending[word])
            return word * 64 + 63 - __builtin_clzll(s->pending[word]);
    return -1;
}

void hv_irq_before_entry(struct hv_cpu *cpu)
{
    struct hv_irq_state *s = &irq_state[cpu->index];
    INT32 vector = highest_pending(s);
    if (vector < 0) {
        set_window(s, FALSE);
        set_tpr_watch(s, FALSE);
        return;
    }
    /* A fixed interrupt is delivered only above the task priority (SDM
     * 12.8.3.1 "Task and Processor Priorities"): its priority class must
     * exceed TPR[7:4]. The TPR is the CPU's own (MOV to CR8 and TPR writes
     * reach the local APIC: nothing virtualises it), so CR8 read here is the
     * guest's. A vector acknowledged on exit waits while the guest's TPR is
     * as high, and MOV to CR8 exits until the TPR drops; a TPR lowered
     * through the APIC page or the x2APIC MSR does not exit, and the next
     * exit looks again. */
    if ((UINT64)vector >> 4 <= (read_cr8() & 0xF)) {
        set_window(s, FALSE);
        set_tpr_watch(s, TRUE);
        return;
    }
    set_tpr_watch(s, FALSE);
    /* The guest takes an external interrupt now only if nothing else is being
     * injected, RFLAGS.IF is set, no STI or MOV SS blocks it (SDM 26.4.2 "Guest
     * Non-Register State") and it is active or halted (a halted CPU wakes up). */
    UINT64 activity = vmread(GUEST_ACTIVITY_STATE);
    if ((vmread(VM_ENTRY_INTR_INFO_FIELD) & INTR_INFO_VALID) || !(vmread(GUEST_RFLAGS) & RFLAGS_IF) ||
        (vmread(GUEST_INTERRUPTIBILITY_INFO) & BLOCKING_BY_STI_MOV_SS) ||
        (activity != HV_ACTIVITY_ACTIVE && activity != HV_ACTIVITY_HLT)) {
        set_window(s, TRUE); /* exits as soon as it can */
        return;
    }
    if (activity == HV_ACTIVITY_HLT)
        vmwrite(GUEST_ACTIVITY_STATE, HV_ACTIVITY_ACTIVE);
    s->pending[vector >> 6] &= ~(1ULL << (vector & 63));
    vmwrite(VM_ENTRY_INTR_INFO_FIELD, (UINT32)vector | INTR_TYPE_EXTERNAL << 8 | INTR_INFO_VALID);
    /* More waiting: the window opens again once this one is delivered. */
    set_window(s, highest_pending(s) >= 0);
}

void hv_irq_window_exit(struct hv_cpu *cpu)
{
    (void)cpu; /* hv_irq_before_entry, at the exit's tail, injects */
}
#else  /* !HV_ACTION_DISPATCH_IDT */

/* External interrupts stay with the firmware in this spec (no
 * `exit external_interrupt -> dispatch_idt`): the host IDT's vectors from 32
 * keep the "unexpected interrupt" stub and there is nothing to count. */
extern void hv_host_interrupt_stub(void);

EFI_STATUS hv_irq_init(void)
{
    return EFI_SUCCESS;
}
UINT64 hv_irq_host_gate(UINT32 vector)
{
    (void)vector;
    return (UINT64)hv_host_interrupt_stub;
}
void hv_irq_exit(struct hv_cpu *cpu)
{
    (void)cpu;
}
void hv_irq_before_entry(struct hv_cpu *cpu)
{
    (void)cpu;
}
UINT64 hv_irq_count(const struct hv_cpu *cpu, UINT32 vector)
{
    (void)cpu;
    (void)vector;
    return 0;
}

/* An interrupt-window exit without queued interrupts: nothing to inject. */
void hv_irq_window_exit(struct hv_cpu *cpu)
{
    (void)cpu;
    vmwrite(CPU_BASED_VM_EXEC_CONTROL,
            vmread(CPU_BASED_VM_EXEC_CONTROL) & ~(UINT64)HV_PROC_INTERRUPT_WINDOW_EXITING);
}
#endif /* HV_ACTION_DISPATCH_IDT */

/*
 * hvcheck's interrupt checks (docs/interrupts.md), for specs with the seed's
 * interrupt path (`exit external_interrupt -> dispatch_idt`): the firmware's
 * timer keeps its rate while every interrupt exits, the hypervisor counts the
 * exits on the timer's vector, self-IPIs on every CPU arrive exactly once,
 * a vector raised with VMCALL RAISE_VECTOR waits for the interrupt window
 * when interrupts are off, and the cost of an interrupt round trip next to a
 * CPUID exit, in TSC ticks.
 */
#include "hvcheck.h"
#include "mp_services.h"

#if HV_ACTION_DISPATCH_IDT

#define OWNED_COUNT  8
#define IPI_COUNT    32
#define CPUID_COUNT  32
#define APIC_EOI     0xB0
#define APIC_ICR_LOW 0x300

/* The guest's handler of the self-IPI: the TSC at entry, a count, the EOI
 * (a store to the local APIC: the hypervisor emulates it), IRETQ. */
volatile UINT64 hvcheck_ipi_tsc, hvcheck_ipi_seen, hvcheck_apic_eoi;
void hvcheck_ipi_handler(void);
__asm__("    .text\n"
        "    .globl hvcheck_ipi_handler\n"
        "hvcheck_ipi_handler:\n"
        "    push %rax\n"
        "    push %rdx\n"
        "    rdtsc\n"
        "    shl $32, %rdx\n"
        "    or %rdx, %rax\n"
        "    mov %rax, hvcheck_ipi_tsc(%rip)\n"
        "    lock incq hvcheck_ipi_seen(%rip)\n"
        "    mov hvcheck_apic_eoi(%rip), %rax\n"
        "    movl $0, (%rax)\n"
        "    pop %rdx\n"
        "    pop %rax\n"
        "    iretq\n");

/* The guest's handler of the vector hvcheck raises with VMCALL RAISE_VECTOR: a
 * count, IRETQ, and no EOI. The hypervisor injects that vector itself; it never
 * went through the local APIC, which has no in-service bit for it. An EOI
 * retires the highest vector in service (SDM 12.8.5 "Signaling Interrupt
 * Servicing Completion"), so here it would retire another interrupt's -- the
 * one whose handler was interrupted, or one that is still being handled -- and
 * open the APIC to interrupts of its priority class before that handler's own
 * EOI. */
volatile UINT64 hvcheck_raised_seen;
void hvcheck_raised_handler(void);
__asm__("    .text\n"
        "    .globl hvcheck_raised_handler\n"
        "hvcheck_raised_handler:\n"
        "    lock incq hvcheck_raised_seen(%rip)\n"
        "    iretq\n");

/* One CPU's self-IPI figures (APs cannot Print: the BSP prints them). */
struct ipi_result {
    BOOLEAN ran;
    UINT64 sent, seen, exits; /* exits: GET_IRQ_COUNT on IPI_VECTOR grew by */
    UINT64 ipi_min, ipi_sum, cpuid_min, cpuid_sum;
    UINT64 owned_sent, owned_seen, owned_exits; /* the same for an owned vector */
    BOOLEAN held;                               /* with IF clear, the IPI waited */
    UINT64 window_seen, window_exits;           /* after STI: handled, interrupt-window exits */
    /* VMCALL RAISE_VECTOR with interrupts off: its status, handled before
     * STI, interrupt-window exits before STI, handled right after STI; NOP,
     * handled in all, interrupt-window exits from STI on. */
    UINT64 raise_status, raise_early, raise_early_exits, raise_on_time, raise_seen, raise_exits;
    /* ... with interrupts on: handled when the VMCALL returned, in all,
     * interrupt-window exits. */
    UINT64 direct_status, direct_on_return, direct_seen, direct_exits;
    /* ... with interrupts on and the TPR at its priority class: handled
     * before the TPR dropped, right after the MOV to CR8 that dropped it. */
    UINT64 tpr_early, tpr_on_time;
    BOOLEAN refused; /* vectors < 32, > 255, owned: bad argument */
};
static struct ipi_result *ipi_results; /* one per CPU, from the pool */

static UINT64 rdtsc(void)
{
    UINT32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (UINT64)hi << 32 | lo;
}

static UINT64 irq_count(UINT64 vector, UINT64 cpu)
{
    UINT64 out[4];
    hvcheck_vmcall(VMCALL_GET_IRQ_COUNT, vector, cpu, out);
    return out[0] == 0 ? out[1] : 0;
}

/* N self-IPIs (fixed, shorthand "self", SDM 12.6.1 "Interrupt Command Register
 * (ICR)"), each timed from the ICR write to the handler's first instruction,
 * then N CPUIDs for comparison. Interrupts on (the guest must be able to take
 * it), each CPU by itself. */
static void self_ipis(struct ipi_result *r)
{
    UINT32 lo, hi, eax, ebx, ecx, edx;
    UINT64 flags;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1B)); /* IA32_APIC_BASE */
    volatile UINT32 *apic = (volatile UINT32 *)(((UINT64)hi << 32 | lo) & 0x000FFFFFFFFFF000ULL);
    hvcheck_apic_eoi = (UINT64)&apic[APIC_EOI / 4];
    /* This CPU's IDT (OVMF's APs may have their own) gets the handler. */
    struct idt_gate saved = hvcheck_set_gate(IPI_VECTOR, hvcheck_ipi_handler);
    r->ipi_min = r->cpuid_min = ~0ULL;
    __asm__ volatile("pushfq; popq %0; sti" : "=r"(flags)::"memory");
#if HV_OWNED_VECTORS
    /* A vector the hypervisor owns: counted, never delivered here (the
     * handler is in this IDT too, to see it if it were). Its EOI is the
     * hypervisor's: without it the guest's IPIs below, of the same or a lower
     * priority class, would never come. */
    struct idt_gate owned_saved = hvcheck_set_gate(OWNED_VECTOR, hvcheck_ipi_handler);
    UINT64 owned_before = irq_count(OWNED_VECTOR, ~0ULL);
    for (UINT32 i = 0; i < OWNED_COUNT; i++) {
        apic[APIC_ICR_LOW / 4] = OWNED_VECTOR | 1U << 14 | 1U << 18; /* assert, self */
        r->owned_sent++;
    }
    for (UINT32 i = 0; i < 1000; i++)
        __asm__ volatile("pause" ::: "memory");
    r->owned_exits = irq_count(OWNED_VECTOR, ~0ULL) - owned_before;
    r->owned_seen = hvcheck_ipi_seen;
    hvcheck_ipi_seen = 0;
    hvcheck_restore_gate(OWNED_VECTOR, owned_saved);
#endif
    UINT64 before = irq_count(IPI_VECTOR, ~0ULL);
    for (UINT32 i = 0; i < IPI_COUNT; i++) {
        UINT64 seen = hvcheck_ipi_seen, t0 = rdtsc(), spins = 0;
        apic[APIC_ICR_LOW / 4] = IPI_VECTOR | 1U << 14 | 1U << 18; /* assert, self */
        r->sent++;
        while (hvcheck_ipi_seen == seen && ++spins < 10000000)
            __asm__ volatile("pause" ::: "memory");
        if (hvcheck_ipi_seen == seen)
            break;
        UINT64 t = hvcheck_ipi_tsc - t0;
        r->ipi_sum += t;
        r->ipi_min = t < r->ipi_min ? t : r->ipi_min;
    }
    for (UINT32 i = 0; i < CPUID_COUNT; i++) {
        UINT64 t0 = rdtsc();
        __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0), "c"(0));
        UINT64 t = rdtsc() - t0;
        r->cpuid_sum += t;
        r->cpuid_min = t < r->cpuid_min ? t : r->cpuid_min;
    }
    /* Let a last IPI, if one is late, arrive before the count is read. */
    for (UINT32 i = 0; i < 1000; i++)
        __asm__ volatile("pause" ::: "memory");
    r->exits = irq_count(IPI_VECTOR, ~0ULL) - before;

    /* One more with interrupts off: it must not reach the guest before STI (and
     * the STI shadow, SDM 26.4.2 "Guest Non-Register State"), then arrive once.
     * On a CPU it exits at once (external-interrupt exiting ignores IF, SDM
     * 27.2 "Other Causes of VM Exits"), is queued and injected at the
     * interrupt-window exit; Bochs 2.7 holds the exit itself back until IF is
     * set, so there the window count stays 0. */
    UINT64 window_before = 0, out[4], seen = hvcheck_ipi_seen, spins = 0;
    __asm__ volatile("cli" ::: "memory");
    hvcheck_vmcall(VMCALL_GET_EXIT_COUNT, EXIT_INTERRUPT_WINDOW, ~0ULL, out);
    window_before = out[1];
    apic[APIC_ICR_LOW / 4] = IPI_VECTOR | 1U << 14 | 1U << 18;
    for (UINT32 i = 0; i < 1000; i++)
        __asm__ volatile("pause" ::: "memory");
    r->held = hvcheck_ipi_seen == seen;
    __asm__ volatile("sti; nop" ::: "memory");
    while (hvcheck_ipi_seen == seen && ++spins < 10000000)
        __asm__ volatile("pause" ::: "memory");
    for (UINT32 i = 0; i < 1000; i++)
        __asm__ volatile("pause" ::: "memory");
    r->window_seen = hvcheck_ipi_seen - seen;
    hvcheck_vmcall(VMCALL_GET_EXIT_COUNT, EXIT_INTERRUPT_WINDOW, ~0ULL, out);
    r->window_exits = out[1] - window_before;

    __asm__ volatile("pushq %0; popfq" ::"r"(flags) : "memory", "cc");
    hvcheck_restore_gate(IPI_VECTOR, saved);
    r->ran = TRUE;
}

static UINT64 window_exits(void)
{
    UINT64 out[4];
    hvcheck_vmcall(VMCALL_GET_EXIT_COUNT, EXIT_INTERRUPT_WINDOW, ~0ULL, out);
    return out[1];
}

/* VMCALL RAISE_VECTOR: the hypervisor delivers a vector through the queue
 * acknowledged interrupts take. With interrupts off it cannot inject it: the
 * VMCALL's exit queues it and turns interrupt-window exiting on. It must not
 * arrive before STI and the instruction after it (the STI shadow, SDM 26.4.2);
 * then the interrupt-window exit (SDM 28.7.5 "Interrupt-Window Exiting and
 * Virtual-Interrupt Delivery") injects it, once. This is the queue-then-window
 * path that an IPI sent with interrupts off does not take in Bochs 2.7 (it
 * holds the external-interrupt exit back until IF is set): here the vector is
 * queued while IF is clear, on every CPU. With interrupts on, the tail of the
 * VMCALL's own exit injects it: the handler has run when the VMCALL returns,
 * with no interrupt window. */
static void raised_vector(struct ipi_result *r)
{
    UINT64 flags, out[4], before;
    struct idt_gate saved = hvcheck_set_gate(RAISE_VECTOR, hvcheck_raised_handler);
    __asm__ volatile("pushfq; popq %0; cli" : "=r"(flags)::"memory");

    hvcheck_raised_seen = 0;
    before = window_exits();
    hvcheck_vmcall(VMCALL_RAISE_VECTOR, RAISE_VECTOR, 0, out);
    r->raise_status = out[0];
    for (UINT32 i = 0; i < 1000; i++)
        __asm__ volatile("pause" ::: "memory");
    r->raise_early = hvcheck_raised_seen;
    UINT64 held = window_exits(); /* read with interrupts off */
    r->raise_early_exits = held - before;
    __asm__ volatile("sti; nop" ::: "memory");
    r->raise_on_time = hvcheck_raised_seen;
    for (UINT32 i = 0; i < 1000; i++)
        __asm__ volatile("pause" ::: "memory");
    r->raise_seen = hvcheck_raised_seen;
    r->raise_exits = window_exits() - held;

    hvcheck_raised_seen = 0;
    before = window_exits();
    hvcheck_vmcall(VMCALL_RAISE_VECTOR, RAISE_VECTOR, 0, out);
    r->direct_on_return = hvcheck_raised_seen;
    r->direct_status = out[0];
    for (UINT32 i = 0; i < 1000; i++)
        __asm__ volatile("pause" ::: "memory");
    r->direct_seen = hvcheck_raised_seen;
    r->direct_exits = window_exits() - before;

    /* The TPR: a fixed interrupt is delivered only when its priority class
     * is above TPR[7:4] (SDM 12.8.3.1 "Task and Processor Priorities"). With
     * the TPR at the raised vector's class it waits, interrupts on; the MOV
     * to CR8 that lowers the TPR exits and the vector arrives right after it. */
    UINT64 cr8;
    __asm__ volatile("mov %%cr8, %0" : "=r"(cr8));
    hvcheck_raised_seen = 0;
    __asm__ volatile("mov %0, %%cr8; sti" ::"r"((UINT64)RAISE_VECTOR >> 4) : "memory");
    hvcheck_vmcall(VMCALL_RAISE_VECTOR, RAISE_VECTOR, 0, out);
    for (UINT32 i = 0; i < 1000; i++)
        __asm__ volatile("pause" ::: "memory");
    r->tpr_early = hvcheck_raised_seen;
    __asm__ volatile("mov %0, %%cr8" ::"r"(0ULL) : "memory");
    r->tpr_on_time = hvcheck_raised_seen;
    __asm__ volatile("cli; mov %0, %%cr8" ::"r"(cr8) : "memory");

    /* Exceptions, vectors that do not exist and the spec's own: refused, and
     * nothing delivered. */
    static const UINT64 refused[] = {
        0,
        31,
        256,
        0x100000000ULL + RAISE_VECTOR,
#if HV_OWNED_VECTORS
        OWNED_VECTOR,
#endif
    };
    r->refused = TRUE;
    for (UINT32 i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        hvcheck_vmcall(VMCALL_RAISE_VECTOR, refused[i], 0, out);
        r->refused &= out[0] == VMCALL_BAD_ARGUMENT;
    }
    r->refused &= hvcheck_raised_seen == r->tpr_on_time; /* nothing more arrived */

    __asm__ volatile("pushq %0; popfq" ::"r"(flags) : "memory", "cc");
    hvcheck_restore_gate(RAISE_VECTOR, saved);
}

static VOID EFIAPI ap_self_ipis(VOID *arg)
{
    hvcheck_ipi_seen = 0;
    self_ipis(&ipi_results[(UINTN)arg]);
    raised_vector(&ipi_results[(UINTN)arg]);
}

static volatile UINT64 ticks;
static VOID EFIAPI on_tick(EFI_EVENT event, VOID *context)
{
    (void)event;
    (void)context;
    ticks++;
}

static void line(UINTN cpu, const char *name, BOOLEAN ok, UINT32 *passed, UINT32 *total)
{
    Print(L"hvcheck: cpu %d: %a: %a", cpu, name, ok ? "ok" : "FAIL");
    *passed += ok;
    *total += 1;
}

/* The same for a check whose name shows a vector: BEFORE 0xNN AFTER. */
static void vector_line(UINTN cpu, const char *before, UINT32 vector, const char *after, BOOLEAN ok,
                        UINT32 *passed, UINT32 *total)
{
    Print(L"hvcheck: cpu %d: %a0x%x%a: %a", cpu, before, vector, after, ok ? "ok" : "FAIL");
    *passed += ok;
    *total += 1;
}

static EFI_GUID mp_guid = MP_SERVICES_GUID;

void hvcheck_irq_checks(UINTN bsp, UINTN count, UINT32 *passed, UINT32 *total)
{
    /* The firmware's timer, every tick of which is an external-interrupt exit
     * under the hypervisor: a 10 ms periodic event fires about 20 times while a 200 ms
     * one-shot timer runs (10..40: the firmware's granularity is its 10 ms
     * tick). The window is timed by the firmware's timer, not by Stall: in
     * Bochs OVMF's Stall(200 ms) lasts a twentieth of that (also without the
     * hypervisor; docs/interrupts.md), so the TSC length of both is shown. */
    static UINT64 before[256];
    EFI_EVENT timer, deadline;
    UINT64 window_tsc = 0, stall_tsc = rdtsc();
    uefi_call_wrapper(BS->Stall, 1, 200000);
    stall_tsc = rdtsc() - stall_tsc;
    for (UINT32 v = 32; v < 256; v++)
        before[v] = irq_count(v, ~0ULL);
    ticks = 0;
    EFI_STATUS s = uefi_call_wrapper(BS->CreateEvent, 5, EVT_TIMER | EVT_NOTIFY_SIGNAL, TPL_CALLBACK, on_tick,
                                     NULL, &timer);
    if (!EFI_ERROR(s)) {
        s = uefi_call_wrapper(BS->CreateEvent, 5, EVT_TIMER, 0, NULL, NULL, &deadline);
        if (!EFI_ERROR(s)) {
            uefi_call_wrapper(BS->SetTimer, 3, timer, TimerPeriodic, 100000);     /* 10 ms */
            uefi_call_wrapper(BS->SetTimer, 3, deadline, TimerRelative, 2000000); /* 200 ms */
            window_tsc = rdtsc();
            while (uefi_call_wrapper(BS->CheckEvent, 1, deadline) == EFI_NOT_READY)
                uefi_call_wrapper(BS->Stall, 1, 100);
            window_tsc = rdtsc() - window_tsc;
            uefi_call_wrapper(BS->SetTimer, 3, timer, TimerCancel, 0);
            uefi_call_wrapper(BS->CloseEvent, 1, deadline);
        }
        uefi_call_wrapper(BS->CloseEvent, 1, timer);
    }
    UINT64 fired = ticks, timer_vector = 0, most = 0;
    for (UINT32 v = 32; v < 256; v++) {
        UINT64 grew = irq_count(v, ~0ULL) - before[v];
        if (grew > most) {
            most = grew;
            timer_vector = v;
        }
    }
    line(bsp, "timer event rate (10 ms period over a 200 ms timer, 10..40)",
         !EFI_ERROR(s) && fired >= 10 && fired <= 40, passed, total);
    Print(L" (fired %ld times; 200 ms timer %ld TSC, Stall(200 ms) %ld TSC)\n", fired, window_tsc, stall_tsc);
    /* Each event needs a tick: at least as many exits on the timer's vector. */
    line(bsp, "external-interrupt exits on the timer's vector", most >= fired && fired > 0, passed, total);
    Print(L" (vector 0x%lx: %ld exits in the 200 ms, %ld timer events)\n", timer_vector, most, fired);
    s = uefi_call_wrapper(ST->ConOut->OutputString, 2, ST->ConOut, L"hvcheck: the console still works\r\n");
    line(bsp, "console after the timer check", !EFI_ERROR(s), passed, total);
    Print(L"\n");

    /* Self-IPIs: every one delivered exactly once, on every CPU. */
    ipi_results = AllocateZeroPool(count * sizeof *ipi_results);
    if (!ipi_results) {
        line(bsp, "memory for the self-IPI results of every CPU", FALSE, passed, total);
        Print(L"\n");
        return;
    }
    MP *mp = NULL;
    if (count > 1 && EFI_ERROR(uefi_call_wrapper(BS->LocateProtocol, 3, &mp_guid, NULL, (VOID **)&mp)))
        mp = NULL;
    for (UINTN i = 0; ipi_results && i < count; i++) {
        hvcheck_ipi_seen = 0;
        if (i == bsp) {
            self_ipis(&ipi_results[i]);
            raised_vector(&ipi_results[i]);
        } else if (mp)
            uefi_call_wrapper(mp->StartupThisAP, 7, mp, ap_self_ipis, i, NULL, 0, (VOID *)i, NULL);
        struct ipi_result *r = &ipi_results[i];
        r->seen = hvcheck_ipi_seen - r->window_seen;
        line(i, "self-IPIs delivered exactly once (sent = handled = exits counted)",
             r->ran && r->sent == IPI_COUNT && r->seen == r->sent && r->exits == r->sent, passed, total);
        Print(L" (sent %ld, handled %ld, exits on 0x%x %ld)\n", r->sent, r->seen, IPI_VECTOR, r->exits);
        line(i, "an IPI with interrupts off waits for STI, then arrives once (interrupt window)",
             r->ran && r->held && r->window_seen == 1, passed, total);
        Print(L" (waited %a, handled %ld after STI, interrupt-window exits %ld)\n", r->held ? "yes" : "no",
              r->window_seen, r->window_exits);
        vector_line(i, "raised vector ", RAISE_VECTOR,
                    " waits for STI, arrives once through the interrupt window",
                    r->ran && r->raise_status == 0 && r->raise_early == 0 && r->raise_early_exits == 0 &&
                        r->raise_on_time == 1 && r->raise_seen == 1 && r->raise_exits == 1,
                    passed, total);
        Print(
            L" (status 0x%lx; handled %ld and interrupt-window exits %ld before STI; handled %ld right after"
            L" STI; NOP, %ld in all; interrupt-window exits %ld)\n",
            r->raise_status, r->raise_early, r->raise_early_exits, r->raise_on_time, r->raise_seen,
            r->raise_exits);
        vector_line(i, "raised vector ", RAISE_VECTOR,
                    " with interrupts on arrives as the VMCALL returns, no interrupt window",
                    r->ran && r->direct_status == 0 && r->direct_on_return == 1 && r->direct_seen == 1 &&
                        r->direct_exits == 0,
                    passed, total);
        Print(L" (status 0x%lx; handled %ld when it returned, %ld in all; interrupt-window exits %ld)\n",
              r->direct_status, r->direct_on_return, r->direct_seen, r->direct_exits);
        vector_line(i, "raised vector ", RAISE_VECTOR,
                    " waits while the TPR is at its priority class, arrives as MOV to CR8 lowers it",
                    r->ran && r->tpr_early == 0 && r->tpr_on_time == 1, passed, total);
        Print(L" (handled %ld before, %ld right after the TPR dropped)\n", r->tpr_early, r->tpr_on_time);
        line(i,
             HV_OWNED_VECTORS
                 ? "RAISE_VECTOR refuses exceptions, vectors past 255 and the hypervisor's own (bad argument)"
                 : "RAISE_VECTOR refuses exceptions, vectors past 255 (bad argument)",
             r->ran && r->refused, passed, total);
        Print(L"\n");
#if HV_OWNED_VECTORS
        line(i, "self-IPIs on the hypervisor's vector stay in the hypervisor (exits counted, none handled)",
             r->ran && r->owned_sent == OWNED_COUNT && r->owned_exits == OWNED_COUNT && r->owned_seen == 0,
             passed, total);
        Print(L" (sent %ld, handled %ld, exits on 0x%x %ld)\n", r->owned_sent, r->owned_seen, OWNED_VECTOR,
              r->owned_exits);
#endif
    }
    for (UINTN i = 0; ipi_results && i < count; i++) {
        struct ipi_result *r = &ipi_results[i];
        if (r->ran && r->seen == IPI_COUNT)
            Print(L"hvcheck: bench: cpu %d: self-IPI to handler %ld TSC (min %ld), CPUID exit %ld TSC (min "
                  L"%ld), over %d each\n",
                  i, r->ipi_sum / IPI_COUNT, r->ipi_min, r->cpuid_sum / CPUID_COUNT, r->cpuid_min, IPI_COUNT);
    }
}

/* The summary: per CPU, the vectors whose external-interrupt exit count is
 * not zero, as GET_IRQ_COUNT reports them. */
void hvcheck_irq_summary(UINTN count)
{
    for (UINTN i = 0; ipi_results && i < count; i++) {
        UINT64 out[4];
        UINTN shown = 0;
        Print(L"hvcheck: cpu %d external-interrupt exits by vector:", i);
        for (UINT32 v = 0; v < 256; v++) {
            hvcheck_vmcall(VMCALL_GET_IRQ_COUNT, v, i, out);
            if (out[0] == 0 && out[1]) {
                Print(L" 0x%x=%ld", v, out[1]);
                shown++;
            }
        }
        Print(shown ? L"\n" : L" none\n");
    }
}
#else  /* !HV_ACTION_DISPATCH_IDT */

/* This spec leaves external interrupts with the firmware: no queue, so the
 * hypervisor has no way to raise a vector either (docs/vmcall.md). */
void hvcheck_irq_checks(UINTN bsp, UINTN count, UINT32 *passed, UINT32 *total)
{
    UINT64 out[4];
    (void)count;
    hvcheck_vmcall(VMCALL_RAISE_VECTOR, RAISE_VECTOR, 0, out);
    BOOLEAN ok = out[0] == VMCALL_UNKNOWN;
    Print(L"hvcheck: cpu %d: RAISE_VECTOR is an unknown function without the interrupt path: %a (status "
          L"0x%lx)\n",
          bsp, ok ? "ok" : "FAIL", out[0]);
    *passed += ok;
    *total += 1;
}

void hvcheck_irq_summary(UINTN count)
{
    (void)count;
}
#endif /* HV_ACTION_DISPATCH_IDT */

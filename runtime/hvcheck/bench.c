/*
 * hvcheck's figures for the benchmark (`uefi-hv bench`, docs/benchmarks.md):
 * what each kind of VM exit costs the guest, and how many exits a workload
 * takes. All on COM1 as `hvcheck: bench: ...` lines, whatever the spec.
 *
 *  - Round trips: the TSC around one CPUID, VMCALL PING, RDMSR of
 *    IA32_FEATURE_CONTROL and XSETBV of XCR0's own value, each 64 times with
 *    interrupts off, under the hypervisor and again bare after DEVIRTUALIZE
 *    (no VMCALL there: it would be #UD). In Bochs with `clock: sync=none`
 *    the TSC follows the instruction count, so the difference is the exit
 *    path's length in instructions.
 *  - Exits by reason, per CPU: of the firmware boot (from VMLAUNCH until
 *    hvcheck starts), and while every CPU is idle for 200 ms of the
 *    firmware's timer (the BSP waits in WaitForEvent, which halts; the APs
 *    wait in the firmware's MP loop).
 *
 * The counters are the hypervisor's (VMCALL GET_EXIT_COUNT), read from the
 * BSP: reading them is itself one VMCALL exit each on the BSP, which is
 * taken off its figures.
 */
#include "hvcheck.h"

#define ROUNDS 64

static UINTN cpus, bsp_index;

/* Where exit reason `number` is in hvcheck_exit_reasons (and in the counts
 * read below), or HVCHECK_EXIT_REASON_COUNT. */
static UINTN reason_index(UINT32 number)
{
    for (UINTN k = 0; k < HVCHECK_EXIT_REASON_COUNT; k++)
        if (hvcheck_exit_reasons[k].number == number)
            return k;
    return HVCHECK_EXIT_REASON_COUNT;
}

static void read_counts(UINTN cpu, UINT64 *counts)
{
    UINT64 out[4];
    for (UINTN k = 0; k < HVCHECK_EXIT_REASON_COUNT; k++) {
        hvcheck_vmcall(VMCALL_GET_EXIT_COUNT, hvcheck_exit_reasons[k].number, cpu, out);
        counts[k] = out[0] == 0 ? out[1] : 0;
    }
}

/* `later` - `earlier` for one CPU, by reason, as `name=count` pairs. */
static void print_exits(UINTN cpu, const char *what, const UINT64 *earlier, const UINT64 *later)
{
    UINT64 total = 0;
    Print(L"hvcheck: bench: cpu %d: exits %a:", cpu, what);
    for (UINTN k = 0; k < HVCHECK_EXIT_REASON_COUNT; k++) {
        UINT64 n = later[k] - earlier[k];
        if (n)
            Print(L" %a=%ld", hvcheck_exit_reasons[k].name, n);
        total += n;
    }
    Print(total ? L" (total %ld)\n" : L" none (total %ld)\n", total);
}

/* Every CPU's counters, APs first and the BSP last (`bsp_last`) or first:
 * between a "before" read with the BSP last and an "after" read with the
 * BSP first lie exactly HVCHECK_EXIT_REASON_COUNT of the BSP's own VMCALLs
 * between its two reads of the VMCALL counter. */
static void read_all(UINT64 *counts, BOOLEAN bsp_last)
{
    if (!bsp_last)
        read_counts(bsp_index, counts + bsp_index * HVCHECK_EXIT_REASON_COUNT);
    for (UINTN i = 0; i < cpus; i++)
        if (i != bsp_index)
            read_counts(i, counts + i * HVCHECK_EXIT_REASON_COUNT);
    if (bsp_last)
        read_counts(bsp_index, counts + bsp_index * HVCHECK_EXIT_REASON_COUNT);
}

/* At the start, right after hypervisor_present()'s two CPUIDs. */
void hvcheck_bench_start(UINTN bsp, UINTN count)
{
    bsp_index = bsp;
    cpus = count;
    UINT64 *boot_counts = AllocateZeroPool(count * HVCHECK_EXIT_REASON_COUNT * sizeof(UINT64));
    if (!boot_counts)
        return;
    read_all(boot_counts, TRUE);
    UINT64 *own = boot_counts + bsp * HVCHECK_EXIT_REASON_COUNT;
    UINTN c = reason_index(EXIT_CPUID), v = reason_index(EXIT_VMCALL);
    if (c < HVCHECK_EXIT_REASON_COUNT)
        own[c] -= 2; /* hypervisor_present() */
    if (v < HVCHECK_EXIT_REASON_COUNT)
        own[v] -= v + 1; /* this read, up to the VMCALL counter */
    UINT64 zero[HVCHECK_EXIT_REASON_COUNT] = { 0 };
    for (UINTN i = 0; i < count; i++)
        print_exits(i, "of the firmware boot", zero, boot_counts + i * HVCHECK_EXIT_REASON_COUNT);
    FreePool(boot_counts);
}

/* Every CPU idle for 200 ms of the firmware's timer. */
void hvcheck_bench_idle(void)
{
    UINTN size = cpus * HVCHECK_EXIT_REASON_COUNT * sizeof(UINT64);
    UINT64 *before = AllocateZeroPool(size), *after = AllocateZeroPool(size);
    EFI_EVENT timer;
    UINTN which;
    if (!before || !after ||
        EFI_ERROR(uefi_call_wrapper(BS->CreateEvent, 5, EVT_TIMER, 0, NULL, NULL, &timer))) {
        Print(L"hvcheck: bench: no memory or timer for the idle figures\n");
        return;
    }
    read_all(before, TRUE);
    uefi_call_wrapper(BS->SetTimer, 3, timer, TimerRelative, 2000000); /* 100-ns units */
    uefi_call_wrapper(BS->WaitForEvent, 3, 1, &timer, &which);
    read_all(after, FALSE);
    uefi_call_wrapper(BS->CloseEvent, 1, timer);
    UINTN v = reason_index(EXIT_VMCALL);
    if (v < HVCHECK_EXIT_REASON_COUNT)
        after[bsp_index * HVCHECK_EXIT_REASON_COUNT + v] -= HVCHECK_EXIT_REASON_COUNT;
    for (UINTN i = 0; i < cpus; i++)
        print_exits(i, "while idle for 200 ms", before + i * HVCHECK_EXIT_REASON_COUNT,
                    after + i * HVCHECK_EXIT_REASON_COUNT);
    FreePool(before);
    FreePool(after);
}

static inline UINT64 tsc(void)
{
    UINT32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)::"memory");
    return (UINT64)hi << 32 | lo;
}

enum trip { TRIP_CPUID, TRIP_VMCALL, TRIP_RDMSR, TRIP_XSETBV, TRIP_COUNT };
static const char *const trip_names[TRIP_COUNT] = { "CPUID", "VMCALL", "RDMSR", "XSETBV" };

/* One round trip of `trip`, in TSC ticks. */
static UINT64 once(enum trip trip, UINT32 xcr0_lo, UINT32 xcr0_hi)
{
    UINT64 t0 = tsc(), a = 0, b = 0, c = 0, d = 0;
    switch (trip) {
    case TRIP_CPUID:
        __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
        break;
    case TRIP_VMCALL:
        a = VMCALL_PING;
        if (hvcheck_amd)
            __asm__ volatile("vmmcall" : "+a"(a), "+b"(b), "+c"(c), "+d"(d)::"memory");
        else
            __asm__ volatile("vmcall" : "+a"(a), "+b"(b), "+c"(c), "+d"(d)::"memory");
        break;
    case TRIP_RDMSR:
        /* An MSR the hypervisor answers: IA32_FEATURE_CONTROL on Intel, EFER (SVME hidden) on AMD. */
        __asm__ volatile("rdmsr"
                         : "=a"(a), "=d"(d)
                         : "c"(hvcheck_amd ? MSR_IA32_EFER : MSR_IA32_FEATURE_CONTROL));
        break;
    case TRIP_XSETBV:
        __asm__ volatile("xsetbv" ::"a"(xcr0_lo), "d"(xcr0_hi), "c"(0));
        break;
    default:
        break;
    }
    return tsc() - t0;
}

/* The round trips on this CPU (`bare`: after DEVIRTUALIZE, no VMCALL). */
void hvcheck_bench_round_trips(UINTN cpu, BOOLEAN bare)
{
    UINT64 flags, cr4, mean[TRIP_COUNT] = { 0 }, min[TRIP_COUNT];
    UINT32 r[4], lo = 0, hi = 0;
    __asm__ volatile("pushfq; popq %0; cli" : "=r"(flags)::"memory");
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(1), "c"(0));
    BOOLEAN xsave = (r[2] & (1U << 26)) != 0, measured[TRIP_COUNT];
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    if (xsave) {
        __asm__ volatile("mov %0, %%cr4" ::"r"(cr4 | CR4_OSXSAVE) : "memory");
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    }
    for (enum trip t = 0; t < TRIP_COUNT; t++) {
        measured[t] = !((t == TRIP_VMCALL && bare) || (t == TRIP_XSETBV && !xsave));
        if (!measured[t])
            continue;
        once(t, lo, hi); /* warm: the first of a kind may miss a cache or a TLB */
        min[t] = ~0ULL;
        for (UINTN i = 0; i < ROUNDS; i++) {
            UINT64 n = once(t, lo, hi);
            mean[t] += n;
            min[t] = n < min[t] ? n : min[t];
        }
        mean[t] /= ROUNDS;
    }
    __asm__ volatile("mov %0, %%cr4" ::"r"(cr4) : "memory");
    __asm__ volatile("pushq %0; popfq" ::"r"(flags) : "memory", "cc");

    Print(L"hvcheck: bench: cpu %d: round trips in TSC ticks, mean (min) over %d, %a:", cpu, ROUNDS,
          bare ? "bare" : "under uefi-hv");
    for (enum trip t = 0, shown = 0; t < TRIP_COUNT; t++)
        if (measured[t])
            Print(L"%a %a %ld (%ld)", shown++ ? "," : "", trip_names[t], mean[t], min[t]);
    Print(L"\n");
}

/*
 * hvcheck's fuzzer (load option `fuzz=N seed=S`): N operations on the
 * hypervisor's exit surface, half from ring 0 and half from ring 3, chosen by
 * a seeded generator, before the checks, which must still pass. Each is an
 * instruction that exits or faults, with random and boundary values: VMCALL
 * (every function number and those just outside the interface, arguments at
 * their limits), CPUID (basic, extended and hypervisor leaves, random ones),
 * RDMSR (the spec's intercepts and the MSRs just outside them, the MSR
 * bitmap's edges, random numbers), WRMSR (the spec's write intercepts,
 * IA32_EFER without LME, numbers no CPU has), XSETBV and MOV to CR0/CR4 (bits
 * the hypervisor owns, reserved bits), and stores into the hypervisor's pages
 * (GET_RESIDENT_RANGES). The outcome of each (a status, a value, #UD, #GP) is
 * counted per ring; the same seed gives the same operations and, on the same
 * machine, the same counts.
 *
 * Ring 3 is a small OS of its own for the time of the fuzz: a copy of the
 * firmware's GDT with a user code and data segment and a TSS (RSP0: the stack
 * a fault from ring 3 is delivered on), and page tables that map the first
 * GiBs 1:1 with the U bit (SDM 4.6 "Access Rights"). From ring 3 every
 * VMCALL is the hypervisor's #UD, and RDMSR, WRMSR, XSETBV and MOV to CR the
 * CPU's own #GP, before any VM exit (SDM 26.1.1).
 *
 * Left out: DEVIRTUALIZE and EXIT_BOOT_SERVICES (they would remove or hide
 * the hypervisor the checks after this need), WRMSR of MSRs that exist and
 * pass through (the guest's own business, as on hardware), and garbage in
 * the pages the hypervisor hides only at ExitBootServices (its image and CPU
 * records, which the firmware still runs in): a store first tries a locked
 * OR of 0, which leaves the page as it was; only where that was refused
 * does the garbage follow, and it must be refused too. The OS model stores
 * garbage into every page after ExitBootServices.
 */
#include "hvcheck.h"

#define EFER_LME (1ULL << 8)

/* fuzz_asm.S: each returns the vector of the fault the instruction raised
 * (6, 13), or 0 (runtime/hvcheck/asm.h); as does hvcheck_try_wrmsr. */
UINT64 fuzz_vmcall(UINT64 regs[4]);
UINT64 fuzz_rdmsr(UINT32 msr, UINT64 *value);
UINT64 fuzz_xsetbv(UINT32 xcr, UINT64 value);
UINT64 fuzz_mov_cr0(UINT64 value);
UINT64 fuzz_mov_cr4(UINT64 value);
UINT64 fuzz_lock_or_zero(volatile UINT64 *address);
UINT64 fuzz_store(volatile UINT64 *address, UINT64 value);
extern void fuzz_ud_handler(void);
/* fn(arg) at CPL 3 on this stack, interrupts off; back in ring 0 after. */
void fuzz_in_ring3(void (*fn)(void *), void *arg, UINT64 user_cs, UINT64 user_ss);

enum op { OP_VMCALL, OP_CPUID, OP_RDMSR, OP_WRMSR, OP_XSETBV, OP_CR, OP_STORE, OP_COUNT };
static const char *const op_names[OP_COUNT] = { "VMCALL", "CPUID",   "RDMSR", "WRMSR",
                                                "XSETBV", "CR0/CR4", "store" };

struct outcomes {
    UINT64 done[OP_COUNT], ud[OP_COUNT], gp[OP_COUNT];
    UINT64 vmcall_ok, vmcall_unknown, vmcall_bad_argument, vmcall_refused, vmcall_other;
    UINT64 store_open, garbage_landed; /* not hidden before ExitBootServices; a garbage store not refused */
};

/* The hypervisor's ranges (GET_RESIDENT_RANGES), the stores' targets. */
#define MAX_RANGES 64
static UINT64 range_base[MAX_RANGES], range_pages[MAX_RANGES], range_count;

/* xorshift64* (Marsaglia; Vigna): small, fast, and the same everywhere. */
static UINT64 state;
static UINT64 next(void)
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
}
static UINT64 pick(const UINT64 *values, UINTN count)
{
    return values[next() % count];
}

/* An argument: a limit of some function's range, or anything. */
static UINT64 argument(void)
{
    static const UINT64 limits[] = { 0, 1, 2, 31, 32, 255, 256, 0xFFFFFFFFULL, 0x100000000ULL, ~0ULL, ~1ULL };
    return next() & 1 ? pick(limits, sizeof limits / sizeof limits[0]) : next();
}

static void vmcall(struct outcomes *o)
{
    UINT64 function;
    do /* every function, the numbers around the interface, or anything */
        function = next() % 4 == 0 ? next() : VMCALL_BASE - 2 + next() % (VMCALL_FUNCTION_COUNT + 260);
    while (function == VMCALL_DEVIRTUALIZE || function == VMCALL_EXIT_BOOT_SERVICES);
    UINT64 regs[4] = { function, argument(), argument(), argument() };
    UINT64 fault = fuzz_vmcall(regs);
    if (fault == 6)
        o->ud[OP_VMCALL]++;
    else if (regs[0] == 0)
        o->vmcall_ok++;
    else if (regs[0] == VMCALL_UNKNOWN)
        o->vmcall_unknown++;
    else if (regs[0] == VMCALL_BAD_ARGUMENT)
        o->vmcall_bad_argument++;
    else if (regs[0] == VMCALL_REFUSED)
        o->vmcall_refused++;
    else
        o->vmcall_other++;
}

static void cpuid(void)
{
    static const UINT64 leaves[] = { 0,
                                     1,
                                     4,
                                     7,
                                     0xB,
                                     0xD,
                                     0x14,
                                     0x1F,
                                     0x40000000ULL,
                                     0x40000001ULL,
                                     0x40000002ULL,
                                     0x4FFFFFFFULL,
                                     0x80000000ULL,
                                     0x80000001ULL,
                                     0x80000008ULL,
                                     0x8FFFFFFFULL,
                                     0xFFFFFFFFULL };
    UINT32 leaf = (UINT32)(next() & 1 ? pick(leaves, sizeof leaves / sizeof leaves[0]) : next());
    UINT32 r[4];
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"((UINT32)next()));
}

static UINT32 msr_number(void)
{
    static const UINT64 spec[] = FUZZ_MSR_BOUNDARIES;
    static const UINT64 bitmap[] = {
        0, 0x1FFF, 0x2000, 0xBFFFFFFFULL, 0xC0000000ULL, 0xC0001FFFULL, 0xC0002000ULL, 0xFFFFFFFFULL
    };
    switch (next() % 3) {
    case 0:
        return (UINT32)pick(spec, FUZZ_MSR_BOUNDARY_COUNT);
    case 1:
        return (UINT32)pick(bitmap, sizeof bitmap / sizeof bitmap[0]);
    default:
        return (UINT32)next();
    }
}

/* MSRs whose write can only fault or be refused: the spec's write
 * intercepts, and numbers outside the architectural ranges. */
static UINT32 writable_msr_number(void)
{
    static const UINT32 intercepted[][2] = FUZZ_MSR_WRITES;
    if (FUZZ_MSR_WRITES_COUNT && next() & 1) {
        UINTN i = next() % FUZZ_MSR_WRITES_COUNT;
        return intercepted[i][0] + (UINT32)(next() % (intercepted[i][1] - intercepted[i][0] + 1));
    }
    return next() & 1 ? 0x40000100U + (UINT32)(next() % 0x100) : 0xC0002000U + (UINT32)(next() % 0x1000);
}

static void msr(struct outcomes *o, BOOLEAN write)
{
    UINT64 fault, value;
    if (!write) {
        fault = fuzz_rdmsr(msr_number(), &value);
    } else if (next() % 8 == 0) {
        /* IA32_EFER without LME in IA-32e mode: #GP, from the CPU itself (SDM
         * Vol. 4, IA32_EFER; the VMCS saves and loads EFER around exits). */
        UINT64 efer = 0;
        fuzz_rdmsr(MSR_IA32_EFER, &efer);
        fault = hvcheck_try_wrmsr(MSR_IA32_EFER, efer & ~EFER_LME);
        if (!fault)
            hvcheck_try_wrmsr(MSR_IA32_EFER, efer);
    } else {
        fault = hvcheck_try_wrmsr(writable_msr_number(), argument());
    }
    o->done[write ? OP_WRMSR : OP_RDMSR]++;
    o->gp[write ? OP_WRMSR : OP_RDMSR] += fault == 13;
}

static void xsetbv(struct outcomes *o, UINT64 cr4)
{
    UINT32 lo, hi;
    o->done[OP_XSETBV]++;
    if (!(cr4 & CR4_OSXSAVE)) { /* no XSAVE: XSETBV is #UD, as without CR4.OSXSAVE */
        o->ud[OP_XSETBV] += fuzz_xsetbv(0, 1) == 6;
        return;
    }
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    UINT64 xcr0 = (UINT64)hi << 32 | lo;
    UINT32 xcr = next() % 4 ? 0 : (UINT32)next() % 3;
    UINT64 value = next() & 1 ? xcr0 ^ (1ULL << (next() % 64)) : argument();
    UINT64 fault = fuzz_xsetbv(xcr, value);
    if (!fault && xcr == 0)
        fuzz_xsetbv(0, xcr0);
    o->ud[OP_XSETBV] += fault == 6;
    o->gp[OP_XSETBV] += fault == 13;
}

/* Bits the hypervisor owns or that fault: CR0.NE, NW without CD, CR0 and CR4
 * bits 63:32, CR4.VMXE and SMXE, CR4's reserved bits; each change undone. */
static void control_register(struct outcomes *o, UINT64 cr0, UINT64 cr4)
{
    static const UINT64 cr0_bits[] = { 1ULL << 5, 1ULL << 29, 1ULL << 32, 1ULL << 63 };
    static const UINT64 cr4_bits[] = { 1ULL << 13, 1ULL << 14, 1ULL << 15, 1ULL << 19,
                                       1ULL << 26, 1ULL << 31, 1ULL << 32, 1ULL << 63 };
    UINT64 fault;
    if (next() & 1) {
        fault = fuzz_mov_cr0(cr0 ^ pick(cr0_bits, sizeof cr0_bits / sizeof cr0_bits[0]));
        fuzz_mov_cr0(cr0);
    } else {
        fault = fuzz_mov_cr4(cr4 ^ pick(cr4_bits, sizeof cr4_bits / sizeof cr4_bits[0]));
        fuzz_mov_cr4(cr4);
    }
    o->done[OP_CR]++;
    o->gp[OP_CR] += fault == 13;
}

/* A word of a page of the hypervisor's: the harmless locked OR first, and
 * garbage only where that was refused (see the top). */
static void store(struct outcomes *o)
{
    o->done[OP_STORE]++;
    if (!range_count)
        return;
    UINTN i = next() % range_count;
    volatile UINT64 *word =
        (volatile UINT64 *)(range_base[i] + next() % range_pages[i] * EFI_PAGE_SIZE + next() % 512 * 8);
    UINT64 fault = fuzz_lock_or_zero(word);
    if (!fault) {
        o->store_open++;
        return;
    }
    UINT64 garbage = fuzz_store(word, next());
    o->gp[OP_STORE] += fault == 13 && garbage == 13;
    o->garbage_landed += garbage == 0;
}

struct run {
    struct outcomes o;
    UINT64 operations, cr0, cr4;
};

/* The operations, in whichever ring it is called. */
static void run(void *arg)
{
    struct run *r = arg;
    struct outcomes *o = &r->o;
    for (UINT64 i = 0; i < r->operations; i++) {
        enum op op = (enum op)(next() % OP_COUNT);
        switch (op) {
        case OP_VMCALL:
            o->done[OP_VMCALL]++;
            vmcall(o);
            break;
        case OP_CPUID:
            o->done[OP_CPUID]++;
            cpuid();
            break;
        case OP_RDMSR:
        case OP_WRMSR:
            msr(o, op == OP_WRMSR);
            break;
        case OP_XSETBV:
            xsetbv(o, r->cr4);
            break;
        case OP_CR:
            control_register(o, r->cr0, r->cr4);
            break;
        default:
            store(o);
            break;
        }
    }
}

/* ---- ring 3 ---------------------------------------------------------------- */

#define PTE_P         1ULL
#define PTE_RW        (1ULL << 1)
#define PTE_US        (1ULL << 2)
#define PTE_PS        (1ULL << 7)
#define CR4_SMEP      (1ULL << 20)
#define CR4_SMAP      (1ULL << 21)
#define RING3_MAX_GIB 512 /* one PDPT */

struct ring3 {
    EFI_PHYSICAL_ADDRESS tables, gdt; /* page tables: PML4, PDPT, one PD per GiB; GDT + TSS page */
    UINTN table_pages;
    struct dtr firmware_gdtr;
    UINT64 firmware_cr3, firmware_cr4;
    UINT16 firmware_tr, user_cs, user_ss;
};

static UINT8 ring0_stack[4096] __attribute__((aligned(16))); /* TSS.RSP0 */

/* The first `gib` GiBs 1:1 in 2-MiB pages, user and writable at every level. */
static void build_user_tables(UINT64 *pml4, UINTN gib)
{
    UINT64 *pdpt = pml4 + 512;
    ZeroMem(pml4, EFI_PAGE_SIZE * 2);
    pml4[0] = (UINT64)pdpt | PTE_P | PTE_RW | PTE_US;
    for (UINTN g = 0; g < gib; g++) {
        UINT64 *pd = pml4 + 1024 + g * 512;
        pdpt[g] = (UINT64)pd | PTE_P | PTE_RW | PTE_US;
        for (UINTN e = 0; e < 512; e++)
            pd[e] = ((UINT64)g << 30 | (UINT64)e << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS;
    }
}

/* The firmware's GDT copied, then a user data segment, a 64-bit user code
 * segment and a 64-bit TSS (SDM 3.4.5, 8.2.3), all in one page. */
static void build_user_gdt(struct ring3 *r)
{
    UINT64 *gdt = (UINT64 *)r->gdt;
    UINTN n = ((UINTN)r->firmware_gdtr.limit + 1) / 8;
    ZeroMem(gdt, EFI_PAGE_SIZE);
    CopyMem(gdt, (VOID *)r->firmware_gdtr.base, n * 8);
    UINT8 *tss = (UINT8 *)(gdt + n + 4);
    UINT64 rsp0 = (UINT64)(ring0_stack + sizeof ring0_stack), base = (UINT64)tss;
    CopyMem(tss + 4, &rsp0, sizeof rsp0);
    tss[102] = 104;                     /* I/O map base past the limit: no I/O bitmap */
    gdt[n] = 0x00CFF2000000FFFFULL;     /* data, DPL 3, writable */
    gdt[n + 1] = 0x00AFFA000000FFFFULL; /* code, DPL 3, L = 1 */
    gdt[n + 2] =
        103 | (base & 0xFFFFFF) << 16 | 0x89ULL << 40 | (base >> 24 & 0xFF) << 56; /* TSS, available */
    gdt[n + 3] = base >> 32;
    r->user_ss = (UINT16)(n * 8 + 3);
    r->user_cs = (UINT16)((n + 1) * 8 + 3);
    struct dtr ours = { (UINT16)((n + 4) * 8 - 1), (UINT64)gdt };
    UINT16 tr = (UINT16)((n + 2) * 8);
    __asm__ volatile("lgdt %0; ltr %1" ::"m"(ours), "r"(tr) : "memory");
}

/* The highest GiB ring 3 touches: hvcheck, its stack, the hypervisor's ranges. */
static UINTN gibs_needed(void)
{
    UINT64 top = 4ULL << 30, rsp;
    __asm__ volatile("mov %%rsp, %0" : "=r"(rsp));
    UINT64 ends[] = { (UINT64)&state, (UINT64)run, rsp, (UINT64)ring0_stack };
    for (UINTN i = 0; i < sizeof ends / sizeof ends[0]; i++)
        top = ends[i] >= top ? ends[i] + 1 : top;
    for (UINTN i = 0; i < range_count; i++)
        top = range_base[i] + range_pages[i] * EFI_PAGE_SIZE > top
                  ? range_base[i] + range_pages[i] * EFI_PAGE_SIZE
                  : top;
    return (UINTN)((top + (1ULL << 30) - 1) >> 30);
}

static const char *ring3_enter(struct ring3 *r)
{
    UINTN gib = gibs_needed();
    if (gib > RING3_MAX_GIB)
        return "memory above 512 GiB";
    r->table_pages = 2 + gib;
    if (EFI_ERROR(uefi_call_wrapper(BS->AllocatePages, 4, AllocateAnyPages, EfiBootServicesData,
                                    r->table_pages, &r->tables)))
        return "no memory for its page tables";
    if (EFI_ERROR(
            uefi_call_wrapper(BS->AllocatePages, 4, AllocateAnyPages, EfiBootServicesData, 1, &r->gdt)) ||
        r->gdt >> 30 >= gib) {
        uefi_call_wrapper(BS->FreePages, 2, r->tables, r->table_pages);
        return "no memory for its GDT";
    }
    build_user_tables((UINT64 *)r->tables, gib);
    __asm__ volatile("sgdt %0; str %1; mov %%cr3, %2; mov %%cr4, %3"
                     : "=m"(r->firmware_gdtr), "=r"(r->firmware_tr), "=r"(r->firmware_cr3),
                       "=r"(r->firmware_cr4));
    build_user_gdt(r);
    /* SMEP and SMAP off: the fault handlers run in ring 0 on user pages. */
    __asm__ volatile("mov %0, %%cr4; mov %1, %%cr3" ::"r"(r->firmware_cr4 & ~(CR4_SMEP | CR4_SMAP)),
                     "r"(r->tables)
                     : "memory");
    return NULL;
}

/* The firmware's page tables, CR4, GDT and TR (its descriptor made available
 * again, so that LTR takes it). A firmware without a TR (selector 0, which
 * LTR cannot load) keeps ours, past the limit of its own GDT, as a CPU
 * does after its GDT changes; our page stays (boot services memory, the
 * OS's after ExitBootServices), since TR points into it. DEVIRTUALIZE at
 * hvcheck's end then has to reload such a TR from the VMCS, not the GDT. */
static void ring3_leave(struct ring3 *r)
{
    __asm__ volatile("mov %0, %%cr3; mov %1, %%cr4; lgdt %2" ::"r"(r->firmware_cr3), "r"(r->firmware_cr4),
                     "m"(r->firmware_gdtr)
                     : "memory");
    if (r->firmware_tr) {
        UINT8 *type = (UINT8 *)r->firmware_gdtr.base + (r->firmware_tr & ~7) + 5;
        *type &= ~0x02; /* busy -> available */
        __asm__ volatile("ltr %0" ::"r"(r->firmware_tr) : "memory");
        uefi_call_wrapper(BS->FreePages, 2, r->gdt, 1);
    }
    uefi_call_wrapper(BS->FreePages, 2, r->tables, r->table_pages);
}

static UINT64 exits_here(void)
{
    UINT64 out[4];
    hvcheck_vmcall(VMCALL_GET_EXIT_TOTAL, ~0ULL, 0, out);
    return out[1];
}

static void fetch_ranges(void)
{
    UINT64 out[4];
    range_count = 0;
    for (UINT64 i = 0; i < MAX_RANGES; i++) {
        hvcheck_vmcall(VMCALL_GET_RESIDENT_RANGES, i, 0, out);
        if (out[0] != 0)
            break;
        range_base[i] = out[1];
        range_pages[i] = out[2] / EFI_PAGE_SIZE;
        range_count = i + 1;
    }
}

static void report(const char *ring, struct run *r, UINT64 exits)
{
    struct outcomes *o = &r->o;
    Print(L"hvcheck: fuzz: %a: %ld operations, %ld VM exits\n", ring, r->operations, exits);
    Print(L"hvcheck: fuzz: %a: VMCALL %ld (ok %ld, unknown function %ld, bad argument %ld, refused %ld, "
          L"other %ld, "
          L"#UD %ld)\n",
          ring, o->done[OP_VMCALL], o->vmcall_ok, o->vmcall_unknown, o->vmcall_bad_argument,
          o->vmcall_refused, o->vmcall_other, o->ud[OP_VMCALL]);
    for (UINTN i = OP_CPUID; i < OP_STORE; i++)
        Print(L"hvcheck: fuzz: %a: %a %ld (#GP %ld, #UD %ld)\n", ring, op_names[i], o->done[i], o->gp[i],
              o->ud[i]);
    Print(L"hvcheck: fuzz: %a: store %ld (#GP %ld, not hidden before ExitBootServices %ld, garbage landed "
          L"%ld)\n",
          ring, o->done[OP_STORE], o->gp[OP_STORE], o->store_open, o->garbage_landed);
}

void hvcheck_fuzz(UINT64 seed, UINT64 operations)
{
    static struct run ring0, ring3; /* static: ring 3 reaches them through its own tables */
    struct ring3 user;
    UINT64 flags, cr0, cr4, t0, t1, exits0, exits3;
    state = seed ? seed : 1;
    fetch_ranges();
    __asm__ volatile("pushfq; popq %0; cli" : "=r"(flags)::"memory");
    __asm__ volatile("mov %%cr0, %0; mov %%cr4, %1" : "=r"(cr0), "=r"(cr4));
    UINT64 firmware_cr4 = cr4;
    UINT32 r[4];
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(1), "c"(0));
    if (r[2] & (1U << 26)) /* XSAVE: CR4.OSXSAVE on for the fuzz, so that XSETBV exits */
        cr4 |= CR4_OSXSAVE;
    __asm__ volatile("mov %0, %%cr4" ::"r"(cr4) : "memory");
    struct idt_gate ud = hvcheck_set_gate(6, fuzz_ud_handler), gp = hvcheck_set_gate(13, hvcheck_gp_handler);
    ring0 = (struct run){ .operations = operations - operations / 2, .cr0 = cr0, .cr4 = cr4 };
    ring3 = (struct run){ .operations = operations / 2, .cr0 = cr0, .cr4 = cr4 & ~(CR4_SMEP | CR4_SMAP) };
    __asm__ volatile("rdtsc; shl $32, %%rdx; or %%rdx, %%rax" : "=a"(t0)::"rdx");
    exits0 = exits_here();
    run(&ring0);
    exits0 = exits_here() - exits0;
    const char *no_ring3 = ring3_enter(&user);
    exits3 = exits_here();
    if (!no_ring3) {
        fuzz_in_ring3(run, &ring3, user.user_cs, user.user_ss);
        ring3_leave(&user);
    }
    exits3 = exits_here() - exits3;
    __asm__ volatile("rdtsc; shl $32, %%rdx; or %%rdx, %%rax" : "=a"(t1)::"rdx");
    hvcheck_restore_gate(13, gp);
    hvcheck_restore_gate(6, ud);
    __asm__ volatile("mov %0, %%cr4" ::"r"(firmware_cr4) : "memory");
    __asm__ volatile("pushq %0; popfq" ::"r"(flags) : "memory", "cc");

    Print(L"hvcheck: fuzz: seed 0x%lx, %ld operations, %ld VM exits, %ld TSC ticks\n", seed, operations,
          exits0 + exits3, t1 - t0);
    report("ring 0", &ring0, exits0);
    if (no_ring3)
        Print(L"hvcheck: fuzz: ring 3: not run (%a)\n", no_ring3);
    else
        report("ring 3", &ring3, exits3);
}

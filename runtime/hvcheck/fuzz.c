/*
 * hvcheck's fuzzer (load option `fuzz=N seed=S`): N operations on the
 * hypervisor's exit surface from ring 0, chosen by a seeded generator, before
 * the checks, which must still pass. Each is an instruction that exits, with
 * random and boundary values: VMCALL (every function number and those just
 * outside the interface, arguments at their limits), CPUID (basic, extended
 * and hypervisor leaves, random ones), RDMSR (the spec's intercepts and the
 * MSRs just outside them, the MSR bitmap's edges, random numbers), WRMSR (the
 * spec's write intercepts, IA32_EFER without LME, numbers no CPU has), XSETBV
 * and MOV to CR0/CR4 (bits the hypervisor owns, reserved bits). The outcome of
 * each (a status, a value, #UD, #GP) is counted; the same seed gives the same
 * operations and, on the same machine, the same counts.
 *
 * Left out: DEVIRTUALIZE and EXIT_BOOT_SERVICES (they would remove or hide
 * the hypervisor the checks after this need), WRMSR of MSRs that exist and
 * pass through (the guest's own business, as on hardware), and the
 * hypervisor's pages (hidden only partly before ExitBootServices; the OS
 * model stores into all of them).
 */
#include "hvcheck.h"

#define MSR_IA32_EFER 0xC0000080U
#define EFER_LME      (1ULL << 8)
#define CR4_OSXSAVE   (1ULL << 18)

enum op { OP_VMCALL, OP_CPUID, OP_RDMSR, OP_WRMSR, OP_XSETBV, OP_CR, OP_COUNT };
static const char *const op_names[OP_COUNT] = { "VMCALL", "CPUID", "RDMSR", "WRMSR", "XSETBV", "CR0/CR4" };

struct outcomes {
    UINT64 done[OP_COUNT], ud[OP_COUNT], gp[OP_COUNT];
    UINT64 vmcall_ok, vmcall_unknown, vmcall_bad_argument, vmcall_refused, vmcall_other;
};

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
        fault = fuzz_wrmsr(MSR_IA32_EFER, efer & ~EFER_LME);
        if (!fault)
            fuzz_wrmsr(MSR_IA32_EFER, efer);
    } else {
        fault = fuzz_wrmsr(writable_msr_number(), argument());
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

static UINT64 exits_here(void)
{
    UINT64 out[4];
    hvcheck_vmcall(VMCALL_GET_EXIT_TOTAL, ~0ULL, 0, out);
    return out[1];
}

void hvcheck_fuzz(UINT64 seed, UINT64 operations)
{
    struct outcomes o = { 0 };
    UINT64 flags, cr0, cr4, t0, t1;
    state = seed ? seed : 1;
    __asm__ volatile("pushfq; popq %0; cli" : "=r"(flags)::"memory");
    __asm__ volatile("mov %%cr0, %0; mov %%cr4, %1" : "=r"(cr0), "=r"(cr4));
    UINT64 firmware_cr4 = cr4;
    UINT32 r[4];
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(1), "c"(0));
    if (r[2] & (1U << 26)) /* XSAVE: CR4.OSXSAVE on for the fuzz, so that XSETBV exits */
        cr4 |= CR4_OSXSAVE;
    __asm__ volatile("mov %0, %%cr4" ::"r"(cr4) : "memory");
    struct idt_gate ud = hvcheck_set_gate(6, fuzz_ud_handler), gp = hvcheck_set_gate(13, fuzz_gp_handler);
    UINT64 exits = exits_here();
    __asm__ volatile("rdtsc; shl $32, %%rdx; or %%rdx, %%rax" : "=a"(t0)::"rdx");
    for (UINT64 i = 0; i < operations; i++) {
        enum op op = (enum op)(next() % OP_COUNT);
        switch (op) {
        case OP_VMCALL:
            o.done[OP_VMCALL]++;
            vmcall(&o);
            break;
        case OP_CPUID:
            o.done[OP_CPUID]++;
            cpuid();
            break;
        case OP_RDMSR:
        case OP_WRMSR:
            msr(&o, op == OP_WRMSR);
            break;
        case OP_XSETBV:
            xsetbv(&o, cr4);
            break;
        default:
            control_register(&o, cr0, cr4);
            break;
        }
    }
    __asm__ volatile("rdtsc; shl $32, %%rdx; or %%rdx, %%rax" : "=a"(t1)::"rdx");
    exits = exits_here() - exits;
    hvcheck_restore_gate(13, gp);
    hvcheck_restore_gate(6, ud);
    __asm__ volatile("mov %0, %%cr4" ::"r"(firmware_cr4) : "memory");
    __asm__ volatile("pushq %0; popfq" ::"r"(flags) : "memory", "cc");

    UINT64 all = 0;
    for (UINTN i = 0; i < OP_COUNT; i++)
        all += o.done[i];
    Print(L"hvcheck: fuzz: seed 0x%lx, %ld operations, %ld VM exits, %ld TSC ticks\n", seed, all, exits,
          t1 - t0);
    Print(
        L"hvcheck: fuzz: VMCALL %ld (ok %ld, unknown function %ld, bad argument %ld, refused %ld, other %ld, "
        L"#UD %ld)\n",
        o.done[OP_VMCALL], o.vmcall_ok, o.vmcall_unknown, o.vmcall_bad_argument, o.vmcall_refused,
        o.vmcall_other, o.ud[OP_VMCALL]);
    for (UINTN i = OP_CPUID; i < OP_COUNT; i++)
        Print(L"hvcheck: fuzz: %a %ld (#GP %ld, #UD %ld)\n", op_names[i], o.done[i], o.gp[i], o.ud[i]);
}

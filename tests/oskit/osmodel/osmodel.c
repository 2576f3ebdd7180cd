/* The OS model: an EFI program that does, in a few hundred lines, what an
 * operating system kernel does to the machine when it takes over from the
 * firmware, and asks on every CPU whether uefi-hv is still there.
 *
 *   1. the memory map, ExitBootServices (again with a fresh map key when the
 *      firmware says EFI_INVALID_PARAMETER: the map changed, UEFI 2.10 7.4);
 *   2. SetVirtualAddressMap, identity (VirtualStart = PhysicalStart);
 *   3. its own GDT, IDT (every exception prints its vector on COM1 and
 *      halts) and page tables (identity, 2 MiB pages, the first 4 GiB);
 *   4. every AP started by hand, one at a time, with INIT-SIPI-SIPI sent
 *      through the local APIC to its APIC id (which the firmware's MP
 *      services named before ExitBootServices, as an OS reads the MADT),
 *      into a real-mode trampoline on a conventional-memory page below 1 MiB,
 *      which climbs to long mode and calls ap_main(); twice in a row;
 *   5. on every CPU: CPUID (hypervisor bit, signature, VMX hidden) and, in
 *      ring 0, the VMCALL ping; on the BSP, that every range of memory the
 *      hypervisor keeps (VMCALL GET_RESIDENT_RANGES) is runtime memory in
 *      the map the model got at ExitBootServices, so an OS never hands it out;
 *   6. the verdict on COM1 by port I/O (there are no boot services left):
 *        OSMODEL: PASS
 *        OSMODEL: MECHANICS PASS, hypervisor absent   (booted without uefi-hv)
 *        OSMODEL: FAIL: <reason>
 *      then ResetSystem(EfiResetShutdown) through the runtime services.
 *
 * Without uefi-hv the mechanics (1-4, 6) are still proven; only the
 * hypervisor's answers are left out, and the verdict says so.
 */
#include <efi.h>
#include <efilib.h>

#include "hvprobe.h"
#include "mp_services.h"

#ifndef OSKIT_VMCALL_GET_RESIDENT_RANGES
#error "build with -DOSKIT_VMCALL_GET_RESIDENT_RANGES=... (tests/oskit/initramfs.py: probe_defines)"
#endif

#define MODEL_CS64 0x08
#define MODEL_DS   0x10
#define MODEL_CS32 0x18

#define COM1          0x3F8
#define UART_LSR      5
#define UART_LSR_THRE 0x20

#define MSR_IA32_APIC_BASE   0x1B
#define APIC_BASE_X2APIC     (1ULL << 10)
#define MSR_X2APIC_ICR       0x830
#define XAPIC_ICR_LOW        0x300
#define XAPIC_ICR_HIGH       0x310
#define ICR_DELIVERY_PENDING (1U << 12)
/* ICR: no destination shorthand, physical destination (the APIC id in ICR
 * bits 63:56, or 63:32 in x2APIC mode), level assert (bit 14), delivery
 * mode INIT (101b) or start-up (110b); SDM 12.6.1 "Interrupt Command Register (ICR)". */
#define ICR_LEVEL_ASSERT (1U << 14)
#define ICR_INIT         (5U << 8)
#define ICR_STARTUP      (6U << 8)

#define PAGE_2M_FLAGS    0x83ULL /* present, writable, page size */
#define PAGE_PCD_PWT     0x18ULL /* uncached: the APIC and MMIO near 4 GiB */
#define PAGE_TABLE_FLAGS 0x03ULL /* present, writable */

#define AP_ROUNDS  2
#define AP_WAIT_MS 2000
#define MAX_CPUS   64

/* ---- what the assembly provides (osmodel.S) ------------------------------- */

extern char osmodel_trampoline_start[], osmodel_trampoline_end[];
extern char osmodel_tr_gdtr[], osmodel_tr_far32[], osmodel_tr_far64[];
extern char osmodel_tr_cr3[], osmodel_tr_rsp[], osmodel_tr_entry[], osmodel_tr_arg[];
extern char osmodel_tr_tss_a[], osmodel_tr_tss_b[], osmodel_tr_task_b_stack[], osmodel_tr_task_switches[];
extern const UINT64 osmodel_tr_protected_offset, osmodel_tr_long_offset, osmodel_tr_task_b_offset;
extern char osmodel_exception_stubs[];
void osmodel_load_segments(void);
UINT64 osmodel_exception(UINT64 *frame);

/* ---- the model's own machine state ---------------------------------------- */

static UINT64 gdt[6] __attribute__((aligned(16))) = {
    0,
    0x00AF9A000000FFFFULL, /* 0x08: 64-bit code, DPL 0 */
    0x00CF92000000FFFFULL, /* 0x10: flat data, 4 GiB */
    0x00CF9A000000FFFFULL, /* 0x18: 32-bit code, for the trampoline */
    0,                     /* 0x20, 0x28: the trampoline's 32-bit TSSes A and B */
    0,                     /*   (prepare_trampoline) */
};

#define TASK_B_EAX 0x7A5CB0B0 /* osmodel.S checks it in task B */

/* A present 32-bit TSS descriptor, DPL 0, available (SDM 9.2.2 "TSS
 * Descriptor"): limit 0x67. */
static UINT64 tss32_descriptor(UINT64 base)
{
    return 0x67 | (base & 0xFFFFFF) << 16 | 0x89ULL << 40 | (base >> 24) << 56;
}

struct idt_gate {
    UINT16 offset_low, selector;
    UINT8 ist, type;
    UINT16 offset_mid;
    UINT32 offset_high, reserved;
} __attribute__((packed));

static struct idt_gate idt[32] __attribute__((aligned(16)));

struct table_register {
    UINT16 limit;
    UINT64 base;
} __attribute__((packed));

static UINT64 pml4[512] __attribute__((aligned(4096)));
static UINT64 pdpt[512] __attribute__((aligned(4096)));
static UINT64 pd[4][512] __attribute__((aligned(4096)));

static UINT8 ap_stack[16384] __attribute__((aligned(16)));
static UINT8 memory_map[64 * 1024] __attribute__((aligned(8)));
static UINT8 runtime_map[16 * 1024] __attribute__((aligned(8)));

/* What the AP reports back; written by the AP, read by the BSP. */
static volatile UINT32 ap_done;
static volatile UINT32 ap_round;
static volatile UINT32 ap_apic_id;

/* The APs' APIC ids, from the firmware's MP services. */
static UINT32 ap_ids[MAX_CPUS];
static UINTN ap_count;

static struct hvprobe bsp_probe;
static UINT64 tsc_per_ms;
static UINT64 apic_mmio;
static BOOLEAN x2apic;
static int failures;
static const char *first_failure;

/* ---- COM1 and a small printf ------------------------------------------------ */

static inline void outb(UINT16 port, UINT8 v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline UINT8 inb(UINT16 port)
{
    UINT8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static void com1_putc(char c)
{
    if (c == '\n')
        com1_putc('\r');
    for (int spin = 0; spin < 100000 && !(inb(COM1 + UART_LSR) & UART_LSR_THRE); spin++)
        ;
    outb(COM1, (UINT8)c);
}

static void put_number(UINT64 v, unsigned base)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (n)
        com1_putc(digits[--n]);
}

/* %s, %u, %x (32-bit), %lu, %lx (64-bit): all the model needs. Variadic
 * through the compiler's own va_list (gnu-efi's is the MS ABI one). */
static void say(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            com1_putc(*fmt);
            continue;
        }
        BOOLEAN wide = fmt[1] == 'l';
        if (wide)
            fmt++;
        switch (*++fmt) {
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            while (*s)
                com1_putc(*s++);
            break;
        }
        case 'u':
            put_number(wide ? __builtin_va_arg(ap, UINT64) : __builtin_va_arg(ap, UINT32), 10);
            break;
        case 'x':
            put_number(wide ? __builtin_va_arg(ap, UINT64) : __builtin_va_arg(ap, UINT32), 16);
            break;
        default:
            com1_putc('%');
            com1_putc(*fmt);
            break;
        }
    }
    __builtin_va_end(ap);
}

static void fail(const char *why)
{
    say("OSMODEL: check failed: %s\n", why);
    if (!failures++)
        first_failure = why;
}

static __attribute__((noreturn)) void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

extern char osmodel_try_store_insn[], osmodel_try_store_resume[];
extern char osmodel_try_int32_insn[], osmodel_try_int32_resume[];
UINT64 osmodel_try_store(volatile UINT64 *address, UINT64 value);
UINT64 osmodel_try_int32(void);

/* Called by every exception stub: frame = vector, error code, RIP, CS, ...;
 * frame[-1] is the interrupted RAX. A #GP of osmodel_try_store resumes after
 * its store with RAX = 1, one of osmodel_try_int32 after its INT with RAX =
 * the error code (returns 1); anything else stops the model. */
UINT64 osmodel_exception(UINT64 *frame)
{
    if (frame[0] == 13 && frame[2] == (UINT64)osmodel_try_store_insn) {
        frame[2] = (UINT64)osmodel_try_store_resume;
        frame[-1] = 1;
        return 1;
    }
    if (frame[0] == 13 && frame[2] == (UINT64)osmodel_try_int32_insn) {
        frame[2] = (UINT64)osmodel_try_int32_resume;
        frame[-1] = frame[1];
        return 1;
    }
    unsigned int r[4];
    hvprobe_cpuid(1, 0, r);
    say("OSMODEL: FAIL: exception vector %lu, error code 0x%lx, at RIP 0x%lx on APIC %u\n", frame[0],
        frame[1], frame[2], r[1] >> 24);
    halt_forever();
}

/* ---- time ------------------------------------------------------------------ */

static inline UINT64 rdtsc(void)
{
    UINT32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (UINT64)hi << 32 | lo;
}

static void delay_us(UINT64 us)
{
    UINT64 end = rdtsc() + tsc_per_ms * us / 1000;
    while (rdtsc() < end)
        __asm__ volatile("pause");
}

/* ---- MSRs and the local APIC ---------------------------------------------------- */

static inline UINT64 rdmsr(UINT32 msr)
{
    UINT32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (UINT64)hi << 32 | lo;
}

static inline void wrmsr(UINT32 msr, UINT64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((UINT32)v), "d"((UINT32)(v >> 32)));
}

static unsigned int apic_id(void)
{
    unsigned int r[4];
    hvprobe_cpuid(1, 0, r);
    return r[1] >> 24; /* CPUID.1:EBX[31:24], initial APIC id */
}

static void send_ipi(UINT32 icr_low, UINT32 destination)
{
    if (x2apic) { /* no delivery status in x2APIC mode */
        wrmsr(MSR_X2APIC_ICR, (UINT64)destination << 32 | icr_low);
        return;
    }
    volatile UINT32 *high = (volatile UINT32 *)(apic_mmio + XAPIC_ICR_HIGH);
    volatile UINT32 *low = (volatile UINT32 *)(apic_mmio + XAPIC_ICR_LOW);
    *high = destination << 24;
    *low = icr_low;
    for (int spin = 0; spin < 1000000 && (*low & ICR_DELIVERY_PENDING); spin++)
        __asm__ volatile("pause");
}

/* The universal start-up algorithm of SDM 10.4.4.1 "Typical BSP Initialization
 * Sequence": INIT, 10 ms, SIPI, 200 us, SIPI. The second SIPI is ignored by an
 * AP already running. */
static void init_sipi_sipi(UINT32 apic, UINT64 trampoline)
{
    send_ipi(ICR_LEVEL_ASSERT | ICR_INIT, apic);
    delay_us(10000);
    for (int i = 0; i < 2; i++) {
        send_ipi(ICR_LEVEL_ASSERT | ICR_STARTUP | (UINT32)(trampoline >> 12), apic);
        delay_us(200);
    }
}

/* ---- the checks, on any CPU ----------------------------------------------------------- */

/* CPUID and, when uefi-hv is there, the ring-0 VMCALL ping; returns the
 * number of failed checks, each reported with `who`. */
static int check_cpu(const char *who, struct hvprobe *p)
{
    int failed = 0;
    hvprobe_run(p);
    say("OSMODEL: %s: APIC %u, CPUID.1:ECX hypervisor=%u vmx=%u; leaf 0x40000000: '%s'\n", who, apic_id(),
        p->hypervisor_bit, p->vmx_bit, p->signature);
    if (!p->ours)
        return 0;
    if (p->vmx_bit) {
        say("OSMODEL: %s: check failed: VMX visible (CPUID.1:ECX[5] set)\n", who);
        failed++;
    }
    unsigned long long pong, cpu, status = hvprobe_vmcall_ping(&pong, &cpu);
    if (status != 0 || pong != OSKIT_VMCALL_PONG) {
        say("OSMODEL: %s: check failed: VMCALL ping: status 0x%lx, RBX 0x%lx (want 0x%lx)\n", who,
            (UINT64)status, (UINT64)pong, (UINT64)OSKIT_VMCALL_PONG);
        failed++;
    } else {
        say("OSMODEL: %s: VMCALL ping answered, hypervisor CPU %lu\n", who, (UINT64)cpu);
    }
    return failed;
}

/* GET_EXIT_COUNT (docs/vmcall.md): the calling CPU's exits of `reason`. */
static UINT64 vmcall_exit_count(UINT64 reason)
{
    unsigned long long r[4] = { OSKIT_VMCALL_GET_EXIT_COUNT, reason, ~0ULL, 0 };
    hvprobe_hypercall(r);
    return r[0] == 0 ? r[1] : ~0ULL;
}

static void load_idt(void)
{
    struct table_register idtr = { sizeof(idt) - 1, (UINT64)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* The AP's C entry, from the trampoline in long mode on ap_stack. */
static void ap_main(UINT64 round)
{
    struct hvprobe p;
    char who[] = "AP round ?";
    UINT64 cr0, cr4, efer;

    load_idt();
    who[9] = (char)('0' + round);
    __asm__ volatile("mov %%cr0, %0; mov %%cr4, %1" : "=r"(cr0), "=r"(cr4));
    efer = rdmsr(0xC0000080);
    say("OSMODEL: %s: in long mode (CR0 0x%lx, CR4 0x%lx, EFER 0x%lx)\n", who, cr0, cr4, efer);
    int failed = check_cpu(who, &p);
    if (p.ours) {
        say("OSMODEL: %s: APIC %u: the hypervisor saw INIT exits %lu, SIPI exits %lu on this CPU\n", who,
            apic_id(), vmcall_exit_count(OSKIT_EXIT_REASON_INIT), vmcall_exit_count(OSKIT_EXIT_REASON_SIPI));
        say("OSMODEL: %s: APIC %u: the hypervisor saw task-switch exits %lu on this CPU\n", who, apic_id(),
            vmcall_exit_count(OSKIT_EXIT_REASON_TASK_SWITCH));
    }
    if (p.ours != bsp_probe.ours) {
        say("OSMODEL: %s: check failed: the AP %s the hypervisor, the BSP %s\n", who,
            p.ours ? "sees" : "does not see", bsp_probe.ours ? "does" : "does not");
        failed++;
    }
    ap_round = (UINT32)round;
    ap_apic_id = apic_id();
    __atomic_store_n(&ap_done, failed ? 2 : 1, __ATOMIC_RELEASE);
    halt_forever();
}

/* ---- taking over from the firmware ------------------------------------------------------ */

static EFI_STATUS exit_boot_services(EFI_HANDLE image, UINTN *map_size, UINTN *desc_size,
                                     UINT32 *desc_version)
{
    EFI_STATUS status = EFI_INVALID_PARAMETER;
    /* A changed map (the firmware may allocate between the two calls) makes
     * ExitBootServices fail with EFI_INVALID_PARAMETER: fetch it again. No
     * firmware call in between (Print would allocate); say() is port I/O. */
    for (int attempt = 0; attempt < 8 && status == EFI_INVALID_PARAMETER; attempt++) {
        UINTN key;
        *map_size = sizeof(memory_map);
        status = uefi_call_wrapper(BS->GetMemoryMap, 5, map_size, (EFI_MEMORY_DESCRIPTOR *)memory_map, &key,
                                   desc_size, desc_version);
        if (EFI_ERROR(status))
            return status;
        say("OSMODEL: ExitBootServices, attempt %u, map key 0x%lx\n", attempt + 1, (UINT64)key);
        status = uefi_call_wrapper(BS->ExitBootServices, 2, image, key);
    }
    return status;
}

#define FOR_EACH_DESCRIPTOR(d, map, size, stride)                                                         \
    for (EFI_MEMORY_DESCRIPTOR *d = (EFI_MEMORY_DESCRIPTOR *)(map); (UINT8 *)d < (UINT8 *)(map) + (size); \
         d = (EFI_MEMORY_DESCRIPTOR *)((UINT8 *)d + (stride)))

/* ---- the hypervisor's memory in the OS's map ----------------------------------------- */

/* GET_RESIDENT_RANGES (docs/vmcall.md): range `index` of the memory uefi-hv
 * keeps. Returns the status (0: ok); *count is the number of ranges. */
static UINT64 vmcall_resident_range(UINT64 index, UINT64 *base, UINT64 *bytes, UINT64 *count)
{
    unsigned long long r[4] = { OSKIT_VMCALL_GET_RESIDENT_RANGES, index, 0, 0 };
    hvprobe_hypercall(r);
    *base = r[1];
    *bytes = r[2];
    *count = r[3];
    return r[0];
}

#define RUNTIME_CODE_SEEN 1
#define RUNTIME_DATA_SEEN 2

/* How far from `start` towards `end` the map holds runtime-services memory
 * without a gap (descriptors may split a range); `types` collects which. */
static UINT64 runtime_memory_until(UINT64 start, UINT64 end, UINTN map_size, UINTN desc_size, unsigned *types)
{
    UINT64 at = start;
    while (at < end) {
        UINT64 next = at;
        FOR_EACH_DESCRIPTOR(d, memory_map, map_size, desc_size)
        {
            UINT64 first = d->PhysicalStart, last = first + d->NumberOfPages * 4096;
            if (at < first || at >= last)
                continue;
            if (d->Type == EfiRuntimeServicesCode)
                *types |= RUNTIME_CODE_SEEN;
            else if (d->Type == EfiRuntimeServicesData)
                *types |= RUNTIME_DATA_SEEN;
            else
                return at;
            next = last;
            break;
        }
        if (next == at)
            return at; /* in no descriptor at all */
        at = next;
    }
    return end;
}

/* The hypervisor's ranges, from GET_RESIDENT_RANGES while boot services
 * last (afterwards the hypervisor refuses it to the OS). */
#define MAX_RANGES 64
static UINT64 range_base[MAX_RANGES], range_bytes[MAX_RANGES], range_count;
static UINT64 range_past_status, range_past_count;

static void fetch_resident_ranges(void)
{
    UINT64 base, bytes, count;
    struct hvprobe p;
    hvprobe_run(&p);
    if (!p.ours || vmcall_resident_range(0, &base, &bytes, &count) != 0) /* no VMCALL without it */
        return;
    for (UINT64 i = 0; i < count && i < MAX_RANGES; i++)
        if (vmcall_resident_range(i, &range_base[i], &range_bytes[i], &count) == 0)
            range_count = i + 1;
    range_past_status = vmcall_resident_range(count, &base, &bytes, &range_past_count);
}

/* One line per range the hypervisor keeps; the number of failed checks. */
static int check_resident_memory(UINTN map_size, UINTN desc_size)
{
    UINT64 base, bytes, count = range_count, total = 0;
    if (count == 0) {
        say("OSMODEL: BSP: check failed: GET_RESIDENT_RANGES before ExitBootServices: no ranges\n");
        return 1;
    }
    int failed = 0;
    for (UINT64 i = 0; i < count; i++) {
        base = range_base[i];
        bytes = range_bytes[i];
        unsigned types = 0;
        UINT64 end = base + bytes, until = runtime_memory_until(base, end, map_size, desc_size, &types);
        total += bytes;
        if (until != end) {
            say("OSMODEL: BSP: check failed: uefi-hv range 0x%lx-0x%lx: 0x%lx is not runtime "
                "memory in the OS's memory map\n",
                base, end, until);
            failed++;
            continue;
        }
        say("OSMODEL: BSP: uefi-hv range 0x%lx-0x%lx (%lu KiB) lies in %s in the OS's memory map\n", base,
            end, bytes / 1024,
            types == (RUNTIME_CODE_SEEN | RUNTIME_DATA_SEEN) ? "EfiRuntimeServicesCode and Data"
            : types == RUNTIME_CODE_SEEN                     ? "EfiRuntimeServicesCode"
                                                             : "EfiRuntimeServicesData");
    }
    if (range_past_status != 0xFFFFFFFFFFFFFFFEULL || range_past_count != count) {
        say("OSMODEL: BSP: check failed: GET_RESIDENT_RANGES %lu (past the last): status 0x%lx, "
            "count %lu; want \"bad argument\" and %lu\n",
            count, range_past_status, range_past_count, count);
        failed++;
    }
    if (!failed)
        say("OSMODEL: BSP: all %lu uefi-hv ranges (%lu KiB) are runtime memory in the OS's memory map\n",
            count, total / 1024);
    return failed;
}

/* Isolation, from the OS (after ExitBootServices): every page of the
 * hypervisor's ranges reads as zeros (none of its bytes), a store of garbage
 * into each raises #GP and is one EPT violation the hypervisor counts, and
 * the VMCALLs that would map or remove the hypervisor are refused. The number
 * of failed checks. */
#define VMCALL_REFUSED 0xFFFFFFFFFFFFFFFDULL

/* An IDT across two pages of linear memory at 4 GiB (unused by the model):
 * its vectors 0-31 at the end of the first, the model's own gates, and
 * vector 32 at the start of the second, which maps `page`. INT 32 there; the
 * #GP error code it raised, or 0 (vector 32's gate must be a valid one). */
static UINT64 int32_with_gate_in(UINT64 page)
{
    static struct idt_gate gates[256] __attribute__((aligned(4096)));
    static UINT64 idt_pd[512] __attribute__((aligned(4096))), idt_pt[512] __attribute__((aligned(4096)));
    const UINT64 linear = 4ULL << 30;
    CopyMem(&gates[256 - 32], idt, sizeof idt);
    idt_pt[0] = (UINT64)gates | PAGE_TABLE_FLAGS;
    idt_pt[1] = page | PAGE_TABLE_FLAGS;
    idt_pd[0] = (UINT64)idt_pt | PAGE_TABLE_FLAGS;
    pdpt[4] = (UINT64)idt_pd | PAGE_TABLE_FLAGS;
    __asm__ volatile("invlpg (%0); invlpg (%1)" : : "r"(linear), "r"(linear + 4096) : "memory");
    struct table_register own, across = { 33 * 16 - 1, linear + 4096 - 32 * 16 };
    __asm__ volatile("sidt %0; lidt %1" : "=m"(own) : "m"(across) : "memory");
    UINT64 error_code = osmodel_try_int32();
    __asm__ volatile("lidt %0" : : "m"(own) : "memory");
    return error_code;
}

static int check_isolation(void)
{
    UINT64 pages = 0, nonzero = 0, faults = 0, base, bytes, count;
    UINT64 violations = vmcall_exit_count(OSKIT_EXIT_REASON_EPT_VIOLATION);
    for (UINT64 i = 0; i < range_count; i++)
        for (UINT64 page = range_base[i]; page < range_base[i] + range_bytes[i]; page += 4096, pages++) {
            volatile UINT64 *p = (volatile UINT64 *)page;
            for (UINT64 w = 0; w < 512; w++)
                nonzero += p[w] != 0;
            faults += osmodel_try_store(p + (pages * 8) % 512, 0xBAD0BAD0BAD0BAD0ULL ^ page);
        }
    violations = vmcall_exit_count(OSKIT_EXIT_REASON_EPT_VIOLATION) - violations;
    int failed = 0;
    if (nonzero || faults != pages || violations != pages) {
        say("OSMODEL: BSP: check failed: the hypervisor's %lu pages: %lu non-zero words read, %lu stores "
            "raised #GP, %lu EPT violations counted\n",
            pages, nonzero, faults, violations);
        failed++;
    } else {
        say("OSMODEL: BSP: the hypervisor's %lu pages read as zeros; a store into each raised #GP, "
            "%lu EPT violations counted\n",
            pages, violations);
    }
    /* A GDT the OS puts in the hypervisor's memory is a zeroed one, as on a
     * machine whose memory there is zeros: LAR finds no descriptor (ZF clear,
     * no fault: SDM Vol. 2A, LAR), where the model's own GDT has one. With
     * interrupts off nothing else reads the GDT meanwhile. */
    struct table_register own, hidden = { 0xFFF, range_base[0] };
    UINT64 valid_own = 0, valid_hidden = 0, ar;
    __asm__ volatile("sgdt %0" : "=m"(own));
    __asm__ volatile("lar %2, %1; setz %b0" : "+r"(valid_own), "=r"(ar) : "r"((UINT64)MODEL_DS) : "cc");
    __asm__ volatile("lgdt %2; lar %3, %1; setz %b0; lgdt %4"
                     : "+r"(valid_hidden), "=r"(ar)
                     : "m"(hidden), "r"((UINT64)MODEL_DS), "m"(own)
                     : "cc", "memory");
    if (!valid_own || valid_hidden) {
        say("OSMODEL: BSP: check failed: LAR 0x%x: %s in the model's GDT, %s in a GDT at 0x%lx\n", MODEL_DS,
            valid_own ? "valid" : "invalid", valid_hidden ? "valid" : "invalid", range_base[0]);
        failed++;
    } else {
        say("OSMODEL: BSP: a GDT in the hypervisor's memory (0x%lx) holds no descriptor, as a zeroed one\n",
            range_base[0]);
    }
    /* An IDT there holds no gate: INT 32 through it raises #GP with the
     * gate's index (32 * 8 + 2: IDT, SDM 7.13.1), as through a zeroed page
     * of the model's own. The same fault is what matters: QEMU's TCG pushes
     * 32 * 16 + 2 for either in 64-bit mode. */
    static UINT8 zeroed[4096] __attribute__((aligned(4096)));
    UINT64 in_hidden = int32_with_gate_in(range_base[0]), in_zeroed = int32_with_gate_in((UINT64)zeroed);
    if (in_hidden != in_zeroed || !(in_hidden & 2)) {
        say("OSMODEL: BSP: check failed: INT 32 with its gate in the hypervisor's memory: #GP 0x%lx, in a "
            "zeroed "
            "page: #GP 0x%lx (want the same, with the IDT bit)\n",
            in_hidden, in_zeroed);
        failed++;
    } else {
        say("OSMODEL: BSP: an IDT in the hypervisor's memory (0x%lx) holds no gate: INT 32 raised "
            "#GP(0x%lx), as "
            "with a zeroed one\n",
            range_base[0], in_hidden);
    }
    UINT64 ranges = vmcall_resident_range(0, &base, &bytes, &count);
    unsigned long long r[4] = { OSKIT_VMCALL_DEVIRTUALIZE, 0, 0, 0 };
    hvprobe_hypercall(r);
    UINT64 rax = r[0];
    if (ranges != VMCALL_REFUSED || rax != VMCALL_REFUSED) {
        say("OSMODEL: BSP: check failed: after ExitBootServices GET_RESIDENT_RANGES gave 0x%lx, "
            "DEVIRTUALIZE 0x%lx (want 0x%lx, refused)\n",
            ranges, rax, VMCALL_REFUSED);
        failed++;
    } else {
        say("OSMODEL: BSP: after ExitBootServices GET_RESIDENT_RANGES and DEVIRTUALIZE are refused\n");
    }
    return failed;
}

/* SetVirtualAddressMap with the runtime regions mapped where they are. */
static EFI_STATUS identity_virtual_map(UINTN map_size, UINTN desc_size, UINT32 desc_version,
                                       UINTN *runtime_regions)
{
    UINTN n = 0;
    FOR_EACH_DESCRIPTOR(d, memory_map, map_size, desc_size)
    {
        if (!(d->Attribute & EFI_MEMORY_RUNTIME))
            continue;
        if ((n + 1) * desc_size > sizeof(runtime_map))
            return EFI_BUFFER_TOO_SMALL;
        EFI_MEMORY_DESCRIPTOR *r = (EFI_MEMORY_DESCRIPTOR *)(runtime_map + n * desc_size);
        CopyMem(r, d, desc_size);
        r->VirtualStart = r->PhysicalStart;
        n++;
    }
    *runtime_regions = n;
    return uefi_call_wrapper(RT->SetVirtualAddressMap, 4, n * desc_size, desc_size, desc_version,
                             (EFI_MEMORY_DESCRIPTOR *)runtime_map);
}

/* The highest free page below 1 MiB, as the map says: where an OS puts its
 * trampoline. 0 when there is none. The first page (the real-mode IVT) is
 * left alone. */
static UINT64 low_conventional_page(UINTN map_size, UINTN desc_size)
{
    UINT64 best = 0;
    FOR_EACH_DESCRIPTOR(d, memory_map, map_size, desc_size)
    {
        if (d->Type != EfiConventionalMemory)
            continue;
        UINT64 start = (d->PhysicalStart + 0xFFF) & ~0xFFFULL;
        UINT64 end = d->PhysicalStart + d->NumberOfPages * 4096;
        if (end > 0x100000)
            end = 0x100000;
        if (start < 0x1000)
            start = 0x1000;
        if (end >= start + 4096 && end - 4096 > best)
            best = (end - 4096) & ~0xFFFULL;
    }
    return best;
}

static void take_over_machine_state(void)
{
    /* Identity map of the first 4 GiB in 2 MiB pages; the top 32 MiB
     * (APIC, IOAPIC, firmware flash) uncached. */
    for (int g = 0; g < 4; g++) {
        for (int i = 0; i < 512; i++) {
            UINT64 address = ((UINT64)g << 30) | ((UINT64)i << 21);
            pd[g][i] = address | PAGE_2M_FLAGS | (address >= 0xFE000000ULL ? PAGE_PCD_PWT : 0);
        }
        pdpt[g] = (UINT64)pd[g] | PAGE_TABLE_FLAGS;
    }
    pml4[0] = (UINT64)pdpt | PAGE_TABLE_FLAGS;

    for (int v = 0; v < 32; v++) {
        UINT64 handler = (UINT64)osmodel_exception_stubs + 16 * v;
        idt[v] = (struct idt_gate){
            .offset_low = (UINT16)handler,
            .selector = MODEL_CS64,
            .ist = 0,
            .type = 0x8E, /* present, DPL 0, 64-bit interrupt gate */
            .offset_mid = (UINT16)(handler >> 16),
            .offset_high = (UINT32)(handler >> 32),
        };
    }

    struct table_register gdtr = { sizeof(gdt) - 1, (UINT64)gdt };
    __asm__ volatile("cli; lgdt %0" : : "m"(gdtr));
    osmodel_load_segments();
    load_idt();
    __asm__ volatile("mov %0, %%cr3" : : "r"((UINT64)pml4) : "memory");
}

/* Copy the trampoline to `page` and fill its parameter block. */
static void prepare_trampoline(UINT64 page, UINT64 round)
{
    UINT8 *dst = (UINT8 *)page;
    UINTN size = osmodel_trampoline_end - osmodel_trampoline_start;
    CopyMem(dst, osmodel_trampoline_start, size);
#define PARAM(sym) (dst + ((sym) - osmodel_trampoline_start))
    *(UINT16 *)PARAM(osmodel_tr_gdtr) = sizeof(gdt) - 1;
    *(UINT32 *)(PARAM(osmodel_tr_gdtr) + 2) = (UINT32)(UINT64)gdt;
    *(UINT32 *)PARAM(osmodel_tr_far32) = (UINT32)(page + osmodel_tr_protected_offset);
    *(UINT32 *)PARAM(osmodel_tr_far64) = (UINT32)(page + osmodel_tr_long_offset);
    *(UINT64 *)PARAM(osmodel_tr_cr3) = (UINT64)pml4;
    *(UINT64 *)PARAM(osmodel_tr_rsp) = (UINT64)(ap_stack + sizeof(ap_stack));
    *(UINT64 *)PARAM(osmodel_tr_entry) = (UINT64)ap_main;
    *(UINT64 *)PARAM(osmodel_tr_arg) = round;
    /* Task B's TSS: where it starts, its stack and registers (SDM 9.2.1
     * "Task-State Segment (TSS)": EIP at 0x20, EFLAGS 0x24, EAX 0x28, EBX
     * 0x34, ESP 0x38, ES..GS from 0x48, the I/O map base at 0x66). */
    UINT32 *b = (UINT32 *)PARAM(osmodel_tr_tss_b);
    b[0x20 / 4] = (UINT32)(page + osmodel_tr_task_b_offset);
    b[0x24 / 4] = 0x2;
    b[0x28 / 4] = TASK_B_EAX;
    b[0x34 / 4] = (UINT32)page;
    b[0x38 / 4] = (UINT32)(UINT64)PARAM(osmodel_tr_task_b_stack);
    for (int seg = 0; seg < 6; seg++) /* ES, CS, SS, DS, FS, GS */
        b[0x48 / 4 + seg] = seg == 1 ? MODEL_CS32 : MODEL_DS;
    ((UINT16 *)b)[0x66 / 2] = 0x68; /* no I/O permission map */
    gdt[4] = tss32_descriptor((UINT64)PARAM(osmodel_tr_tss_a));
    gdt[5] = tss32_descriptor((UINT64)PARAM(osmodel_tr_tss_b));
#undef PARAM
}

/* Start the AP with APIC id `apic` into ap_main(round); NULL when it came
 * and its checks passed, else what went wrong. One AP at a time: they share
 * the trampoline and its stack. */
static const char *start_ap(UINT32 apic, UINT64 page, UINT64 round)
{
    prepare_trampoline(page, round);
    __atomic_store_n(&ap_done, 0, __ATOMIC_RELEASE);
    say("OSMODEL: BSP: INIT-SIPI-SIPI to APIC %u, round %lu, trampoline at 0x%lx "
        "(SIPI vector 0x%lx)\n",
        apic, round, page, page >> 12);
    init_sipi_sipi(apic, page);
    UINT64 deadline = rdtsc() + tsc_per_ms * AP_WAIT_MS;
    while (!__atomic_load_n(&ap_done, __ATOMIC_ACQUIRE) && rdtsc() < deadline)
        __asm__ volatile("pause");
    UINT32 done = __atomic_load_n(&ap_done, __ATOMIC_ACQUIRE);
    if (!done) {
        say("OSMODEL: BSP: APIC %u did not report within %u ms of round %lu\n", apic, AP_WAIT_MS, round);
        return round == 1 ? "an AP did not start, round 1" : "an AP did not start, round 2";
    }
    if (ap_round != round || ap_apic_id != apic) {
        say("OSMODEL: BSP: APIC %u reported round %u, expected APIC %u, round %lu\n", ap_apic_id, ap_round,
            apic, round);
        return "the wrong AP or round reported";
    }
    if (done != 1)
        return round == 1 ? "an AP's checks, round 1" : "an AP's checks, round 2";
    UINT32 switches = *(volatile UINT32 *)(page + (osmodel_tr_task_switches - osmodel_trampoline_start));
    if (switches != 1) {
        say("OSMODEL: BSP: APIC %u: task B was entered as it should be %u times, not once, round %lu\n", apic,
            switches, round);
        return "an AP's task switch there and back";
    }
    say("OSMODEL: BSP: APIC %u: task switch to TSS B and back by IRET, round %lu: ok\n", apic, round);
    say("OSMODEL: BSP: APIC %u reported, round %lu\n", apic, round);
    return NULL;
}

/* The APs' APIC ids, from the firmware's MP services: while boot services
 * last, as an OS would read them from the MADT (OVMF under Bochs has none). */
static EFI_STATUS find_aps(void)
{
    EFI_GUID guid = MP_SERVICES_GUID;
    struct mp_services *mp;
    UINTN all, enabled;
    EFI_STATUS status = uefi_call_wrapper(BS->LocateProtocol, 3, &guid, NULL, (void **)&mp);
    if (EFI_ERROR(status))
        return status;
    status = uefi_call_wrapper(mp->get_number_of_processors, 3, mp, &all, &enabled);
    if (EFI_ERROR(status))
        return status;
    if (all > MAX_CPUS)
        return EFI_BUFFER_TOO_SMALL;
    for (UINTN n = 0; n < all; n++) {
        struct processor_information info;
        status = uefi_call_wrapper(mp->get_processor_info, 3, mp, n, &info);
        if (EFI_ERROR(status))
            return status;
        if (!(info.status_flag & PROCESSOR_AS_BSP_BIT))
            ap_ids[ap_count++] = (UINT32)info.processor_id;
    }
    return EFI_SUCCESS;
}

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)
{
    UINTN map_size, desc_size, runtime_regions;
    UINT32 desc_version;
    EFI_STATUS status;

    InitializeLib(image, systab);
    say("OSMODEL: start: taking the machine over from the firmware\n");

    /* While the firmware still keeps time: the TSC rate, for the APIC delays. */
    UINT64 t0 = rdtsc();
    uefi_call_wrapper(BS->Stall, 1, 10000);
    tsc_per_ms = (rdtsc() - t0) / 10;
    if (!tsc_per_ms)
        tsc_per_ms = 1;
    UINT64 apic_base = rdmsr(MSR_IA32_APIC_BASE);
    x2apic = (apic_base & APIC_BASE_X2APIC) != 0;
    apic_mmio = apic_base & ~0xFFFULL & 0x000FFFFFFFFFFFFFULL;
    say("OSMODEL: TSC %lu per ms; local APIC %s at 0x%lx; model image at 0x%lx\n", tsc_per_ms,
        x2apic ? "in x2APIC mode" : "xAPIC", apic_mmio, (UINT64)efi_main);
    status = find_aps();
    if (EFI_ERROR(status)) {
        say("OSMODEL: FAIL: the firmware's MP services: status 0x%lx\n", (UINT64)status);
        halt_forever();
    }
    say("OSMODEL: MP services: %lu CPU(s), the BSP and %lu AP(s)\n", (UINT64)ap_count + 1, (UINT64)ap_count);
    if ((UINT64)gdt >> 32 || (UINT64)pml4 >> 32 || (UINT64)pml4 & 0xFFF) {
        say("OSMODEL: FAIL: the model's tables must lie below 4 GiB, page-aligned (pml4 0x%lx)\n",
            (UINT64)pml4);
        halt_forever();
    }

    fetch_resident_ranges(); /* under uefi-hv: refused to the OS after ExitBootServices */
    status = exit_boot_services(image, &map_size, &desc_size, &desc_version);
    if (EFI_ERROR(status)) {
        say("OSMODEL: FAIL: ExitBootServices: status 0x%lx\n", (UINT64)status);
        halt_forever();
    }
    say("OSMODEL: ExitBootServices done (%lu descriptors of %lu bytes)\n", (UINT64)(map_size / desc_size),
        (UINT64)desc_size);

    status = identity_virtual_map(map_size, desc_size, desc_version, &runtime_regions);
    if (EFI_ERROR(status)) {
        say("OSMODEL: FAIL: SetVirtualAddressMap: status 0x%lx\n", (UINT64)status);
        halt_forever();
    }
    say("OSMODEL: SetVirtualAddressMap done (%lu runtime regions, identity)\n", (UINT64)runtime_regions);

    take_over_machine_state();
    say("OSMODEL: own GDT, IDT and page tables loaded (CR3 0x%lx)\n", (UINT64)pml4);
#ifdef OSMODEL_X2APIC
    /* As Linux does on a machine with x2APIC: the BSP's local APIC goes to
     * x2APIC mode (EN and EXTD, SDM Vol. 3A 11.12.1), and the ICR becomes
     * MSR 0x830 for the INIT-SIPI-SIPI below. */
    if (!x2apic) {
        unsigned int r[4];
        hvprobe_cpuid(1, 0, r);
        if (!(r[2] & (1U << 21))) {
            say("OSMODEL: FAIL: no x2APIC on this CPU (CPUID.1:ECX[21] = 0)\n");
            halt_forever();
        }
        wrmsr(MSR_IA32_APIC_BASE, rdmsr(MSR_IA32_APIC_BASE) | APIC_BASE_X2APIC);
        x2apic = (rdmsr(MSR_IA32_APIC_BASE) & APIC_BASE_X2APIC) != 0;
        say("OSMODEL: BSP: local APIC switched to %s\n", x2apic ? "x2APIC mode" : "nothing: EXTD stays 0");
    }
#endif
#ifdef OSMODEL_FAULT_TEST
    /* The tests' proof that the model's IDT reports what goes wrong: #UD. */
    say("OSMODEL: fault test: UD2 next\n");
    __asm__ volatile("ud2");
#endif

    if (check_cpu("BSP", &bsp_probe))
        fail("the BSP's hypervisor checks");
    if (bsp_probe.ours && check_resident_memory(map_size, desc_size))
        fail("the hypervisor's memory is not all runtime memory in the OS's map");
    if (bsp_probe.ours && check_isolation())
        fail("the hypervisor's memory is not isolated from the OS");

    UINT64 page = low_conventional_page(map_size, desc_size);
    if (!ap_count) {
        say("OSMODEL: BSP: the only CPU: no AP to start\n");
    } else if (!page) {
        fail("no conventional memory page below 1 MiB for the AP trampoline");
    } else {
        for (UINT64 round = 1; round <= AP_ROUNDS; round++) {
            for (UINTN i = 0; i < ap_count; i++) {
                const char *why = start_ap(ap_ids[i], page, round);
                if (why)
                    fail(why);
            }
        }
    }

    if (failures)
        say("OSMODEL: FAIL: %s\n", first_failure);
    else if (bsp_probe.ours)
        say("OSMODEL: PASS\n");
    else
        say("OSMODEL: MECHANICS PASS, hypervisor absent\n");

    uefi_call_wrapper(RT->ResetSystem, 4, EfiResetShutdown, EFI_SUCCESS, 0, NULL);
    say("OSMODEL: ResetSystem returned; halting\n");
    halt_forever();
}

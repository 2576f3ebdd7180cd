/*
 * Microcode updates under the hypervisor.
 *
 * "Microcode updates must not be performed during VMX non-root operation"
 * (SDM 34.4 "Microcode Update Facility"), so the spec intercepts WRMSR to
 * IA32_BIOS_UPDT_TRIG (`write IA32_BIOS_UPDT_TRIG = microcode_update`), and
 * the update is loaded here, in VMX root, as SDM 34.4.2 "Late Load of
 * Microcode Updates" lets a VMM do for its guest. IA32_BIOS_SIGN_ID is not
 * intercepted: the guest writes 0 to it, executes CPUID (which exits and runs
 * here, and the processor fills in the revision) and reads the true revision
 * (SDM 11.11.7.1 "Determining the Signature"), also after an update.
 *
 * The update's address in WRMSR is guest-linear, and the pages under it need
 * not be contiguous (Linux's late loader vmallocs it). They are mapped, in
 * order, into a window of the host's page tables, and the processor is given
 * the window's address: nothing is copied.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"

/* SDM 11.11.1 "Microcode Update", Table 11-7 "Microcode Update Field
 * Definitions": the 48-byte header before the update data. */
struct microcode_header {
    UINT32 header_version; /* 1 */
    UINT32 update_revision;
    UINT32 date;
    UINT32 processor_signature;
    UINT32 checksum;
    UINT32 loader_revision; /* 1 */
    UINT32 processor_flags;
    UINT32 data_size;  /* 0: 2000 bytes */
    UINT32 total_size; /* 0: 2048 bytes */
    UINT32 reserved[3];
};
_Static_assert(sizeof(struct microcode_header) == 48, "SDM Table 11-7: a 48-byte header");

/* The window: the top 4 MiB of the host's linear address space, two page
 * tables under PML4 entry 511 (the identity map ends at 64 TiB, PML4 entry
 * 127). Intel's largest updates are under 1 MiB. */
#define WINDOW_BASE  0xFFFFFF8000000000ULL
#define WINDOW_PAGES 1024
#define PTE_P        (1ULL << 0)
#define PTE_W        (1ULL << 1)

static UINT64 *window_pt[WINDOW_PAGES / 512];
static volatile UINT32 window_lock; /* one update at a time, on any CPU */

EFI_STATUS hv_map_microcode_window(UINT64 *pml4)
{
    UINT64 *pdpt = hv_alloc_table(), *pd = hv_alloc_table();
    if (!pdpt || !pd)
        return EFI_OUT_OF_RESOURCES;
    pml4[(WINDOW_BASE >> 39) & 511] = (UINT64)pdpt | PTE_P | PTE_W;
    pdpt[(WINDOW_BASE >> 30) & 511] = (UINT64)pd | PTE_P | PTE_W;
    for (UINTN i = 0; i < WINDOW_PAGES / 512; i++) {
        if (!(window_pt[i] = hv_alloc_table()))
            return EFI_OUT_OF_RESOURCES;
        pd[((WINDOW_BASE >> 21) & 511) + i] = (UINT64)window_pt[i] | PTE_P | PTE_W;
    }
    return EFI_SUCCESS;
}

/* The revision of the update the processor runs (SDM 11.11.7.1
 * "Determining the Signature"): 0 written to IA32_BIOS_SIGN_ID, CPUID.1,
 * then bits 63:32. */
UINT32 hv_microcode_revision(void)
{
    UINT32 r[4];
    wrmsr(MSR_IA32_BIOS_SIGN_ID, 0);
    cpuid(1, 0, r);
    return (UINT32)(rdmsr(MSR_IA32_BIOS_SIGN_ID) >> 32);
}

/* The guest's pages from `linear` on, `bytes` of them, in the window; FALSE
 * where one is not present. With window_lock held. */
static BOOLEAN map_guest_range(UINT64 linear, UINT64 bytes)
{
    UINT64 first = linear & ~(UINT64)(HV_PAGE_SIZE - 1);
    UINT64 pages = (linear + bytes - first + HV_PAGE_SIZE - 1) / HV_PAGE_SIZE;
    for (UINT64 i = 0; i < pages; i++) {
        UINT64 pa, va = WINDOW_BASE + i * HV_PAGE_SIZE;
        if (!hv_guest_physical(first + i * HV_PAGE_SIZE, &pa))
            return FALSE;
        window_pt[i / 512][i % 512] = (pa & ~(UINT64)(HV_PAGE_SIZE - 1)) | PTE_P;
        __asm__ volatile("invlpg (%0)" ::"r"(va) : "memory");
    }
    return TRUE;
}

/* Why the update whose data is at guest-linear `data` cannot be handed to
 * the processor, or NULL: then *h is its header and *total its size. */
static const char *check_update(UINT64 data, struct microcode_header *h, UINT64 *total)
{
    UINT64 header = data - sizeof *h;
    if (!window_pt[0])
        return "the hypervisor runs on the firmware's page tables (HOST_CR3 is not symbol(host_cr3))";
    if (!hv_guest_read(header, h, sizeof *h))
        return "its header is not in guest memory";
    *total = h->total_size ? h->total_size : 2048;
    if (h->header_version != 1 || h->loader_revision != 1)
        return "its header is not a version 1 header for loader revision 1";
    if (data & 15)
        return "its data is not 16-byte aligned";
    if (*total < sizeof *h || (header & (HV_PAGE_SIZE - 1)) + *total > WINDOW_PAGES * HV_PAGE_SIZE)
        return "its total size does not fit the hypervisor's 4 MiB window";
    return NULL;
}

/* WRMSR IA32_BIOS_UPDT_TRIG from the guest; `data` is the guest-linear
 * address of the update data, which follows the 48-byte header. */
enum hv_exit_result hv_microcode_update(struct hv_cpu *cpu, UINT64 data)
{
    struct microcode_header h;
    UINT64 total = 0, header = data - sizeof h, faulted = 0;
    const char *refused = check_update(data, &h, &total);
    if (!refused) {
        while (__atomic_exchange_n(&window_lock, 1, __ATOMIC_ACQUIRE))
            cpu_pause();
        if (map_guest_range(header, total))
            faulted = hv_safe_wrmsr(MSR_IA32_BIOS_UPDT_TRIG,
                                    WINDOW_BASE + (header & (HV_PAGE_SIZE - 1)) + sizeof h);
        else
            refused = "a page of it is not in guest memory";
        __atomic_store_n(&window_lock, 0, __ATOMIC_RELEASE);
    }
    if (refused) {
        /* Not handed to the processor: as a processor does with an update
         * it rejects, the revision stays and the guest goes on. */
        hv_log("uefi-hv: cpu %u: microcode update at guest-linear 0x%lx not loaded: %s\n", cpu->index, data,
               refused);
        return HV_RESUME_NEXT;
    }
    if (faulted) {
        hv_log("uefi-hv: cpu %u: microcode update to revision 0x%x: WRMSR 0x79 raised #GP in VMX root; "
               "#GP for the guest\n",
               cpu->index, h.update_revision);
        hv_inject_exception(VECTOR_GP, TRUE, 0);
        return HV_RESUME_SAME;
    }
    UINT32 now = hv_microcode_revision();
    hv_log(
        "uefi-hv: cpu %u: microcode update to revision 0x%x (%lu bytes) handed to the processor in VMX root: "
        "revision now 0x%x (%s)\n",
        cpu->index, h.update_revision, total, now, now == h.update_revision ? "loaded" : "refused");
    return HV_RESUME_NEXT;
}

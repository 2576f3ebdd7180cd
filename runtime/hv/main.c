/*
 * efi_main: the start-up sequence. Each step says what it does; any failure
 * says why, undoes everything (VMX off on every CPU, memory freed) and lets
 * the boot go on as if the hypervisor had never been loaded.
 *
 * The firmware unloads an application when its entry point returns (UEFI
 * 2.10, 7.4 "StartImage"), and its pages may then be reused. The hypervisor
 * must outlive that, so efi_main first copies the whole image into
 * EfiRuntimeServicesCode pages, re-applies the image's own relocations
 * (gnu-efi links it position-independent: R_X86_64_RELATIVE only) and runs
 * the rest from the copy.
 */
#include "hv.h"
#include "cpu.h"

extern char ImageBase[];
typedef struct {
    INT64 tag;
    UINT64 value;
} elf64_dyn;
typedef struct {
    UINT64 offset, info;
    INT64 addend;
} elf64_rela;
extern elf64_dyn _DYNAMIC[];
#define DT_NULL           0
#define DT_RELA           7
#define DT_RELASZ         8
#define DT_RELAENT        9
#define R_X86_64_RELATIVE 8

typedef EFI_STATUS (*hv_main_fn)(EFI_HANDLE image);
/* The notify function of the ExitBootServices event (UEFI 2.10, 7.1
 * "CreateEvent": EVT_SIGNAL_EXIT_BOOT_SERVICES): VMCALL (VMMCALL with SVM)
 * EXIT_BOOT_SERVICES, which hides the rest of the hypervisor's memory, this
 * code included, and returns to the firmware itself (protect.c). Plain
 * assembly: no prologue for the call to undo. */
const UINT64 hv_exit_boot_services_vmcall = HV_VMCALL_EXIT_BOOT_SERVICES;
VOID EFIAPI hv_exit_boot_services_notify(EFI_EVENT event, VOID *context);
VOID EFIAPI hv_exit_boot_services_notify_svm(EFI_EVENT event, VOID *context);
__asm__(".text\n"
        ".globl hv_exit_boot_services_notify\n"
        "hv_exit_boot_services_notify:\n"
        "    movq hv_exit_boot_services_vmcall(%rip), %rax\n"
        "    vmcall\n"
        "    ud2\n"
        ".globl hv_exit_boot_services_notify_svm\n"
        "hv_exit_boot_services_notify_svm:\n"
        "    movq hv_exit_boot_services_vmcall(%rip), %rax\n"
        "    vmmcall\n"
        "    ud2\n");

static void notify_exit_boot_services(void)
{
    EFI_EVENT event;
    EFI_STATUS status = uefi_call_wrapper(
        BS->CreateEvent, 5, EVT_SIGNAL_EXIT_BOOT_SERVICES, TPL_NOTIFY,
        hv.svm ? hv_exit_boot_services_notify_svm : hv_exit_boot_services_notify, NULL, &event);
    if (EFI_ERROR(status))
        hv_say(
            "uefi-hv: no ExitBootServices event (status 0x%lx): the hypervisor's image stays visible to the "
            "guest, and the OS may use every VMCALL\n",
            (UINT64)status);
}

static UINTN image_pages; /* the resident copy's size, for the figures */
static UINT64 image_copy; /* ... and where it is (GET_RESIDENT_RANGES) */
static BOOLEAN resident;  /* a CPU runs as a guest: the copy must stay */
static EFI_STATUS hv_main(EFI_HANDLE image);

/* A copy of this image at `copy`, its absolute pointers moved by the
 * distance between the two (what gnu-efi's _relocate did at load time). */
static void relocate_copy(UINT8 *copy, UINT64 delta)
{
    UINT64 rela = 0, size = 0, entry = sizeof(elf64_rela);
    for (elf64_dyn *d = _DYNAMIC; d->tag != DT_NULL; d++) {
        if (d->tag == DT_RELA)
            rela = d->value;
        else if (d->tag == DT_RELASZ)
            size = d->value;
        else if (d->tag == DT_RELAENT)
            entry = d->value;
    }
    for (UINT64 off = 0; rela && off < size; off += entry) {
        elf64_rela *r = (elf64_rela *)(copy + rela + off);
        if ((r->info & 0xFFFFFFFF) == R_X86_64_RELATIVE)
            *(UINT64 *)(copy + r->offset) += delta;
    }
}

/* Not EFIAPI: gnu-efi's crt0 calls efi_main with the System V ABI. */
EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *system_table)
{
    InitializeLib(image, system_table);
    EFI_LOADED_IMAGE *self;
    EFI_STATUS status = uefi_call_wrapper(BS->HandleProtocol, 3, image, &LoadedImageProtocol, (VOID **)&self);
    if (EFI_ERROR(status))
        return status;
    UINT8 *base = (UINT8 *)self->ImageBase;
    UINTN pages = (self->ImageSize + HV_PAGE_SIZE - 1) / HV_PAGE_SIZE;
    EFI_PHYSICAL_ADDRESS copy = 0;
    status = hv_allocate_runtime(EfiRuntimeServicesCode, pages, &copy);
    if (EFI_ERROR(status)) {
        Print(L"uefi-hv: cannot allocate %u pages of runtime memory: %r\n", pages, status);
        return status;
    }
    hv_copy((void *)copy, base, self->ImageSize);
    relocate_copy((UINT8 *)copy, copy - (UINT64)base);
    hv_main_fn run = (hv_main_fn)(copy + ((UINT8 *)hv_main - base));
    *(UINTN *)(copy + ((UINT8 *)&image_pages - base)) = pages;
    *(UINT64 *)(copy + ((UINT8 *)&image_copy - base)) = copy;
    status = run(image);
    /* The status says how the boot should go on (hv_main), not whether the
     * hypervisor stayed: that is the copy's `resident`. */
    if (!*(BOOLEAN *)(copy + ((UINT8 *)&resident - base))) /* nothing runs from the copy */
        uefi_call_wrapper(BS->FreePages, 2, copy, pages);
    return status;
}

static struct hv_cpu *bsp;
static UINTN shared_pages;

/* What differs per vendor at start-up: how a CPU is checked and launched
 * (vmcs_setup.c for VMX, svm.c for SVM). */
struct hv_backend {
    const char *name;
    BOOLEAN (*prepare_cpu)(struct hv_cpu *cpu);
    BOOLEAN (*launch_cpu)(struct hv_cpu *cpu);
};
static const struct hv_backend vmx_backend = { "VMX (Intel VT-x)", hv_prepare_cpu, hv_launch_cpu };
#if HV_SVM
static const struct hv_backend svm_backend = { "SVM (AMD-V)", hv_svm_prepare_cpu, hv_svm_launch_cpu };
#endif

static const struct hv_backend *backend; /* choose_backend */

static void prepare_ap(struct hv_cpu *cpu)
{
    backend->prepare_cpu(cpu);
}

/* The DEVIRTUALIZE VMCALL, from the guest side (docs/vmcall.md). */
static void devirtualize_this_cpu(struct hv_cpu *cpu)
{
    if (cpu->status != HV_CPU_LAUNCHED)
        return;
    UINT64 rax = HV_VMCALL_DEVIRTUALIZE;
    if (hv.svm)
        __asm__ volatile("vmmcall" : "+a"(rax) : : "rbx", "rcx", "rdx", "memory", "cc");
    else
        __asm__ volatile("vmcall" : "+a"(rax) : : "rbx", "rcx", "rdx", "memory", "cc");
}

static void launch_ap(struct hv_cpu *cpu)
{
    if (backend->launch_cpu(cpu))
        __atomic_add_fetch(&hv.launched_count, 1, __ATOMIC_SEQ_CST);
}

/* Failure before any launch: nothing is in VMX operation; free, and go on. */
static EFI_STATUS give_up(EFI_HANDLE image, EFI_STATUS status)
{
    hv_free_all();
    hv.cpus = NULL; /* freed with the rest */
    hv_say("uefi-hv: %s is off on every CPU and the hypervisor's memory is freed; the boot continues\n",
           hv.svm ? "SVM" : "VMX");
    hv_start_next_image(image);
    return status;
}

static void report_failures(void)
{
    for (UINT32 i = 0; i < hv.cpu_count; i++)
        if (hv.cpus && hv.cpus[i]->status == HV_CPU_FAILED) /* none before hv_alloc_cpus */
            hv_say("uefi-hv: cpu %u: %s\n", i, hv.cpus[i]->error);
}

/* VMX or SVM, from CPUID (SDM 25.6 "Discovering Support for VMX", APM vol. 2
 * 15.4 "Enabling SVM"), and whether the firmware left it on. NULL when one
 * can run, else why neither can; nothing is changed yet. */
static const char *choose_backend(void)
{
    UINT32 r[4];
    backend = &vmx_backend;
    cpuid(1, 0, r);
    if (r[2] & (1U << 5)) {
        /* SDM 25.7 "Enabling and Entering VMX Operation": a firmware setting when locked. */
        UINT64 fc = rdmsr(MSR_IA32_FEATURE_CONTROL);
        if ((fc & FEATURE_CONTROL_LOCK) && !(fc & FEATURE_CONTROL_VMX_OUTSIDE_SMX))
            return "IA32_FEATURE_CONTROL is locked with VMX disabled: VT-x is switched off in the firmware "
                   "settings; enable it there";
        return NULL;
    }
#if HV_SVM
    const char *why = hv_svm_unavailable();
    if (!why) {
        hv.svm = TRUE;
        backend = &svm_backend;
        return NULL;
    }
    if (hv_cpu_is_amd())
        return why;
#endif
    return "VMX is not available on this CPU (CPUID.1:ECX.VMX[5] = 0), and it is no AMD CPU with SVM";
}

static EFI_STATUS hv_main(EFI_HANDLE image)
{
    UINT64 started = rdtsc();
    hv_use_firmware_console(TRUE);
    hv_say("uefi-hv %s: hypervisor generated from %s\n", HV_VERSION, HV_SPEC_NAME);

    /* Where a fatal stop will power the machine off: the ACPI FADT and \_S5
     * (power.c), read while the firmware's configuration table is there.
     * Reading changes nothing, so it comes first: a machine without VMX
     * (QEMU's TCG) shows what its real tables say, too. */
    hv_find_power_off();

    /* 1. VMX or SVM at all? (QEMU's TCG has no VMX; AMD CPUs have SVM.) Nothing changed yet. */
    const char *why = choose_backend();
    if (why) {
        hv_say("uefi-hv: %s; the hypervisor is not started\n", why);
        hv_start_next_image(image);
        return EFI_UNSUPPORTED;
    }
    hv_say("uefi-hv: backend %s\n", backend->name);

    /* The log's rate limit needs the TSC rate; the firmware still keeps time. */
    hv_set_resident_image(image_copy, image_pages);
    UINT64 tsc_per_second = hv_log_calibrate();
    hv_say("uefi-hv: log from %s: %u lines at once, then %u a second (TSC %lu kHz)\n",
           hv.svm ? "the SVM host" : "VMX root", (unsigned)HV_LOG_BURST, (unsigned)HV_LOG_RATE,
           tsc_per_second / 1000);

    /* 3. The host environment, the spec's globals, per-CPU memory. */
    if (!hv.svm) {
        hv.vmx_basic = rdmsr(MSR_IA32_VMX_BASIC);
        hv.ept_vpid_cap = rdmsr(MSR_IA32_VMX_EPT_VPID_CAP);
    }
    UINTN cpus = hv_cpu_count();
    if (cpus > HV_MAX_CPUS) {
        /* Half a machine virtualised is worse than none: every CPU or none. */
        hv_say("uefi-hv: this machine has %u logical CPUs, more than the %u the hypervisor supports; "
               "the hypervisor is not started\n",
               (unsigned)cpus, (unsigned)HV_MAX_CPUS);
        hv_start_next_image(image);
        return EFI_UNSUPPORTED;
    }
    hv.cpu_count = (UINT32)cpus;
    UINTN bsp_number = hv_who_am_i();
    if (EFI_ERROR(hv_build_host_environment()) || EFI_ERROR(hv_build_msr_bitmap()))
        return give_up(image, EFI_OUT_OF_RESOURCES);
#if HV_SVM
    if (hv.svm && EFI_ERROR(hv_svm_build()))
        return give_up(image, EFI_OUT_OF_RESOURCES);
#endif
#if HV_EPT
    if (!hv.svm && EFI_ERROR(hv_build_ept()))
        return give_up(image, EFI_OUT_OF_RESOURCES);
    if (!hv.svm)
        hv_say("uefi-hv: EPT maps guest-physical 0-%lu GiB (MAXPHYADDR %u bits)%s\n", hv.ept_gib,
               hv.max_phys_bits,
               hv.ept_gib < 1ULL << (hv.max_phys_bits - 30) ? ", the rest on first use" : "");
#endif
#if HV_HOST_PAGE_TABLES
    hv_say("uefi-hv: host page tables map 0-%lu GiB\n", hv.host_gib);
#endif
    hv_say("uefi-hv: microcode revision 0x%x\n", hv_microcode_revision());
    shared_pages = hv_allocated_pages();
    if (!hv_alloc_cpus(hv.cpu_count))
        return give_up(image, EFI_OUT_OF_RESOURCES);
    shared_pages += hv.cpu_table_pages; /* the table of struct hv_cpu pointers */
    UINTN per_cpu_pages = (hv_allocated_pages() - shared_pages) / hv.cpu_count;
    bsp = hv.cpus[bsp_number < hv.cpu_count ? bsp_number : 0];
    bsp->is_bsp = TRUE;
    hv_capture_globals();
    for (const struct hv_global *g = hv_globals; g->name; g++)
        hv_say("uefi-hv: global %s = 0x%lx (%s)\n", g->name, *g->value, g->source);

    /* 4./5. Every CPU: VMX (or SVM) enabled, controls, host state, run-time checks. */
    hv_say("uefi-hv: preparing %u CPU(s)\n", hv.cpu_count);
    backend->prepare_cpu(bsp);
    hv_for_each_ap(prepare_ap);
    BOOLEAN all_prepared = TRUE;
    for (UINT32 i = 0; i < hv.cpu_count; i++)
        all_prepared &= hv.cpus[i]->status == HV_CPU_PREPARED;
    if (!all_prepared) {
        report_failures();
        hv_say("uefi-hv: not launching: a check failed\n");
        return give_up(image, EFI_ABORTED);
    }
    hv_say("uefi-hv: run-time checks passed on %u CPU(s)\n", hv.cpu_count);

#if HV_SELF_PROTECTION
    /* The guest never sees the hypervisor's tables, stacks and VMCSs (protect.c). */
    if (!hv_protect_before_launch(image_copy, image_pages)) {
        hv_say("uefi-hv: not launching: no page table left to hide the hypervisor's memory\n");
        return give_up(image, EFI_OUT_OF_RESOURCES);
    }
#endif

    /* 6. Launch: the BSP first, so that a VMLAUNCH failure (a rule only the
     * CPU checks) happens while nothing else runs as a guest. */
    if (!backend->launch_cpu(bsp)) {
        report_failures();
        return give_up(image, EFI_ABORTED);
    }
    hv.launched_count = 1;
    hv_for_each_ap(launch_ap);
    if (hv.launched_count != hv.cpu_count) {
        /* An AP refused VMLAUNCH after the BSP launched (a rule only its CPU
         * checks): every CPU leaves VMX again, through DEVIRTUALIZE. */
        report_failures();
        hv_for_each_ap(devirtualize_this_cpu);
        devirtualize_this_cpu(bsp);
        return give_up(image, EFI_ABORTED);
    }
    resident = TRUE;
    notify_exit_boot_services();
    for (UINT32 i = 0; i < hv.cpu_count; i++)
        hv_say("uefi-hv: cpu %u: %s\n", i,
               hv.cpus[i]->status == HV_CPU_LAUNCHED ? "virtualised" : hv.cpus[i]->error);
    hv_say("uefi-hv: %u of %u CPU(s) virtualised; resident memory %u KiB per CPU + %u KiB shared + %u KiB "
           "code\n",
           hv.launched_count, hv.cpu_count, (unsigned)(per_cpu_pages * 4), (unsigned)(shared_pages * 4),
           (unsigned)(image_pages * 4));
    hv_say("uefi-hv: start-up took %lu TSC ticks\n", rdtsc() - started);
    /* The boot manager goes on with the next boot option when an option
     * returns an error, and shows its menu after EFI_SUCCESS (UEFI 2.10 3.1.1
     * "Boot Manager Programming"): with nothing chained, EFI_NOT_FOUND lets
     * the machine boot on to its disk, under the hypervisor. */
    return hv_start_next_image(image);
}

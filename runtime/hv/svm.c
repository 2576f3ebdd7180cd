/*
 * The SVM backend: AMD's virtualisation (AMD64 APM vol. 2, chapter 15
 * "Secure Virtual Machine"), chosen at start-up on a CPU that has SVM and
 * no VMX (main.c). The spec is the same: its `exit` statements answer the
 * SVM exit of the same meaning (dsl/vmcb.hv), its msr_bitmap becomes the
 * MSR permission map, its host_state gives the host's IDT, GDT, TR, page
 * tables and stack, which the CPU loads before its first VMRUN and VMRUN
 * keeps in the host save area.
 *
 * Per CPU: a VMCB for the guest (the firmware as it runs, copied from this
 * very CPU), one for the host's FS, GS, TR, LDTR and system-call MSRs
 * (VMSAVE/VMLOAD: VMRUN and #VMEXIT do not switch them, APM 15.5.2), and
 * the host save area (VM_HSAVE_PA). Shared: the MSR and I/O permission maps
 * and the nested page tables, an identity map of all of MAXPHYADDR.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"
#include "guest.h"
#include "vmcs_setup.h"

#if HV_SVM

#define EFER_SVME                 (1ULL << 12) /* APM 15.4 "Enabling SVM" */
#define VM_CR_SVMDIS              (1ULL << 4)  /* APM 15.30.1 "VM_CR MSR" */
#define SVM_FEATURE_NP            (1U << 0)    /* CPUID 8000000A:EDX, APM 15.4 */
#define SVM_FEATURE_NRIPS         (1U << 3)
#define NP_ENABLE                 1ULL
#define TLB_FLUSH_ALL             1
#define TLB_FLUSH_GUEST           3 /* this ASID's entries */
#define SVM_FEATURE_FLUSH_BY_ASID (1U << 6)
#define GUEST_ASID                1 /* any but 0, the host's (APM 15.16 "TLB Control") */
#define INTERRUPT_SHADOW          1ULL
#define DR6_BS                    (1ULL << 14)
#define NPT_PRESENT_WRITE_USER    7ULL /* every nested walk is a user access (APM 15.25.5) */
#define NPT_LARGE                 (1ULL << 7)
#define NPT_WRITE                 (1ULL << 1)
#define NPF_FETCH                 (1ULL << 4) /* EXITINFO1 of a nested page fault: an instruction fetch */
#define NPT_FRAME                 0x000FFFFFFFFFF000ULL /* in a large entry too: its PAT bit (12) is 0 here */
#define MSRPM_PAGES               2                     /* APM 15.11 "MSR Intercepts" */
#define IOPM_PAGES                3                     /* APM 15.10.1 "I/O Permissions Map" */

#define VMCB16(cpu, offset) (*(UINT16 *)((cpu)->vmcb + (offset)))
#define VMCB32(cpu, offset) (*(UINT32 *)((cpu)->vmcb + (offset)))
#define VMCB64(cpu, offset) (*(UINT64 *)((cpu)->vmcb + (offset)))

#define NPT_RESERVE_TABLES 16 /* for pages hidden after launch (ExitBootServices) */

static struct {
    UINT32 features; /* CPUID 8000000A:EDX */
    UINT64 *reserve[NPT_RESERVE_TABLES];
    UINT32 reserve_left;
    BOOLEAN built; /* no UEFI allocation from here on: the reserve */
    UINT64 decoy;  /* the zeroed page hidden pages map to */
    UINT8 *msrpm;
    UINT8 *iopm;
    UINT64 ncr3;          /* the nested page tables */
    UINT32 npt_top_shift; /* what one top-level entry spans: 39, or 48 with five levels */
    UINT64 npt_gib;
} svm;

/* svm_entry.S */
UINT64 hv_svm_launch(UINT8 *vmcb, UINT8 *host_vmcb, UINT64 host_rsp, UINT64 host_cr3);
extern char hv_svm_launch_done[];

static BOOLEAN fail(struct hv_cpu *cpu, const char *what)
{
    hv_snprintf(cpu->error, sizeof cpu->error, "%s", what);
    cpu->status = HV_CPU_FAILED;
    return FALSE;
}

/* --- can this CPU run it? ------------------------------------------------ */

/* "AuthenticAMD" or "HygonGenuine" in CPUID.0:EBX,EDX,ECX. */
BOOLEAN hv_cpu_is_amd(void)
{
    UINT32 r[4];
    cpuid(0, 0, r);
    return (r[1] == 0x68747541U && r[3] == 0x69746E65U && r[2] == 0x444D4163U) ||
           (r[1] == 0x6F677948U && r[3] == 0x6E65476EU && r[2] == 0x656E6975U);
}

/* APM 15.4 "Enabling SVM": CPUID.80000001:ECX.SVM[2], and VM_CR.SVMDIS clear
 * (a firmware setting when VM_CR.LOCK is set). Nested paging is required:
 * the hypervisor's memory is hidden in it and the local APIC watched. NULL
 * when SVM can run, else why not. */
const char *hv_svm_unavailable(void)
{
    UINT32 r[4];
    cpuid(0x80000000U, 0, r);
    if (!hv_cpu_is_amd() || r[0] < 0x8000000AU)
        return "SVM is not available on this CPU (not an AMD CPU)";
    cpuid(0x80000001U, 0, r);
    if (!(r[2] & (1U << 2)))
        return "SVM is not available on this CPU (CPUID.80000001:ECX.SVM[2] = 0)";
    /* VM_CR exists wherever SVM does; QEMU's TCG reads it as 0. */
    if (rdmsr(MSR_VM_CR) & VM_CR_SVMDIS)
        return "VM_CR.SVMDIS is set: SVM (AMD-V) is switched off in the firmware settings; enable it there";
    cpuid(0x8000000AU, 0, r);
    svm.features = r[3];
    if (!(svm.features & SVM_FEATURE_NP))
        return "SVM has no nested paging on this CPU (CPUID.8000000A:EDX.NP[0] = 0)";
    return NULL;
}

static BOOLEAN has_nrips(void)
{
    return (svm.features & SVM_FEATURE_NRIPS) != 0;
}

/* --- shared tables ------------------------------------------------------ */

/* APM 15.11: two bits per MSR (read, write) in three 2 KiB ranges. */
static void msrpm_set(UINT32 msr, BOOLEAN write)
{
    UINT32 base;
    if (msr <= 0x1FFF)
        base = 0;
    else if (msr >= 0xC0000000U && msr <= 0xC0001FFFU)
        base = 0x800;
    else if (msr >= 0xC0010000U && msr <= 0xC0011FFFU)
        base = 0x1000;
    else
        return; /* outside the map: always intercepted */
    UINT32 bit = (msr & 0x1FFF) * 2 + (write ? 1 : 0);
    svm.msrpm[base + bit / 8] |= (UINT8)(1U << (bit % 8));
}

static void msrpm_set_both(UINT32 msr)
{
    msrpm_set(msr, FALSE);
    msrpm_set(msr, TRUE);
}

static EFI_STATUS build_msrpm(void)
{
    svm.msrpm = hv_alloc_pages(MSRPM_PAGES);
    svm.iopm = hv_alloc_pages(IOPM_PAGES); /* all clear; IOIO_PROT is not set */
    if (!svm.msrpm || !svm.iopm)
        return EFI_OUT_OF_RESOURCES;
#if HV_ACTION_MSR
    for (int i = 0; i < HV_MSR_INTERCEPT_COUNT; i++) {
        /* IA32_FEATURE_CONTROL and the microcode trigger are Intel's: on an
         * AMD CPU the CPU answers them itself. */
        if (hv_msr_intercepts[i].action == MSR_FEATURE_CONTROL_LOCKED ||
            hv_msr_intercepts[i].action == MSR_MICROCODE_UPDATE)
            continue;
        for (UINT64 msr = hv_msr_intercepts[i].first; msr <= hv_msr_intercepts[i].last; msr++)
            msrpm_set((UINT32)msr, hv_msr_intercepts[i].write);
    }
#endif
    /* SVM hidden (svm_msr): EFER.SVME, VM_CR and VM_HSAVE_PA. */
    msrpm_set_both(MSR_IA32_EFER);
    msrpm_set_both(MSR_VM_CR);
    msrpm_set_both(MSR_VM_HSAVE_PA);
    /* INIT and SIPI in x2APIC mode (svm_msr): the ICR is an MSR there. */
    msrpm_set(MSR_IA32_X2APIC_ICR, TRUE);
    return EFI_SUCCESS;
}

/* Nested paging (APM 15.25): guest-physical = host-physical for all of
 * MAXPHYADDR, read/write/execute (host_env.c: hv_identity_map). The entries
 * leave the memory type to the MTRRs and the guest's PAT: PAT index 0 is
 * write-back, which combines to the guest's own type (APM 15.25.8
 * "Combining Memory Types"). */
static EFI_STATUS build_npt(void)
{
    UINT64 *pml4 = hv_identity_map(NPT_PRESENT_WRITE_USER, &svm.npt_gib);
    if (!pml4)
        return EFI_OUT_OF_RESOURCES;
    svm.ncr3 = (UINT64)pml4;
    svm.npt_top_shift = 39;
    /* The nested walk has as many levels as the host's paging (CR4.LA57,
     * APM 15.25.3): with five, a PML5 on top. */
    if (read_cr4() & X86_CR4_LA57) {
        UINT64 *pml5 = hv_alloc_table();
        if (!pml5)
            return EFI_OUT_OF_RESOURCES;
        pml5[0] = (UINT64)pml4 | NPT_PRESENT_WRITE_USER;
        svm.ncr3 = (UINT64)pml5;
        svm.npt_top_shift = 48;
    }
    return EFI_SUCCESS;
}

static UINT64 *npt_table(void)
{
    if (!svm.built)
        return hv_alloc_table();
    if (!svm.reserve_left)
        return NULL;
    UINT64 *table = svm.reserve[--svm.reserve_left];
    hv_zero(table, HV_PAGE_SIZE);
    return table;
}

/* The 4 KiB nested page table entry of `gpa`, each large page above it
 * split into smaller ones that map the same memory; NULL when no table is
 * left. */
static UINT64 *npt_entry_4k(UINT64 gpa)
{
    UINT64 *table = (UINT64 *)svm.ncr3;
    for (UINT32 shift = svm.npt_top_shift; shift > 12; shift -= 9) { /* large pages at 30 and 21 only */
        UINT64 *e = &table[(gpa >> shift) & 511];
        if (*e & NPT_LARGE) {
            UINT64 *smaller = npt_table(), base = *e & NPT_FRAME, size = 1ULL << (shift - 9);
            if (!smaller)
                return NULL;
            for (UINT64 i = 0; i < 512; i++)
                smaller[i] = (base + i * size) | NPT_PRESENT_WRITE_USER | (shift - 9 > 12 ? NPT_LARGE : 0);
            *e = (UINT64)smaller | NPT_PRESENT_WRITE_USER;
        }
        table = (UINT64 *)(*e & NPT_FRAME);
    }
    return &table[(gpa >> 12) & 511];
}

/* The local APIC page read-only: the guest's stores to it exit (NPF) and
 * are done for it, INIT and SIPI to CPUs that are guests recorded instead
 * (icr_emulation.c). */
static EFI_STATUS watch_apic_page(void)
{
    UINT64 apic = hv_apic_page(), *entry;
    if (!apic) /* x2APIC already: the ICR is an MSR */
        return EFI_SUCCESS;
    if (!(entry = npt_entry_4k(apic)))
        return EFI_OUT_OF_RESOURCES;
    *entry &= ~NPT_WRITE;
    return EFI_SUCCESS;
}

/* --- the hypervisor's own pages (protect.c) --------------------------------
 * Each maps to one zeroed decoy page, read-only: the guest reads zeros, and
 * a write is a nested page fault (the counterpart of ept.c's). */
BOOLEAN hv_npt_hide_page(UINT64 gpa)
{
    UINT64 *pte = npt_entry_4k(gpa);
    if (!pte)
        return FALSE;
    *pte = svm.decoy | (NPT_PRESENT_WRITE_USER & ~NPT_WRITE);
    return TRUE;
}

BOOLEAN hv_npt_show_page(UINT64 gpa)
{
    UINT64 *pte = npt_entry_4k(gpa);
    if (!pte)
        return FALSE;
    *pte = gpa | NPT_PRESENT_WRITE_USER;
    return TRUE;
}

BOOLEAN hv_npt_page_hidden(UINT64 gpa)
{
    UINT64 *table = (UINT64 *)svm.ncr3;
    for (UINT32 shift = svm.npt_top_shift; shift >= 12; shift -= 9) {
        UINT64 entry = table[(gpa >> shift) & 511];
        if (!(entry & 1))
            return FALSE;
        if (shift == 12)
            return (entry & NPT_FRAME) == svm.decoy;
        if (entry & NPT_LARGE)
            return FALSE;
        table = (UINT64 *)(entry & NPT_FRAME);
    }
    return FALSE;
}

/* The guest's translations dropped at its next VMRUN: its ASID's where the
 * CPU can (FlushByAsid, CPUID 8000000A:EDX[6]), else the whole TLB (APM
 * 15.16.1 "TLB Flush"). */
void hv_svm_flush_guest_tlb(struct hv_cpu *cpu)
{
    *(cpu->vmcb + VMCB_TLB_CONTROL) =
        svm.features & SVM_FEATURE_FLUSH_BY_ASID ? TLB_FLUSH_GUEST : TLB_FLUSH_ALL;
}

EFI_STATUS hv_svm_build(void)
{
    EFI_STATUS status = build_msrpm();
    if (!EFI_ERROR(status))
        status = build_npt();
    if (!EFI_ERROR(status))
        status = watch_apic_page();
    if (!EFI_ERROR(status) && !(svm.decoy = (UINT64)hv_alloc_pages(1)))
        status = EFI_OUT_OF_RESOURCES;
    for (UINT32 i = 0; !EFI_ERROR(status) && i < NPT_RESERVE_TABLES; i++, svm.reserve_left++)
        if (!(svm.reserve[i] = hv_alloc_table()))
            status = EFI_OUT_OF_RESOURCES;
    svm.built = TRUE;
    if (!EFI_ERROR(status))
        hv_say("uefi-hv: nested paging maps guest-physical 0-%lu GiB (MAXPHYADDR %u bits)%s\n", svm.npt_gib,
               hv.max_phys_bits, has_nrips() ? "" : "; no NRIPS: instruction lengths are decoded");
    return status;
}

/* --- per CPU -------------------------------------------------------------- */

/* The host state the spec's host_state block gives (host_state.c): with SVM
 * no VMCS holds it; the CPU itself is put in it before VMRUN. */
BOOLEAN hv_svm_prepare_cpu(struct hv_cpu *cpu)
{
    cpu->firmware_cr0 = cpu->cr0 = read_cr0();
    cpu->firmware_cr4 = cpu->cr4 = read_cr4();
    UINT32 r[4];
    cpuid(1, 0, r);
    cpu->apic_id = r[1] >> 24; /* the initial APIC ID, CPUID.1:EBX[31:24] */
    hv_spec_host_state(cpu);
    hv_icr_emulation_prepare(cpu);
    if (!hv_host_value(cpu, HOST_IDTR_BASE) || !hv_host_value(cpu, HOST_GDTR_BASE) ||
        !hv_host_value(cpu, HOST_RSP))
        return fail(cpu, "the spec's host_state gives no HOST_IDTR_BASE, HOST_GDTR_BASE or HOST_RSP");
    cpu->status = HV_CPU_PREPARED;
    return TRUE;
}

/* A segment of the running CPU in the VMCB's format (APM 15.5.1): the
 * attributes pack the descriptor's bits 47:40 and 55:52 in 12 bits. */
static void save_segment(struct hv_cpu *cpu, UINT32 at, UINT16 sel, UINT64 gdt_base)
{
    UINT32 rights = 0;
    VMCB16(cpu, at) = sel;
    if ((sel & ~3U) && lar(sel, &rights))
        VMCB16(cpu, at + 2) = (UINT16)(((rights >> 8) & 0xFF) | ((rights >> 12) & 0xF00));
    VMCB32(cpu, at + 4) = hv_segment_limit(sel);
    VMCB64(cpu, at + 8) = hv_descriptor_base(gdt_base, sel, FALSE);
}

/* What SVM does without the hypervisor that VMX needs it for: an NMI goes
 * to the guest (the host runs with GIF clear and takes none, APM 15.17
 * "Global Interrupt Flag"), a task switch is done by the CPU in the guest
 * (intercepting it is optional, APM 15.14), and INIT and SIPI are answered
 * in the APIC page (a CPU without R_INIT redirection would take INIT in the
 * host). The spec's actions for these are its VMX answers. */
static BOOLEAN svm_needs_no_intercept(UINT32 meaning)
{
    return meaning == EXIT_REASON_EXCEPTION_OR_NMI || meaning == EXIT_REASON_NMI_WINDOW ||
           meaning == EXIT_REASON_TASK_SWITCH || meaning == EXIT_REASON_INIT_SIGNAL ||
           meaning == EXIT_REASON_SIPI;
}

/* Which intercepts the spec's exit statements ask for: each SVM exit whose
 * meaning has an action. VMRUN is intercepted always (VMRUN requires it,
 * APM 15.5.1), MSRs through the permission map, and shutdown, which would
 * otherwise reset the machine under the hypervisor. */
static void set_intercepts(struct hv_cpu *cpu)
{
    for (UINT32 i = 0; i < HV_SVM_EXIT_COUNT; i++) {
        const struct hv_svm_exit *e = &hv_svm_exits[i];
        if (!e->intercept_mask || e->meaning == HV_SVM_NO_MEANING || svm_needs_no_intercept(e->meaning))
            continue;
        if (hv_exit_actions[e->meaning])
            VMCB32(cpu, e->intercept_offset) |= e->intercept_mask;
    }
    VMCB32(cpu, VMCB_INTERCEPT_MISC2) |= SVM_INTERCEPT_VMRUN;
    VMCB32(cpu, VMCB_INTERCEPT_MISC1) |= SVM_INTERCEPT_MSR_PROT | SVM_INTERCEPT_SHUTDOWN;
    /* An AP idles in HLT (MP services) or MWAIT (OVMF after ExitBootServices)
     * until INIT and SIPI: the emulated ones start it there (ap_waits). */
    if (!cpu->is_bsp) {
        VMCB32(cpu, VMCB_INTERCEPT_MISC1) |= SVM_INTERCEPT_HLT;
        VMCB32(cpu, VMCB_INTERCEPT_MISC2) |= SVM_INTERCEPT_MWAIT;
    }
}

/* The guest: this CPU as the firmware runs it (APM 15.5.1 "Basic
 * Operation"). RIP, RSP and RAX are set by hv_svm_launch, where the guest
 * goes on; FS, GS, TR, LDTR and the system-call MSRs by VMSAVE. */
static void save_guest_state(struct hv_cpu *cpu, UINT64 rflags)
{
    struct hv_dtr gdtr, idtr;
    sgdt(&gdtr);
    sidt(&idtr);
    hv_zero(cpu->vmcb, HV_PAGE_SIZE);
    set_intercepts(cpu);
    VMCB64(cpu, VMCB_IOPM_BASE_PA) = (UINT64)svm.iopm;
    VMCB64(cpu, VMCB_MSRPM_BASE_PA) = (UINT64)svm.msrpm;
    VMCB32(cpu, VMCB_GUEST_ASID) = GUEST_ASID;
    *(cpu->vmcb + VMCB_TLB_CONTROL) = TLB_FLUSH_ALL; /* whatever an earlier user of ASID 1 left */
    VMCB64(cpu, VMCB_NP_CONTROL) = NP_ENABLE;
    VMCB64(cpu, VMCB_N_CR3) = svm.ncr3;

    save_segment(cpu, VMCB_ES_SELECTOR, read_es(), gdtr.base);
    save_segment(cpu, VMCB_CS_SELECTOR, read_cs(), gdtr.base);
    save_segment(cpu, VMCB_SS_SELECTOR, read_ss(), gdtr.base);
    save_segment(cpu, VMCB_DS_SELECTOR, read_ds(), gdtr.base);
    VMCB32(cpu, VMCB_GDTR_LIMIT) = gdtr.limit;
    VMCB64(cpu, VMCB_GDTR_BASE) = gdtr.base;
    VMCB32(cpu, VMCB_IDTR_LIMIT) = idtr.limit;
    VMCB64(cpu, VMCB_IDTR_BASE) = idtr.base;
    *(cpu->vmcb + VMCB_CPL) = 0;
    VMCB64(cpu, VMCB_EFER) = rdmsr(MSR_IA32_EFER); /* SVME set: VMRUN requires it of the guest too */
    VMCB64(cpu, VMCB_CR0) = read_cr0();
    VMCB64(cpu, VMCB_CR2) = read_cr2();
    VMCB64(cpu, VMCB_CR3) = read_cr3();
    VMCB64(cpu, VMCB_CR4) = read_cr4();
    VMCB64(cpu, VMCB_DR7) = read_dr7();
    VMCB64(cpu, VMCB_DR6) = 0xFFFF0FF0ULL;
    VMCB64(cpu, VMCB_RFLAGS) = rflags;
    VMCB64(cpu, VMCB_G_PAT) = rdmsr(MSR_IA32_PAT);
    __asm__ volatile("vmsave %%rax" : : "a"((UINT64)cpu->vmcb) : "memory");
}

/* The host: the spec's GDT (code, data, TSS), IDT and GS base, loaded into
 * the CPU; its page tables and stack go in with hv_svm_launch. */
static void load_host_state(struct hv_cpu *cpu)
{
    struct hv_dtr gdtr = { (UINT16)(5 * 8 - 1), hv_host_value(cpu, HOST_GDTR_BASE) };
    struct hv_dtr idtr = { 256 * 16 - 1, hv_host_value(cpu, HOST_IDTR_BASE) }; /* the seed's global */
    UINT64 cs = hv_host_value(cpu, HOST_CS_SELECTOR), ds = hv_host_value(cpu, HOST_DS_SELECTOR);
    lgdt(&gdtr);
    lidt(&idtr);
    __asm__ volatile("pushq %0\n\t"
                     "leaq 1f(%%rip), %%rax\n\t"
                     "pushq %%rax\n\t"
                     "lretq\n"
                     "1:\n\t"
                     "mov %1, %%ss\n\t"
                     "mov %1, %%ds\n\t"
                     "mov %1, %%es\n\t"
                     "mov %1, %%fs\n\t"
                     "mov %1, %%gs\n\t"
                     "ltr %w2"
                     :
                     : "r"(cs), "r"(ds), "r"(hv_host_value(cpu, HOST_TR_SELECTOR))
                     : "rax", "memory");
    wrmsr(MSR_IA32_GS_BASE, hv_host_value(cpu, HOST_GS_BASE));
    wrmsr(MSR_IA32_FS_BASE, hv_host_value(cpu, HOST_FS_BASE));
}

BOOLEAN hv_svm_launch_cpu(struct hv_cpu *cpu)
{
    UINT64 flags = read_rflags();
    cli();
    wrmsr(MSR_IA32_EFER, rdmsr(MSR_IA32_EFER) | EFER_SVME);
    wrmsr(MSR_VM_HSAVE_PA, (UINT64)cpu->host_save_area);
    save_guest_state(cpu, flags);
    /* The consistency checks VMRUN makes (APM 15.5.1), by id, on this very
     * VMCB: a failure is named, and the firmware goes on without SVM. */
    if (!hv_svm_run_time_checks(cpu)) {
        wrmsr(MSR_IA32_EFER, rdmsr(MSR_IA32_EFER) & ~EFER_SVME);
        write_rflags(flags);
        cpu->status = HV_CPU_FAILED;
        return FALSE;
    }
    load_host_state(cpu);
    cpu->status = HV_CPU_LAUNCHED; /* set before: the guest continues below */
    UINT64 rc =
        hv_svm_launch(cpu->vmcb, cpu->host_vmcb, hv_host_value(cpu, HOST_RSP), hv_host_value(cpu, HOST_CR3));
    if (rc == 0)
        return TRUE; /* the guest now */
    write_rflags(flags);
    return FALSE; /* VMRUN refused the state: hv_svm_leave has put the CPU back (cpu->error) */
}

/* --- leaving SVM ----------------------------------------------------------- */

static UINT64 next_rip(struct hv_cpu *cpu); /* after the instruction that exited */

/* SVM off on this CPU, and the guest's state (from the VMCB) loaded into
 * the CPU, which goes on natively at `rip` with the GPRs of `regs`.
 * VMLOAD gives FS, GS, TR, LDTR and the system-call MSRs their guest values. */
static void __attribute__((noreturn)) leave_svm(struct hv_cpu *cpu, struct hv_guest_regs *regs, UINT64 rip)
{
    UINT64 frame[5] = {
        rip,
        VMCB16(cpu, VMCB_CS_SELECTOR),
        VMCB64(cpu, VMCB_RFLAGS),
        VMCB64(cpu, VMCB_RSP),
        VMCB16(cpu, VMCB_SS_SELECTOR),
    };
    struct hv_dtr gdtr = { (UINT16)VMCB32(cpu, VMCB_GDTR_LIMIT), VMCB64(cpu, VMCB_GDTR_BASE) };
    struct hv_dtr idtr = { (UINT16)VMCB32(cpu, VMCB_IDTR_LIMIT), VMCB64(cpu, VMCB_IDTR_BASE) };
    UINT16 ds = VMCB16(cpu, VMCB_DS_SELECTOR), es = VMCB16(cpu, VMCB_ES_SELECTOR);
    __asm__ volatile("mov %0, %%cr3" : : "r"(VMCB64(cpu, VMCB_CR3)) : "memory");
    write_cr4(VMCB64(cpu, VMCB_CR4));
    write_cr0(VMCB64(cpu, VMCB_CR0));
    lgdt(&gdtr);
    lidt(&idtr);
    __asm__ volatile("mov %0, %%ds; mov %1, %%es" : : "r"(ds), "r"(es) : "memory");
    __asm__ volatile("vmload %%rax" : : "a"((UINT64)cpu->vmcb) : "memory");
    __asm__ volatile("stgi" ::: "memory"); /* #VMEXIT cleared GIF: interrupts and NMIs again */
    wrmsr(MSR_IA32_EFER, VMCB64(cpu, VMCB_EFER) & ~EFER_SVME);
    hv_resume_native(frame, regs);
}

/* DEVIRTUALIZE: the guest goes on natively after its VMMCALL. */
void hv_svm_devirtualize(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    __atomic_store_n(&cpu->status, HV_CPU_NEW, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&hv.launched_count, 1, __ATOMIC_SEQ_CST);
    leave_svm(cpu, regs, next_rip(cpu));
}

/* --- exits ----------------------------------------------------------------- */

static const struct hv_svm_exit *svm_exit(UINT64 code)
{
    for (UINT32 i = 0; i < HV_SVM_EXIT_COUNT; i++)
        if (hv_svm_exits[i].code == code)
            return &hv_svm_exits[i];
    return NULL;
}

/* The length of the instruction that exited, where the CPU gives no next
 * RIP (no NRIPS, as in QEMU's TCG): its prefixes (SDM Vol. 2A 2.1.1
 * "Instruction Prefixes", REX in 64-bit code) read from the guest's memory,
 * then the opcode of the exit (SDM Vol. 2 opcode tables). */
static UINT64 instruction_length(struct hv_cpu *cpu, UINT64 code)
{
    UINT64 opcode;
    switch (code) {
    case SVM_EXIT_HLT:
        opcode = 1; /* F4 */
        break;
    case SVM_EXIT_CPUID: /* 0F A2 */
    case SVM_EXIT_MSR:   /* 0F 32, 0F 30 */
    case SVM_EXIT_INVD:  /* 0F 08 */
    case SVM_EXIT_WBINVD:
    case SVM_EXIT_RDTSC:
    case SVM_EXIT_RDPMC:
    case SVM_EXIT_PAUSE: /* F3 90 */
        opcode = 2;
        break;
    default: /* 0F 01 xx: VMMCALL, XSETBV, VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA, RDTSCP, MONITOR, MWAIT */
        opcode = 3;
        break;
    }
    UINT64 rip = VMCB64(cpu, VMCB_CS_BASE) + VMCB64(cpu, VMCB_RIP), pa;
    BOOLEAN rex_possible = hv_guest_code_size() == 64;
    UINT64 n = 0;
    for (; n < 14 && hv_guest_physical(rip + n, &pa); n++) {
        UINT8 b = *(volatile UINT8 *)pa;
        BOOLEAN legacy = b == 0x26 || b == 0x2E || b == 0x36 || b == 0x3E || b == 0x64 || b == 0x65 ||
                         b == 0x66 || b == 0x67 || b == 0xF0 || b == 0xF2 ||
                         (b == 0xF3 && code != SVM_EXIT_PAUSE);
        if (!legacy && !(rex_possible && (b & 0xF0) == 0x40))
            break;
    }
    return n + opcode;
}

static UINT64 next_rip(struct hv_cpu *cpu)
{
    if (has_nrips())
        return VMCB64(cpu, VMCB_NEXT_RIP);
    return VMCB64(cpu, VMCB_RIP) + instruction_length(cpu, VMCB64(cpu, VMCB_EXITCODE));
}

/* SVM hidden (CPUID.80000001:ECX.SVM clear): EFER.SVME reads 0 and cannot be
 * set, VM_CR and VM_HSAVE_PA do not exist (#GP), as on a CPU without SVM.
 * The guest's EFER keeps SVME in the VMCB: VMRUN requires it (APM 15.5.1). */
static BOOLEAN svm_msr(struct hv_cpu *cpu, struct hv_guest_regs *regs, enum hv_exit_result *result)
{
    UINT32 msr = (UINT32)regs->rcx;
    BOOLEAN write = VMCB64(cpu, VMCB_EXITINFO1) != 0;
    UINT64 value = (regs->rdx & 0xFFFFFFFFULL) << 32 | (regs->rax & 0xFFFFFFFFULL);
    if (msr == MSR_VM_CR || msr == MSR_VM_HSAVE_PA ||
        (msr == MSR_IA32_EFER && write && (value & EFER_SVME))) {
        hv_inject_exception(VECTOR_GP, TRUE, 0);
        *result = HV_RESUME_SAME;
        return TRUE;
    }
    if (msr == MSR_IA32_X2APIC_ICR && write) {
        hv_x2apic_icr_write(cpu, value);
        *result = HV_RESUME_NEXT;
        return TRUE;
    }
    if (msr != MSR_IA32_EFER)
        return FALSE;
    if (write) {
        /* LMA is the CPU's; LME may not change while paging is on (APM vol. 2,
         * 14.6.1 "Activating Long Mode"), else VMRUN would find the state
         * inconsistent; a reserved bit faults as it would natively (tried on
         * the host's EFER). */
        UINT64 host = rdmsr(MSR_IA32_EFER), guest = VMCB64(cpu, VMCB_EFER), lma = guest & X86_EFER_LMA;
        BOOLEAN lme_change = ((value ^ guest) & X86_EFER_LME) != 0;
        UINT64 mode = X86_EFER_LME | X86_EFER_LMA; /* the host's own: it stays in long mode */
        if ((lme_change && (VMCB64(cpu, VMCB_CR0) & X86_CR0_PG)) ||
            hv_safe_wrmsr(MSR_IA32_EFER, (value & ~mode) | (host & mode) | EFER_SVME)) {
            hv_inject_exception(VECTOR_GP, TRUE, 0);
            *result = HV_RESUME_SAME;
            return TRUE;
        }
        wrmsr(MSR_IA32_EFER, host);
        VMCB64(cpu, VMCB_EFER) = (value & ~X86_EFER_LMA) | lma | EFER_SVME;
    } else {
        value = VMCB64(cpu, VMCB_EFER) & ~EFER_SVME;
        regs->rax = value & 0xFFFFFFFFULL;
        regs->rdx = value >> 32;
    }
    *result = HV_RESUME_NEXT;
    return TRUE;
}

void hv_svm_log_guest_state(struct hv_cpu *cpu)
{
    hv_log_fatal("uefi-hv: cpu %u: guest RIP 0x%lx RSP 0x%lx RFLAGS 0x%lx CS 0x%x CPL %u\n", cpu->index,
                 VMCB64(cpu, VMCB_RIP), VMCB64(cpu, VMCB_RSP), VMCB64(cpu, VMCB_RFLAGS),
                 VMCB16(cpu, VMCB_CS_SELECTOR), *(cpu->vmcb + VMCB_CPL));
    hv_log_fatal(
        "uefi-hv: cpu %u: guest CR0 0x%lx CR3 0x%lx CR4 0x%lx EFER 0x%lx EXITINFO1 0x%lx EXITINFO2 0x%lx\n",
        cpu->index, VMCB64(cpu, VMCB_CR0), VMCB64(cpu, VMCB_CR3), VMCB64(cpu, VMCB_CR4),
        VMCB64(cpu, VMCB_EFER), VMCB64(cpu, VMCB_EXITINFO1), VMCB64(cpu, VMCB_EXITINFO2));
}

/* VMRUN refused the guest state (EXITCODE VMEXIT_INVALID, APM 15.5.1
 * "Canonicalization and Consistency Checks"). At the launch itself the CPU
 * goes back to the firmware natively, as after a failed VMLAUNCH. */
static void vmrun_failed(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    hv_log_fatal("uefi-hv: cpu %u: VMRUN failed: the guest state is invalid (VMEXIT_INVALID, APM 15.5.1)\n",
                 cpu->index);
    hv_svm_log_guest_state(cpu);
    if (hv_exits_total(cpu))
        hv_power_off();
    hv_snprintf(
        cpu->error, sizeof cpu->error,
        "VMRUN failed at launch: the guest state is invalid (VMEXIT_INVALID, APM 15.5.1); SVM is off again");
    __atomic_store_n(&cpu->status, HV_CPU_FAILED, __ATOMIC_SEQ_CST);
    regs->rax = 1;
    leave_svm(cpu, regs, (UINT64)hv_svm_launch_done);
}

/* --- INIT and SIPI, emulated ------------------------------------------------ */

/* A segment in real mode: base = selector * 16, 64 KiB, attributes as
 * after INIT (APM vol. 2, 14.1.3 "Processor Initialization State"). */
static void real_mode_segment(struct hv_cpu *cpu, UINT32 at, UINT16 sel, UINT16 attrib)
{
    VMCB16(cpu, at) = sel;
    VMCB16(cpu, at + 2) = attrib;
    VMCB32(cpu, at + 4) = 0xFFFF;
    VMCB64(cpu, at + 8) = (UINT64)sel << 4;
}

/* The CPU as INIT then SIPI leave it (APM vol. 2, 14.1.3 and 14.1.5 "Fetching
 * the First Instruction"; SDM 11.1.1, Table 11-1): real mode at vector:0000,
 * caches as after INIT, RDX the processor signature, its TLB flushed. */
static void start_at_sipi(struct hv_cpu *cpu, struct hv_guest_regs *regs, UINT32 vector)
{
    UINT32 r[4];
    cpuid(1, 0, r);
    hv_zero(regs, sizeof *regs);
    regs->rdx = r[0];
    real_mode_segment(cpu, VMCB_CS_SELECTOR, (UINT16)(vector << 8), 0x9B);
    real_mode_segment(cpu, VMCB_SS_SELECTOR, 0, 0x93);
    real_mode_segment(cpu, VMCB_DS_SELECTOR, 0, 0x93);
    real_mode_segment(cpu, VMCB_ES_SELECTOR, 0, 0x93);
    real_mode_segment(cpu, VMCB_FS_SELECTOR, 0, 0x93);
    real_mode_segment(cpu, VMCB_GS_SELECTOR, 0, 0x93);
    real_mode_segment(cpu, VMCB_LDTR_SELECTOR, 0, 0x82);
    real_mode_segment(cpu, VMCB_TR_SELECTOR, 0, 0x8B);
    VMCB32(cpu, VMCB_GDTR_LIMIT) = VMCB32(cpu, VMCB_IDTR_LIMIT) = 0xFFFF;
    VMCB64(cpu, VMCB_GDTR_BASE) = VMCB64(cpu, VMCB_IDTR_BASE) = 0;
    *(cpu->vmcb + VMCB_CPL) = 0;
    VMCB64(cpu, VMCB_EFER) = EFER_SVME;                            /* the guest's EFER is 0 */
    VMCB64(cpu, VMCB_CR0) = X86_CR0_CD | X86_CR0_NW | (1ULL << 4); /* ET */
    VMCB64(cpu, VMCB_CR2) = VMCB64(cpu, VMCB_CR3) = VMCB64(cpu, VMCB_CR4) = 0;
    VMCB64(cpu, VMCB_DR7) = 0x400;
    VMCB64(cpu, VMCB_DR6) = 0xFFFF0FF0ULL;
    VMCB64(cpu, VMCB_RFLAGS) = 2;
    VMCB64(cpu, VMCB_RIP) = 0;
    VMCB64(cpu, VMCB_RSP) = 0;
    VMCB64(cpu, VMCB_G_PAT) = 0x0007040600070406ULL;
    VMCB64(cpu, VMCB_INTERRUPT_SHADOW) = 0;
    VMCB64(cpu, VMCB_EVENTINJ) = 0;
    *(cpu->vmcb + VMCB_TLB_CONTROL) = TLB_FLUSH_ALL;
}

/* HLT or MWAIT on an AP. With interrupts off ("cli; hlt", the MP services'
 * idle loop) only INIT and SIPI wake it: it waits here for the emulated
 * ones. Otherwise it returns at once, which MWAIT may always do and which
 * makes an idle loop poll (the host, with GIF clear, has no interrupt to
 * wait for). */
static enum hv_exit_result ap_waits(struct hv_cpu *cpu, struct hv_guest_regs *regs, BOOLEAN hlt)
{
    UINT32 sipi = __atomic_load_n(&cpu->sipi_vector, __ATOMIC_SEQ_CST);
    if (!(sipi & 0x100) && hlt && !(VMCB64(cpu, VMCB_RFLAGS) & RFLAGS_IF))
        while (!((sipi = __atomic_load_n(&cpu->sipi_vector, __ATOMIC_SEQ_CST)) & 0x100))
            cpu_pause();
    if (!(sipi & 0x100)) {
        cpu_pause();
        return HV_RESUME_NEXT;
    }
    __atomic_store_n(&cpu->sipi_vector, 0, __ATOMIC_SEQ_CST);
    start_at_sipi(cpu, regs, sipi & 0xFF);
    return HV_RESUME_SAME;
}

/* A nested page fault (EXITINFO1: the error code, EXITINFO2: the guest-
 * physical address, APM 15.25.6): a store to the local APIC page is done
 * for the guest; anything else would be a hole in the identity map. */
static enum hv_exit_result nested_page_fault(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    UINT64 gpa = VMCB64(cpu, VMCB_EXITINFO2), error = VMCB64(cpu, VMCB_EXITINFO1);
    UINTN length;
#if HV_SELF_PROTECTION
    if (hv_protection_violation(cpu, gpa, (error & NPT_WRITE) != 0, (error & NPF_FETCH) != 0))
        return HV_RESUME_SAME;
#endif
    if ((gpa & ~0xFFFULL) == hv_apic_page() && (error & NPT_WRITE)) {
        if (hv_apic_store(cpu, regs, gpa, &length))
            VMCB64(cpu, VMCB_RIP) += length;
        return HV_RESUME_SAME;
    }
    hv_log_fatal("uefi-hv: cpu %u: nested page fault at GPA 0x%lx, error code 0x%lx: stopping\n", cpu->index,
                 gpa, error);
    return HV_STOP;
}

/* The exit of this CPU (svm_entry.S, with the guest's GPRs in `regs`): the
 * meaning of its exit code, counted, and the spec's action for it. */
void hv_svm_exit_handler(struct hv_guest_regs *regs, struct hv_cpu *cpu)
{
    UINT64 code = VMCB64(cpu, VMCB_EXITCODE);
    regs->rax = VMCB64(cpu, VMCB_RAX);
    if (code == SVM_EXIT_INVALID)
        vmrun_failed(cpu, regs);
    const struct hv_svm_exit *exit = svm_exit(code);
    UINT32 meaning = exit ? exit->meaning : HV_SVM_NO_MEANING;
    if (code == SVM_EXIT_MSR && VMCB64(cpu, VMCB_EXITINFO1))
        meaning = EXIT_REASON_WRMSR;
    cpu->exit_reason = meaning;
    hv_exit_action action = NULL;
    if (meaning < HV_EXIT_REASON_COUNT) {
        cpu->exit_count[meaning]++;
        action = hv_exit_actions[meaning];
    }
    enum hv_exit_result result;
    if (code == SVM_EXIT_MSR && svm_msr(cpu, regs, &result)) {
        /* answered */
    } else if (code == SVM_EXIT_NPF) {
        result = nested_page_fault(cpu, regs);
    } else if (code == SVM_EXIT_HLT || code == SVM_EXIT_MWAIT) {
        result = ap_waits(cpu, regs, code == SVM_EXIT_HLT);
    } else if (action) {
        result = action(cpu, regs);
    } else {
        hv_log_fatal("uefi-hv: cpu %u: unhandled #VMEXIT 0x%lx (%s): stopping the machine\n", cpu->index,
                     code, exit ? exit->name : "not in the catalogue");
        hv_svm_log_guest_state(cpu);
        hv_power_off();
    }
    switch (result) {
    case HV_RESUME_NEXT:
        VMCB64(cpu, VMCB_RIP) = next_rip(cpu);
        VMCB64(cpu, VMCB_INTERRUPT_SHADOW) &= ~INTERRUPT_SHADOW; /* an STI or MOV SS shadow ends */
        /* With RFLAGS.TF, the instruction done here ends in a single-step
         * #DB, DR6.BS set (SDM 19.3.1.4 "Single-Step Exception Condition"):
         * the CPU never ran it, so it is injected (a trap: RF stays). */
        if (VMCB64(cpu, VMCB_RFLAGS) & RFLAGS_TF) {
            VMCB64(cpu, VMCB_DR6) |= DR6_BS;
            hv_inject_exception(VECTOR_DB, FALSE, 0);
        }
        break;
    case HV_RESUME_SAME:
        break;
    case HV_STOP:
        hv_svm_log_guest_state(cpu);
        hv_power_off();
    }
    VMCB64(cpu, VMCB_RAX) = regs->rax;
    *(cpu->vmcb + VMCB_TLB_CONTROL) = 0;
    hv_protection_sync(cpu); /* pages hidden since this CPU's last VMRUN: its TLB too */
}

#endif /* HV_SVM */

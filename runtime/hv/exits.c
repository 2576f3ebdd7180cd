/*
 * VM exits: the actions the spec can name (hv_action_*, each built when the
 * spec uses it: HV_ACTION_* in spec.h), the dispatch through the table
 * generated from the spec's `exit` statements (dispatch.c), and a counter per
 * reason per CPU. Runs in VMX root operation: no UEFI service may be called
 * from here.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"
#include "interrupts.h"
#include "vmcs_setup.h"
#include "asm.h" /* HV_CPU_*: the offsets vmexit.S uses */

#define PENDING_DBG_BS (1ULL << 14)
#define DEBUGCTL_BTF   (1ULL << 1) /* single-step on branches only */

void hv_advance_rip(void)
{
    hv_instruction_done(vmread(VM_EXIT_INSTRUCTION_LEN));
}

/* An instruction the hypervisor did for the guest is complete, `length`
 * bytes long: what the CPU does at the end of an instruction happens here. */
void hv_instruction_done(UINT64 length)
{
    vmwrite(GUEST_RIP, vmread(GUEST_RIP) + length);
    /* Blocking by STI / MOV SS ends (SDM 26.4.2 "Guest Non-Register State"). */
    UINT64 intr = vmread(GUEST_INTERRUPTIBILITY_INFO);
    if (intr & 3)
        vmwrite(GUEST_INTERRUPTIBILITY_INFO, intr & ~3ULL);
    /* With RFLAGS.TF set, the instruction ends in a single-step #DB (SDM
     * 19.3.1.4 "Single-Step Exception Condition"): pending debug exception
     * BS, which the CPU delivers after VM entry (SDM 26.4.2). An exit takes
     * the instruction's own trap with it. (With DEBUGCTL.BTF only branches
     * step, and the hypervisor emulates none.) */
    if ((vmread(GUEST_RFLAGS) & RFLAGS_TF) && !(vmread(GUEST_IA32_DEBUGCTL) & DEBUGCTL_BTF))
        vmwrite(GUEST_PENDING_DBG_EXCEPTIONS, vmread(GUEST_PENDING_DBG_EXCEPTIONS) | PENDING_DBG_BS);
}

static __attribute__((unused)) UINT64 *gpr(struct hv_guest_regs *regs, UINT32 n)
{
    return &((UINT64 *)regs)[n & 15];
}

static void log_guest_state(struct hv_cpu *cpu)
{
#if HV_SVM
    if (hv.svm) {
        hv_svm_log_guest_state(cpu);
        return;
    }
#endif
    hv_log_fatal("uefi-hv: cpu %u: guest RIP 0x%lx RSP 0x%lx RFLAGS 0x%lx CS 0x%lx activity %lu\n",
                 cpu->index, vmread(GUEST_RIP), vmread(GUEST_RSP), vmread(GUEST_RFLAGS),
                 vmread(GUEST_CS_SELECTOR), vmread(GUEST_ACTIVITY_STATE));
    hv_log_fatal("uefi-hv: cpu %u: guest CR0 0x%lx CR3 0x%lx CR4 0x%lx qualification 0x%lx\n", cpu->index,
                 vmread(GUEST_CR0), vmread(GUEST_CR3), vmread(GUEST_CR4), vmread(EXIT_QUALIFICATION));
}

/* --- actions ------------------------------------------------------------ */

#if HV_ACTION_CPUID
/* CPUID exits unconditionally (SDM 27.1.2 "Instructions That Cause VM Exits
 * Unconditionally"). Leaf 1 says a hypervisor is present (ECX[31]) and hides
 * what the spec hides; 0x40000000 and 0x40000001 are ours (the signature, the
 * version), and 0x40000002 with option cpuid_exit_counts. */
enum hv_exit_result hv_action_cpuid(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    UINT32 leaf = (UINT32)regs->rax, subleaf = (UINT32)regs->rcx, r[4] = { 0, 0, 0, 0 };
    if ((leaf & 0xFFFFFF00U) == 0x40000000U) {
#if HV_CPUID_SIGNATURE
        if (leaf == 0x40000000U) {
            r[0] = HV_CPUID_MAX_LEAF;
            r[1] = HV_SIGNATURE_EBX;
            r[2] = HV_SIGNATURE_ECX;
            r[3] = HV_SIGNATURE_EDX;
        } else if (leaf == 0x40000001U) {
            r[0] = HV_VERSION_NUMBER;
        } else if (HV_CPUID_EXIT_COUNTS && leaf == 0x40000002U) {
            UINT64 n = subleaf < HV_EXIT_REASON_COUNT ? cpu->exit_count[subleaf] : 0;
            r[0] = (UINT32)n;
            r[3] = (UINT32)(n >> 32);
            r[1] = (UINT32)hv_exits_total(cpu);
        }
#else
        cpuid(leaf, subleaf, r);
#endif
    } else {
        cpuid(leaf, subleaf, r);
        /* CPUID executed here reports the host's CR4 in the bits that mirror
         * it (SDM Vol. 2A, CPUID): OSXSAVE and OSPKE are the guest's. GUEST_CR4
         * is read only for the two leaves that need it. */
        if (leaf == 1) {
            r[2] |= 1U << 31; /* hypervisor present */
            r[2] = (r[2] & ~(1U << 27)) | (UINT32)((hv_guest_cr4() >> 18) & 1) << 27;
        } else if (leaf == 7 && subleaf == 0) {
            r[2] = (r[2] & ~(1U << 4)) | (UINT32)((hv_guest_cr4() >> 22) & 1) << 4;
            /* WAITPKG (ECX[5]) only with "enable user wait and pause": else
             * TPAUSE, UMONITOR and UMWAIT raise #UD in the guest (SDM 27.3
             * "Changes to Instruction Behavior in VMX Non-Root Operation"). */
            BOOLEAN secondary = (cpu->controls[HV_CTL_PROC] & HV_PROC_ACTIVATE_SECONDARY) != 0;
            if (!secondary || !(cpu->controls[HV_CTL_PROC2] & HV_PROC2_ENABLE_USER_WAIT_AND_PAUSE))
                r[2] &= ~(1U << 5);
        }
        for (const struct hv_cpuid_bit *hide = hv_cpuid_hidden; hide->name; hide++)
            if (leaf == hide->leaf)
                r[hide->reg] &= ~(1U << hide->bit);
    }
    regs->rax = r[0];
    regs->rbx = r[1];
    regs->rcx = r[2];
    regs->rdx = r[3];
    return HV_RESUME_NEXT;
}
#endif

#if HV_ACTION_MSR
/* RDMSR/WRMSR: the spec's msr_bitmap intercepts; anything else that exits
 * (MSRs outside the bitmap's ranges) is executed for the guest, and a #GP
 * it raises in the host is reflected as #GP(0). */

static enum hv_exit_result msr_access(struct hv_cpu *cpu, struct hv_guest_regs *regs, BOOLEAN write)
{
    UINT32 msr = (UINT32)regs->rcx;
    UINT64 value = (regs->rdx & 0xFFFFFFFFULL) << 32 | (regs->rax & 0xFFFFFFFFULL);
    int rule = -1;
    for (int i = 0; i < HV_MSR_INTERCEPT_COUNT; i++)
        if (hv_msr_intercepts[i].write == write && msr >= hv_msr_intercepts[i].first &&
            msr <= hv_msr_intercepts[i].last)
            rule = i;
    if (rule >= 0) {
        switch (hv_msr_intercepts[rule].action) {
        case MSR_FEATURE_CONTROL_LOCKED:
            /* Locked, VMX off in and outside SMX: as firmware that disabled
             * VT-x leaves it; writing a locked MSR faults (SDM 25.7 "Enabling
             * and Entering VMX Operation"). */
            if (write) {
                hv_inject_exception(VECTOR_GP, TRUE, 0);
                return HV_RESUME_SAME;
            }
            value = (rdmsr(msr) & ~(FEATURE_CONTROL_VMX_INSIDE_SMX | FEATURE_CONTROL_VMX_OUTSIDE_SMX)) |
                    FEATURE_CONTROL_LOCK;
            regs->rax = value & 0xFFFFFFFFULL;
            regs->rdx = value >> 32;
            return HV_RESUME_NEXT;
        case MSR_INJECT_GP:
            /* Rate-limited like every line from VMX root: a guest can ask
             * for this one as often as it likes. */
            hv_log("uefi-hv: cpu %u: inject #GP: %s 0x%x from the guest\n", cpu->index,
                   write ? "WRMSR" : "RDMSR", msr);
            hv_inject_exception(VECTOR_GP, TRUE, 0);
            return HV_RESUME_SAME;
        case MSR_MICROCODE_UPDATE: /* writes only (check MICROCODE-UPDATE) */
            return hv_microcode_update(cpu, value);
        case MSR_PASSTHROUGH_LOG:
            hv_log("uefi-hv: cpu %u: guest %s MSR 0x%x = 0x%lx\n", cpu->index, write ? "writes" : "reads",
                   msr, write ? value : 0);
            break;
        }
    }
    UINT64 faulted = write ? hv_safe_wrmsr(msr, value) : hv_safe_rdmsr(msr, &value);
    if (faulted) {
        hv_inject_exception(VECTOR_GP, TRUE, 0);
        return HV_RESUME_SAME;
    }
    if (!write) {
        regs->rax = value & 0xFFFFFFFFULL;
        regs->rdx = value >> 32;
    }
    return HV_RESUME_NEXT;
}

enum hv_exit_result hv_action_msr(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    return msr_access(cpu, regs, (cpu->exit_reason & 0xFFFF) == EXIT_REASON_WRMSR);
}

/* SDM 26.6.9 "MSR-Bitmap Address": read-low at 0, read-high at 1024, write-low at 2048,
 * write-high at 3072 (low: 0..1FFFH, high: C0000000H..C0001FFFH). */
static void msr_bitmap_set(UINT32 msr, BOOLEAN write)
{
    UINT32 offset;
    if (msr <= 0x1FFF)
        offset = 0;
    else if (msr >= 0xC0000000U && msr <= 0xC0001FFFU)
        offset = 1024;
    else
        return; /* outside the bitmap: always exits */
    offset += write ? 2048 : 0;
    UINT32 n = msr & 0x1FFF;
    hv.msr_bitmap[offset + n / 8] |= (UINT8)(1U << (n % 8));
}
#endif

EFI_STATUS hv_build_msr_bitmap(void)
{
    hv.msr_bitmap = hv_alloc_pages(1); /* all clear: no MSR exits */
    if (!hv.msr_bitmap)
        return EFI_OUT_OF_RESOURCES;
#if HV_ACTION_MSR
    for (int i = 0; i < HV_MSR_INTERCEPT_COUNT; i++)
        for (UINT64 msr = hv_msr_intercepts[i].first; msr <= hv_msr_intercepts[i].last; msr++)
            msr_bitmap_set((UINT32)msr, hv_msr_intercepts[i].write);
#endif
    return EFI_SUCCESS;
}

#if HV_ACTION_VMCALL
/* The CPU a VMCALL argument names: its number, or ~0 for the caller; NULL
 * past the last. */
static struct hv_cpu *named_cpu(struct hv_cpu *caller, UINT64 which)
{
    return which == ~0ULL ? caller : which < hv.cpu_count ? hv.cpus[which] : NULL;
}

/* The VMCALL interface, docs/vmcall.md. Only CPL 0 may call it. A VMCALL
 * that is not ours raises #UD, as it does on a machine without a hypervisor. */
enum hv_exit_result hv_action_vmcall(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    if (hv_guest_cpl() != 0) {
        hv_inject_exception(VECTOR_UD, FALSE, 0);
        return HV_RESUME_SAME;
    }
    if ((regs->rax & ~0xFFULL) != HV_VMCALL_BASE) {
        hv_inject_exception(VECTOR_UD, FALSE, 0);
        return HV_RESUME_SAME;
    }
    UINT64 status = HV_VMCALL_OK;
    switch (regs->rax) {
    case HV_VMCALL_PING:
        regs->rbx = HV_VMCALL_PONG;
        regs->rcx = cpu->index;
        break;
    case HV_VMCALL_VERSION:
        regs->rbx = HV_VERSION_NUMBER;
        regs->rcx = (UINT64)HV_SIGNATURE_ECX << 32 | HV_SIGNATURE_EBX;
        regs->rdx = HV_SIGNATURE_EDX;
        break;
    case HV_VMCALL_GET_CPU_COUNT:
        regs->rbx = hv.launched_count;
        regs->rcx = hv.cpu_count;
        break;
    case HV_VMCALL_GET_EXIT_COUNT: {
        UINT64 reason = regs->rbx, which = regs->rcx;
        struct hv_cpu *target = named_cpu(cpu, which);
        if (!target || reason >= HV_EXIT_REASON_COUNT) {
            status = HV_VMCALL_BAD_ARGUMENT;
            break;
        }
        regs->rbx = target->exit_count[reason];
        break;
    }
    case HV_VMCALL_GET_EXIT_TOTAL: {
        UINT64 which = regs->rbx;
        struct hv_cpu *target = named_cpu(cpu, which);
        if (!target) {
            status = HV_VMCALL_BAD_ARGUMENT;
            break;
        }
        regs->rbx = hv_exits_total(target);
        break;
    }
    case HV_VMCALL_GET_IRQ_COUNT: {
        UINT64 vector = regs->rbx, which = regs->rcx;
        struct hv_cpu *target = named_cpu(cpu, which);
        if (!target || vector > 255) {
            status = HV_VMCALL_BAD_ARGUMENT;
            break;
        }
        regs->rbx = hv_irq_count(target, (UINT32)vector);
        break;
    }
    case HV_VMCALL_GET_RESIDENT_RANGES: {
        UINTN count;
        UINT64 base, bytes;
        if (hv.boot_services_gone && !HV_OS_MAY_MAP_HYPERVISOR) { /* the OS's: option os_may_map_hypervisor */
            status = HV_VMCALL_REFUSED;
            break;
        }
        if (!hv_resident_range(regs->rbx, &base, &bytes, &count)) {
            regs->rdx = count;
            status = HV_VMCALL_BAD_ARGUMENT;
            break;
        }
        regs->rbx = base;
        regs->rcx = bytes;
        regs->rdx = count;
        break;
    }
#if HV_ACTION_DISPATCH_IDT
    case HV_VMCALL_RAISE_VECTOR:
        /* Queued like an acknowledged interrupt; the tail of this exit
         * injects it or opens the interrupt window (interrupts.c). Without
         * the interrupt path there is no queue: "unknown function". */
        if (regs->rbx > 255 || !hv_irq_raise(cpu, (UINT32)regs->rbx))
            status = HV_VMCALL_BAD_ARGUMENT;
        break;
#endif
    case HV_VMCALL_EXIT_BOOT_SERVICES:
        return hv_exit_boot_services(cpu, regs);
    case HV_VMCALL_DEVIRTUALIZE:
        if (hv.boot_services_gone && !HV_OS_MAY_DEVIRTUALIZE) { /* the OS's: option os_may_devirtualize */
            status = HV_VMCALL_REFUSED;
            break;
        }
        regs->rax = HV_VMCALL_OK;
        hv_log("uefi-hv: cpu %u: devirtualised at the guest's request\n", cpu->index);
#if HV_SVM
        if (hv.svm)
            hv_svm_devirtualize(cpu, regs); /* does not return: the guest goes on natively */
#endif
        hv_devirtualize(cpu, regs); /* does not return: the guest goes on natively */
    default:
        status = HV_VMCALL_UNKNOWN;
        break;
    }
    regs->rax = status;
    return HV_RESUME_NEXT;
}
#endif

#if HV_ACTION_XSETBV
/* XSETBV exits unconditionally (SDM 27.1.2 "Instructions That Cause VM Exits
 * Unconditionally"): executed for the guest; an invalid XCR0 value raises #GP
 * in the host, which becomes the guest's. At CPL > 0 the CPU raises #GP
 * before the exit (SDM 26.1.1); Bochs exits first, so the CPL is checked here
 * too, as KVM does: a ring-3 XSETBV never reaches XCR0. */
enum hv_exit_result hv_action_xsetbv(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)cpu;
    if (hv_guest_cpl() != 0) {
        hv_inject_exception(VECTOR_GP, TRUE, 0);
        return HV_RESUME_SAME;
    }
    UINT64 value = (regs->rdx & 0xFFFFFFFFULL) << 32 | (regs->rax & 0xFFFFFFFFULL);
    /* The guest's CR4.OSXSAVE is set (else XSETBV would have raised #UD in
     * the guest, before any exit); the host's may not be: set it meanwhile. */
    UINT64 cr4 = read_cr4();
    write_cr4(cr4 | X86_CR4_OSXSAVE);
    UINT64 faulted = hv_safe_xsetbv((UINT32)regs->rcx, value);
    write_cr4(cr4);
    if (faulted) {
        hv_inject_exception(VECTOR_GP, TRUE, 0);
        return HV_RESUME_SAME;
    }
    return HV_RESUME_NEXT;
}
#endif

#if HV_ACTION_INVD
/* INVD would drop the host's dirty cache lines too: write them back instead. */
enum hv_exit_result hv_action_invd(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)cpu;
    (void)regs;
    wbinvd();
    return HV_RESUME_NEXT;
}
#endif

#if HV_ACTION_INJECT_UD
/* VMX instructions in the guest: the guest sees no VMX, so #UD (SDM 32.3 "VMX Instructions"). */
enum hv_exit_result hv_action_inject_ud(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)cpu;
    (void)regs;
    hv_inject_exception(VECTOR_UD, FALSE, 0);
    return HV_RESUME_SAME;
}
#endif

#if HV_ACTION_TRIPLE_FAULT
enum hv_exit_result hv_action_triple_fault(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    hv_log_fatal(
        "uefi-hv: cpu %u: the guest triple-faulted (shutdown), RAX 0x%lx RBX 0x%lx RCX 0x%lx RDX 0x%lx\n",
        cpu->index, regs->rax, regs->rbx, regs->rcx, regs->rdx);
    log_guest_state(cpu);
    /* On bare metal the shutdown a triple fault causes resets the platform
     * (and Linux's reboot=t relies on it): so does the hypervisor. */
    hv_reset();
}
#endif

#if HV_ACTION_LOG_SHUTDOWN
enum hv_exit_result hv_action_log_shutdown(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)regs;
    UINT32 reason = (UINT32)vmread(VM_EXIT_REASON) & 0xFFFF;
    hv_log_fatal("uefi-hv: cpu %u: VM exit %u (%s), GPA 0x%lx: stopping\n", cpu->index, reason,
                 hv_exit_reason_name(reason), vmread(GUEST_PHYSICAL_ADDRESS));
    log_guest_state(cpu);
    return HV_STOP;
}
#endif

#if HV_ACTION_INIT || HV_ACTION_SIPI
/* A processor after INIT (SDM 11.1.1 "Processor State After Reset", Table 11-1),
 * as the guest sees it: real mode at F000:FFF0. With unrestricted guest, PE and PG are exempt
 * from the CR0 fixed bits (SDM 28.3.1.1 "Checks on Guest Control Registers, Debug Registers, and
 * MSRs"); the others still apply, behind the
 * read shadow. */
static void set_segment(UINT32 sel_field, UINT32 base_field, UINT32 limit_field, UINT32 ar_field, UINT16 sel,
                        UINT64 base, UINT32 ar)
{
    vmwrite(sel_field, sel);
    vmwrite(base_field, base);
    vmwrite(limit_field, 0xFFFF);
    vmwrite(ar_field, ar);
}

void hv_reset_to_init_state(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    UINT64 cr0 = 0x60000010ULL, must_be_1, must_be_0; /* CD, NW, ET */
    hv_cr_fixed(cpu, 0, &must_be_1, &must_be_0);
    vmwrite(GUEST_CR0, (cr0 | must_be_1) & ~must_be_0);
    vmwrite(CR0_READ_SHADOW, cr0);
    vmwrite(GUEST_CR3, 0);
    hv_cr_fixed(cpu, 4, &must_be_1, &must_be_0);
    vmwrite(GUEST_CR4, must_be_1 & ~must_be_0);
    vmwrite(CR4_READ_SHADOW, 0);
    vmwrite(GUEST_DR7, 0x400);
    vmwrite(GUEST_RSP, 0);
    vmwrite(GUEST_RIP, 0xFFF0);
    vmwrite(GUEST_RFLAGS, 0x2);
    set_segment(GUEST_CS_SELECTOR, GUEST_CS_BASE, GUEST_CS_LIMIT, GUEST_CS_AR_BYTES, 0xF000, 0xFFFF0000ULL,
                0x9B);
    set_segment(GUEST_DS_SELECTOR, GUEST_DS_BASE, GUEST_DS_LIMIT, GUEST_DS_AR_BYTES, 0, 0, 0x93);
    set_segment(GUEST_ES_SELECTOR, GUEST_ES_BASE, GUEST_ES_LIMIT, GUEST_ES_AR_BYTES, 0, 0, 0x93);
    set_segment(GUEST_SS_SELECTOR, GUEST_SS_BASE, GUEST_SS_LIMIT, GUEST_SS_AR_BYTES, 0, 0, 0x93);
    set_segment(GUEST_FS_SELECTOR, GUEST_FS_BASE, GUEST_FS_LIMIT, GUEST_FS_AR_BYTES, 0, 0, 0x93);
    set_segment(GUEST_GS_SELECTOR, GUEST_GS_BASE, GUEST_GS_LIMIT, GUEST_GS_AR_BYTES, 0, 0, 0x93);
    set_segment(GUEST_LDTR_SELECTOR, GUEST_LDTR_BASE, GUEST_LDTR_LIMIT, GUEST_LDTR_AR_BYTES, 0, 0, 0x82);
    set_segment(GUEST_TR_SELECTOR, GUEST_TR_BASE, GUEST_TR_LIMIT, GUEST_TR_AR_BYTES, 0, 0, 0x8B);
    vmwrite(GUEST_GDTR_BASE, 0);
    vmwrite(GUEST_GDTR_LIMIT, 0xFFFF);
    vmwrite(GUEST_IDTR_BASE, 0);
    vmwrite(GUEST_IDTR_LIMIT, 0xFFFF);
    vmwrite(GUEST_INTERRUPTIBILITY_INFO, 0);
    vmwrite(GUEST_PENDING_DBG_EXCEPTIONS, 0);
    if (cpu->controls[HV_CTL_ENTRY] & HV_ENTRY_LOAD_IA32_EFER)
        vmwrite(GUEST_IA32_EFER, 0);
    /* Real mode is not IA-32e mode (SDM 28.2.1.3 "VM-Entry Control Fields"). */
    vmwrite(VM_ENTRY_CONTROLS, vmread(VM_ENTRY_CONTROLS) & ~(UINT64)HV_ENTRY_IA32E_MODE_GUEST);
    /* INIT flushes the TLBs; VM entry does not flush this VPID's. */
    hv_invalidate_guest_tlb(cpu, FALSE);
    UINT32 r[4];
    cpuid(1, 0, r);
    hv_zero(regs, sizeof *regs);
    regs->rdx = r[0]; /* EDX = processor signature */
}

/* The guest leaves wait-for-SIPI at vector << 12, CS = vector << 8 (SDM
 * 10.4.4.1 "Typical BSP Initialization Sequence", 12.6.1 "Interrupt Command
 * Register (ICR)"). Nothing blocks a CPU that just left wait-for-SIPI (and
 * SMI blocking outside SMM is invalid guest state, SDM 28.3.1.5 "Checks on Guest Non-Register State"). */
enum hv_exit_result hv_start_at_sipi_vector(UINT32 vector)
{
    vmwrite(GUEST_CS_SELECTOR, (UINT64)(vector & 0xFF) << 8);
    vmwrite(GUEST_CS_BASE, (UINT64)(vector & 0xFF) << 12);
    vmwrite(GUEST_RIP, 0);
    vmwrite(GUEST_ACTIVITY_STATE, HV_ACTIVITY_ACTIVE);
    vmwrite(GUEST_INTERRUPTIBILITY_INFO, 0);
    vmwrite(GUEST_PENDING_DBG_EXCEPTIONS, 0);
    return HV_RESUME_SAME;
}
#endif

#if HV_ACTION_INIT
/* INIT in VMX non-root operation does not reset the CPU: it exits (SDM
 * 27.2 "Other Causes of VM Exits"), in xAPIC and x2APIC mode alike, and the
 * hypervisor does what INIT does. An AP then waits for a SIPI in the
 * wait-for-SIPI activity state, where the SIPI exits (reason 4, `sipi`);
 * the BSP starts again at the reset vector, as after INIT on bare metal
 * (SDM 10.4.1 "BSP and AP Processors"). INIT is blocked in VMX root, so one that arrives
 * while the hypervisor runs is held and exits at the next VM entry. */
enum hv_exit_result hv_action_init(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    hv_reset_to_init_state(cpu, regs);
    vmwrite(GUEST_ACTIVITY_STATE, cpu->is_bsp ? HV_ACTIVITY_ACTIVE : HV_ACTIVITY_WAIT_FOR_SIPI);
    return HV_RESUME_SAME;
}
#endif

#if HV_ACTION_SIPI
/* A SIPI to a guest in wait-for-SIPI: the vector is in the exit
 * qualification (SDM 29.2.1 "Basic VM-Exit Information"). */
enum hv_exit_result hv_action_sipi(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)regs;
    (void)cpu;
    return hv_start_at_sipi_vector((UINT32)vmread(EXIT_QUALIFICATION));
}
#endif

#if HV_ACTION_CR_ACCESS
#define CR_ACCESS_MOV_TO_CR 0
#define CR_ACCESS_LMSW      3

/* A MOV to CR0 (or LMSW) that changes a bit the hypervisor owns (hv_cr_owned:
 * CR0.NE, and PE and PG without unrestricted guest): done as the CPU would,
 * the guest keeping its own value in the read shadow and the VMX-fixed bits
 * staying in GUEST_CR0. #GP where bare metal raises it (SDM Vol. 3A 2.5
 * "Control Registers", MOV to CR0). A change of PG that comes with it
 * switches IA-32e mode in and out (EFER.LMA, "IA-32e mode guest") and loads
 * the PAE PDPTEs, as the instruction itself would. */
static enum hv_exit_result mov_to_cr0(struct hv_cpu *cpu, UINT64 value)
{
    UINT64 must_be_1, must_be_0, old = vmread(GUEST_CR0);
    hv_cr_fixed(cpu, 0, &must_be_1, &must_be_0);
    if ((value >> 32) || ((value & X86_CR0_PG) && !(value & X86_CR0_PE)) ||
        ((value & X86_CR0_NW) && !(value & X86_CR0_CD))) {
        hv_inject_exception(VECTOR_GP, TRUE, 0);
        return HV_RESUME_SAME;
    }
    if ((value ^ old) & (X86_CR0_PE | X86_CR0_PG) & must_be_1) {
        hv_log_fatal("uefi-hv: cpu %u: the guest leaves protected mode or paging (CR0 0x%lx), which needs "
                     "unrestricted guest (proc2.unrestricted_guest)\n",
                     cpu->index, value);
        return HV_STOP;
    }
    if (((value ^ old) & X86_CR0_PG) && (cpu->controls[HV_CTL_ENTRY] & HV_ENTRY_LOAD_IA32_EFER)) {
        UINT64 efer = vmread(GUEST_IA32_EFER), entry = vmread(VM_ENTRY_CONTROLS);
        if ((value & X86_CR0_PG) && (efer & X86_EFER_LME)) {
            if (!(vmread(GUEST_CR4) & X86_CR4_PAE)) { /* IA-32e mode needs PAE */
                hv_inject_exception(VECTOR_GP, TRUE, 0);
                return HV_RESUME_SAME;
            }
            efer |= X86_EFER_LMA;
            entry |= HV_ENTRY_IA32E_MODE_GUEST;
        } else if (!(value & X86_CR0_PG)) {
            efer &= ~X86_EFER_LMA;
            entry &= ~(UINT64)HV_ENTRY_IA32E_MODE_GUEST;
        }
        vmwrite(GUEST_IA32_EFER, efer);
        vmwrite(VM_ENTRY_CONTROLS, entry);
        if ((value & X86_CR0_PG) && !(efer & X86_EFER_LMA) && (vmread(GUEST_CR4) & X86_CR4_PAE)) {
            /* PAE paging: with EPT the PDPTEs come from the VMCS (SDM 28.3.2.4
             * "Loading Page-Directory-Pointer-Table Entries"). */
            volatile UINT64 *pdpte = (volatile UINT64 *)(vmread(GUEST_CR3) & 0xFFFFFFE0ULL);
            vmwrite(GUEST_PDPTR0, pdpte[0]);
            vmwrite(GUEST_PDPTR1, pdpte[1]);
            vmwrite(GUEST_PDPTR2, pdpte[2]);
            vmwrite(GUEST_PDPTR3, pdpte[3]);
        }
        hv_invalidate_guest_tlb(cpu, FALSE); /* a change of CR0.PG flushes the TLBs */
    }
    vmwrite(GUEST_CR0, (value | must_be_1) & ~must_be_0);
    vmwrite(CR0_READ_SHADOW, value);
    return HV_RESUME_NEXT;
}

/* A MOV to CR4 that changes a bit the hypervisor owns: VMXE (the guest has no
 * VMX) or a bit this CPU does not have, both #GP as on such a CPU. */
static enum hv_exit_result mov_to_cr4(struct hv_cpu *cpu, UINT64 value)
{
    UINT64 must_be_1, must_be_0;
    hv_cr_fixed(cpu, 4, &must_be_1, &must_be_0);
    if (value & (X86_CR4_VMXE | must_be_0)) {
        hv_inject_exception(VECTOR_GP, TRUE, 0);
        return HV_RESUME_SAME;
    }
    vmwrite(GUEST_CR4, (value | must_be_1) & ~must_be_0);
    vmwrite(CR4_READ_SHADOW, value);
    return HV_RESUME_NEXT;
}

/* Control-register accesses that exit because they change bits the
 * hypervisor owns (CR0/CR4_GUEST_HOST_MASK, SDM 26.6.6 "Guest/Host Masks and
 * Read Shadows for CR0 and CR4"; SDM 27.1.3 "Instructions That Cause VM Exits
 * Conditionally"; the exit qualification, SDM 29.2.1 "Basic VM-Exit
 * Information", Table 29-3). */
enum hv_exit_result hv_action_cr_access(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    UINT64 q = vmread(EXIT_QUALIFICATION);
    UINT32 cr = q & 15, type = (q >> 4) & 3, reg = (q >> 8) & 15;
    UINT64 value = type != CR_ACCESS_MOV_TO_CR ? 0 : reg == 4 ? vmread(GUEST_RSP) : *gpr(regs, reg);
    if (type == CR_ACCESS_MOV_TO_CR && (cr == 0 || cr == 4))
        return cr == 0 ? mov_to_cr0(cpu, value) : mov_to_cr4(cpu, value);
    if (type == CR_ACCESS_MOV_TO_CR && cr == 8) { /* the TPR (interrupts.c watches it): the CPU's own */
        if (value >> 4) {
            hv_inject_exception(VECTOR_GP, TRUE, 0); /* reserved bits (SDM Vol. 3A 2.5 "Control Registers") */
            return HV_RESUME_SAME;
        }
        write_cr8(value);
        return HV_RESUME_NEXT;
    }
    if (type == CR_ACCESS_LMSW) { /* PE, MP, EM, TS from the source; PE is never cleared */
        UINT64 cr0 = hv_guest_cr(0);
        return mov_to_cr0(cpu, (cr0 & ~0xEULL) | ((q >> 16) & 0xF) | (cr0 & X86_CR0_PE));
    }
    hv_log_fatal("uefi-hv: cpu %u: unexpected control-register access, qualification 0x%lx\n", cpu->index, q);
    log_guest_state(cpu);
    return HV_STOP;
}
#endif

#if HV_ACTION_DISPATCH_IDT
/* An external interrupt, acknowledged on exit: interrupts.c, the seed's path. */
enum hv_exit_result hv_action_dispatch_idt(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)regs;
    hv_irq_exit(cpu);
    return HV_RESUME_SAME;
}
#endif

#if HV_ACTION_INJECT_PENDING
/* The interrupt window opened: hv_irq_before_entry() injects what waits. */
enum hv_exit_result hv_action_inject_pending(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)regs;
    hv_irq_window_exit(cpu);
    return HV_RESUME_SAME;
}
#endif

/* --- the dispatch (the table is dispatch.c, from the spec) ------------------ */

/* EPT violations the runtime answers before the spec's action: memory the
 * start-up left unmapped (ept.c), and stores to the local APIC page with
 * `option apic_icr_emulation` (icr_emulation.c). */
static BOOLEAN ept_violation_done(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    (void)regs;
#if HV_EPT
    if (hv_ept_map_on_first_use(cpu))
        return TRUE;
#endif
#if HV_SELF_PROTECTION
    UINT64 q = vmread(EXIT_QUALIFICATION); /* bit 1 a write, bit 2 a fetch (SDM Table 29-7) */
    if (hv_protection_violation(cpu, vmread(GUEST_PHYSICAL_ADDRESS), (q & 2) != 0, (q & 4) != 0))
        return TRUE;
#endif
#if HV_APIC_ICR_EMULATION
    if (hv_icr_emulate_apic_store(cpu, regs))
        return TRUE;
#endif
    return FALSE;
}

/* vmexit.S reads struct hv_cpu's first fields at these offsets. */
_Static_assert(__builtin_offsetof(struct hv_cpu, nmi_pending) == HV_CPU_DUE &&
                   __builtin_offsetof(struct hv_cpu, nmi_window) == HV_CPU_DUE + 2 &&
                   __builtin_offsetof(struct hv_cpu, ept_flush_due) == HV_CPU_DUE + 4,
               "asm.h: HV_CPU_DUE");
_Static_assert(__builtin_offsetof(struct hv_cpu, exit_reason) == HV_CPU_EXIT_REASON,
               "asm.h: HV_CPU_EXIT_REASON");
_Static_assert(__builtin_offsetof(struct hv_cpu, exit_count) == HV_CPU_EXIT_COUNT,
               "asm.h: HV_CPU_EXIT_COUNT");

/* All of a CPU's VM exits: the sum of its counters (one increment an exit). */
UINT64 hv_exits_total(const struct hv_cpu *cpu)
{
    UINT64 total = 0;
    for (UINT32 i = 0; i < HV_EXIT_REASON_COUNT; i++)
        total += cpu->exit_count[i];
    return total;
}

/* The full path (vmexit.S): every exit its short path does not answer. */
void hv_vmexit_handler(struct hv_guest_regs *regs, struct hv_cpu *cpu)
{
    UINT32 reason = cpu->exit_reason; /* read by vmexit.S */
    if (reason & EXIT_REASON_ENTRY_FAILURE) {
        /* SDM 28.8 "VM-Entry Failures During or After Loading Guest State": a
         * VM entry that failed after loading guest state. */
        hv_log_fatal("uefi-hv: cpu %u: VM entry failed: exit reason %u (%s), qualification 0x%lx\n",
                     cpu->index, reason & 0xFFFF, hv_exit_reason_name(reason), vmread(EXIT_QUALIFICATION));
        log_guest_state(cpu);
        if (!hv_exits_total(cpu)) /* the launch itself: the firmware goes on without VMX */
            hv_launch_entry_failed(cpu, regs);
        hv_power_off();
    }
    reason &= 0xFFFF;
    hv_protection_sync(cpu);
    hv_exit_action action = NULL;
    if (reason < HV_EXIT_REASON_COUNT) {
        cpu->exit_count[reason]++;
        action = hv_exit_actions[reason];
    }
    /* An EPT violation the runtime answers itself is not the spec's. */
    enum hv_exit_result result = HV_RESUME_SAME;
    if (!(reason == EXIT_REASON_EPT_VIOLATION && ept_violation_done(cpu, regs))) {
        if (!action) {
            hv_log_fatal(
                "uefi-hv: cpu %u: unhandled VM exit %u (%s), qualification 0x%lx: stopping the machine\n",
                cpu->index, reason, hv_exit_reason_name(reason), vmread(EXIT_QUALIFICATION));
            log_guest_state(cpu);
            hv_power_off();
        }
        result = action(cpu, regs);
    }
    switch (result) {
    case HV_RESUME_NEXT:
        hv_advance_rip();
        break;
    case HV_RESUME_SAME:
        break;
    case HV_STOP:
        hv_power_off();
    }
    hv_redeliver_interrupted_event(cpu, reason); /* first: it was on its way before anything else */
#if HV_ACTION_DISPATCH_IDT
    hv_irq_before_entry(cpu);
#endif
    hv_nmi_before_entry(cpu); /* last: hv_host_nmi may open its window until VM entry */
}

void hv_vmresume_failed(struct hv_cpu *cpu)
{
    UINT32 number = (UINT32)vmread(VM_INSTRUCTION_ERROR);
    hv_log_fatal("uefi-hv: cpu %u: VMRESUME failed: VM-instruction error %u (%s)\n", cpu->index, number,
                 hv_vm_error_name(number));
    hv_power_off();
}

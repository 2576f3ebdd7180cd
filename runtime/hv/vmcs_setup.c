/*
 * Per-CPU VMX set-up, in two phases so that nothing is launched anywhere
 * until every CPU has passed every check:
 *   hv_prepare_cpu: VMX available, IA32_FEATURE_CONTROL, CR0/CR4 fixed bits,
 *     controls adjusted against the capability MSRs, host-state values
 *     computed, the spec's run-time checks run on them. No VMX instruction.
 *   hv_launch_cpu: VMXON, VMCS, the prepared values, the guest state copied
 *     from this very CPU, VMLAUNCH.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"
#include "guest.h"
#include "vmcs_setup.h"

UINT64 hv_constant_host_state[HV_HOST_FIELD_COUNT];
BOOLEAN hv_constant_host_state_ready;

static const char *control_name(UINT32 group, UINT32 bit)
{
    for (const struct hv_control_name *c = hv_control_names; c->name; c++)
        if (c->group == group && c->bit == bit)
            return c->name;
    return "(unnamed)";
}

static BOOLEAN fail(struct hv_cpu *cpu, const char *what)
{
    hv_snprintf(cpu->error, sizeof cpu->error, "%s", what);
    cpu->status = HV_CPU_FAILED;
    return FALSE;
}

UINT64 hv_host_value(const struct hv_cpu *cpu, UINT32 encoding)
{
    for (UINTN i = 0; i < HV_HOST_FIELD_COUNT; i++)
        if (cpu->host[i].encoding == encoding)
            return cpu->host[i].value;
    return 0;
}

/* SDM 25.7 "Enabling and Entering VMX Operation". */
static BOOLEAN enable_vmx(struct hv_cpu *cpu)
{
    UINT32 r[4];
    cpuid(1, 0, r);
    if (!(r[2] & (1U << 5)))
        return fail(cpu, "VMX is not available on this CPU (CPUID.1:ECX.VMX[5] = 0)");
    UINT64 fc = rdmsr(MSR_IA32_FEATURE_CONTROL);
    if (!(fc & FEATURE_CONTROL_LOCK)) {
        wrmsr(MSR_IA32_FEATURE_CONTROL, fc | FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_OUTSIDE_SMX);
    } else if (!(fc & FEATURE_CONTROL_VMX_OUTSIDE_SMX)) {
        return fail(cpu, "IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled: "
                         "VMX (VT-x) is switched off in the firmware settings; enable it there");
    }
    /* SDM Appendix A.7 "VMX-Fixed Bits in CR0", A.8 "VMX-Fixed Bits in CR4":
     * bits set in FIXED0 must be 1, bits clear in FIXED1 must be 0. */
    cpu->firmware_cr0 = read_cr0();
    cpu->firmware_cr4 = read_cr4();
    cpu->cr0 = (cpu->firmware_cr0 | rdmsr(MSR_IA32_VMX_CR0_FIXED0)) & rdmsr(MSR_IA32_VMX_CR0_FIXED1);
    cpu->cr4 = (cpu->firmware_cr4 | rdmsr(MSR_IA32_VMX_CR4_FIXED0)) & rdmsr(MSR_IA32_VMX_CR4_FIXED1);
    return TRUE;
}

/* SDM Appendix A.3 "VM-Execution Controls" to A.5 "VM-Entry Controls":
 * allowed-0 settings in bits 31:0 (1 = must be 1), allowed-1 settings in bits
 * 63:32 (0 = must be 0); the TRUE_* MSRs when IA32_VMX_BASIC[55] says they
 * exist. */
static BOOLEAN adjust_controls(struct hv_cpu *cpu)
{
    BOOLEAN true_msrs = (hv.vmx_basic & VMX_BASIC_TRUE_CONTROLS) != 0;
    for (UINT32 g = 0; g < HV_CTL_GROUPS; g++) {
        const struct hv_control_spec *c = &hv_control_spec[g];
        UINT64 cap = rdmsr(true_msrs && c->true_msr ? c->true_msr : c->msr);
        UINT32 allowed0 = (UINT32)cap, allowed1 = (UINT32)(cap >> 32);
        UINT32 wanted = c->wanted;
        if (g == HV_CTL_PROC2 && !(cpu->controls[HV_CTL_PROC] & HV_PROC_ACTIVATE_SECONDARY)) {
            allowed0 = allowed1 = 0; /* no secondary controls on this CPU */
        }
        UINT32 value = (wanted & allowed1) | allowed0;
        UINT32 missing = c->required & ~value;
        if (missing) {
            UINT32 bit = (UINT32)__builtin_ctz(missing);
            hv_snprintf(cpu->error, sizeof cpu->error,
                        "required control %s (bit %u of %s) is not supported by this CPU "
                        "(capability MSR 0x%x allows 0x%08x)",
                        control_name(g, bit), bit, c->field_name,
                        true_msrs && c->true_msr ? c->true_msr : c->msr, allowed1);
            cpu->status = HV_CPU_FAILED;
            return FALSE;
        }
        cpu->controls[g] = value;
    }
    /* Unrestricted guest needs EPT (SDM 28.2.1.1 "VM-Execution Control Fields"). */
    if (!(cpu->controls[HV_CTL_PROC2] & HV_PROC2_ENABLE_EPT))
        cpu->controls[HV_CTL_PROC2] &= ~HV_PROC2_UNRESTRICTED_GUEST;
    return TRUE;
}

void hv_set_host(struct hv_cpu *cpu, UINTN slot, UINT32 encoding, const char *name, BOOLEAN present,
                 UINT64 value)
{
    cpu->host[slot].encoding = encoding;
    cpu->host[slot].name = name;
    cpu->host[slot].present = present;
    cpu->host[slot].value = value;
}

BOOLEAN hv_prepare_cpu(struct hv_cpu *cpu)
{
    if (!enable_vmx(cpu) || !adjust_controls(cpu))
        return FALSE;
#if HV_ACTION_INIT
    /* The `init` action holds a CPU in wait-for-SIPI, an activity state the
     * CPU must support (IA32_VMX_MISC[8], SDM Appendix A.6 "Miscellaneous Data"). */
    if (!(rdmsr(MSR_IA32_VMX_MISC) & (1ULL << 8)))
        return fail(cpu, "IA32_VMX_MISC[8] is 0: this CPU cannot hold a guest in the wait-for-SIPI activity "
                         "state, which `exit init_signal -> init` needs");
#endif
    UINT32 r[4];
    cpuid(1, 0, r);
    cpu->apic_id = r[1] >> 24;
#if HV_APIC_ICR_EMULATION
    hv_icr_emulation_prepare(cpu);
#endif
    hv_spec_host_state(cpu); /* host_state.c, from the spec */
    hv_constant_host_state_ready = TRUE;
    if (!hv_run_time_checks(cpu)) {
        cpu->status = HV_CPU_FAILED;
        return FALSE;
    }
    cpu->status = HV_CPU_PREPARED;
    return TRUE;
}

/* --- guest state: a copy of this CPU as the firmware runs it ------------ */

/* Access rights in the VMCS format (SDM 26.4.1 "Guest Register State"): LAR's bits
 * 23:8 shifted down; unusable (bit 16) for a null selector. */
static UINT32 access_rights(UINT16 sel)
{
    UINT32 ar;
    if ((sel & ~3U) == 0 || !lar(sel, &ar))
        return 1U << 16;
    return (ar >> 8) & 0xF0FF;
}

static UINT8 write_guest_state(struct hv_cpu *cpu)
{
    struct hv_dtr gdtr, idtr;
    UINT8 err = 0;
    sgdt(&gdtr);
    sidt(&idtr);
#define W(field, value) (err |= vmwrite(field, (UINT64)(value)))
#define SEGMENT(SEG, sel, base)                        \
    do {                                               \
        W(GUEST_##SEG##_SELECTOR, (sel));              \
        W(GUEST_##SEG##_BASE, (base));                 \
        W(GUEST_##SEG##_LIMIT, hv_segment_limit(sel)); \
        W(GUEST_##SEG##_AR_BYTES, access_rights(sel)); \
    } while (0)
    /* Guest control registers: the bits VMX fixes (CR4.VMXE, CR0.NE, ...) are
     * the hypervisor's, and the guest reads its own value of them from the
     * shadow (SDM 26.6.6 "Guest/Host Masks and Read Shadows for CR0 and CR4"). */
    W(GUEST_CR0, cpu->cr0);
    W(GUEST_CR3, read_cr3());
    W(GUEST_CR4, cpu->cr4);
    W(CR0_GUEST_HOST_MASK, hv_cr_owned(cpu, 0));
    W(CR0_READ_SHADOW, cpu->firmware_cr0);
    W(CR4_GUEST_HOST_MASK, hv_cr_owned(cpu, 4));
    W(CR4_READ_SHADOW, cpu->firmware_cr4);
    W(GUEST_DR7, read_dr7());

    /* Segment registers (SDM 26.4.1 "Guest Register State"). */
    UINT16 cs = read_cs(), ss = read_ss(), ds = read_ds(), es = read_es();
    UINT16 fs = read_fs(), gs = read_gs(), ldtr = read_ldtr(), tr = read_tr();
    SEGMENT(ES, es, hv_descriptor_base(gdtr.base, es, FALSE));
    SEGMENT(CS, cs, hv_descriptor_base(gdtr.base, cs, FALSE));
    SEGMENT(SS, ss, hv_descriptor_base(gdtr.base, ss, FALSE));
    SEGMENT(DS, ds, hv_descriptor_base(gdtr.base, ds, FALSE));
    SEGMENT(FS, fs, rdmsr(MSR_IA32_FS_BASE));
    SEGMENT(GS, gs, rdmsr(MSR_IA32_GS_BASE));
    SEGMENT(LDTR, ldtr, hv_descriptor_base(gdtr.base, ldtr, TRUE));
    if (tr & ~7U) {
        SEGMENT(TR, tr, hv_descriptor_base(gdtr.base, tr, TRUE));
    } else {
        /* Firmware without a TSS: SDM 28.3.1.2 "Checks on Guest Segment
         * Registers" still wants a usable, busy 64-bit TSS in TR; the guest
         * never uses it without loading its own. */
        W(GUEST_TR_SELECTOR, 0);
        W(GUEST_TR_BASE, 0);
        W(GUEST_TR_LIMIT, 0x67);
        W(GUEST_TR_AR_BYTES, 0x8B);
    }
    W(GUEST_GDTR_BASE, gdtr.base);
    W(GUEST_GDTR_LIMIT, gdtr.limit);
    W(GUEST_IDTR_BASE, idtr.base);
    W(GUEST_IDTR_LIMIT, idtr.limit);

    /* MSRs (SDM 26.4.1 "Guest Register State"). */
    W(GUEST_IA32_DEBUGCTL, rdmsr(MSR_IA32_DEBUGCTL));
    W(GUEST_SYSENTER_CS, rdmsr(MSR_IA32_SYSENTER_CS));
    W(GUEST_SYSENTER_ESP, rdmsr(MSR_IA32_SYSENTER_ESP));
    W(GUEST_SYSENTER_EIP, rdmsr(MSR_IA32_SYSENTER_EIP));
    if (cpu->controls[HV_CTL_ENTRY] & HV_ENTRY_LOAD_IA32_PAT)
        W(GUEST_IA32_PAT, rdmsr(MSR_IA32_PAT));
    if (cpu->controls[HV_CTL_ENTRY] & HV_ENTRY_LOAD_IA32_EFER)
        W(GUEST_IA32_EFER, rdmsr(MSR_IA32_EFER));

    /* Non-register state (SDM 26.4.2 "Guest Non-Register State"). */
    W(VMCS_LINK_POINTER, ~0ULL);
    W(GUEST_ACTIVITY_STATE, 0);
    W(GUEST_INTERRUPTIBILITY_INFO, 0);
    W(GUEST_PENDING_DBG_EXCEPTIONS, 0);
#ifdef HV_TEST_INVALID_GUEST_STATE
    /* tests/test_hypervisor_bochs.py: an activity state no CPU has, so that
     * VM entry fails on the guest state and the failure path is seen. */
    W(GUEST_ACTIVITY_STATE, 5);
#endif
#undef SEGMENT
#undef W
    return err;
}

static UINT8 write_controls(struct hv_cpu *cpu)
{
    UINT8 err = 0;
#define W(field, value) (err |= vmwrite(field, (UINT64)(value)))
    /* IA-32e mode guest must equal the guest's EFER.LMA (SDM 28.2.1.3 "VM-Entry
     * Control Fields"); the firmware runs in long mode. From the first VM exit
     * on, the processor keeps it in step with EFER.LMA itself ("IA-32e mode
     * guest" is saved on VM exit, SDM 29.2 "Recording VM-Exit Information and
     * Updating VM-Entry Control Fields"), which the INIT/SIPI path relies on. */
    if (rdmsr(MSR_IA32_EFER) & (1ULL << 10))
        cpu->controls[HV_CTL_ENTRY] |= HV_ENTRY_IA32E_MODE_GUEST;
    else
        cpu->controls[HV_CTL_ENTRY] &= ~HV_ENTRY_IA32E_MODE_GUEST;
#if HV_APIC_ICR_EMULATION
    /* An AP idles in "cli; hlt" between MP calls, and in a MONITOR/MWAIT
     * loop after ExitBootServices: both exit, so that the CPU can take the
     * emulated INIT-SIPI (icr_emulation.c). */
    if (!cpu->is_bsp)
        cpu->controls[HV_CTL_PROC] |= HV_PROC_HLT_EXITING | HV_PROC_MWAIT_EXITING;
#endif
    for (UINT32 g = 0; g < HV_CTL_GROUPS; g++)
        if (g != HV_CTL_PROC2 || (cpu->controls[HV_CTL_PROC] & HV_PROC_ACTIVATE_SECONDARY))
            W(hv_control_spec[g].field, cpu->controls[g]);
    W(EXCEPTION_BITMAP, 0);
    W(PAGE_FAULT_ERROR_CODE_MASK, 0);
    W(PAGE_FAULT_ERROR_CODE_MATCH, 0);
    W(CR3_TARGET_COUNT, 0);
    W(VM_EXIT_MSR_STORE_COUNT, 0);
    W(VM_EXIT_MSR_LOAD_COUNT, 0);
    W(VM_ENTRY_MSR_LOAD_COUNT, 0);
    W(VM_ENTRY_INTR_INFO_FIELD, 0);
    if (cpu->controls[HV_CTL_PROC] & HV_PROC_USE_MSR_BITMAPS)
        W(MSR_BITMAP, (UINT64)hv.msr_bitmap);
    if (cpu->controls[HV_CTL_PROC2] & HV_PROC2_ENABLE_EPT)
        W(EPT_POINTER, hv.eptp);
    /* XSAVES/XRSTORS of any XSS component stay the guest's: the field has no
     * defined reset value, so it is written (SDM 26.6.20 "XSS-Exiting Bitmap"). */
    if (cpu->controls[HV_CTL_PROC2] & HV_PROC2_ENABLE_XSAVES_XRSTORS)
        W(XSS_EXIT_BITMAP, 0);
    if (cpu->controls[HV_CTL_PROC2] & HV_PROC2_ENABLE_VPID)
        W(VIRTUAL_PROCESSOR_ID, cpu->index + 1); /* VPID 0 is the host's */
#undef W
    return err;
}

/* The bits of CR0 or CR4 that VMX operation fixes (SDM Appendix A.7 "VMX-Fixed
 * Bits in CR0", A.8 "VMX-Fixed Bits in CR4"): those FIXED0 sets must be 1,
 * those FIXED1 clears must be 0. Under unrestricted guest PE and PG are the
 * guest's (SDM 28.3.1.1 "Checks on Guest Control Registers, Debug Registers,
 * and MSRs"). */
void hv_cr_fixed(const struct hv_cpu *cpu, UINT32 cr, UINT64 *must_be_1, UINT64 *must_be_0)
{
    *must_be_1 = rdmsr(cr == 0 ? MSR_IA32_VMX_CR0_FIXED0 : MSR_IA32_VMX_CR4_FIXED0);
    *must_be_0 = ~rdmsr(cr == 0 ? MSR_IA32_VMX_CR0_FIXED1 : MSR_IA32_VMX_CR4_FIXED1) & 0xFFFFFFFFULL;
    if (cr == 0 && (cpu->controls[HV_CTL_PROC2] & HV_PROC2_UNRESTRICTED_GUEST))
        *must_be_1 &= ~(X86_CR0_PE | X86_CR0_PG);
}

/* Those bits are the hypervisor's (CR0/CR4_GUEST_HOST_MASK): the guest reads
 * them from the read shadow, and a write that would change them exits, so that
 * the guest can clear CR0.NE or set a CR4 bit the CPU lacks as on bare metal
 * (the cr_access action). */
UINT64 hv_cr_owned(const struct hv_cpu *cpu, UINT32 cr)
{
    UINT64 must_be_1, must_be_0;
    hv_cr_fixed(cpu, cr, &must_be_1, &must_be_0);
    return must_be_1 | must_be_0;
}

/* CR0 or CR4 as the guest sees it: the bits it owns from GUEST_CRn, the
 * hypervisor's from the read shadow. */
UINT64 hv_guest_cr(UINT32 cr)
{
    UINT64 mask = vmread(cr == 0 ? CR0_GUEST_HOST_MASK : CR4_GUEST_HOST_MASK);
    return (vmread(cr == 0 ? GUEST_CR0 : GUEST_CR4) & ~mask) |
           (vmread(cr == 0 ? CR0_READ_SHADOW : CR4_READ_SHADOW) & mask);
}

/* Guest translations cached under this CPU's VPID (or, `all`, under every
 * VPID and EPTP) are dropped, as INIT and VMXON on a CPU that may hold stale
 * ones require (SDM 30.4.3.3 "Guidelines for Use of the INVVPID
 * Instruction"). Each type only where IA32_VMX_EPT_VPID_CAP reports it. */
void hv_invalidate_guest_tlb(struct hv_cpu *cpu, BOOLEAN all)
{
    UINT64 cap = hv.ept_vpid_cap;
    if (all && (cpu->controls[HV_CTL_PROC2] & HV_PROC2_ENABLE_EPT) && (cap >> 20 & 1) && (cap >> 26 & 1))
        invept(2, 0);
    if (!(cpu->controls[HV_CTL_PROC2] & HV_PROC2_ENABLE_VPID) || !(cap >> 32 & 1))
        return;
    if (!all && (cap >> 41 & 1))
        invvpid(1, (UINT16)(cpu->index + 1));
    else if (cap >> 42 & 1)
        invvpid(2, 0);
}

static UINT8 write_host_state(struct hv_cpu *cpu)
{
    UINT8 err = 0;
    for (UINTN i = 0; i < HV_HOST_FIELD_COUNT; i++)
        if (cpu->host[i].present)
            err |= vmwrite(cpu->host[i].encoding, cpu->host[i].value);
    return err;
}

void hv_vmx_off(struct hv_cpu *cpu)
{
    vmclear((UINT64)cpu->vmcs);
    vmxoff();
    write_cr4(cpu->firmware_cr4);
    write_cr0(cpu->firmware_cr0);
}

BOOLEAN hv_launch_cpu(struct hv_cpu *cpu)
{
    UINT64 flags = read_rflags();
    cli();
    /* Bits 30:0 of IA32_VMX_BASIC (SDM Appendix A.1 "Basic VMX Information"). */
    UINT32 revision = (UINT32)(hv.vmx_basic & 0x7FFFFFFF);
    *(UINT32 *)cpu->vmxon_region = revision;
    *(UINT32 *)cpu->vmcs = revision;
    write_cr0(cpu->cr0);
    write_cr4(cpu->cr4);
    if (vmxon((UINT64)cpu->vmxon_region) != VMX_OK) {
        write_cr4(cpu->firmware_cr4);
        write_cr0(cpu->firmware_cr0);
        write_rflags(flags);
        return fail(cpu, "VMXON failed");
    }
    if (vmclear((UINT64)cpu->vmcs) != VMX_OK || vmptrld((UINT64)cpu->vmcs) != VMX_OK) {
        hv_vmx_off(cpu);
        write_rflags(flags);
        return fail(cpu, "VMCLEAR/VMPTRLD of the VMCS failed");
    }
    UINT8 err = write_controls(cpu) | write_host_state(cpu) | write_guest_state(cpu);
    if (!err)
        hv_invalidate_guest_tlb(cpu, TRUE); /* whatever an earlier VMX user left */
    if (err) {
        UINT32 number = (UINT32)vmread(VM_INSTRUCTION_ERROR);
        hv_vmx_off(cpu);
        write_rflags(flags);
        hv_snprintf(cpu->error, sizeof cpu->error, "VMWRITE failed: VM-instruction error %u (%s)", number,
                    hv_vm_error_name(number));
        cpu->status = HV_CPU_FAILED;
        return FALSE;
    }
    cpu->status = HV_CPU_LAUNCHED; /* set before: the guest continues below */
    UINT64 rc = hv_vmlaunch(flags);
    if (rc == 0)
        return TRUE;                    /* in VMX non-root operation now */
    if (rc == HV_LAUNCH_ENTRY_FAILED) { /* VMX is off again: hv_launch_entry_failed */
        write_rflags(flags);
        return FALSE;
    }

    /* VMLAUNCH (SDM 32.3 "VMX Instructions"): VMfailValid leaves the reason in
     * VM_INSTRUCTION_ERROR. */
    UINT32 number = rc == VMX_FAIL_VALID ? (UINT32)vmread(VM_INSTRUCTION_ERROR) : 0;
    cpu->vm_instruction_error = number;
    hv_vmx_off(cpu);
    write_rflags(flags);
    if (rc == VMX_FAIL_VALID)
        hv_snprintf(cpu->error, sizeof cpu->error, "VMLAUNCH failed: VM-instruction error %u (%s)", number,
                    hv_vm_error_name(number));
    else
        hv_snprintf(cpu->error, sizeof cpu->error, "VMLAUNCH failed: VMfailInvalid (no current VMCS)");
    cpu->status = HV_CPU_FAILED;
    return FALSE;
}

/*
 * The guest's TR, as the VMCS holds it (selector, base, limit, access
 * rights), loaded into the CPU. LTR reads the descriptor from the GDT, and
 * the guest's GDT may no longer hold it: a CPU keeps TR after its GDT
 * changes, and a TR selector past the GDT's limit is a state the guest can
 * be in (hvcheck's fuzz leaves one). So the descriptor is built from the
 * VMCS before VMXOFF (tr_descriptor), available (LTR faults on a busy one,
 * SDM 9.2.4 "Task Register"), and a GDT is loaded whose entry `tr` is it:
 * base = the descriptor's address - the selector's offset. Then the guest's
 * GDT again.
 */
static void tr_descriptor(UINT64 descriptor[2])
{
    UINT64 base = vmread(GUEST_TR_BASE), limit = vmread(GUEST_TR_LIMIT), ar = vmread(GUEST_TR_AR_BYTES);
    if (ar & (1ULL << 15)) /* G: the descriptor's limit counts 4-KiB units */
        limit >>= 12;
    descriptor[0] = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | (ar & 0xFD) << 40 |
                    (limit >> 16 & 0xF) << 48 | (ar >> 12 & 0xF) << 52 | (base >> 24 & 0xFF) << 56;
    descriptor[1] = base >> 32;
}

static void load_tr(UINT16 tr, UINT64 descriptor[2], const struct hv_dtr *guest_gdtr)
{
    struct hv_dtr only_tr = { (UINT16)((tr & ~7U) + 15), (UINT64)descriptor - (tr & ~7U) };
    lgdt(&only_tr);
    __asm__ volatile("ltr %0" : : "r"(tr) : "memory");
    lgdt(guest_gdtr);
}

/*
 * VMX off on this CPU, and the guest's state (from the VMCS) loaded into the
 * CPU itself, so that it continues natively at `rip` with the GPRs of
 * `regs`. Runs in VMX root on the host stack; the firmware's page tables map
 * it (identity). The caller has taken the CPU out of HV_CPU_LAUNCHED.
 */
static void __attribute__((noreturn)) leave_vmx(struct hv_cpu *cpu, struct hv_guest_regs *regs, UINT64 rip)
{
    UINT64 frame[5] = {
        rip, vmread(GUEST_CS_SELECTOR), vmread(GUEST_RFLAGS), vmread(GUEST_RSP), vmread(GUEST_SS_SELECTOR),
    };
    UINT64 cr3 = vmread(GUEST_CR3);
    UINT64 cr0 = hv_guest_cr(0), cr4 = hv_guest_cr(4);
    struct hv_dtr gdtr = { (UINT16)vmread(GUEST_GDTR_LIMIT), vmread(GUEST_GDTR_BASE) };
    struct hv_dtr idtr = { (UINT16)vmread(GUEST_IDTR_LIMIT), vmread(GUEST_IDTR_BASE) };
    UINT16 ds = (UINT16)vmread(GUEST_DS_SELECTOR), es = (UINT16)vmread(GUEST_ES_SELECTOR);
    UINT16 fs = (UINT16)vmread(GUEST_FS_SELECTOR), gs = (UINT16)vmread(GUEST_GS_SELECTOR);
    UINT16 tr = (UINT16)vmread(GUEST_TR_SELECTOR);
    UINT64 fs_base = vmread(GUEST_FS_BASE), gs_base = vmread(GUEST_GS_BASE), tr_desc[2];
    tr_descriptor(tr_desc);

    vmclear((UINT64)cpu->vmcs);
    vmxoff();
    write_cr4(cr4); /* VMXE off: the guest never saw it */
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
    write_cr0(cr0);
    lgdt(&gdtr);
    lidt(&idtr);
    if (tr & ~7U)
        load_tr(tr, tr_desc, &gdtr);
    __asm__ volatile("mov %0, %%ds; mov %1, %%es; mov %2, %%fs; mov %3, %%gs"
                     :
                     : "r"(ds), "r"(es), "r"(fs), "r"(gs)
                     : "memory");
    wrmsr(MSR_IA32_FS_BASE, fs_base);
    wrmsr(MSR_IA32_GS_BASE, gs_base);
    hv_resume_native(frame, regs);
}

/* DEVIRTUALIZE: the guest goes on natively after its VMCALL. */
void hv_devirtualize(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    __atomic_store_n(&cpu->status, HV_CPU_NEW, __ATOMIC_SEQ_CST); /* first: an NMI must not VMWRITE now */
    __atomic_sub_fetch(&hv.launched_count, 1, __ATOMIC_SEQ_CST);
    leave_vmx(cpu, regs, vmread(GUEST_RIP) + vmread(VM_EXIT_INSTRUCTION_LEN));
}

/* The VMLAUNCH of this CPU failed VM entry after the checks of controls and
 * host state (invalid guest state, an MSR to load: SDM 28.8 "VM-Entry
 * Failures During or After Loading Guest State"), so the exit came here, not
 * to its caller. VMX goes off again and hv_vmlaunch returns
 * HV_LAUNCH_ENTRY_FAILED to hv_launch_cpu natively, as a VMfail would: the
 * firmware goes on without the hypervisor. */
void hv_launch_entry_failed(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    UINT32 reason = (UINT32)vmread(VM_EXIT_REASON) & 0xFFFF;
    hv_snprintf(cpu->error, sizeof cpu->error,
                "VM entry failed at launch: exit reason %u (%s), qualification 0x%lx; VMX is off again",
                reason, hv_exit_reason_name(reason), vmread(EXIT_QUALIFICATION));
    __atomic_store_n(&cpu->status, HV_CPU_FAILED, __ATOMIC_SEQ_CST);
    regs->rax = HV_LAUNCH_ENTRY_FAILED;
    leave_vmx(cpu, regs, (UINT64)hv_vmlaunch_done);
}

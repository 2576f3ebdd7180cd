/*
 * hvcheck.efi: the hypervisor's self-test, run as its guest (chained by
 * BOOTX64.EFI). hvcheck.h, generated from the same spec, gives it the
 * signature, the VMCALL numbers and the exit reasons. On every CPU (APs through MP
 * services) it checks what the guest must see; on the BSP also that UEFI
 * still works. One line per check, then HVCHECK: PASS or FAIL, power off.
 */
#include "hvcheck.h"
#include "mp_services.h"

#define MAX_CHECKS 32

struct check {
    const char *name;
    BOOLEAN ok;
    char detail[96];
};
struct cpu_result {
    UINT32 count;
    struct check checks[MAX_CHECKS];
};
static struct cpu_result *results; /* one per CPU, from the pool */

/* Load option `qemu_tcg_gaps=1`, for QEMU's TCG (Debian 12's 7.2), whose SVM
 * delivers no XSETBV intercept and checks INVD against the WBINVD intercept
 * (fixed in QEMU 8.1): those two exits cannot be seen there, and the checks
 * say so instead of failing (docs/emulators.md). */
static UINT64 qemu_tcg_gaps;

/* A tiny formatter for APs (no UEFI there): %u and %x of 64-bit values. */
static void fmt(char *out, UINTN size, const char *f, UINT64 a, UINT64 b)
{
    UINTN n = 0;
    UINT64 args[2] = { a, b };
    int next = 0;
    for (; *f && n + 1 < size; f++) {
        if (*f != '%' || (f[1] != 'u' && f[1] != 'x')) {
            out[n++] = *f;
            continue;
        }
        unsigned base = *++f == 'u' ? 10 : 16;
        UINT64 v = next < 2 ? args[next++] : 0;
        char rev[24];
        int r = 0;
        do {
            rev[r++] = "0123456789abcdef"[v % base];
            v /= base;
        } while (v);
        while (r && n + 1 < size)
            out[n++] = rev[--r];
    }
    out[n] = 0;
}

static void record(struct cpu_result *r, const char *name, BOOLEAN ok, const char *f, UINT64 a, UINT64 b)
{
    if (r->count == MAX_CHECKS)
        return;
    struct check *c = &r->checks[r->count++];
    c->name = name;
    c->ok = ok;
    c->detail[0] = 0;
    if (f)
        fmt(c->detail, sizeof c->detail, f, a, b);
}

static void cpuid(UINT32 leaf, UINT32 r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(0));
}

static UINT64 exit_count(UINT32 reason)
{
    UINT64 out[4];
    hvcheck_vmcall(VMCALL_GET_EXIT_COUNT, reason, ~0ULL, out);
    return out[1];
}

static BOOLEAN hypervisor_present(void)
{
    UINT32 r[4];
    cpuid(1, r);
    if (!(r[2] & (1U << 31)))
        return FALSE;
    cpuid(0x40000000U, r);
    return r[1] == SIGNATURE_EBX && r[2] == SIGNATURE_ECX && r[3] == SIGNATURE_EDX;
}

struct idt_gate hvcheck_set_gate(UINT32 vector, void (*handler)(void))
{
    struct dtr idtr;
    UINT16 cs;
    __asm__ volatile("sidt %0" : "=m"(idtr));
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    struct idt_gate *gate = (struct idt_gate *)(idtr.base + vector * 16), saved = *gate;
    UINT64 h = (UINT64)handler;
    struct idt_gate ours = { (UINT16)h, cs, 0, 0x8E, (UINT16)(h >> 16), (UINT32)(h >> 32), 0 };
    *gate = ours;
    return saved;
}

void hvcheck_restore_gate(UINT32 vector, struct idt_gate saved)
{
    struct dtr idtr;
    __asm__ volatile("sidt %0" : "=m"(idtr));
    *(struct idt_gate *)(idtr.base + vector * 16) = saved;
}

/* The microcode revision, as SDM 11.11.7.1 "Determining the Signature" says
 * to read it: 0 to IA32_BIOS_SIGN_ID, CPUID.1, then bits 63:32. */
static UINT32 microcode_revision(void)
{
    UINT32 c[4], lo, hi;
    __asm__ volatile("wrmsr" ::"c"(MSR_IA32_BIOS_SIGN_ID), "a"(0), "d"(0));
    cpuid(1, c);
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(MSR_IA32_BIOS_SIGN_ID));
    return hi;
}

/* An update no processor takes (SDM 11.11.1 "Microcode Update", Table 11-7):
 * a version 1 header for loader revision 1, sizes 0 (2000 bytes of data,
 * 2048 in all), revision 0xFFFFFFFE, no processor signature, and a checksum
 * that does not add up; the data follows the 48-byte header, 16-byte aligned. */
static const UINT32 refused_update[512] __attribute__((aligned(16))) = { 1, 0xFFFFFFFEU, 0, 0, 0, 1 };

/* Intel: VMX hidden as on a CPU without it. IA32_FEATURE_CONTROL as the
 * spec's msr_bitmap answers it, and the VMX instructions raise #UD. */
static void check_vmx_hidden(struct cpu_result *r)
{
    UINT64 before, after;
    UINT32 lo, hi;
    /* IA32_FEATURE_CONTROL as the spec's msr_bitmap answers it. */
    before = exit_count(EXIT_RDMSR);
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(MSR_IA32_FEATURE_CONTROL));
    after = exit_count(EXIT_RDMSR);
    record(r, "IA32_FEATURE_CONTROL reads locked, VMX off", (lo & 1) && !(lo & 6) && after - before == 1,
           "value 0x%x, RDMSR exits %u", lo, after - before);

    /* VMXON in the guest: a VM exit, answered with #UD. */
    before = exit_count(EXIT_VMXON);
    struct idt_gate saved = hvcheck_set_gate(6, hvcheck_ud_handler);
    UINT64 ud = hvcheck_try_vmxon();
    hvcheck_restore_gate(6, saved);
    after = exit_count(EXIT_VMXON);
    record(r, "VMXON in the guest raises #UD", ud == 6 && after - before == 1,
           "fault vector %u, VMXON exits %u", ud, after - before);

    /* Every other VMX instruction exits unconditionally in VMX non-root
     * operation (SDM 27.1.2) and is answered as on a CPU without VMX: #UD. */
    static const UINT32 vmx_exits[10] = { EXIT_VMCLEAR, EXIT_VMPTRLD,  EXIT_VMPTRST,  EXIT_VMREAD,
                                          EXIT_VMWRITE, EXIT_VMLAUNCH, EXIT_VMRESUME, EXIT_VMXOFF,
                                          EXIT_INVEPT,  EXIT_INVVPID };
    UINT64 vmx_ud = 0, vmx_exited = 0;
    saved = hvcheck_set_gate(6, hvcheck_ud_handler);
    for (UINT64 i = 0; i < 10; i++) {
        before = exit_count(vmx_exits[i]);
        vmx_ud += hvcheck_try_vmx(i) == 6;
        vmx_exited += exit_count(vmx_exits[i]) - before == 1;
    }
    hvcheck_restore_gate(6, saved);
    record(
        r,
        "VMCLEAR, VMPTRLD, VMPTRST, VMREAD, VMWRITE, VMLAUNCH, VMRESUME, VMXOFF, INVEPT, INVVPID raise #UD",
        vmx_ud == 10 && vmx_exited == 10, "#UD %u of 10, each one exit: %u of 10", vmx_ud, vmx_exited);
}

/* AMD: SVM hidden as on a CPU without it (CPUID.80000001:ECX.SVM[2], EFER.SVME,
 * VM_CR and VM_HSAVE_PA), and the SVM instructions raise #UD, each by one
 * #VMEXIT counted under the VMX exit of the same role (dsl/vmcb.hv). */
static void check_svm_hidden(struct cpu_result *r)
{
    UINT32 c[4];
    cpuid(0x80000001U, c);
    record(r, "SVM hidden CPUID.80000001:ECX[2]", !((c[2] >> 2) & 1), "ECX = 0x%x", c[2], 0);

    UINT64 efer;
    __asm__ volatile("rdmsr; shl $32, %%rdx; or %%rdx, %%rax" : "=a"(efer) : "c"(MSR_IA32_EFER) : "rdx");
    struct idt_gate saved = hvcheck_set_gate(13, hvcheck_gp_handler);
    UINT64 svme_gp = hvcheck_try_wrmsr(MSR_IA32_EFER, efer | (1ULL << 12));
    UINT64 vm_cr_gp = hvcheck_try_rdmsr(MSR_VM_CR), hsave_gp = hvcheck_try_rdmsr(MSR_VM_HSAVE_PA);
    hvcheck_restore_gate(13, saved);
    record(r, "EFER.SVME reads 0 and setting it raises #GP", !(efer & (1ULL << 12)) && svme_gp == 13,
           "EFER 0x%x, fault vector %u", efer, svme_gp);
    record(r, "VM_CR and VM_HSAVE_PA raise #GP", vm_cr_gp == 13 && hsave_gp == 13, "fault vectors %u, %u",
           vm_cr_gp, hsave_gp);

    static const UINT32 svm_exits[7] = { EXIT_VMLAUNCH, EXIT_VMPTRLD, EXIT_VMPTRST, EXIT_VMXON,
                                         EXIT_VMXOFF,   EXIT_GETSEC,  EXIT_INVVPID };
    UINT64 svm_ud = 0, svm_exited = 0;
    saved = hvcheck_set_gate(6, hvcheck_ud_handler);
    for (UINT64 i = 0; i < 7; i++) {
        UINT64 before = exit_count(svm_exits[i]);
        svm_ud += hvcheck_try_svm(i) == 6;
        svm_exited += exit_count(svm_exits[i]) - before == 1;
    }
    hvcheck_restore_gate(6, saved);
    record(r, "VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA raise #UD", svm_ud == 7 && svm_exited == 7,
           "#UD %u of 7, each one exit: %u of 7", svm_ud, svm_exited);
}

/* Intel: a microcode update in the guest (IA32_BIOS_UPDT_TRIG). */
static void check_microcode(struct cpu_result *r)
{
    UINT64 before, after, gp;
    struct idt_gate saved;
    /* Microcode: "must not be performed during VMX non-root operation" (SDM
     * 34.4 "Microcode Update Facility"), so WRMSR IA32_BIOS_UPDT_TRIG exits
     * and the hypervisor hands the update to the processor in VMX root; this
     * one is refused, so the revision, read as the SDM says, stays. */
    UINT32 revision = microcode_revision();
    before = exit_count(EXIT_WRMSR);
    saved = hvcheck_set_gate(13, hvcheck_gp_handler);
    gp = hvcheck_try_wrmsr(MSR_IA32_BIOS_UPDT_TRIG, (UINT64)&refused_update[12]);
    hvcheck_restore_gate(13, saved);
    after = exit_count(EXIT_WRMSR);
    UINT32 revision_after = microcode_revision();
    record(r, "microcode: an update exits to VMX root; the revision reads as the SDM describes",
           !gp && after - before == 1 && revision_after == revision, "revision 0x%x, WRMSR 0x79 exits %u",
           revision_after, after - before);
}

/* Every check a guest CPU can make by itself (no UEFI service: APs run it). */
static void check_this_cpu(struct cpu_result *r, UINTN number)
{
    UINT32 c[4];
    UINT64 out[4], flags;
    __asm__ volatile("pushfq; popq %0; cli" : "=r"(flags)::"memory");

    cpuid(1, c);
    record(r, "hypervisor-present bit CPUID.1:ECX[31]", (c[2] >> 31) & 1, "ECX = 0x%x", c[2], 0);
    record(r, "VMX hidden CPUID.1:ECX[5]", !((c[2] >> 5) & 1), "ECX = 0x%x", c[2], 0);
    cpuid(0x40000000U, c);
    record(r, "signature \"" HV_SIGNATURE "\" at CPUID 0x40000000",
           c[1] == SIGNATURE_EBX && c[2] == SIGNATURE_ECX && c[3] == SIGNATURE_EDX && c[0] >= 0x40000000U,
           "EAX = 0x%x, EBX = 0x%x", c[0], c[1]);

    hvcheck_vmcall(VMCALL_PING, 0, 0, out);
    record(r, "VMCALL ping", out[0] == 0 && out[1] == VMCALL_PONG && out[2] == number, "status 0x%x, cpu %u",
           out[0], out[2]);

    /* CPUID always exits (SDM 27.1.2 "Instructions That Cause VM Exits
     * Unconditionally"): exactly 5 more between two reads. */
    UINT64 before = exit_count(EXIT_CPUID);
    for (int i = 0; i < 5; i++)
        cpuid(0, c);
    UINT64 after = exit_count(EXIT_CPUID);
    record(r, "CPUID exit counter grew by 5", after - before == 5, "grew by %u (from %u)", after - before,
           before);

    /* Each VMCALL exits too; the second read counts itself: 3 pings + 1. */
    before = exit_count(EXIT_VMCALL);
    for (int i = 0; i < 3; i++)
        hvcheck_vmcall(VMCALL_PING, 0, 0, out);
    after = exit_count(EXIT_VMCALL);
    record(r, "VMCALL exit counter grew by 4", after - before == 4, "grew by %u (from %u)", after - before,
           before);

    /* The guest's debug state survives VM exits: a VM exit sets DR7 to 0x400
     * and clears IA32_DEBUGCTL (SDM 29.5.1 "Loading Host Control Registers,
     * Debug Registers, MSRs"; 29.3.1 "Saving Control Registers, Debug
     * Registers, and MSRs"); VM entry loads the guest's only with "load debug
     * controls" (SDM 28.3.2.1 "Loading Guest Control Registers, Debug
     * Registers, and MSRs"), which must find what "save debug controls" saved.
     * The DR7 value enables no breakpoint (R/W0 = 11b, L0 = G0 = 0); DEBUGCTL
     * bit 0 (LBR) only records branches. */
    UINT64 dr7, dr7_seen;
    __asm__ volatile("mov %%dr7, %0" : "=r"(dr7));
    __asm__ volatile("mov %0, %%dr7" ::"r"(0x30400ULL));
    cpuid(0, c); /* a VM exit */
    __asm__ volatile("mov %%dr7, %0" : "=r"(dr7_seen));
    __asm__ volatile("mov %0, %%dr7" ::"r"(dr7));
    record(r, "DR7 survives a VM exit", dr7_seen == 0x30400, "DR7 0x%x after a CPUID exit (wrote 0x%x)",
           dr7_seen, 0x30400);
    /* DEBUGCTL only where the CPU keeps the bit at all (Bochs has no
     * IA32_DEBUGCTL: it reads 0 whatever is written). */
    UINT32 lo, hi, lo1, hi1, lo2, hi2;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1D9));
    __asm__ volatile("wrmsr" ::"c"(0x1D9), "a"(lo | 1U), "d"(hi));
    __asm__ volatile("rdmsr" : "=a"(lo1), "=d"(hi1) : "c"(0x1D9));
    cpuid(0, c); /* a VM exit */
    __asm__ volatile("rdmsr" : "=a"(lo2), "=d"(hi2) : "c"(0x1D9));
    __asm__ volatile("wrmsr" ::"c"(0x1D9), "a"(lo), "d"(hi));
    BOOLEAN modelled = lo1 & 1;
    record(r, modelled ? "IA32_DEBUGCTL survives a VM exit" : "IA32_DEBUGCTL (not kept by this CPU)",
           !modelled || (lo2 & 1), "LBR bit %u before, %u after a CPUID exit", lo1 & 1, lo2 & 1);

    if (hvcheck_amd)
        check_svm_hidden(r);
    else
        check_vmx_hidden(r);

    /* INVD exits unconditionally and is done as WBINVD: the guest's caches
     * are written back, never dropped under the hypervisor's data. */
    before = exit_count(EXIT_INVD);
    __asm__ volatile("invd" ::: "memory");
    after = exit_count(EXIT_INVD);
    if (qemu_tcg_gaps && after == before)
        record(r, "INVD returns (QEMU TCG does not deliver its intercept: qemu_tcg_gaps)", TRUE, NULL, 0, 0);
    else
        record(r, "INVD exits and returns (done as WBINVD)", after - before == 1, "INVD exits %u",
               after - before, 0);

    /* IA32_EFER without LME in IA-32e mode faults in the CPU itself (SDM
     * Vol. 4, IA32_EFER): EFER is the guest's, saved and loaded around exits. */
    UINT64 efer_before, efer_after;
    __asm__ volatile("rdmsr; shl $32, %%rdx; or %%rdx, %%rax"
                     : "=a"(efer_before)
                     : "c"(MSR_IA32_EFER)
                     : "rdx");
    struct idt_gate saved = hvcheck_set_gate(13, hvcheck_gp_handler);
    UINT64 efer_gp = hvcheck_try_wrmsr(MSR_IA32_EFER, efer_before & ~(1ULL << 8));
    hvcheck_restore_gate(13, saved);
    __asm__ volatile("rdmsr; shl $32, %%rdx; or %%rdx, %%rax"
                     : "=a"(efer_after)
                     : "c"(MSR_IA32_EFER)
                     : "rdx");
    record(r, "IA32_EFER without LME raises #GP, EFER unchanged", efer_gp == 13 && efer_after == efer_before,
           "fault vector %u, EFER 0x%x after", efer_gp, efer_after);

    /* GETSEC: SMX is hidden (CPUID.1:ECX[6]), and GETSEC raises #UD as on a
     * CPU without SMX (natively while CR4.SMXE is clear, else by its VM exit,
     * SDM 27.1.2 "Instructions That Cause VM Exits Unconditionally"). */
    cpuid(1, c);
    saved = hvcheck_set_gate(6, hvcheck_ud_handler);
    UINT64 ud = hvcheck_try_getsec();
    hvcheck_restore_gate(6, saved);
    record(r, "SMX hidden and GETSEC raises #UD", !((c[2] >> 6) & 1) && ud == 6,
           "CPUID.1:ECX 0x%x, fault vector %u", c[2], ud);

    /* Writing a VMX capability MSR faults, as on a CPU without VMX. */
    before = exit_count(EXIT_WRMSR);
    saved = hvcheck_set_gate(13, hvcheck_gp_handler);
    UINT64 gp = hvcheck_try_wrmsr(MSR_IA32_VMX_BASIC, 0);
    hvcheck_restore_gate(13, saved);
    after = exit_count(EXIT_WRMSR);
    record(r, "WRMSR IA32_VMX_BASIC raises #GP", gp == 13 && after - before == 1,
           "fault vector %u, WRMSR exits %u", gp, after - before);
    /* A fault pushes RFLAGS with RF set, so that IRET back to the faulting
     * instruction does not stop again on an instruction breakpoint (SDM 19.3.1.1
     * "Instruction-Breakpoint Exception Condition"); an injected #GP is a fault. */
    record(r, "the injected #GP pushes RFLAGS.RF (a fault)", gp == 13 && (hvcheck_fault_rflags >> 16) & 1,
           "RFLAGS image 0x%x", hvcheck_fault_rflags, 0);

    if (!hvcheck_amd)
        check_microcode(r);

    /* WAITPKG (CPUID.7.0:ECX[5]): where CPUID shows it, TPAUSE works in the
     * guest. In VMX non-root it raises #UD unless "enable user wait and pause"
     * is set (SDM 27.3 "Changes to Instruction Behavior in VMX Non-Root
     * Operation"; 26.6.2 "Processor-Based VM-Execution Controls"), so the
     * hypervisor sets the control or hides the feature. */
    UINT32 c7[4];
    __asm__ volatile("cpuid" : "=a"(c7[0]), "=b"(c7[1]), "=c"(c7[2]), "=d"(c7[3]) : "a"(7), "c"(0));
    if (c7[2] & (1U << 5)) {
        UINT32 tlo, thi;
        __asm__ volatile("rdtsc" : "=a"(tlo), "=d"(thi));
        saved = hvcheck_set_gate(6, hvcheck_ud_handler);
        UINT64 tpause_ud = hvcheck_try_tpause(((UINT64)thi << 32 | tlo) + 1000);
        hvcheck_restore_gate(6, saved);
        record(r, "TPAUSE works where CPUID shows WAITPKG", !tpause_ud, "fault vector %u", tpause_ud, 0);
    } else {
        record(r, "WAITPKG not shown by CPUID (no TPAUSE to try)", TRUE, "ECX 0x%x", c7[2], 0);
    }

    /* XSETBV exits (SDM 27.1.2 "Instructions That Cause VM Exits
     * Unconditionally") and is done for the guest: write XCR0 back (with
     * CR4.OSXSAVE set for the test when the firmware left it clear). */
    cpuid(1, c);
    if (c[2] & (1U << 26)) { /* CPUID.1:ECX.XSAVE */
        UINT64 cr4;
        UINT32 lo, hi, lo2, hi2;
        __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
        __asm__ volatile("mov %0, %%cr4" ::"r"(cr4 | CR4_OSXSAVE) : "memory");
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        before = exit_count(EXIT_XSETBV);
        __asm__ volatile("xsetbv" ::"a"(lo), "d"(hi), "c"(0) : "memory");
        after = exit_count(EXIT_XSETBV);
        __asm__ volatile("xgetbv" : "=a"(lo2), "=d"(hi2) : "c"(0));
        __asm__ volatile("mov %0, %%cr4" ::"r"(cr4) : "memory");
        if (qemu_tcg_gaps && after == before)
            record(r, "XSETBV takes effect (QEMU TCG does not deliver its intercept: qemu_tcg_gaps)",
                   lo2 == lo && hi2 == hi, "XCR0 0x%x", lo2, 0);
        else
            record(r, "XSETBV exits and takes effect", after - before == 1 && lo2 == lo && hi2 == hi,
                   "XSETBV exits %u, XCR0 0x%x", after - before, lo2);

        /* CPUID.1:ECX.OSXSAVE (bit 27) mirrors CR4.OSXSAVE (SDM Vol. 2A,
         * CPUID): the guest's CR4, not the one the hypervisor runs with. */
        UINT32 set, clear;
        __asm__ volatile("mov %0, %%cr4" ::"r"(cr4 | CR4_OSXSAVE) : "memory");
        cpuid(1, c);
        set = (c[2] >> 27) & 1;
        __asm__ volatile("mov %0, %%cr4" ::"r"(cr4 & ~CR4_OSXSAVE) : "memory");
        cpuid(1, c);
        clear = (c[2] >> 27) & 1;
        __asm__ volatile("mov %0, %%cr4" ::"r"(cr4) : "memory");
        record(r, "CPUID.1:ECX.OSXSAVE follows the guest's CR4.OSXSAVE", set && !clear,
               "OSXSAVE %u with CR4.OSXSAVE set, %u with it clear", set, clear);
    }

    /* Single-stepping over an instruction the hypervisor does for the guest
     * (CPUID exits) traps once, right after it, as on bare metal. */
    saved = hvcheck_set_gate(1, hvcheck_db_handler);
    hvcheck_db_count = 0;
    UINT64 after_cpuid = hvcheck_step_cpuid();
    hvcheck_restore_gate(1, saved);
    record(r, "single-stepping over CPUID (a VM exit) traps once, right after it",
           hvcheck_db_count == 1 && hvcheck_db_rip == after_cpuid, "%u #DB, the last at +0x%x",
           hvcheck_db_count, hvcheck_db_rip - after_cpuid + 0x1000);

    /* CR0.NE is fixed to 1 in VMX operation (IA32_VMX_CR0_FIXED0), yet a
     * CPU lets software clear it: the hypervisor owns the bit through the
     * guest/host mask and read shadow, so the guest clears and sets it as on
     * bare metal and reads back what it wrote. */
    UINT64 cr0, ne_clear, ne_set;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %0, %%cr0" ::"r"(cr0 & ~(1ULL << 5)) : "memory");
    __asm__ volatile("mov %%cr0, %0" : "=r"(ne_clear));
    __asm__ volatile("mov %0, %%cr0" ::"r"(cr0 | (1ULL << 5)) : "memory");
    __asm__ volatile("mov %%cr0, %0" : "=r"(ne_set));
    __asm__ volatile("mov %0, %%cr0" ::"r"(cr0) : "memory");
    record(r, "CR0.NE can be cleared and set as on bare metal",
           ne_clear == (cr0 & ~(1ULL << 5)) && ne_set == (cr0 | (1ULL << 5)),
           "CR0 0x%x with NE cleared, 0x%x set", ne_clear, ne_set);

    __asm__ volatile("pushq %0; popfq" ::"r"(flags) : "memory", "cc");
}

/* --- MP services (mp_services.h) */
static EFI_GUID mp_guid = MP_SERVICES_GUID;
static MP *mp;

/* Last: DEVIRTUALIZE, then the hypervisor must be gone from this CPU. */
static void devirtualize(struct cpu_result *r)
{
    UINT64 out[4];
    UINT32 c[4];
    hvcheck_vmcall(VMCALL_DEVIRTUALIZE, 0, 0, out);
    cpuid(0x40000000U, c);
    /* Gone: no signature at CPUID 0x40000000 (CPUID.1:ECX[31] may stay: an
     * emulator such as QEMU sets it for its own guests). */
    BOOLEAN gone = c[1] != SIGNATURE_EBX || c[2] != SIGNATURE_ECX || c[3] != SIGNATURE_EDX;
    record(r,
           hvcheck_amd ? "DEVIRTUALIZE: SVM off, hypervisor gone" : "DEVIRTUALIZE: VMX off, hypervisor gone",
           out[0] == 0 && gone, "status 0x%x, CPUID 0x40000000:EBX 0x%x", out[0], c[1]);
}

static VOID EFIAPI ap_devirtualize(VOID *arg)
{
    devirtualize(&results[(UINTN)arg]);
}

static VOID EFIAPI ap_checks(VOID *arg)
{
    UINTN number = (UINTN)arg;
    check_this_cpu(&results[number], number);
}

/* --- UEFI still works (the BSP) ------------------------------------------ */

static volatile UINT64 ticks;
static VOID EFIAPI on_tick(EFI_EVENT event, VOID *context)
{
    (void)event;
    (void)context;
    ticks++;
}

static UINT64 rdtsc(void)
{
    UINT32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (UINT64)hi << 32 | lo;
}

/* --- NMIs: a burst at a CPU busy with VM exits --------------------------- */
#define NMI_BURST 64
#define NMI_WAIT  500000000ULL /* TSC ticks for one NMI to arrive: QEMU runs 4 CPUs on 2 cores */

struct nmi_burst {
    UINT32 target_apic;   /* the BSP's APIC id */
    volatile UINT32 sent; /* by the sender, one after the other arrived */
    volatile UINT32 done;
};

/* An NMI by the local APIC's ICR (delivery mode 100b, SDM 12.6.1 "Interrupt
 * Command Register (ICR)"), through MSR 0x830 in x2APIC mode. */
static void send_nmi(UINT32 apic_id)
{
    UINT32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1B)); /* IA32_APIC_BASE */
    UINT32 icr = 4U << 8 | 1U << 14;                            /* NMI, assert */
    if (lo & (1U << 10)) {
        __asm__ volatile("wrmsr" ::"c"(0x830), "a"(icr), "d"(apic_id) : "memory");
        return;
    }
    volatile UINT32 *apic = (volatile UINT32 *)(((UINT64)hi << 32 | lo) & ~0xFFFULL);
    apic[0x310 / 4] = apic_id << 24;
    apic[0x300 / 4] = icr;
    while (apic[0x300 / 4] & (1U << 12)) /* delivery status */
        __asm__ volatile("pause");
}

/* NMI_BURST NMIs at the target, each once the one before arrived; the wait
 * spins on CPUID (a VM exit each) when `with_exits`, else on PAUSE. */
static void send_burst(struct nmi_burst *b, BOOLEAN with_exits)
{
    UINT32 c[4];
    for (UINT32 i = 0; i < NMI_BURST; i++) {
        UINT64 before = hvcheck_nmi_count, deadline = rdtsc() + NMI_WAIT;
        send_nmi(b->target_apic);
        b->sent = i + 1;
        while (hvcheck_nmi_count == before && rdtsc() < deadline) {
            if (with_exits)
                cpuid(0, c);
            else
                __asm__ volatile("pause");
        }
        if (hvcheck_nmi_count == before)
            break;
    }
    b->done = 1;
}

/* On the AP: the burst at the BSP, which spins on CPUID meanwhile. */
static VOID EFIAPI nmi_sender(VOID *arg)
{
    send_burst(arg, FALSE);
}

/* NMIs are the guest's wherever they find the CPU: in VMX non-root (an NMI
 * exit) or in root (the host's NMI gate), the hypervisor injects each into
 * the guest, here while the BSP spins on CPUID, so that many arrive during
 * an exit. All arrive in the guest's NMI handler and nothing powers off. */
static void check_nmis(struct cpu_result *r, UINTN bsp, UINTN count)
{
    UINT32 c[4];
    cpuid(1, c);
    struct nmi_burst burst = { c[1] >> 24, 0, 0 };
    UINT64 nmi_exits = exit_count(EXIT_EXCEPTION_OR_NMI);
    struct idt_gate saved = hvcheck_set_gate(2, hvcheck_nmi_handler);
    hvcheck_nmi_count = 0;
    EFI_EVENT done_event = NULL;
    UINTN sender = bsp == 0 ? 1 : 0;
    EFI_STATUS s = EFI_NOT_STARTED;
    if (count > 1 && mp && !EFI_ERROR(uefi_call_wrapper(BS->CreateEvent, 5, 0, 0, NULL, NULL, &done_event)))
        s = uefi_call_wrapper(mp->StartupThisAP, 7, mp, nmi_sender, sender, done_event, 0, &burst, NULL);
    if (EFI_ERROR(s)) /* one CPU: it sends its own NMIs, between CPUID exits */
        send_burst(&burst, TRUE);
    UINT64 deadline = rdtsc() + NMI_BURST * NMI_WAIT;
    while (!burst.done && rdtsc() < deadline)
        cpuid(0, c); /* a VM exit each */
    if (done_event) {
        UINTN index;
        if (!EFI_ERROR(s))
            uefi_call_wrapper(BS->WaitForEvent, 3, 1, &done_event, &index);
        uefi_call_wrapper(BS->CloseEvent, 1, done_event);
    }
    hvcheck_restore_gate(2, saved);
    nmi_exits = exit_count(EXIT_EXCEPTION_OR_NMI) - nmi_exits;
    /* With another CPU sending, most arrive while this one is in VMX root
     * (the host's NMI gate); sent to itself, each is an NMI exit. */
    record(r, "a burst of NMIs at a CPU busy with exits all reach the guest",
           burst.sent == NMI_BURST && hvcheck_nmi_count == NMI_BURST, "%u arrived, %u of them by NMI exits",
           hvcheck_nmi_count, nmi_exits);
}

static void check_uefi(struct cpu_result *r, EFI_HANDLE image)
{
    EFI_STATUS s =
        uefi_call_wrapper(ST->ConOut->OutputString, 2, ST->ConOut, L"hvcheck: console output works\r\n");
    record(r, "console (ConOut->OutputString)", !EFI_ERROR(s), "status 0x%x", s, 0);

    UINT64 t0 = rdtsc();
    s = uefi_call_wrapper(BS->Stall, 1, 10000);
    UINT64 t1 = rdtsc();
    record(r, "Stall(10 ms)", !EFI_ERROR(s) && t1 > t0, "status 0x%x, TSC +%u", s, t1 - t0);

    /* A periodic 10 ms event, counted until a one-shot 100 ms timer
     * expires: both run off the firmware's timer interrupt, so about 10
     * ticks whatever the emulator's notion of time (Stall is not that). */
    EFI_EVENT timer, deadline;
    UINTN polls = 0;
    ticks = 0;
    s = uefi_call_wrapper(BS->CreateEvent, 5, EVT_TIMER | EVT_NOTIFY_SIGNAL, TPL_CALLBACK, on_tick, NULL,
                          &timer);
    if (!EFI_ERROR(s)) {
        s = uefi_call_wrapper(BS->CreateEvent, 5, EVT_TIMER, 0, NULL, NULL, &deadline);
        if (!EFI_ERROR(s)) {
            uefi_call_wrapper(BS->SetTimer, 3, timer, TimerPeriodic, 100000);     /* 10 ms */
            uefi_call_wrapper(BS->SetTimer, 3, deadline, TimerRelative, 1000000); /* 100 ms */
            while (uefi_call_wrapper(BS->CheckEvent, 1, deadline) == EFI_NOT_READY && polls < 1000000) {
                uefi_call_wrapper(BS->Stall, 1, 100);
                polls++;
            }
            uefi_call_wrapper(BS->SetTimer, 3, timer, TimerCancel, 0);
            uefi_call_wrapper(BS->CloseEvent, 1, deadline);
        }
        uefi_call_wrapper(BS->CloseEvent, 1, timer);
    }
    record(r, "periodic timer event (10 ms, over a 100 ms timer)", !EFI_ERROR(s) && ticks >= 5 && ticks <= 20,
           "fired %u times, status 0x%x", ticks, s);

    /* File I/O: read this program's own first bytes back from the ESP. */
    EFI_LOADED_IMAGE *self = NULL;
    UINT8 head[2] = { 0, 0 };
    UINTN n = sizeof head;
    s = uefi_call_wrapper(BS->HandleProtocol, 3, image, &LoadedImageProtocol, (VOID **)&self);
    if (!EFI_ERROR(s)) {
        EFI_FILE_HANDLE root = LibOpenRoot(self->DeviceHandle), file;
        CHAR16 *path = DevicePathToStr(self->FilePath);
        s = root && path ? uefi_call_wrapper(root->Open, 5, root, &file, path, EFI_FILE_MODE_READ, 0)
                         : EFI_NOT_FOUND;
        if (!EFI_ERROR(s)) {
            s = uefi_call_wrapper(file->Read, 3, file, &n, head);
            uefi_call_wrapper(file->Close, 1, file);
        }
        if (root)
            uefi_call_wrapper(root->Close, 1, root);
        if (path)
            FreePool(path);
    }
    record(r, "file I/O (read own image from the ESP)",
           !EFI_ERROR(s) && n == 2 && head[0] == 'M' && head[1] == 'Z', "status 0x%x, %u bytes", s, n);
}

static void print_result(UINTN cpu, struct cpu_result *r, UINT32 *passed, UINT32 *total)
{
    for (UINT32 i = 0; i < r->count; i++) {
        struct check *c = &r->checks[i];
        if (c->ok)
            Print(L"hvcheck: cpu %d: %a: ok\n", cpu, c->name);
        else
            Print(L"hvcheck: cpu %d: %a: FAIL (%a)\n", cpu, c->name, c->detail);
        *passed += c->ok;
        *total += 1;
    }
}

/* The number after `name` (decimal, or hex after 0x) in the load options
 * (CHAIN.TXT's second line), or `otherwise`. */
static UINT64 load_option(EFI_HANDLE image, const CHAR16 *name, UINT64 otherwise)
{
    EFI_LOADED_IMAGE *loaded;
    if (EFI_ERROR(uefi_call_wrapper(BS->HandleProtocol, 3, image, &LoadedImageProtocol, (VOID **)&loaded)) ||
        !loaded->LoadOptions)
        return otherwise;
    const CHAR16 *s = loaded->LoadOptions, *end = s + loaded->LoadOptionsSize / sizeof(CHAR16);
    UINTN n = StrLen(name);
    for (; s + n <= end && *s; s++) {
        if (StrnCmp(s, name, n))
            continue;
        UINT64 value = 0, base = 10;
        s += n;
        if (s + 2 <= end && s[0] == L'0' && (s[1] == L'x' || s[1] == L'X')) {
            base = 16;
            s += 2;
        }
        for (; s < end; s++) {
            UINT64 digit = *s >= L'0' && *s <= L'9'   ? (UINT64)(*s - L'0')
                           : *s >= L'a' && *s <= L'f' ? (UINT64)(*s - L'a' + 10)
                           : *s >= L'A' && *s <= L'F' ? (UINT64)(*s - L'A' + 10)
                                                      : 99;
            if (digit >= base)
                break;
            value = value * base + digit;
        }
        return value;
    }
    return otherwise;
}

static void power_off(void)
{
    uefi_call_wrapper(RT->ResetSystem, 4, EfiResetShutdown, EFI_SUCCESS, 0, NULL);
}

/* Not EFIAPI: gnu-efi's crt0 calls efi_main with the System V ABI. */
EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *system_table)
{
    InitializeLib(image, system_table);
    UINT32 vendor[4];
    cpuid(0, vendor); /* "AuthenticAMD" or "HygonGenuine": the SVM backend runs */
    hvcheck_amd = (vendor[1] == 0x68747541U && vendor[3] == 0x69746E65U && vendor[2] == 0x444D4163U) ||
                  (vendor[1] == 0x6F677948U && vendor[3] == 0x6E65476EU && vendor[2] == 0x656E6975U);
    Print(L"hvcheck: self-test of the %a hypervisor %a\n", HV_NAME, HV_VERSION);
    if (!hypervisor_present()) {
        /* Still show that the firmware works (after a refused start-up). */
        Print(L"hvcheck: no uefi-hv hypervisor present (no signature \"%a\" at CPUID 0x40000000)\n",
              HV_SIGNATURE);
        UINT32 passed = 0, total = 0;
        check_uefi(&results[0], image);
        print_result(0, &results[0], &passed, &total);
        Print(L"hvcheck: firmware services: %d of %d checks passed\n", passed, total);
        Print(L"HVCHECK: FAIL (no hypervisor)\n");
        power_off();
        return EFI_NOT_FOUND;
    }
    UINTN count = 1, enabled = 1, bsp = 0;
    if (EFI_ERROR(uefi_call_wrapper(BS->LocateProtocol, 3, &mp_guid, NULL, (VOID **)&mp)))
        mp = NULL;
    if (mp) {
        uefi_call_wrapper(mp->GetNumberOfProcessors, 3, mp, &count, &enabled);
        uefi_call_wrapper(mp->WhoAmI, 2, mp, &bsp);
    }
    results = AllocateZeroPool(count * sizeof *results);
    if (!results) {
        Print(L"HVCHECK: FAIL (no memory for the results of %u CPUs)\n", count);
        power_off();
        return EFI_OUT_OF_RESOURCES;
    }

    /* The exits of the firmware boot, before hvcheck adds its own. */
    hvcheck_bench_start(bsp, count);

    qemu_tcg_gaps = load_option(image, L"qemu_tcg_gaps=", 0);
    /* The fuzzer first (`fuzz=N seed=S`): the checks must pass after it. */
    UINT64 operations = load_option(image, L"fuzz=", 0);
    if (operations)
        hvcheck_fuzz(load_option(image, L"seed=", 1), operations);

    UINT64 out[4];
    hvcheck_vmcall(VMCALL_GET_CPU_COUNT, 0, 0, out);
    UINT64 virtualised = out[1];
    record(&results[bsp], "every CPU virtualised", out[0] == 0 && virtualised == count, "%u of %u",
           virtualised, count);
    check_this_cpu(&results[bsp], bsp);
    check_uefi(&results[bsp], image);
    check_nmis(&results[bsp], bsp, count);
    for (UINTN i = 0; i < count; i++) {
        if (i == bsp)
            continue;
        EFI_STATUS s = uefi_call_wrapper(mp->StartupThisAP, 7, mp, ap_checks, i, NULL, 0, (VOID *)i, NULL);
        if (EFI_ERROR(s))
            record(&results[i], "AP ran the checks (StartupThisAP)", FALSE, "status 0x%x", s, 0);
    }

    UINT32 passed = 0, total = 0;
    for (UINTN i = 0; i < count; i++)
        print_result(i, &results[i], &passed, &total);
    hvcheck_irq_checks(bsp, count, &passed, &total);

    hvcheck_bench_idle();
    hvcheck_bench_round_trips(bsp, FALSE);

    /* The summary: exits by reason, per CPU, from the hypervisor's counters. */
    Print(L"hvcheck: summary: %d of %d CPU(s) virtualised, %d of %d checks passed\n", virtualised, count,
          passed, total);
    for (UINTN i = 0; i < count; i++) {
        Print(L"hvcheck: cpu %d exits by reason:", i);
        for (UINTN k = 0; k < HVCHECK_EXIT_REASON_COUNT; k++) {
            hvcheck_vmcall(VMCALL_GET_EXIT_COUNT, hvcheck_exit_reasons[k].number, i, out);
            if (out[0] == 0 && out[1])
                Print(L" %a=%ld", hvcheck_exit_reasons[k].name, out[1]);
        }
        hvcheck_vmcall(VMCALL_GET_EXIT_TOTAL, i, 0, out);
        Print(L" (total %ld)\n", out[1]);
    }
    hvcheck_irq_summary(count);
    /* Last, DEVIRTUALIZE on every CPU (APs first): the firmware goes on
     * natively, the hypervisor gone. */
    for (UINTN i = 0; i < count; i++) {
        results[i].count = 0;
        if (i != bsp)
            uefi_call_wrapper(mp->StartupThisAP, 7, mp, ap_devirtualize, i, NULL, 0, (VOID *)i, NULL);
    }
    devirtualize(&results[bsp]);
    hvcheck_bench_round_trips(bsp, TRUE);
    for (UINTN i = 0; i < count; i++)
        print_result(i, &results[i], &passed, &total);
    check_uefi(&results[bsp], image); /* and the firmware still works */
    for (UINT32 k = 1; k < results[bsp].count; k++) {
        struct check *c = &results[bsp].checks[k];
        Print(L"hvcheck: cpu %d: after DEVIRTUALIZE: %a: %a\n", bsp, c->name, c->ok ? "ok" : "FAIL");
        passed += c->ok;
        total += 1;
    }
    Print(L"hvcheck: all: %d of %d checks passed\n", passed, total);
    Print(passed == total ? L"HVCHECK: PASS\n" : L"HVCHECK: FAIL\n");
    power_off();
    return EFI_SUCCESS;
}

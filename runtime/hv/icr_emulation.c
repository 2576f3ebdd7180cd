/*
 * option apic_icr_emulation: INIT and SIPI to virtualised CPUs, emulated.
 *
 * For emulators whose INIT VM exits are broken: Bochs 2.7 leaves the INIT
 * that caused the exit pending, so the CPU exits again at every VM entry.
 * On a CPU (and Bochs 3) the `init` and `sipi` actions answer real INIT and
 * SIPI exits, and only the SVM backend uses the store emulation below: on
 * SVM a physical INIT that is not redirected (VM_CR.R_INIT, which QEMU's TCG
 * lacks) resets the CPU under the hypervisor, so INIT and SIPI never reach
 * a CPU that is a guest (svm.c), as in BitVisor and barevisor.
 *
 * The local APIC page is read/execute only in EPT (ept.c): a store to it
 * exits as an EPT violation, is decoded and done for the guest, except that
 * INIT and SIPI in the ICR for a virtualised CPU are recorded for that CPU
 * (BitVisor does the same). That CPU idles in "cli; hlt" (MP services) or in
 * a MONITOR/MWAIT loop (after ExitBootServices), both of which exit on APs
 * with this option, and starts at the SIPI vector. ICR writes in x2APIC
 * mode (WRMSR 0x830) are not intercepted: they are real INIT and SIPI.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"

#if HV_APIC_ICR_EMULATION || HV_SVM

/* Local APIC registers (SDM 12.4.1 "The Intel APIC Architecture", Table 12-1). */
#define APIC_LDR      0x0D0
#define APIC_DFR      0x0E0
#define APIC_ICR_LOW  0x300
#define APIC_ICR_HIGH 0x310
/* ICR fields (SDM 12.6.1 "Interrupt Command Register (ICR)"). */
#define ICR_MODE(icr)      (((icr) >> 8) & 7)
#define ICR_MODE_INIT      5
#define ICR_MODE_SIPI      6
#define ICR_LOGICAL        (1U << 11)
#define ICR_PENDING        (1U << 12)
#define ICR_ASSERT         (1U << 14)
#define ICR_LEVEL          (1U << 15)
#define ICR_SHORTHAND(icr) (((icr) >> 18) & 3)
#define ICR_SHORTHAND_MASK (3U << 18)

struct insn {
    UINT64 rip; /* linear */
    UINTN n;    /* bytes decoded so far */
};

static BOOLEAN next_byte(struct insn *insn, UINT8 *byte)
{
    UINT64 pa;
    if (insn->n >= 15 || !hv_guest_physical(insn->rip + insn->n,
                                            &pa)) /* 15 bytes at most: SDM Vol. 2A 2.1 "Instruction Format" */
        return FALSE;
    *byte = *(volatile UINT8 *)pa;
    insn->n++;
    return TRUE;
}

/* The store's ModR/M memory operand: only its length matters, the address
 * is the exit's guest-physical address (SDM Vol. 2A 2.1.5 "Addressing-Mode Encoding of ModR/M and SIB Bytes"). */
static BOOLEAN skip_memory_operand(struct insn *insn, UINT8 modrm, UINT32 address_size)
{
    UINT32 mod = modrm >> 6, rm = modrm & 7;
    UINT8 sib;
    if (address_size == 16) {
        insn->n += mod == 1 ? 1 : (mod == 2 || (mod == 0 && rm == 6)) ? 2 : 0;
        return TRUE;
    }
    if (rm == 4) {
        if (!next_byte(insn, &sib))
            return FALSE;
        if (mod == 0 && (sib & 7) == 5)
            insn->n += 4;
    } else if (mod == 0 && rm == 5) {
        insn->n += 4; /* disp32, RIP-relative in 64-bit mode */
    }
    insn->n += mod == 1 ? 1 : mod == 2 ? 4 : 0;
    return TRUE;
}

/* Decodes the guest's store to the APIC page: a 32-bit MOV (SDM Vol. 2B,
 * MOV), in the forms compilers and assemblers emit for an MMIO write,
 * after legacy prefixes (segment, operand and address size) and REX:
 *   89 /r        MOV r/m32, r32   (EDK2's MmioWrite32, Linux's apic_write)
 *   C7 /0 id     MOV r/m32, imm32
 *   A3 moffs     MOV moffs32, EAX (movabs: kvm-unit-tests' apic_write)
 * Any other instruction or operand size is not decoded. */
static BOOLEAN decode_store(struct hv_guest_regs *regs, UINT32 *value, UINTN *length)
{
    UINT32 mode = hv_guest_code_size(), address_size = mode;
    BOOLEAN operand_prefix = FALSE;
    struct insn insn = { hv_guest_cs_base() + hv_guest_rip(), 0 };
    if (mode != 64)
        insn.rip &= 0xFFFFFFFFULL;
    UINT8 b, rex = 0, modrm;
    for (;;) {
        if (!next_byte(&insn, &b))
            return FALSE;
        if (b == 0x66)
            operand_prefix = TRUE;
        else if (b == 0x67)
            address_size = mode == 32 ? 16 : 32;
        else if (b != 0x2E && b != 0x36 && b != 0x3E && b != 0x26 && b != 0x64 && b != 0x65)
            break;
    }
    if (mode == 64 && (b & 0xF0) == 0x40) {
        rex = b;
        if (!next_byte(&insn, &b))
            return FALSE;
    }
    UINT32 operand_size = (rex & 8) ? 64 : (mode == 16) != operand_prefix ? 16 : 32;
    if (operand_size != 32)
        return FALSE;
    switch (b) {
    case 0xA3:
        insn.n += address_size / 8;
        *value = (UINT32)regs->rax;
        break;
    case 0x89:
        if (!next_byte(&insn, &modrm) || modrm >> 6 == 3 || !skip_memory_operand(&insn, modrm, address_size))
            return FALSE;
        UINT32 reg = ((modrm >> 3) & 7) | (rex & 4 ? 8 : 0);
        *value = (UINT32)(reg == 4 ? hv_guest_rsp() : ((UINT64 *)regs)[reg]);
        break;
    case 0xC7:
        if (!next_byte(&insn, &modrm) || modrm >> 6 == 3 || ((modrm >> 3) & 7) != 0 ||
            !skip_memory_operand(&insn, modrm, address_size))
            return FALSE;
        *value = 0;
        for (UINT32 i = 0; i < 4; i++) {
            if (!next_byte(&insn, &b))
                return FALSE;
            *value |= (UINT32)b << (8 * i);
        }
        break;
    default:
        return FALSE;
    }
    if (insn.n > 15)
        return FALSE;
    *length = insn.n;
    return TRUE;
}

/* --- the ICR ------------------------------------------------------------------ */

/* Whether the IPI in `icr` to `dest` is for CPU `c` (SDM 12.6.2
 * "Determining IPI Destination"). `dest`: ICR bits 63:56 in xAPIC mode,
 * 63:32 in x2APIC mode (`apic` NULL), whose logical IDs come from the APIC
 * ID (SDM 12.12.10.2 "Deriving Logical x2APIC ID from the Local x2APIC
 * ID"). */
static BOOLEAN is_destination(const struct hv_cpu *self, const struct hv_cpu *c, UINT32 icr, UINT32 dest,
                              BOOLEAN x2apic)
{
    switch (ICR_SHORTHAND(icr)) {
    case 1:
        return c == self;
    case 2:
        return TRUE;
    case 3:
        return c != self;
    }
    UINT32 all = x2apic ? 0xFFFFFFFFU : 0xFF;
    if (dest == all)
        return TRUE;
    if (!(icr & ICR_LOGICAL))
        return c->apic_id == dest;
    if (x2apic)
        return dest >> 16 == c->apic_id >> 4 && (dest & (1U << (c->apic_id & 15)));
    UINT32 logical = c->apic_ldr >> 24;
    if (c->apic_dfr >> 28 == 0xF) /* flat model: a bit per CPU */
        return (logical & dest) != 0;
    return (logical >> 4) == (dest >> 4) && (logical & dest & 0xF); /* cluster model */
}

/* The ICR written for real: through the APIC page (ICR high, then low) or,
 * with `apic` NULL, WRMSR 0x830 (SDM 12.12.9 "ICR Operation in x2APIC
 * Mode"). */
static void send_icr(volatile UINT32 *apic, UINT32 dest, UINT32 icr)
{
    if (!apic) {
        wrmsr(MSR_IA32_X2APIC_ICR, (UINT64)dest << 32 | icr);
        return;
    }
    apic[APIC_ICR_HIGH / 4] = dest << 24;
    apic[APIC_ICR_LOW / 4] = icr;
}

/* An IPI to one CPU by its APIC id, with the guest's ICR high word kept. */
static void send_ipi(volatile UINT32 *apic, UINT32 apic_id, UINT32 icr)
{
    icr &= ~(ICR_SHORTHAND_MASK | ICR_LOGICAL);
    if (!apic) {
        send_icr(apic, apic_id, icr);
        return;
    }
    UINT32 saved_high = apic[APIC_ICR_HIGH / 4];
    send_icr(apic, apic_id, icr);
    while (apic[APIC_ICR_LOW / 4] & ICR_PENDING)
        cpu_pause();
    apic[APIC_ICR_HIGH / 4] = saved_high;
}

/* An ICR write: INIT and SIPI to virtualised CPUs are recorded for them,
 * everything else is sent as written. */
static void write_icr(struct hv_cpu *self, volatile UINT32 *apic, UINT32 icr, UINT32 dest)
{
    UINT32 mode = ICR_MODE(icr);
    if (mode != ICR_MODE_INIT && mode != ICR_MODE_SIPI) {
        send_icr(apic, dest, icr);
        return;
    }
    BOOLEAN deassert = mode == ICR_MODE_INIT && !(icr & ICR_ASSERT) && (icr & ICR_LEVEL);
    BOOLEAN any = FALSE;
    for (UINT32 i = 0; i < hv.cpu_count; i++) {
        struct hv_cpu *c = hv.cpus[i];
        if (!is_destination(self, c, icr, dest, apic == NULL))
            continue;
        any = TRUE;
        if (c->status != HV_CPU_LAUNCHED || c == self) {
            send_ipi(apic, c->apic_id, icr); /* not a guest: the real thing */
        } else if (mode == ICR_MODE_INIT) {
            if (!deassert) {
                __atomic_store_n(&c->sipi_vector, 0, __ATOMIC_SEQ_CST);
                __atomic_store_n(&c->init_pending, 1, __ATOMIC_SEQ_CST);
            }
        } else if (__atomic_exchange_n(&c->init_pending, 0, __ATOMIC_SEQ_CST)) {
            __atomic_store_n(&c->sipi_vector, (icr & 0xFF) | 0x100, __ATOMIC_SEQ_CST);
        } /* the second SIPI: dropped, as by a CPU already running */
    }
    if (!any)
        send_icr(apic, dest, icr);
}

/* WRMSR 0x830, the ICR in x2APIC mode, done for the guest (the SVM backend
 * intercepts it: an INIT sent there for real would reach a guest CPU). */
void hv_x2apic_icr_write(struct hv_cpu *cpu, UINT64 value)
{
    write_icr(cpu, NULL, (UINT32)value, (UINT32)(value >> 32));
}

BOOLEAN hv_apic_store(struct hv_cpu *cpu, struct hv_guest_regs *regs, UINT64 gpa, UINTN *length)
{
    UINT32 value;
    if (!decode_store(regs, &value, length)) {
        /* An emulation failure is the guest's: #GP(0), never the machine's end. */
        hv_log("uefi-hv: cpu %u: cannot emulate the guest's store to the local APIC at RIP 0x%lx "
               "(APIC offset 0x%lx): #GP(0) injected\n",
               cpu->index, hv_guest_rip(), gpa & 0xFFF);
        hv_inject_exception(VECTOR_GP, TRUE, 0);
        return FALSE;
    }
    volatile UINT32 *apic = (volatile UINT32 *)(gpa & ~0xFFFULL);
    UINT32 offset = gpa & 0xFF0;
    if (offset == APIC_ICR_LOW) {
        write_icr(cpu, apic, value, apic[APIC_ICR_HIGH / 4] >> 24);
    } else {
        apic[offset / 4] = value;
        if (offset == APIC_LDR)
            cpu->apic_ldr = apic[APIC_LDR / 4];
        else if (offset == APIC_DFR)
            cpu->apic_dfr = apic[APIC_DFR / 4];
    }
    return TRUE;
}

/* Where the local APIC page is (xAPIC mode); 0 in x2APIC mode, whose ICR
 * is an MSR. */
UINT64 hv_apic_page(void)
{
    UINT64 apic_base = rdmsr(MSR_IA32_APIC_BASE);
    return apic_base & (1ULL << 10) ? 0 : apic_base & 0x000FFFFFFFFFF000ULL;
}

void hv_icr_emulation_prepare(struct hv_cpu *cpu)
{
    volatile UINT32 *apic = (volatile UINT32 *)hv_apic_page();
    if (!apic) /* x2APIC mode: no APIC page to emulate */
        return;
    cpu->apic_ldr = apic[APIC_LDR / 4];
    cpu->apic_dfr = apic[APIC_DFR / 4];
}

#endif /* HV_APIC_ICR_EMULATION || HV_SVM */

#if HV_APIC_ICR_EMULATION
/* The VMX side: an EPT violation that is a write to the APIC page. */
BOOLEAN hv_icr_emulate_apic_store(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    UINT64 gpa = vmread(GUEST_PHYSICAL_ADDRESS);
    UINTN length;
    if ((gpa & ~0xFFFULL) != hv_apic_page() ||
        !(vmread(EXIT_QUALIFICATION) & 2)) /* a write to the APIC page */
        return FALSE;
    if (hv_apic_store(cpu, regs, gpa, &length))
        hv_instruction_done(length); /* the decoded length: EPT violations have none */
    return TRUE;
}

/* --- waiting for the SIPI -------------------------------------------------------- */

static enum hv_exit_result start_at_sipi(struct hv_cpu *cpu, struct hv_guest_regs *regs, UINT32 sipi)
{
    __atomic_store_n(&cpu->sipi_vector, 0, __ATOMIC_SEQ_CST);
    hv_reset_to_init_state(cpu, regs);
    return hv_start_at_sipi_vector(sipi);
}

/* MWAIT on an AP (OVMF parks APs in a MONITOR/MWAIT loop at ExitBootServices,
 * for the OS's INIT-SIPI-SIPI): a recorded SIPI starts the CPU; otherwise
 * MWAIT returns at once, which it may always do (SDM Vol. 2B, MWAIT), and the
 * loop comes back here. */
enum hv_exit_result hv_action_mwait_idle(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    UINT32 sipi = __atomic_load_n(&cpu->sipi_vector, __ATOMIC_SEQ_CST);
    if (sipi & 0x100)
        return start_at_sipi(cpu, regs, sipi);
    cpu_pause();
    return HV_RESUME_NEXT;
}

/* HLT on an AP. With interrupts enabled it is a wait for one: the guest
 * halts (activity state HLT). With interrupts off ("cli; hlt", the MP
 * services' idle loop) only INIT-SIPI wakes it: wait here for the emulated
 * one, then start at the SIPI vector. */
enum hv_exit_result hv_action_wait_for_sipi(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    if (vmread(GUEST_RFLAGS) & RFLAGS_IF) {
        hv_advance_rip();
        vmwrite(GUEST_ACTIVITY_STATE, HV_ACTIVITY_HLT);
        return HV_RESUME_SAME;
    }
    UINT32 sipi;
    while (!((sipi = __atomic_load_n(&cpu->sipi_vector, __ATOMIC_SEQ_CST)) & 0x100))
        cpu_pause();
    return start_at_sipi(cpu, regs, sipi);
}

#endif /* HV_APIC_ICR_EMULATION */

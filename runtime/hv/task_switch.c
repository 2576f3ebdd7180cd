/*
 * `task_switch`: a task switch in the guest, done for it.
 *
 * Every task switch in VMX non-root operation exits (SDM 27.1.2
 * "Instructions That Cause VM Exits Unconditionally"; 27.4.2 "Treatment of
 * Task Switches"), before the processor changes any state: CALL or JMP to a
 * TSS or task gate, IRET with NT set, and an interrupt or exception through a
 * task gate in the IDT (32-bit Windows takes NMIs and double faults that way,
 * 32-bit Linux double faults). The hypervisor does what SDM 9.3 "Task
 * Switching" lists, for 32-bit TSSes: save the old task's state, update the
 * busy flags and the link, load the new task's registers, LDTR, segments and
 * CR3, set CR0.TS. Task switches exist only outside IA-32e mode.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"
#include "vmcs_setup.h"

#if HV_ACTION_TASK_SWITCH

/* SDM 29.2.1 "Basic VM-Exit Information", exit qualification for task switches. */
#define SOURCE_CALL 0
#define SOURCE_IRET 1
#define SOURCE_JMP  2
#define SOURCE_GATE 3 /* a task gate in the IDT */

#define DR7_LOCAL 0x155ULL /* L0-L3 and LE: cleared by a task switch (SDM 19.2.4) */

/* Descriptor types (SDM 3.5 "System Descriptor Types"). */
#define TYPE_LDT        2
#define TYPE_TSS32      9
#define TYPE_TSS32_BUSY 11
#define DESC_TYPE(d)    (((d) >> 40) & 0xF)
#define DESC_PRESENT(d) (((d) >> 47) & 1)
#define DESC_BUSY       (1ULL << 41)
#define AR_UNUSABLE     (1U << 16)
#define TSS32_MIN_LIMIT 0x67

/* A 32-bit TSS (SDM 9.2.1 "Task-State Segment (TSS)"); selector fields are
 * 16 bits in a 32-bit slot. */
struct tss32 {
    UINT32 link, esp0, ss0, esp1, ss1, esp2, ss2, cr3;
    UINT32 eip, eflags, eax, ecx, edx, ebx, esp, ebp, esi, edi; /* offset 0x20 on: saved */
    UINT32 es, cs, ss, ds, fs, gs;                              /* ... up to 0x60 */
    UINT32 ldt;
    UINT16 trap, iomap;
};
_Static_assert(sizeof(struct tss32) == 0x68, "SDM 9.2.1: a 104-byte TSS");
#define TSS_SAVED_FIRST __builtin_offsetof(struct tss32, eip)
#define TSS_SAVED_BYTES (__builtin_offsetof(struct tss32, ldt) - TSS_SAVED_FIRST)

/* The guest-state fields of a segment register, in the TSS's order (ES, CS,
 * SS, DS, FS, GS), then LDTR and TR. */
struct segment_fields {
    UINT32 selector, base, limit, ar;
};
static const struct segment_fields segments[8] = {
    { GUEST_ES_SELECTOR, GUEST_ES_BASE, GUEST_ES_LIMIT, GUEST_ES_AR_BYTES },
    { GUEST_CS_SELECTOR, GUEST_CS_BASE, GUEST_CS_LIMIT, GUEST_CS_AR_BYTES },
    { GUEST_SS_SELECTOR, GUEST_SS_BASE, GUEST_SS_LIMIT, GUEST_SS_AR_BYTES },
    { GUEST_DS_SELECTOR, GUEST_DS_BASE, GUEST_DS_LIMIT, GUEST_DS_AR_BYTES },
    { GUEST_FS_SELECTOR, GUEST_FS_BASE, GUEST_FS_LIMIT, GUEST_FS_AR_BYTES },
    { GUEST_GS_SELECTOR, GUEST_GS_BASE, GUEST_GS_LIMIT, GUEST_GS_AR_BYTES },
    { GUEST_LDTR_SELECTOR, GUEST_LDTR_BASE, GUEST_LDTR_LIMIT, GUEST_LDTR_AR_BYTES },
    { GUEST_TR_SELECTOR, GUEST_TR_BASE, GUEST_TR_LIMIT, GUEST_TR_AR_BYTES },
};
#define SEG_CS   1
#define SEG_SS   2
#define SEG_LDTR 6
#define SEG_TR   7

/* The descriptor's linear address in the GDT, or (TI set) the current LDT;
 * FALSE past the table's limit. */
static BOOLEAN descriptor_address(UINT16 selector, UINT64 *linear)
{
    BOOLEAN ldt = (selector & 4) != 0;
    UINT64 base = vmread(ldt ? GUEST_LDTR_BASE : GUEST_GDTR_BASE);
    UINT64 limit = vmread(ldt ? GUEST_LDTR_LIMIT : GUEST_GDTR_LIMIT);
    if (ldt && (vmread(GUEST_LDTR_AR_BYTES) & AR_UNUSABLE))
        return FALSE;
    if ((UINT64)(selector | 7) > limit)
        return FALSE;
    *linear = base + (selector & ~7U);
    return TRUE;
}

static BOOLEAN read_descriptor(UINT16 selector, UINT64 *desc)
{
    UINT64 at;
    return descriptor_address(selector, &at) && hv_guest_read(at, desc, sizeof *desc);
}

static BOOLEAN write_descriptor(UINT16 selector, UINT64 desc)
{
    UINT64 at;
    return descriptor_address(selector, &at) && hv_guest_write(at, &desc, sizeof desc);
}

/* A descriptor's base and limit (SDM 3.4.5 "Segment Descriptors"). */
static UINT64 descriptor_base(UINT64 desc)
{
    return ((desc >> 16) & 0xFFFFFF) | ((desc >> 32) & 0xFF000000);
}

static UINT32 descriptor_limit(UINT64 desc)
{
    UINT32 limit = (UINT32)((desc & 0xFFFF) | ((desc >> 32) & 0xF0000));
    return desc & (1ULL << 55) ? limit << 12 | 0xFFF : limit; /* G: 4 KiB units */
}

/* A segment register from its descriptor, the access rights in the VMCS's
 * format (SDM 26.4.1 "Guest Register State"). */
static void load_segment(UINT32 seg, UINT16 selector, UINT64 desc)
{
    vmwrite(segments[seg].selector, selector);
    vmwrite(segments[seg].base, descriptor_base(desc));
    vmwrite(segments[seg].limit, descriptor_limit(desc));
    vmwrite(segments[seg].ar, (desc >> 40) & 0xF0FF);
}

static enum hv_exit_result fault(UINT32 vector, UINT16 selector)
{
    hv_inject_exception(vector, TRUE, selector & 0xFFFC);
    return HV_RESUME_SAME;
}

/* The new task's segment registers and LDTR (SDM 9.3, step 12): LDTR
 * first, since the others may come from it. Virtual-8086 tasks get
 * real-mode-style segments. */
static enum hv_exit_result load_segments(const struct tss32 *t)
{
    UINT64 desc;
    UINT16 ldt = (UINT16)t->ldt;
    if (!(ldt & ~3U)) {
        vmwrite(GUEST_LDTR_SELECTOR, 0);
        vmwrite(GUEST_LDTR_AR_BYTES, AR_UNUSABLE);
    } else if ((ldt & 4) || !read_descriptor(ldt, &desc) || DESC_TYPE(desc) != TYPE_LDT ||
               !DESC_PRESENT(desc)) {
        return fault(VECTOR_TS, ldt);
    } else {
        load_segment(SEG_LDTR, ldt, desc);
    }
    const UINT32 *selectors = &t->es;
    for (UINT32 seg = 0; seg < 6; seg++) {
        UINT16 selector = (UINT16)selectors[seg];
        if (t->eflags & RFLAGS_VM) {
            vmwrite(segments[seg].selector, selector);
            vmwrite(segments[seg].base, (UINT64)selector << 4);
            vmwrite(segments[seg].limit, 0xFFFF);
            vmwrite(segments[seg].ar, 0xF3);
            continue;
        }
        if (!(selector & ~3U)) {
            if (seg == SEG_CS || seg == SEG_SS)
                return fault(VECTOR_TS, selector);
            vmwrite(segments[seg].selector, selector);
            vmwrite(segments[seg].ar, AR_UNUSABLE);
            continue;
        }
        if (!read_descriptor(selector, &desc) || !((desc >> 44) & 1)) /* a code or data segment */
            return fault(VECTOR_TS, selector);
        if (!DESC_PRESENT(desc))
            return fault(seg == SEG_SS ? VECTOR_SS : VECTOR_NP, selector);
        load_segment(seg, selector, desc | 1ULL << 40); /* accessed */
    }
    return HV_RESUME_SAME;
}

enum hv_exit_result hv_action_task_switch(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    UINT64 qualification = vmread(EXIT_QUALIFICATION), desc, old_desc;
    UINT16 selector = (UINT16)qualification, old_selector = (UINT16)vmread(GUEST_TR_SELECTOR);
    UINT32 source = (UINT32)(qualification >> 30) & 3, idt = (UINT32)vmread(IDT_VECTORING_INFO_FIELD);
    UINT64 old_base = vmread(GUEST_TR_BASE);
    struct tss32 next;

    if (source != SOURCE_GATE)
        idt = 0; /* not an event's delivery */
    if ((selector & 4) || !read_descriptor(selector, &desc))
        return fault(source == SOURCE_IRET ? VECTOR_TS : VECTOR_GP, selector);
    UINT32 type = (UINT32)DESC_TYPE(desc);
    if (type != (source == SOURCE_IRET ? TYPE_TSS32_BUSY : TYPE_TSS32)) {
        if ((type & ~2U) == 1) { /* a 16-bit TSS (types 1 and 3) */
            hv_log_fatal("uefi-hv: cpu %u: task switch to a 16-bit TSS (selector 0x%x), which the hypervisor "
                         "does not emulate\n",
                         cpu->index, selector);
            return HV_STOP;
        }
        return fault(source == SOURCE_IRET ? VECTOR_TS : VECTOR_GP, selector);
    }
    if (!DESC_PRESENT(desc))
        return fault(VECTOR_NP, selector);
    UINT64 new_base = descriptor_base(desc);
    if (descriptor_limit(desc) < TSS32_MIN_LIMIT || !hv_guest_read(new_base, &next, sizeof next))
        return fault(VECTOR_TS, selector);

    /* The old task's state into its TSS (step 8). Its EIP is where it goes
     * on: after CALL, JMP, IRET and INT n, at the instruction otherwise. */
    struct tss32 old;
    if (!hv_guest_read(old_base, &old, sizeof old))
        return fault(VECTOR_TS, old_selector);
    UINT32 return_eip = (UINT32)vmread(GUEST_RIP);
    UINT32 event = INTR_INFO_TYPE(idt);
    if (!(idt & INTR_INFO_VALID) || event == INTR_TYPE_SOFT_INTR || event == INTR_TYPE_SOFT_EXC)
        return_eip += (UINT32)vmread(VM_EXIT_INSTRUCTION_LEN);
    old.eip = return_eip;
    old.eflags = (UINT32)vmread(GUEST_RFLAGS) & ~(source == SOURCE_IRET ? RFLAGS_NT : 0);
    old.eax = (UINT32)regs->rax;
    old.ecx = (UINT32)regs->rcx;
    old.edx = (UINT32)regs->rdx;
    old.ebx = (UINT32)regs->rbx;
    old.esp = (UINT32)vmread(GUEST_RSP);
    old.ebp = (UINT32)regs->rbp;
    old.esi = (UINT32)regs->rsi;
    old.edi = (UINT32)regs->rdi;
    UINT32 *old_selectors = &old.es;
    for (UINT32 seg = 0; seg < 6; seg++)
        old_selectors[seg] = (UINT32)vmread(segments[seg].selector);
    if (!hv_guest_write(old_base + TSS_SAVED_FIRST, &old.eip, TSS_SAVED_BYTES))
        return fault(VECTOR_TS, old_selector);

    /* Busy flags and the link (steps 9-11): JMP and IRET leave the old task,
     * CALL and an event nest the new one in it. */
    if ((source == SOURCE_JMP || source == SOURCE_IRET) && read_descriptor(old_selector, &old_desc))
        write_descriptor(old_selector, old_desc & ~DESC_BUSY);
    if (source == SOURCE_CALL || source == SOURCE_GATE) {
        next.link = old_selector;
        next.eflags |= RFLAGS_NT;
        hv_guest_write(new_base, &next.link, sizeof next.link);
    }
    if (source != SOURCE_IRET) {
        desc |= DESC_BUSY;
        write_descriptor(selector, desc);
    }

    /* The new task (steps 12-13): TR, CR0.TS, CR3, the registers, LDTR and
     * the segments. */
    load_segment(SEG_TR, selector, desc);
    vmwrite(GUEST_CR0, vmread(GUEST_CR0) | X86_CR0_TS);
    if (vmread(GUEST_CR0) & X86_CR0_PG) {
        vmwrite(GUEST_CR3, next.cr3);
        if (vmread(GUEST_CR4) & X86_CR4_PAE) { /* PAE paging: the PDPTEs come with CR3 (SDM 28.3.2.4) */
            volatile UINT64 *pdpte = (volatile UINT64 *)(UINT64)(next.cr3 & 0xFFFFFFE0U);
            vmwrite(GUEST_PDPTR0, pdpte[0]);
            vmwrite(GUEST_PDPTR1, pdpte[1]);
            vmwrite(GUEST_PDPTR2, pdpte[2]);
            vmwrite(GUEST_PDPTR3, pdpte[3]);
        }
        hv_invalidate_guest_tlb(cpu, FALSE);
    }
    vmwrite(GUEST_RIP, next.eip);
    vmwrite(GUEST_RFLAGS, next.eflags | 2);
    vmwrite(GUEST_RSP, next.esp);
    regs->rax = next.eax;
    regs->rcx = next.ecx;
    regs->rdx = next.edx;
    regs->rbx = next.ebx;
    regs->rbp = next.ebp;
    regs->rsi = next.esi;
    regs->rdi = next.edi;
    vmwrite(GUEST_DR7, vmread(GUEST_DR7) & ~DR7_LOCAL);
    UINT64 intr = vmread(GUEST_INTERRUPTIBILITY_INFO) & ~3ULL; /* no STI or MOV SS blocking */
    if ((idt & INTR_INFO_VALID) && event == INTR_TYPE_NMI)
        intr |= BLOCKING_BY_NMI; /* an NMI delivered blocks NMIs, as through an interrupt gate */
    vmwrite(GUEST_INTERRUPTIBILITY_INFO, intr);
    enum hv_exit_result result = load_segments(&next);

    /* An exception with an error code pushes it on the new task's stack (SDM
     * 9.3, last step; 7.13 "Error Code"). */
    if (result == HV_RESUME_SAME && (idt & INTR_INFO_VALID) && (idt & INTR_INFO_ERROR_CODE)) {
        UINT32 esp = next.esp - 4, code = (UINT32)vmread(IDT_VECTORING_ERROR_CODE);
        hv_guest_write(vmread(GUEST_SS_BASE) + esp, &code, sizeof code);
        vmwrite(GUEST_RSP, esp);
    }
    return result;
}
#endif

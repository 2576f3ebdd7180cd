/*
 * Isolation: the guest cannot reach the hypervisor's memory.
 *
 * In EPT every page the hypervisor keeps maps to one zeroed decoy page,
 * read-only (ept.c): the guest reads zeros there, and a write or an
 * instruction fetch is an EPT violation, counted and answered as `option
 * self_protection_violation` says (#GP(0) by default). Two steps, because
 * efi_main goes on as a guest after its own VMLAUNCH, in the hypervisor's
 * image:
 *
 * 1. Before the first VMLAUNCH: every allocation (EPT, the host's page
 *    tables, VMXON regions, VMCSs, the MSR bitmap, host stacks, GDTs, TSSs,
 *    the IDT) except the struct hv_cpu pages and the table of pointers to
 *    them, which efi_main still reads.
 * 2. At ExitBootServices (the firmware signals the event efi_main created,
 *    whose notify function is a VMCALL): everything, the image and the
 *    struct hv_cpu pages too. From then on the OS also gets an error from
 *    DEVIRTUALIZE and GET_RESIDENT_RANGES unless the spec allows them.
 *
 * Other CPUs may still hold translations of pages hidden in step 2: each
 * runs INVEPT at its next VM exit (hv_protection_sync), and an OS's first
 * act on an AP, INIT, is one.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"

#if HV_SELF_PROTECTION

/* A page of the hypervisor's in the guest's memory: hidden behind the decoy,
 * or the identity map again; in EPT (VMX, ept.c) or the nested page tables
 * (SVM, svm.c). */
struct guest_pages {
    BOOLEAN (*hide)(UINT64 gpa);
    BOOLEAN (*show)(UINT64 gpa);
    BOOLEAN (*hidden)(UINT64 gpa);
};
static const struct guest_pages ept_pages = { hv_ept_hide_page, hv_ept_show_page, hv_ept_page_hidden };
#if HV_SVM
static const struct guest_pages npt_pages = { hv_npt_hide_page, hv_npt_show_page, hv_npt_page_hidden };
#define PAGES (hv.svm ? &npt_pages : &ept_pages)
#else
#define PAGES (&ept_pages)
#endif

/* Every page of every resident range, hidden (or, `show`, the identity map
 * again). Splitting a large page may take tables, which are hypervisor pages
 * too: the ranges are walked again until none is new. */
static BOOLEAN hide_all(void)
{
    UINTN before, count = 0;
    do {
        before = count;
        UINT64 base, bytes;
        for (UINTN i = 0; hv_resident_range(i, &base, &bytes, &count); i++)
            for (UINT64 page = base; page < base + bytes; page += HV_PAGE_SIZE)
                if (!PAGES->hide(page))
                    return FALSE;
    } while (count != before);
    return TRUE;
}

static BOOLEAN show(UINT64 base, UINTN pages)
{
    for (UINTN i = 0; i < pages; i++)
        if (!PAGES->show(base + i * HV_PAGE_SIZE))
            return FALSE;
    return TRUE;
}

/* Step 1; `image` and `image_pages`: the resident copy efi_main runs in. */
BOOLEAN hv_protect_before_launch(UINT64 image, UINTN image_pages)
{
    if (!hide_all() || !show(image, image_pages))
        return FALSE;
    if (!show((UINT64)hv.cpus, hv.cpu_table_pages))
        return FALSE;
    for (UINT32 i = 0; i < hv.cpu_count; i++)
        if (!show((UINT64)hv.cpus[i], HV_CPU_STRUCT_PAGES))
            return FALSE;
    hv_say("uefi-hv: the hypervisor's memory is hidden from the guest in %s (its image and CPU records "
           "at ExitBootServices)\n",
           hv.svm ? "nested paging" : "EPT");
    return TRUE;
}

/* A guest write or fetch in a hidden page (an EPT violation or nested page
 * fault on a present, read-only translation): counted, logged, and answered
 * by the policy. */
BOOLEAN hv_protection_violation(struct hv_cpu *cpu, UINT64 gpa, BOOLEAN write, BOOLEAN fetch)
{
    if (!PAGES->hidden(gpa))
        return FALSE;
    cpu->protection_violations++;
    const char *what = fetch ? "fetched an instruction from" : write ? "wrote" : "touched";
#if HV_PROTECTION_INJECT_GP
    hv_log("uefi-hv: cpu %u: the guest %s the hypervisor's memory at GPA 0x%lx (RIP 0x%lx): #GP(0)\n",
           cpu->index, what, gpa, hv_guest_rip());
    hv_inject_exception(VECTOR_GP, TRUE, 0);
    return TRUE;
#else
    hv_log_fatal("uefi-hv: cpu %u: the guest %s the hypervisor's memory at GPA 0x%lx (RIP 0x%lx): stopping\n",
                 cpu->index, what, gpa, hv_guest_rip());
    hv_power_off();
#endif
}
#endif

/* Step 2, VMCALL EXIT_BOOT_SERVICES from the notify function efi_main
 * registered (main.c). That function is in the image, hidden now: the VMCALL
 * returns to its caller itself, as its RET would (RIP from the guest's
 * stack). */
enum hv_exit_result hv_exit_boot_services(struct hv_cpu *cpu, struct hv_guest_regs *regs)
{
    UINT64 rsp = hv_guest_rsp(), return_rip;
    if (!hv_guest_read(rsp, &return_rip, sizeof return_rip))
        return HV_STOP;
    hv.boot_services_gone = TRUE;
#if HV_SELF_PROTECTION
    if ((hv.eptp || hv.svm) && !hide_all()) {
        hv_log_fatal("uefi-hv: cpu %u: ExitBootServices: no page table left to hide the hypervisor\n",
                     cpu->index);
        return HV_STOP;
    }
    for (UINT32 i = 0; i < hv.cpu_count; i++)
        __atomic_store_n(&hv.cpus[i]->ept_flush_due, 1, __ATOMIC_SEQ_CST);
    hv_protection_sync(cpu);
    hv_log("uefi-hv: cpu %u: ExitBootServices: all of the hypervisor's memory is hidden from the guest\n",
           cpu->index);
#else
    hv_log("uefi-hv: cpu %u: ExitBootServices (option self_protection = off: the hypervisor's memory stays "
           "open)\n",
           cpu->index);
#endif
    regs->rax = HV_VMCALL_OK;
    hv_set_guest_rip(return_rip);
    hv_set_guest_rsp(rsp + 8);
    return HV_RESUME_SAME;
}

/* At every VM exit of the full path (and none of the short path while one
 * is due): this CPU's EPT translations, dropped once after pages were hidden
 * (INVEPT single-context where the CPU has it, else all). */
void hv_protection_sync(struct hv_cpu *cpu)
{
    if (!__atomic_exchange_n(&cpu->ept_flush_due, 0, __ATOMIC_SEQ_CST))
        return;
#if HV_SVM
    if (hv.svm) {
        hv_svm_flush_guest_tlb(cpu);
        return;
    }
#endif
    UINT64 cap = hv.ept_vpid_cap; /* INVEPT (bit 20): single-context (25), all-context (26) */
    if (!(cpu->controls[HV_CTL_PROC2] & HV_PROC2_ENABLE_EPT) || !(cap >> 20 & 1))
        return;
    if (cap >> 25 & 1)
        invept(1, hv.eptp);
    else if (cap >> 26 & 1)
        invept(2, 0);
}

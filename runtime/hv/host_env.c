/* The hypervisor's own host environment: what a VM exit switches to. The
 * firmware's GDT, IDT and page tables belong to the guest from the moment of
 * launch (the guest may rewrite them), so the host has its own: - per CPU, a
 * GDT: null, 64-bit code 0x08, data 0x10, a 16-byte TSS descriptor at 0x18
 * (HOST_TR_SELECTOR must not be 0, SDM 28.2.3 "Checks on Host Segment and
 * Descriptor-Table Registers"); - one IDT whose exception handlers log and halt
 * (vmexit.S); - identity-mapped page tables (1 GiB pages when
 * CPUID.80000001H:EDX[26] says so, 2 MiB pages otherwise), when the spec asks
 * for host_cr3. All of it is EfiRuntimeServicesData (memory.c). */
#include "hv.h"
#include "cpu.h"
#include "interrupts.h"

#define HOST_CS          0x08
#define HOST_DS          0x10
#define HOST_TR          0x18
#define HOST_GDT_ENTRIES 5 /* null, code, data, TSS (two slots) */

#define PTE_P  (1ULL << 0)
#define PTE_W  (1ULL << 1)
#define PTE_PS (1ULL << 7)

extern UINT8 hv_host_exception_stubs[]; /* vmexit.S: 32 stubs, 16 bytes apart */
extern void hv_host_interrupt_stub(void);
extern void hv_host_nmi_stub(void);

struct hv_shared hv;

/* Interrupt stack table slots (TSS.ist[n - 1]): the events that must not run on
 * a host stack that may be the cause, or that may come at any instruction
 * (SDM 7.14.5 "Interrupt Stack Table"). */
#define IST_NMI    1
#define IST_DF     2
#define IST_MC     3
#define IST_STACKS 3

static void set_gate(UINT64 *idt, UINT32 vector, UINT64 handler, UINT32 ist)
{
    /* 64-bit interrupt gate (SDM 7.14.1 "64-Bit Mode IDT"): present, DPL 0, type 0xE. */
    idt[vector * 2] = (handler & 0xFFFF) | (UINT64)HOST_CS << 16 | (UINT64)ist << 32 | 0x8EULL << 40 |
                      ((handler >> 16) & 0xFFFF) << 48;
    idt[vector * 2 + 1] = handler >> 32;
}

static EFI_STATUS build_host_idt(void)
{
    hv.host_idt = hv_alloc_pages(1);
    if (!hv.host_idt)
        return EFI_OUT_OF_RESOURCES;
    for (UINT32 v = 0; v < 256; v++)
        set_gate(hv.host_idt, v, v < 32 ? (UINT64)&hv_host_exception_stubs[v * 16] : hv_irq_host_gate(v), 0);
    set_gate(hv.host_idt, 2, (UINT64)hv_host_nmi_stub, IST_NMI);
    set_gate(hv.host_idt, 8, (UINT64)&hv_host_exception_stubs[8 * 16], IST_DF);
    set_gate(hv.host_idt, 18, (UINT64)&hv_host_exception_stubs[18 * 16], IST_MC);
    return EFI_SUCCESS;
}

UINT64 hv_identity_gib(UINT32 max_phys_bits, BOOLEAN gib_pages)
{
    UINT64 gib = max_phys_bits >= 30 ? 1ULL << (max_phys_bits - 30) : 1;
    UINT64 most = gib_pages ? 1ULL << 16 : 512; /* 128 or 512 pages of tables */
    return gib < most ? gib : most;
}

/* An identity map of the first `*gib` GiB (hv_identity_gib: all of
 * MAXPHYADDR where the tables allow), in 1 GiB pages where the CPU has them
 * (CPUID.80000001:EDX[26]), else 2 MiB, every entry with `flags`: the
 * host's page tables, and with SVM the nested ones, whose walks are user
 * accesses (APM 15.25.5). Returns the PML4, or NULL when out of memory. */
UINT64 *hv_identity_map(UINT64 flags, UINT64 *gib)
{
    UINT32 r[4];
    cpuid(0x80000001U, 0, r);
    BOOLEAN gib_pages = (r[3] >> 26) & 1;
    UINT64 *pml4 = hv_alloc_table(), *pdpt = NULL;
    if (!pml4)
        return NULL;
    *gib = hv_identity_gib(hv.max_phys_bits, gib_pages);
    for (UINT64 i = 0; i < *gib; i++) {
        if (i % 512 == 0) {
            if (!(pdpt = hv_alloc_table()))
                return NULL;
            pml4[i / 512] = (UINT64)pdpt | flags;
        }
        if (gib_pages) {
            pdpt[i % 512] = i << 30 | flags | PTE_PS;
            continue;
        }
        UINT64 *pd = hv_alloc_table();
        if (!pd)
            return NULL;
        pdpt[i % 512] = (UINT64)pd | flags;
        for (UINT64 j = 0; j < 512; j++)
            pd[j] = (i << 30 | j << 21) | flags | PTE_PS;
    }
    return pml4;
}

#if HV_HOST_PAGE_TABLES
static EFI_STATUS build_host_page_tables(void)
{
    /* All of MAXPHYADDR, as EPT maps it: the host reads the guest's page
     * tables and the local APIC wherever they are. */
    UINT64 *pml4 = hv_identity_map(PTE_P | PTE_W, &hv.host_gib);
    if (!pml4)
        return EFI_OUT_OF_RESOURCES;
    if (EFI_ERROR(hv_map_microcode_window(pml4)))
        return EFI_OUT_OF_RESOURCES;
    hv.host_cr3 = (UINT64)pml4;
    /* HOST_CR4 is the firmware's: with 5-level paging (CR4.LA57) a PML5 goes
     * on top, its first entry for the identity map and its last for the
     * microcode window (SDM 4.5 "4-Level Paging and 5-Level Paging"). */
    if (read_cr4() & X86_CR4_LA57) {
        UINT64 *pml5 = hv_alloc_table();
        if (!pml5)
            return EFI_OUT_OF_RESOURCES;
        pml5[0] = pml5[511] = (UINT64)pml4 | PTE_P | PTE_W;
        hv.host_cr3 = (UINT64)pml5;
    }
    return EFI_SUCCESS;
}
#endif

EFI_STATUS hv_build_host_environment(void)
{
    /* MAXPHYADDR (CPUID.80000008H:EAX[7:0], 36 where the leaf is missing),
     * for the host's page tables and EPT alike. */
    UINT32 r[4];
    cpuid(0x80000000U, 0, r);
    hv.max_phys_bits = 36;
    if (r[0] >= 0x80000008U) {
        cpuid(0x80000008U, 0, r);
        hv.max_phys_bits = r[0] & 0xFF;
    }
    EFI_STATUS status = hv_irq_init();
    if (!EFI_ERROR(status))
        status = build_host_idt();
#if HV_HOST_PAGE_TABLES
    if (!EFI_ERROR(status))
        status = build_host_page_tables();
#endif
    return status;
}

/* Each CPU's memory: its struct hv_cpu, a page with its GDT and TSS, its host
 * stack, its VMXON region and its VMCS (each page-aligned, as VMXON and
 * VMPTRLD require) and its IST stacks. */
#define CPU_BLOCK_PAGES (HV_CPU_STRUCT_PAGES + 1 + HV_HOST_STACK_SIZE / HV_PAGE_SIZE + 2 + IST_STACKS + 1)

static struct hv_cpu *init_cpu(UINT32 index, UINT8 *block);

/* Every CPU's memory in one allocation, whatever their number (one record
 * in memory.c): first the table of their struct hv_cpu pointers (hv.cpus),
 * then a block per CPU. */
BOOLEAN hv_alloc_cpus(UINT32 count)
{
    UINTN table_pages = (count * sizeof(struct hv_cpu *) + HV_PAGE_SIZE - 1) / HV_PAGE_SIZE;
    UINT8 *memory = hv_alloc_pages(table_pages + (UINTN)count * CPU_BLOCK_PAGES);
    if (!memory)
        return FALSE;
    hv.cpus = (struct hv_cpu **)memory;
    hv.cpu_table_pages = table_pages;
    for (UINT32 i = 0; i < count; i++)
        hv.cpus[i] = init_cpu(i, memory + (table_pages + (UINTN)i * CPU_BLOCK_PAGES) * HV_PAGE_SIZE);
    return TRUE;
}

static struct hv_cpu *init_cpu(UINT32 index, UINT8 *block)
{
    struct hv_cpu *cpu = (struct hv_cpu *)block;
    UINT8 *page = block + HV_CPU_STRUCT_PAGES * HV_PAGE_SIZE; /* the GDT at the start, the TSS after it */
    cpu->index = index;
    cpu->host_stack = page + HV_PAGE_SIZE;
    cpu->vmxon_region = cpu->host_stack + HV_HOST_STACK_SIZE;
    cpu->vmcs = cpu->vmxon_region + HV_PAGE_SIZE;
    for (UINT32 i = 0; i < IST_STACKS; i++) {
        /* A page each; the word at the top holds this CPU's struct hv_cpu *
         * (the NMI stub's argument), the frame goes below it. */
        UINT64 top = (UINT64)cpu->vmcs + (2 + i) * HV_PAGE_SIZE - 16;
        *(struct hv_cpu **)top = cpu;
        cpu->ist_top[i] = top;
    }
    cpu->host_vmcb = cpu->vmcs + (1 + IST_STACKS) * HV_PAGE_SIZE; /* the last page, after the IST stacks */
    cpu->host_gdt = (UINT64 *)page;
    cpu->host_tss = (struct hv_tss *)(page + 64);
    cpu->host_tss->iomap_base = sizeof(struct hv_tss); /* no I/O permission bitmap */
    for (UINT32 i = 0; i < IST_STACKS; i++)
        cpu->host_tss->ist[i] = cpu->ist_top[i];

    UINT64 tss = (UINT64)cpu->host_tss, limit = sizeof(struct hv_tss) - 1;
    cpu->host_gdt[0] = 0;
    cpu->host_gdt[1] = 0x00AF9B000000FFFFULL;                                    /* 0x08: code, L=1, DPL 0 */
    cpu->host_gdt[2] = 0x00CF93000000FFFFULL;                                    /* 0x10: data, DPL 0 */
    cpu->host_gdt[3] = (limit & 0xFFFF) | (tss & 0xFFFFFF) << 16 | 0x89ULL << 40 /* 0x18: 64-bit TSS */
                       | ((limit >> 16) & 0xF) << 48 | ((tss >> 24) & 0xFF) << 56;
    cpu->host_gdt[4] = tss >> 32;

    /* HOST_RSP: 16-byte aligned; the slot at the top holds this CPU's data,
     * where vmexit.S finds it (RSP is loaded from HOST_RSP, SDM 29.5.3 "Loading
     * Host RIP, RSP, RFLAGS, and SSP"). */
    cpu->host_stack_top = ((UINT64)cpu->host_stack + HV_HOST_STACK_SIZE - 16) & ~15ULL;
    *(struct hv_cpu **)cpu->host_stack_top = cpu;
    return cpu;
}

/*
 * read(REG) in a spec is the register as the hypervisor's host environment
 * has it. Descriptor-table bases are read with the real SGDT/SIDT while the
 * host tables are loaded, interrupts off, then the firmware's are put back.
 */
UINT64 host_reg_cr0(struct hv_cpu *cpu)
{
    return cpu->cr0;
}
UINT64 host_reg_cr4(struct hv_cpu *cpu)
{
    return cpu->cr4;
}
UINT64 host_reg_cr3(struct hv_cpu *cpu)
{
    (void)cpu;
    return hv.host_cr3 ? hv.host_cr3 : read_cr3();
}
UINT64 host_reg_cs(struct hv_cpu *cpu)
{
    (void)cpu;
    return HOST_CS;
}
UINT64 host_reg_ss(struct hv_cpu *cpu)
{
    (void)cpu;
    return HOST_DS;
}
UINT64 host_reg_ds(struct hv_cpu *cpu)
{
    (void)cpu;
    return HOST_DS;
}
UINT64 host_reg_es(struct hv_cpu *cpu)
{
    (void)cpu;
    return HOST_DS;
}
UINT64 host_reg_fs(struct hv_cpu *cpu)
{
    (void)cpu;
    return HOST_DS;
}
UINT64 host_reg_gs(struct hv_cpu *cpu)
{
    (void)cpu;
    return HOST_DS;
}
UINT64 host_reg_tr(struct hv_cpu *cpu)
{
    (void)cpu;
    return HOST_TR;
}
UINT64 host_reg_fs_base(struct hv_cpu *cpu)
{
    (void)cpu;
    return rdmsr(MSR_IA32_FS_BASE);
}
UINT64 host_reg_gs_base(struct hv_cpu *cpu)
{
    (void)cpu;
    return rdmsr(MSR_IA32_GS_BASE);
}

UINT64 host_reg_sidt_base(struct hv_cpu *cpu)
{
    (void)cpu;
    struct hv_dtr firmware, host = { 256 * 16 - 1, (UINT64)hv.host_idt }, seen;
    UINT64 flags = read_rflags();
    cli();
    sidt(&firmware);
    lidt(&host);
    sidt(&seen);
    lidt(&firmware);
    write_rflags(flags);
    return seen.base;
}

UINT64 host_reg_sgdt_base(struct hv_cpu *cpu)
{
    struct hv_dtr firmware, host = { HOST_GDT_ENTRIES * 8 - 1, (UINT64)cpu->host_gdt }, seen;
    UINT64 flags = read_rflags();
    cli();
    sgdt(&firmware);
    lgdt(&host); /* the segment registers keep their cached descriptors */
    sgdt(&seen);
    lgdt(&firmware);
    write_rflags(flags);
    return seen.base;
}

/* A fault in VMX root operation: the host has nothing to return to. */
struct hv_exception_frame {
    UINT64 rax, rcx, rdx, rbx, rbp, rsi, rdi, r8, r9, r10, r11;
    UINT64 vector, error_code, rip, cs, rflags, rsp, ss;
};

void hv_host_exception(struct hv_exception_frame *f)
{
    hv_log_fatal("uefi-hv: host exception %u (error code 0x%lx) at RIP 0x%lx, RSP 0x%lx, CR2 0x%lx\n",
                 (unsigned)f->vector, f->error_code, f->rip, f->rsp, read_cr2());
    hv_log_fatal("uefi-hv: %s cannot continue; stopping\n", hv.svm ? "the SVM host" : "VMX root");
    hv_power_off();
}

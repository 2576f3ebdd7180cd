/* EPT: an identity map of guest-physical to host-physical memory (SDM 30.3 "The
 * Extended Page Table Mechanism (EPT)"), read/write/execute everywhere, with
 * the memory type of each page taken from the MTRRs (SDM 13.11 "Memory Type
 * Range Registers (MTRRs)") so that the guest's caching is what the firmware
 * set up. Large pages (1 GiB where IA32_VMX_EPT_VPID_CAP[17] allows, 2 MiB
 * otherwise) wherever the MTRRs give one type to the whole page; pages that
 * straddle types are split, down to 4 KiB (the fixed-range MTRRs below 1 MiB). */
#include "hv.h"
#include "cpu.h"

#define EPT_RWX        7ULL
#define EPT_LARGE      (1ULL << 7)
#define EPT_TYPE_SHIFT 3
#define MTRR_UC        0
#define MTRR_WT        4
#define MTRR_WB        6
#define MTRR_MIXED     0xFF

struct mtrr_state {
    BOOLEAN enabled, fixed_enabled;
    UINT8 default_type;
    UINT32 variable_count;
    UINT64 base[32], mask[32];
    UINT8 fixed[88]; /* 11 fixed-range MSRs, 8 ranges each */
};

static struct mtrr_state mtrr;
static UINT64 phys_mask; /* bits MAXPHYADDR-1:12 */

static void read_mtrrs(void)
{
    UINT64 cap = rdmsr(MSR_IA32_MTRRCAP), def = rdmsr(MSR_IA32_MTRR_DEF_TYPE);
    mtrr.enabled = (def >> 11) & 1;
    mtrr.fixed_enabled = mtrr.enabled && ((def >> 10) & 1) && ((cap >> 8) & 1);
    mtrr.default_type = def & 0xFF;
    mtrr.variable_count = cap & 0xFF;
    if (mtrr.variable_count > 32)
        mtrr.variable_count = 32;
    for (UINT32 i = 0; i < mtrr.variable_count; i++) {
        mtrr.base[i] = rdmsr(MSR_IA32_MTRR_PHYSBASE0 + 2 * i);
        mtrr.mask[i] = rdmsr(MSR_IA32_MTRR_PHYSBASE0 + 2 * i + 1);
    }
    static const UINT32 fixed_msrs[11] = {
        MSR_IA32_MTRR_FIX64K_00000, MSR_IA32_MTRR_FIX16K_80000, MSR_IA32_MTRR_FIX16K_A0000,
        MSR_IA32_MTRR_FIX4K_C0000,  MSR_IA32_MTRR_FIX4K_C8000,  MSR_IA32_MTRR_FIX4K_D0000,
        MSR_IA32_MTRR_FIX4K_D8000,  MSR_IA32_MTRR_FIX4K_E0000,  MSR_IA32_MTRR_FIX4K_E8000,
        MSR_IA32_MTRR_FIX4K_F0000,  MSR_IA32_MTRR_FIX4K_F8000,
    };
    if (mtrr.fixed_enabled)
        for (UINT32 i = 0; i < 11; i++) {
            UINT64 v = rdmsr(fixed_msrs[i]);
            for (UINT32 j = 0; j < 8; j++)
                mtrr.fixed[i * 8 + j] = (v >> (8 * j)) & 0xFF;
        }
}

/* SDM 13.11.4.1 "MTRR Precedences": UC wins, WT beats WB, otherwise the
 * types must agree (else undefined: treated as UC). */
static UINT8 combine(UINT8 acc, UINT8 type)
{
    if (acc == MTRR_MIXED || acc == type)
        return type;
    if (acc == MTRR_UC || type == MTRR_UC)
        return MTRR_UC;
    if ((acc == MTRR_WT && type == MTRR_WB) || (acc == MTRR_WB && type == MTRR_WT))
        return MTRR_WT;
    return MTRR_UC;
}

static UINT8 fixed_type(UINT64 addr)
{
    if (addr < 0x80000)
        return mtrr.fixed[addr >> 16]; /* 64 KiB ranges */
    if (addr < 0xC0000)
        return mtrr.fixed[8 + ((addr - 0x80000) >> 14)]; /* 16 KiB ranges */
    return mtrr.fixed[24 + ((addr - 0xC0000) >> 12)];    /* 4 KiB ranges */
}

/* The one memory type of [start, start + size), or MTRR_MIXED when the
 * range straddles types. size is a power of two >= 4 KiB. */
static UINT8 memory_type(UINT64 start, UINT64 size)
{
    if (!mtrr.enabled)
        return MTRR_UC;
    if (start < 0x100000 && mtrr.fixed_enabled)
        return size == 0x1000 ? fixed_type(start) : MTRR_MIXED;
    UINT8 type = MTRR_MIXED;
    BOOLEAN matched = FALSE;
    for (UINT32 i = 0; i < mtrr.variable_count; i++) {
        if (!(mtrr.mask[i] & (1ULL << 11))) /* valid bit */
            continue;
        UINT64 mask = mtrr.mask[i] & phys_mask, base = mtrr.base[i] & mask;
        UINT64 range = (~mask & phys_mask) + 0x1000; /* for a contiguous mask */
        BOOLEAN contiguous = (range & (range - 1)) == 0;
        BOOLEAN starts_in = (start & mask) == base;
        if (size == 0x1000 || (contiguous && range >= size)) {
            if (!starts_in)
                continue; /* wholly outside */
        } else {
            /* The range is smaller than the page: mixed if it touches it. */
            UINT64 first = start, last = start + size - 1;
            if (!contiguous || (base <= last && base + range - 1 >= first))
                return MTRR_MIXED;
            continue;
        }
        type = combine(type, (UINT8)(mtrr.base[i] & 0xFF));
        matched = TRUE;
    }
    return matched ? type : mtrr.default_type;
}

/* Guest-physical memory beyond what the start-up maps (all of MAXPHYADDR up
 * to hv_identity_gib: 64 TiB in 1 GiB pages) is mapped when the guest first
 * touches it: the EPT violation of a not-present page below MAXPHYADDR maps
 * its GiB (hv_ept_map_on_first_use), with tables from a reserve set aside
 * at start-up (no firmware allocation after ExitBootServices). A test maps
 * less at start-up to exercise it. */
#ifndef HV_EPT_EAGER_GIB_MAX
#define HV_EPT_EAGER_GIB_MAX (~0ULL)
#endif
#define EPT_RESERVE_TABLES 64

static UINT64 *ept_top;      /* the PML4, or with 5-level EPT the PML5 */
static UINT32 ept_top_shift; /* 39 or 48: what one top-level entry spans */
static BOOLEAN gib_pages;    /* 1 GiB pages (IA32_VMX_EPT_VPID_CAP[17]) */
static UINT64 *reserve[EPT_RESERVE_TABLES];
static UINT32 reserve_left; /* filled once the start-up's tables are done */
static BOOLEAN built;
static volatile UINT32 ept_lock;

static UINT64 *new_table(void)
{
    if (!built)
        return hv_alloc_table();
    if (!reserve_left)
        return NULL;
    UINT64 *table = reserve[--reserve_left];
    hv_zero(table, HV_PAGE_SIZE);
    return table;
}

static EFI_STATUS map_2m(UINT64 *pd_entry, UINT64 start)
{
    UINT8 type = memory_type(start, 1ULL << 21);
    if (type != MTRR_MIXED) {
        *pd_entry = start | EPT_RWX | (UINT64)type << EPT_TYPE_SHIFT | EPT_LARGE;
        return EFI_SUCCESS;
    }
    UINT64 *pt = new_table();
    if (!pt)
        return EFI_OUT_OF_RESOURCES;
    for (UINT64 i = 0; i < 512; i++) {
        UINT64 addr = start + (i << 12);
        pt[i] = addr | EPT_RWX | (UINT64)memory_type(addr, 0x1000) << EPT_TYPE_SHIFT;
    }
    *pd_entry = (UINT64)pt | EPT_RWX;
    return EFI_SUCCESS;
}

static EFI_STATUS map_1g(UINT64 *pdpt_entry, UINT64 start)
{
    UINT8 type = gib_pages ? memory_type(start, 1ULL << 30) : MTRR_MIXED;
    if (type != MTRR_MIXED) {
        *pdpt_entry = start | EPT_RWX | (UINT64)type << EPT_TYPE_SHIFT | EPT_LARGE;
        return EFI_SUCCESS;
    }
    UINT64 *pd = new_table();
    if (!pd)
        return EFI_OUT_OF_RESOURCES;
    for (UINT64 i = 0; i < 512; i++) {
        EFI_STATUS s = map_2m(&pd[i], start + (i << 21));
        if (EFI_ERROR(s))
            return s;
    }
    *pdpt_entry = (UINT64)pd | EPT_RWX;
    return EFI_SUCCESS;
}

/* The entry that maps GiB `gib`, with the tables above it made where missing. */
static UINT64 *gib_entry(UINT64 gib)
{
    UINT64 gpa = gib << 30, *table = ept_top;
    for (UINT32 shift = ept_top_shift; shift > 30; shift -= 9) {
        UINT64 *entry = &table[(gpa >> shift) & 511];
        if (!(*entry & EPT_RWX)) {
            UINT64 *next = new_table();
            if (!next)
                return NULL;
            *entry = (UINT64)next | EPT_RWX;
        }
        table = (UINT64 *)(*entry & ~0xFFFULL & phys_mask);
    }
    return &table[(gpa >> 30) & 511];
}

/* The entry that maps the GiB of `gpa`, that GiB mapped where it was not;
 * NULL when no table is left. */
static UINT64 *mapped_gib_entry(UINT64 gpa)
{
    UINT64 *entry = gib_entry(gpa >> 30);
    if (!entry || (!(*entry & EPT_RWX) && EFI_ERROR(map_1g(entry, gpa & ~((1ULL << 30) - 1)))))
        return NULL;
    return entry;
}

/* The 4 KiB EPT entry of `gpa`, splitting large pages on the way (the
 * smaller pages keep the large page's memory type). */
static UINT64 *ept_entry_4k(UINT64 gpa)
{
    UINT64 *gib = mapped_gib_entry(gpa);
    if (!gib)
        return NULL;
    UINT64 *table = gib - ((gpa >> 30) & 511); /* the PDPT */
    for (UINT32 shift = 30; shift >= 21; shift -= 9) {
        UINT64 *entry = &table[(gpa >> shift) & 511];
        if (*entry & EPT_LARGE) {
            UINT64 *split = new_table();
            if (!split)
                return NULL;
            UINT64 step = 1ULL << (shift - 9), base = *entry & ~((1ULL << shift) - 1) & phys_mask;
            UINT64 attrs = *entry & (EPT_RWX | 7ULL << EPT_TYPE_SHIFT);
            for (UINT64 i = 0; i < 512; i++)
                split[i] = (base + i * step) | attrs | (shift - 9 > 12 ? EPT_LARGE : 0);
            *entry = (UINT64)split | EPT_RWX;
        }
        table = (UINT64 *)(*entry & ~0xFFFULL & phys_mask);
    }
    return &table[(gpa >> 12) & 511];
}

/* --- the hypervisor's own pages (protect.c) --------------------------------
 * Each maps to one zeroed decoy page, read-only: the guest reads zeros, and
 * a write or an instruction fetch is an EPT violation. */
#define EPT_READ    1ULL
#define MEM_TYPE_WB 6ULL
static UINT64 decoy;

BOOLEAN hv_ept_hide_page(UINT64 gpa)
{
    UINT64 *pte = ept_entry_4k(gpa);
    if (!pte)
        return FALSE;
    *pte = decoy | EPT_READ | MEM_TYPE_WB << EPT_TYPE_SHIFT;
    return TRUE;
}

BOOLEAN hv_ept_show_page(UINT64 gpa)
{
    UINT64 *pte = ept_entry_4k(gpa);
    if (!pte)
        return FALSE;
    *pte = gpa | EPT_RWX | (UINT64)memory_type(gpa, HV_PAGE_SIZE) << EPT_TYPE_SHIFT;
    return TRUE;
}

/* Whether `gpa` is one of the hidden pages (no table is split to find out). */
BOOLEAN hv_ept_page_hidden(UINT64 gpa)
{
    UINT64 *table = ept_top;
    for (UINT32 shift = ept_top_shift; shift >= 12; shift -= 9) {
        UINT64 entry = table[(gpa >> shift) & 511];
        if (!(entry & EPT_RWX))
            return FALSE;
        if (shift == 12)
            return (entry & ~0xFFFULL & phys_mask) == decoy;
        if (entry & EPT_LARGE)
            return FALSE;
        table = (UINT64 *)(entry & ~0xFFFULL & phys_mask);
    }
    return FALSE;
}

/* After hv_build_host_environment, which reads MAXPHYADDR. */
EFI_STATUS hv_build_ept(void)
{
    phys_mask = ((1ULL << hv.max_phys_bits) - 1) & ~0xFFFULL;
    read_mtrrs();

    gib_pages = (hv.ept_vpid_cap >> 17) & 1;
    /* 4-level EPT translates 48-bit guest-physical addresses; a wider
     * MAXPHYADDR needs 5 levels (IA32_VMX_EPT_VPID_CAP[7], SDM 30.3.2 "EPT
     * Translation Mechanism"). */
    BOOLEAN five_levels = hv.max_phys_bits > 48 && ((hv.ept_vpid_cap >> 7) & 1);
    ept_top_shift = five_levels ? 48 : 39;
    if (!(ept_top = new_table()))
        return EFI_OUT_OF_RESOURCES;
    /* All of the physical address space (MAXPHYADDR; entries beyond it would
     * be EPT misconfigurations), as far as hv_identity_gib reaches; the rest
     * on first use. */
    UINT64 gib = hv_identity_gib(hv.max_phys_bits, gib_pages);
    if (gib > HV_EPT_EAGER_GIB_MAX)
        gib = HV_EPT_EAGER_GIB_MAX;
    hv.ept_gib = gib;
    for (UINT64 i = 0; i < gib; i++)
        if (!mapped_gib_entry(i << 30))
            return EFI_OUT_OF_RESOURCES;
#if HV_APIC_ICR_EMULATION
    /* The local APIC page is mapped read/execute only, so that writes to it
     * (the ICR among them) exit: INIT and SIPI to virtualised CPUs are
     * emulated instead of delivered (icr_emulation.c). */
    UINT64 *pte = ept_entry_4k(rdmsr(MSR_IA32_APIC_BASE) & ~0xFFFULL & phys_mask);
    if (!pte)
        return EFI_OUT_OF_RESOURCES;
    *pte = (*pte & ~(EPT_RWX | 7ULL << EPT_TYPE_SHIFT)) | 5ULL | (UINT64)MTRR_UC << EPT_TYPE_SHIFT;
#endif
    if (!(decoy = (UINT64)hv_alloc_pages(1)))
        return EFI_OUT_OF_RESOURCES;
    for (reserve_left = 0; reserve_left < EPT_RESERVE_TABLES; reserve_left++)
        if (!(reserve[reserve_left] = hv_alloc_table()))
            return EFI_OUT_OF_RESOURCES;
    built = TRUE;
    /* EPTP (SDM 26.6.11 "Extended-Page-Table Pointer (EPTP)"): WB
     * paging-structure type when supported (EPT_VPID_CAP[14]), page-walk length
     * 4 or 5 (encoded one less). */
    UINT64 walk_type = (hv.ept_vpid_cap >> 14) & 1 ? 6 : 0;
    hv.eptp = (UINT64)ept_top | (five_levels ? 4ULL : 3ULL) << 3 | walk_type;
    return EFI_SUCCESS;
}

/* An EPT violation: if the guest touched a not-present page below
 * MAXPHYADDR that the start-up left unmapped, its GiB is mapped now and the
 * instruction runs again (TRUE). Exit qualification bits 5:3 are the
 * permissions of the translation, 0 when it was not present (SDM 29.2.1
 * "Basic VM-Exit Information"). */
BOOLEAN hv_ept_map_on_first_use(struct hv_cpu *cpu)
{
    UINT64 gpa = vmread(GUEST_PHYSICAL_ADDRESS);
    if (((vmread(EXIT_QUALIFICATION) >> 3) & 7) || (gpa >> hv.max_phys_bits) || (gpa >> (ept_top_shift + 9)))
        return FALSE;
    while (__atomic_exchange_n(&ept_lock, 1, __ATOMIC_ACQUIRE))
        cpu_pause();
    BOOLEAN mapped = mapped_gib_entry(gpa) != NULL;
    __atomic_store_n(&ept_lock, 0, __ATOMIC_RELEASE);
    if (!mapped) {
        hv_log_fatal(
            "uefi-hv: cpu %u: EPT: no table left to map guest-physical 0x%lx (%u reserved at start-up)\n",
            cpu->index, gpa, EPT_RESERVE_TABLES);
        return FALSE;
    }
    /* No INVEPT: a CPU caches no translation whose entry was not present
     * (SDM 30.4.1 "Information That May Be Cached"). */
    hv_log("uefi-hv: cpu %u: EPT maps guest-physical GiB %lu on first use (0x%lx)\n", cpu->index, gpa >> 30,
           gpa);
    return TRUE;
}

/*
 * The guest's memory as the hypervisor reads and writes it for an
 * instruction it does in the guest's place (the ICR emulation's store, a
 * task switch's TSS, a microcode update): guest-linear addresses through the
 * guest's own page tables. EPT and the host's page tables are identity maps
 * of all of MAXPHYADDR (ept.c, host_env.c), so a guest-physical address is
 * the host's address of the same byte.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"

#define PTE_PRESENT (1ULL << 0)
#define PTE_LARGE   (1ULL << 7)
#define PTE_FRAME   0x000FFFFFFFFFF000ULL /* bits 51:12 */

/* Guest-linear to guest-physical in every paging mode (SDM 4.1 "Paging
 * Modes and Control Bits"): none, 32-bit, PAE, 4-level and 5-level. Access
 * rights are not checked and accessed/dirty bits not set: the instruction
 * done here is one the CPU already let the guest execute. (PAE paging uses
 * the PDPTEs the CPU loaded with CR3; they are read again from memory.) */
BOOLEAN hv_guest_physical(UINT64 linear, UINT64 *pa)
{
    UINT64 cr3 = hv_guest_cr3(), cr4 = hv_guest_cr4(), table, entry;
    UINT32 shift;
    if (!(hv_guest_cr0() & X86_CR0_PG)) {
        *pa = linear & 0xFFFFFFFFULL;
        return TRUE;
    }
    if (!(cr4 & X86_CR4_PAE)) { /* 32-bit paging: 4-byte entries */
        UINT32 pde = ((volatile UINT32 *)(cr3 & 0xFFFFF000ULL))[(linear >> 22) & 1023];
        if (!(pde & PTE_PRESENT))
            return FALSE;
        if ((pde & PTE_LARGE) && (cr4 & X86_CR4_PSE)) { /* 4 MiB, PA bits 39:32 in PDE bits 20:13 */
            *pa = (pde & 0xFFC00000ULL) | (UINT64)((pde >> 13) & 0xFF) << 32 | (linear & 0x3FFFFF);
            return TRUE;
        }
        UINT32 pte = ((volatile UINT32 *)(UINT64)(pde & 0xFFFFF000U))[(linear >> 12) & 1023];
        if (!(pte & PTE_PRESENT))
            return FALSE;
        *pa = (pte & 0xFFFFF000ULL) | (linear & 0xFFF);
        return TRUE;
    }
    if (hv_guest_long_mode()) {
        table = cr3 & PTE_FRAME;
        shift = cr4 & X86_CR4_LA57 ? 48 : 39;
    } else { /* PAE paging: four PDPTEs at CR3[31:5] */
        linear &= 0xFFFFFFFFULL;
        entry = ((volatile UINT64 *)(cr3 & 0xFFFFFFE0ULL))[(linear >> 30) & 3];
        if (!(entry & PTE_PRESENT))
            return FALSE;
        table = entry & PTE_FRAME;
        shift = 21;
    }
    for (;; shift -= 9) {
        entry = ((volatile UINT64 *)table)[(linear >> shift) & 511];
        if (!(entry & PTE_PRESENT))
            return FALSE;
        if (shift == 12 || ((entry & PTE_LARGE) && shift <= 30)) {
            UINT64 size = 1ULL << shift;
            *pa = (entry & PTE_FRAME & ~(size - 1)) | (linear & (size - 1));
            return TRUE;
        }
        table = entry & PTE_FRAME;
    }
}

/* n bytes at a guest-linear address, page by page (each page may lie
 * anywhere); FALSE, with nothing more copied, at the first page that is not
 * present. */
static BOOLEAN guest_copy(UINT64 linear, UINT8 *host, UINTN n, BOOLEAN to_guest)
{
    while (n) {
        UINT64 pa;
        UINTN chunk = HV_PAGE_SIZE - (linear & (HV_PAGE_SIZE - 1));
        if (chunk > n)
            chunk = n;
        if (!hv_guest_physical(linear, &pa))
            return FALSE;
        volatile UINT8 *guest = (volatile UINT8 *)pa;
        for (UINTN i = 0; i < chunk; i++) {
            if (to_guest)
                guest[i] = host[i];
            else
                host[i] = guest[i];
        }
        linear += chunk;
        host += chunk;
        n -= chunk;
    }
    return TRUE;
}

BOOLEAN hv_guest_read(UINT64 linear, void *buf, UINTN n)
{
    return guest_copy(linear, buf, n, FALSE);
}

BOOLEAN hv_guest_write(UINT64 linear, const void *buf, UINTN n)
{
    return guest_copy(linear, (UINT8 *)buf, n, TRUE);
}

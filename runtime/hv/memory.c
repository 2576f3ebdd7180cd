/*
 * Memory. Everything the hypervisor keeps after efi_main returns is
 * allocated as EfiRuntimeServicesData, so that neither the firmware nor a
 * later OS loader reuses it (UEFI 2.10, 7.2 "Memory Allocation Services").
 * Every allocation is recorded so that a failed start-up frees it all.
 */
#include "hv.h"

#define HV_MAX_ALLOCATIONS 128

static struct {
    EFI_PHYSICAL_ADDRESS base;
    UINTN pages;
} allocations[HV_MAX_ALLOCATIONS];
static UINTN allocation_count;

void hv_zero(void *p, UINTN n)
{
    volatile UINT8 *b = p;
    while (n--)
        *b++ = 0;
}

void hv_copy(void *dst, const void *src, UINTN n)
{
    UINT8 *d = dst;
    const UINT8 *s = src;
    while (n--)
        *d++ = *s++;
}

/* Zeroed, page-aligned, identity-mapped (UEFI runs with VA == PA). */
void *hv_alloc_pages(UINTN pages)
{
    EFI_PHYSICAL_ADDRESS base = 0;
    if (allocation_count == HV_MAX_ALLOCATIONS)
        return NULL;
    EFI_STATUS status =
        uefi_call_wrapper(BS->AllocatePages, 4, AllocateAnyPages, EfiRuntimeServicesData, pages, &base);
    if (EFI_ERROR(status))
        return NULL;
    allocations[allocation_count].base = base;
    allocations[allocation_count].pages = pages;
    allocation_count++;
    hv_zero((void *)base, pages * HV_PAGE_SIZE);
    return (void *)base;
}

UINTN hv_allocated_pages(void)
{
    UINTN pages = 0;
    for (UINTN i = 0; i < allocation_count; i++)
        pages += allocations[i].pages;
    return pages;
}

/* The resident copy of the image (EfiRuntimeServicesCode, main.c). */
static struct {
    UINT64 base;
    UINTN pages;
} image;

void hv_set_resident_image(UINT64 base, UINTN pages)
{
    image.base = base;
    image.pages = pages;
}

/*
 * The GET_RESIDENT_RANGES VMCALL (docs/vmcall.md): the physical memory the
 * hypervisor occupies, the image and every allocation, sorted by address and
 * merged where adjacent (AllocatePages hands out neighbouring pages, so a
 * handful of ranges cover it all). Computed on each call, into the caller's
 * stack: the records do not change once the hypervisor is resident.
 * FALSE when `index` is past the last range; *count is set either way.
 */
BOOLEAN hv_resident_range(UINTN index, UINT64 *base, UINT64 *bytes, UINTN *count)
{
    struct range {
        UINT64 start, end;
    } r[HV_MAX_ALLOCATIONS + 1];
    UINTN n = 0;
    if (image.pages)
        r[n++] = (struct range){ image.base, image.base + image.pages * HV_PAGE_SIZE };
    for (UINTN i = 0; i < allocation_count; i++)
        r[n++] =
            (struct range){ allocations[i].base, allocations[i].base + allocations[i].pages * HV_PAGE_SIZE };
    for (UINTN i = 1; i < n; i++) /* insertion sort: n <= 129 */
        for (UINTN j = i; j > 0 && r[j - 1].start > r[j].start; j--) {
            struct range swap = r[j];
            r[j] = r[j - 1];
            r[j - 1] = swap;
        }
    UINTN merged = 0;
    for (UINTN i = 0; i < n; i++) {
        if (merged && r[i].start <= r[merged - 1].end) {
            if (r[i].end > r[merged - 1].end)
                r[merged - 1].end = r[i].end;
        } else {
            r[merged++] = r[i];
        }
    }
    *count = merged;
    if (index >= merged)
        return FALSE;
    *base = r[index].start;
    *bytes = r[index].end - r[index].start;
    return TRUE;
}

void hv_free_all(void)
{
    while (allocation_count) {
        allocation_count--;
        uefi_call_wrapper(BS->FreePages, 2, allocations[allocation_count].base,
                          allocations[allocation_count].pages);
    }
}

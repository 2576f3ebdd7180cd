/*
 * Memory. Everything the hypervisor keeps after efi_main returns is
 * allocated as EfiRuntimeServicesData, so that neither the firmware nor a
 * later OS loader reuses it (UEFI 2.10, 7.2 "Memory Allocation Services").
 * Every allocation is recorded so that a failed start-up frees it all.
 */
#include "hv.h"

/* The shared tables, page-table chunks, one allocation for all CPUs
 * (host_env.c: hv_alloc_cpus), and the resident image copy. */
#define HV_MAX_RECORDS 64

/* Kept in address order, so that GET_RESIDENT_RANGES merges neighbours in
 * one pass without a copy (it runs on a 16 KiB host stack). */
static struct record {
    EFI_PHYSICAL_ADDRESS base;
    UINTN pages;
    BOOLEAN image; /* the image copy: main.c frees it, hv_free_all does not */
} records[HV_MAX_RECORDS];
static UINTN record_count;

static BOOLEAN add_record(EFI_PHYSICAL_ADDRESS base, UINTN pages, BOOLEAN image)
{
    if (record_count == HV_MAX_RECORDS)
        return FALSE;
    UINTN i = record_count++;
    for (; i > 0 && records[i - 1].base > base; i--)
        records[i] = records[i - 1];
    records[i] = (struct record){ base, pages, image };
    return TRUE;
}

/* REP STOSQ/MOVSQ for the 8-byte words, then the bytes left: no libc here,
 * and a C loop that gcc might turn into a memset call. Bochs counts a string
 * instruction's every element as one instruction, a byte loop four a byte
 * (start-up zeroes every page it allocates). */
void hv_zero(void *p, UINTN n)
{
    UINTN words = n / 8, bytes = n % 8;
    __asm__ volatile("rep stosq; mov %3, %%rcx; rep stosb"
                     : "+D"(p), "+c"(words)
                     : "a"(0), "r"(bytes)
                     : "memory");
}

void hv_copy(void *dst, const void *src, UINTN n)
{
    UINTN words = n / 8, bytes = n % 8;
    __asm__ volatile("rep movsq; mov %3, %%rcx; rep movsb"
                     : "+D"(dst), "+S"(src), "+c"(words)
                     : "r"(bytes)
                     : "memory");
}

/* The start of the lowest free memory from 1 MiB up with room for all of the
 * hypervisor (2 MiB), or 0. */
static EFI_PHYSICAL_ADDRESS low_free_memory(void)
{
    UINTN entries = 0, key, size;
    UINT32 version;
    EFI_MEMORY_DESCRIPTOR *map = LibMemoryMap(&entries, &key, &size, &version);
    EFI_PHYSICAL_ADDRESS low = 0;
    for (UINTN i = 0; map && i < entries; i++) {
        EFI_MEMORY_DESCRIPTOR *d = (EFI_MEMORY_DESCRIPTOR *)((UINT8 *)map + i * size);
        if (d->Type == EfiConventionalMemory && d->PhysicalStart >= 0x100000 && d->NumberOfPages >= 512 &&
            (!low || d->PhysicalStart < low))
            low = d->PhysicalStart;
    }
    if (map)
        FreePool(map);
    return low;
}

/*
 * Runtime memory of `type`, all of the hypervisor's in one range where it
 * can: the first allocation at the start of the lowest free memory from
 * 1 MiB up (right above the legacy hole at 640 KiB-1 MiB, when it is free),
 * each next right above the last. An OS's memory map then has one reserved
 * range more, not one per allocation, and one that extends the hole an OS
 * already reports (Linux prints every range of its map at boot, at about
 * 50,000 Bochs instructions a character on the serial console: five lines
 * more where the range lies amid free memory). Anywhere when that place is
 * taken.
 */
EFI_STATUS hv_allocate_runtime(EFI_MEMORY_TYPE type, UINTN pages, EFI_PHYSICAL_ADDRESS *base)
{
    static EFI_PHYSICAL_ADDRESS next; /* where the next one starts; 0: to be found, 1: no such place */
    if (!next)
        next = low_free_memory() ?: 1;
    if (next != 1) {
        EFI_PHYSICAL_ADDRESS at = next;
        if (!EFI_ERROR(uefi_call_wrapper(BS->AllocatePages, 4, AllocateAddress, type, pages, &at))) {
            *base = at;
            next = at + pages * HV_PAGE_SIZE;
            return EFI_SUCCESS;
        }
    }
    return uefi_call_wrapper(BS->AllocatePages, 4, AllocateAnyPages, type, pages, base);
}

/* Zeroed, page-aligned, identity-mapped (UEFI runs with VA == PA). */
void *hv_alloc_pages(UINTN pages)
{
    EFI_PHYSICAL_ADDRESS base = 0;
    if (record_count == HV_MAX_RECORDS)
        return NULL;
    EFI_STATUS status = hv_allocate_runtime(EfiRuntimeServicesData, pages, &base);
    if (EFI_ERROR(status))
        return NULL;
    add_record(base, pages, FALSE);
    hv_zero((void *)base, pages * HV_PAGE_SIZE);
    return (void *)base;
}

/* Page tables (EPT, the host's) come from chunks of TABLE_CHUNK pages: one
 * allocation record per chunk, not per table, however much of the physical
 * address space the tables cover. */
#define TABLE_CHUNK 16
static UINT8 *table_chunk;
static UINTN table_chunk_left;

UINT64 *hv_alloc_table(void)
{
    if (!table_chunk_left) {
        table_chunk = hv_alloc_pages(TABLE_CHUNK);
        if (!table_chunk)
            return NULL;
        table_chunk_left = TABLE_CHUNK;
    }
    UINT64 *table = (UINT64 *)table_chunk;
    table_chunk += HV_PAGE_SIZE;
    table_chunk_left--;
    return table;
}

UINTN hv_allocated_pages(void)
{
    UINTN pages = 0;
    for (UINTN i = 0; i < record_count; i++)
        if (!records[i].image)
            pages += records[i].pages;
    return pages;
}

/* The resident copy of the image (EfiRuntimeServicesCode, main.c). */
void hv_set_resident_image(UINT64 base, UINTN pages)
{
    add_record(base, pages, TRUE);
}

/*
 * The GET_RESIDENT_RANGES VMCALL (docs/vmcall.md): the physical memory the
 * hypervisor occupies, the image and every allocation, sorted by address and
 * merged where adjacent (AllocatePages hands out neighbouring pages, so a
 * handful of ranges cover it all). Computed on each call from the records,
 * which do not change once the hypervisor is resident.
 * FALSE when `index` is past the last range; *count is set either way.
 */
BOOLEAN hv_resident_range(UINTN index, UINT64 *base, UINT64 *bytes, UINTN *count)
{
    UINTN merged = 0;
    for (UINTN i = 0; i < record_count;) {
        UINT64 start = records[i].base, end = start + records[i].pages * HV_PAGE_SIZE;
        for (i++; i < record_count && records[i].base <= end; i++) {
            UINT64 next_end = records[i].base + records[i].pages * HV_PAGE_SIZE;
            if (next_end > end)
                end = next_end;
        }
        if (merged++ == index) {
            *base = start;
            *bytes = end - start;
        }
    }
    *count = merged;
    return index < merged;
}

void hv_free_all(void)
{
    table_chunk_left = 0;
    for (UINTN i = 0; i < record_count; i++)
        if (!records[i].image)
            uefi_call_wrapper(BS->FreePages, 2, records[i].base, records[i].pages);
    UINTN kept = 0;
    for (UINTN i = 0; i < record_count; i++)
        if (records[i].image)
            records[kept++] = records[i];
    record_count = kept;
}

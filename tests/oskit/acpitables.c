/* acpitables.efi: the ACPI tables an SMP operating system needs, for
 * firmware that has none. OVMF gets its ACPI tables from QEMU's fw_cfg;
 * under Bochs there is none, and Linux then sees one CPU. This program,
 * chained before the kernel, builds in ACPI reclaim memory:
 *   RSDP (revision 2) -> XSDT -> MADT: one Local APIC entry per CPU the
 *   firmware's MP services know (its APIC id), the I/O APIC of the PC at
 *   0xFEC00000, and the ISA IRQ 0 (the PIT) on GSI 2, as a PC has it
 *   (ACPI 6.5, 5.2.5 "Root System Description Pointer", 5.2.8 "Extended
 *   System Description Table", 5.2.12 "Multiple APIC Description Table");
 * installs the RSDP as the ACPI 2.0 configuration table, and starts the
 * image its load options name: "PATH OPTIONS..." (uefi-hv image --chain
 * acpitables.efi --cmdline "\EFI\...\LINUX.EFI console=ttyS0 ...").
 */
#include <efi.h>
#include <efilib.h>

#include "mp_services.h"

#define MAX_CPUS 256
#define IOAPIC_ADDRESS 0xFEC00000U
#define LAPIC_ADDRESS  0xFEE00000U

struct acpi_header {
    char signature[4];
    UINT32 length;
    UINT8 revision, checksum;
    char oem_id[6], oem_table_id[8];
    UINT32 oem_revision;
    char creator_id[4];
    UINT32 creator_revision;
} __attribute__((packed));

struct rsdp {
    char signature[8];
    UINT8 checksum;
    char oem_id[6];
    UINT8 revision;
    UINT32 rsdt_address;
    UINT32 length;
    UINT64 xsdt_address;
    UINT8 extended_checksum, reserved[3];
} __attribute__((packed));

struct madt_lapic { /* type 0 */
    UINT8 type, length, processor_uid, apic_id;
    UINT32 flags; /* bit 0: enabled */
} __attribute__((packed));

struct madt_ioapic { /* type 1 */
    UINT8 type, length, ioapic_id, reserved;
    UINT32 address, gsi_base;
} __attribute__((packed));

struct madt_override { /* type 2 */
    UINT8 type, length, bus, source;
    UINT32 gsi;
    UINT16 flags;
} __attribute__((packed));

struct tables {
    struct rsdp rsdp;
    struct {
        struct acpi_header header;
        UINT64 entries[1];
    } __attribute__((packed)) xsdt;
    struct {
        struct acpi_header header;
        UINT32 lapic_address, flags; /* flags bit 0: PC-AT-compatible 8259s */
        struct madt_lapic lapic[MAX_CPUS];
        struct madt_ioapic ioapic;
        struct madt_override irq0;
    } __attribute__((packed)) madt;
};

static UINT8 checksum(const void *p, UINTN n)
{
    UINT8 sum = 0;
    for (UINTN i = 0; i < n; i++)
        sum += ((const UINT8 *)p)[i];
    return (UINT8)-sum;
}

static void header(struct acpi_header *h, const char *signature, UINT32 length, UINT8 revision)
{
    CopyMem(h->signature, (VOID *)signature, 4);
    h->length = length;
    h->revision = revision;
    CopyMem(h->oem_id, "UEFIHV", 6);
    CopyMem(h->oem_table_id, "OSKIT   ", 8);
    h->oem_revision = 1;
    CopyMem(h->creator_id, "UHV ", 4);
    h->creator_revision = 1;
    h->checksum = checksum(h, length);
}

/* The MADT's Local APIC entries are packed before the I/O APIC's: the
 * structure is built with MAX_CPUS slots and the rest moved down. */
static EFI_STATUS build_tables(struct tables *t, UINTN *cpus)
{
    EFI_GUID mp_guid = MP_SERVICES_GUID;
    struct mp_services *mp;
    UINTN all = 1, enabled = 1;
    if (EFI_ERROR(uefi_call_wrapper(BS->LocateProtocol, 3, &mp_guid, NULL, (VOID **)&mp)))
        return EFI_NOT_FOUND;
    uefi_call_wrapper(mp->get_number_of_processors, 3, mp, &all, &enabled);
    if (all > MAX_CPUS)
        return EFI_BUFFER_TOO_SMALL;
    UINT8 *entry = (UINT8 *)t->madt.lapic;
    for (UINTN n = 0; n < all; n++) {
        struct processor_information info;
        if (EFI_ERROR(uefi_call_wrapper(mp->get_processor_info, 3, mp, n, &info)) || info.processor_id > 254)
            return EFI_UNSUPPORTED; /* x2APIC ids need x2APIC entries (type 9) */
        struct madt_lapic lapic = { 0, sizeof lapic, (UINT8)n, (UINT8)info.processor_id,
                                    (info.status_flag & PROCESSOR_ENABLED_BIT) ? 1U : 0U };
        CopyMem(entry, &lapic, sizeof lapic);
        entry += sizeof lapic;
    }
    struct madt_ioapic ioapic = { 1, sizeof ioapic, (UINT8)all, 0, IOAPIC_ADDRESS, 0 };
    struct madt_override irq0 = { 2, sizeof irq0, 0, 0, 2, 0 }; /* ISA, conforming polarity and trigger */
    CopyMem(entry, &ioapic, sizeof ioapic);
    entry += sizeof ioapic;
    CopyMem(entry, &irq0, sizeof irq0);
    entry += sizeof irq0;
    t->madt.lapic_address = LAPIC_ADDRESS;
    t->madt.flags = 1;
    header(&t->madt.header, "APIC", (UINT32)(entry - (UINT8 *)&t->madt), 4);

    t->xsdt.entries[0] = (UINT64)&t->madt;
    header(&t->xsdt.header, "XSDT", sizeof t->xsdt, 1);

    CopyMem(t->rsdp.signature, "RSD PTR ", 8);
    CopyMem(t->rsdp.oem_id, "UEFIHV", 6);
    t->rsdp.revision = 2;
    t->rsdp.length = sizeof t->rsdp;
    t->rsdp.xsdt_address = (UINT64)&t->xsdt;
    t->rsdp.checksum = checksum(&t->rsdp, 20);
    t->rsdp.extended_checksum = checksum(&t->rsdp, sizeof t->rsdp);
    *cpus = all;
    return EFI_SUCCESS;
}

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)
{
    EFI_GUID acpi20 = ACPI_20_TABLE_GUID;
    EFI_LOADED_IMAGE *self, *next;
    EFI_HANDLE next_handle;
    EFI_PHYSICAL_ADDRESS at = 0;
    UINTN cpus = 0;
    static CHAR16 path[256];

    InitializeLib(image, systab);
    EFI_STATUS status = uefi_call_wrapper(BS->HandleProtocol, 3, image, &LoadedImageProtocol, (VOID **)&self);
    if (EFI_ERROR(status))
        return status;
    UINTN pages = (sizeof(struct tables) + 4095) / 4096;
    status = uefi_call_wrapper(BS->AllocatePages, 4, AllocateAnyPages, EfiACPIReclaimMemory, pages, &at);
    if (!EFI_ERROR(status)) {
        ZeroMem((VOID *)at, pages * 4096);
        status = build_tables((struct tables *)at, &cpus);
    }
    if (!EFI_ERROR(status))
        status = uefi_call_wrapper(BS->InstallConfigurationTable, 2, &acpi20, (VOID *)at);
    if (EFI_ERROR(status)) {
        Print(L"acpitables: FAIL: no tables installed: %r\n", status);
        return status;
    }
    Print(L"acpitables: RSDP at 0x%lx: XSDT, MADT with %d CPU(s), I/O APIC at 0x%x\n", at, cpus,
          IOAPIC_ADDRESS);

    /* "PATH OPTIONS...": the image to start and its own load options. */
    CHAR16 *options = self->LoadOptions;
    UINTN length = self->LoadOptionsSize / sizeof(CHAR16), n = 0, i = 0;
    while (i < length && options[i] == L' ')
        i++;
    while (i < length && options[i] && options[i] != L' ' && n + 1 < 256)
        path[n++] = options[i++];
    path[n] = 0;
    while (i < length && options[i] == L' ')
        i++;
    if (!n) {
        Print(L"acpitables: FAIL: no image to start in the load options\n");
        return EFI_INVALID_PARAMETER;
    }
    Print(L"acpitables: starting %s\n", path);
    status = uefi_call_wrapper(BS->LoadImage, 6, FALSE, image, FileDevicePath(self->DeviceHandle, path), NULL, 0,
                               &next_handle);
    if (EFI_ERROR(status)) {
        Print(L"acpitables: FAIL: LoadImage %s: %r\n", path, status);
        return status;
    }
    if (!EFI_ERROR(uefi_call_wrapper(BS->HandleProtocol, 3, next_handle, &LoadedImageProtocol, (VOID **)&next))) {
        next->LoadOptions = options + i;
        next->LoadOptionsSize = (UINT32)((length - i) * sizeof(CHAR16));
    }
    return uefi_call_wrapper(BS->StartImage, 3, next_handle, NULL, NULL);
}

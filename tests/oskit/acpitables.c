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
 * acpitables.efi --cmdline "\EFI\...\LINUX.EFI console=ttyS0 ..."). Booted
 * by the boot manager (as BOOTX64.EFI: load options that are no path) it
 * starts \EFI\UEFI-HV\HV.EFI, the hypervisor, which chains the rest.
 *
 * Built with -DACPITABLES_FADT, the XSDT also lists a FADT (5.2.9 "Fixed
 * ACPI Description Table") whose PM1a event, control and timer blocks are
 * the PIIX4 PM block's (its PMBA, PCI 0:1.3 register 0x40, as the firmware
 * set it), and a DSDT whose \_S5 package (7.4.2 "\_Sx (System States)")
 * holds ACPITABLES_SLP_TYP (default 0, soft-off on the PIIX4; Bochs's
 * model takes 1 for suspend to RAM). Installed before the hypervisor, it
 * is what uefi-hv's power-off reads (runtime/hv/power.c).
 */
#include <efi.h>
#include <efilib.h>

#include "mp_services.h"

#define MAX_CPUS 256
#define IOAPIC_ADDRESS 0xFEC00000U
#define LAPIC_ADDRESS  0xFEE00000U
#define DEFAULT_NEXT   L"\\EFI\\UEFI-HV\\HV.EFI"

#ifndef ACPITABLES_SLP_TYP
#define ACPITABLES_SLP_TYP 0
#endif
#ifdef ACPITABLES_FADT
#define WITH_FADT L", FADT, DSDT"
#else
#define WITH_FADT L""
#endif

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

/* Generic Address Structure (5.2.3.2): system I/O space (1). */
struct gas {
    UINT8 space, bit_width, bit_offset, access_size;
    UINT64 address;
} __attribute__((packed));

/* The FADT of ACPI 6.5 (revision 6, 276 bytes), 5.2.9. */
struct fadt {
    struct acpi_header header;
    UINT32 firmware_ctrl, dsdt;
    UINT8 reserved0, preferred_pm_profile;
    UINT16 sci_int;
    UINT32 smi_cmd;
    UINT8 acpi_enable, acpi_disable, s4bios_req, pstate_cnt;
    UINT32 pm1a_evt_blk, pm1b_evt_blk, pm1a_cnt_blk, pm1b_cnt_blk, pm2_cnt_blk, pm_tmr_blk, gpe0_blk,
        gpe1_blk;
    UINT8 pm1_evt_len, pm1_cnt_len, pm2_cnt_len, pm_tmr_len, gpe0_blk_len, gpe1_blk_len, gpe1_base, cst_cnt;
    UINT16 p_lvl2_lat, p_lvl3_lat, flush_size, flush_stride;
    UINT8 duty_offset, duty_width, day_alrm, mon_alrm, century;
    UINT16 iapc_boot_arch;
    UINT8 reserved1;
    UINT32 flags;
    struct gas reset_reg;
    UINT8 reset_value;
    UINT16 arm_boot_arch;
    UINT8 minor_version;
    UINT64 x_firmware_ctrl, x_dsdt;
    struct gas x_pm1a_evt_blk, x_pm1b_evt_blk, x_pm1a_cnt_blk, x_pm1b_cnt_blk, x_pm2_cnt_blk, x_pm_tmr_blk,
        x_gpe0_blk, x_gpe1_blk, sleep_control_reg, sleep_status_reg;
    UINT64 hypervisor_vendor;
} __attribute__((packed));

/* The DSDT's AML (ACPI 6.5, 20 "ACPI Machine Language Specification"):
 *   Name (DESC, "_S5_ is soft-off")           a string that is no \_S5
 *   Name (_S1_, Package () { One, One })      another sleep state first
 *   Name (\_S5_, Package () { T, T, Zero, Zero }), T as BytePrefix T
 * NameOp 0x08, StringPrefix 0x0D, PackageOp 0x12 PkgLength NumElements. */
static const UINT8 dsdt_aml[] = {
    0x08, 'D', 'E', 'S', 'C', 0x0D, '_', 'S', '5', '_', ' ', 'i', 's', ' ', 's', 'o', 'f', 't', '-', 'o', 'f',
    'f', 0x00, 0x08, '_', 'S', '1', '_', 0x12, 0x04, 0x02, 0x01, 0x01, 0x08, '\\', '_', 'S', '5', '_', 0x12,
    0x08, 0x04, 0x0A, ACPITABLES_SLP_TYP, 0x0A, ACPITABLES_SLP_TYP, 0x00, 0x00,
};

struct tables {
    struct rsdp rsdp;
    struct {
        struct acpi_header header;
        UINT64 entries[2];
    } __attribute__((packed)) xsdt;
    struct fadt fadt;
    struct {
        struct acpi_header header;
        UINT8 aml[sizeof dsdt_aml];
    } __attribute__((packed)) dsdt;
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

#ifdef ACPITABLES_FADT
static UINT32 pci_read32(UINT32 dev, UINT32 fn, UINT32 reg)
{
    UINT32 value;
    __asm__ volatile("outl %0, %1" : : "a"(0x80000000U | dev << 11 | fn << 8 | reg), "Nd"((UINT16)0xCF8));
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"((UINT16)0xCFC));
    return value;
}

/* The FADT and DSDT: the PIIX4 PM block (PCI 0:1.3, I/O enabled by bit 0
 * of register 0x80, PMBA at 0x40) holds PM1 status/enable at +0, PM1
 * control at +4 and the PM timer at +8 (the 82371AB PIIX4 datasheet's
 * power-management I/O registers; Bochs's iodev/acpi.cc models them). */
static EFI_STATUS build_fadt(struct tables *t)
{
    if (pci_read32(1, 3, 0) != 0x71138086U || !(pci_read32(1, 3, 0x80) & 1))
        return EFI_UNSUPPORTED;
    UINT32 pm = pci_read32(1, 3, 0x40) & 0xFFC0;
    struct fadt *f = &t->fadt;
    struct gas evt = { 1, 32, 0, 2, pm }, cnt = { 1, 16, 0, 2, pm + 4 }, tmr = { 1, 32, 0, 3, pm + 8 };
    f->dsdt = (UINT64)&t->dsdt >> 32 ? 0 : (UINT32)(UINT64)&t->dsdt; /* X_DSDT supersedes it */
    f->x_dsdt = (UINT64)&t->dsdt;
    f->sci_int = 9;
    f->pm1a_evt_blk = pm;
    f->pm1a_cnt_blk = pm + 4;
    f->pm_tmr_blk = pm + 8;
    f->pm1_evt_len = 4;
    f->pm1_cnt_len = 2;
    f->pm_tmr_len = 4;
    f->x_pm1a_evt_blk = evt;
    f->x_pm1a_cnt_blk = cnt;
    f->x_pm_tmr_blk = tmr;
    f->minor_version = 5;
    CopyMem(t->dsdt.aml, (VOID *)dsdt_aml, sizeof dsdt_aml);
    header(&t->dsdt.header, "DSDT", sizeof t->dsdt, 2);
    header(&f->header, "FACP", sizeof *f, 6);
    Print(L"acpitables: FADT: PM1a_CNT_BLK 0x%x (PIIX4 PM); DSDT: \\_S5 SLP_TYPa %d\n", f->pm1a_cnt_blk,
          ACPITABLES_SLP_TYP);
    return EFI_SUCCESS;
}
#endif

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

    UINTN entries = 0;
    t->xsdt.entries[entries++] = (UINT64)&t->madt;
#ifdef ACPITABLES_FADT
    EFI_STATUS status = build_fadt(t);
    if (EFI_ERROR(status))
        return status;
    t->xsdt.entries[entries++] = (UINT64)&t->fadt;
#endif
    header(&t->xsdt.header, "XSDT", (UINT32)(sizeof t->xsdt.header + entries * sizeof(UINT64)), 1);

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
    Print(L"acpitables: RSDP at 0x%lx: XSDT, MADT with %d CPU(s), I/O APIC at 0x%x%s\n", at, cpus,
          IOAPIC_ADDRESS, WITH_FADT);

    /* "PATH OPTIONS...": the image to start and its own load options; load
     * options that are no path (the boot manager's own, or none): the
     * hypervisor at DEFAULT_NEXT, without options. */
    CHAR16 *options = self->LoadOptions;
    UINTN length = self->LoadOptionsSize / sizeof(CHAR16), n = 0, i = 0;
    while (i < length && options[i] == L' ')
        i++;
    if (i >= length || options[i] != L'\\') {
        StrCpy(path, DEFAULT_NEXT);
        n = StrLen(path);
        i = length;
    }
    while (i < length && options[i] && options[i] != L' ' && n + 1 < 256)
        path[n++] = options[i++];
    path[n] = 0;
    while (i < length && options[i] == L' ')
        i++;
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

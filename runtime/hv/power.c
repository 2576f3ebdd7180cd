/*
 * Stopping the machine from VMX root, without UEFI: power-off (ACPI S5) and
 * reset.
 *
 * Where power-off goes is found once at start-up, while the firmware's
 * configuration table is still there (hv_find_power_off, from efi_main):
 * the ACPI tables say it, as they say it to the OS. The RSDP (ACPI 6.5,
 * 5.2.5 "Root System Description Pointer") leads to the XSDT (5.2.8) or, for
 * ACPI 1.0, the RSDT (5.2.7); its FADT (5.2.9 "Fixed ACPI Description
 * Table") names the PM1a and PM1b control registers and the DSDT, whose
 * \_S5 package (7.4.2 "\_Sx (System States)") holds the SLP_TYPa and
 * SLP_TYPb values of soft-off. Power-off then writes SLP_TYPx with SLP_EN
 * to PM1x_CNT (4.8.3.2.1 "PM1 Control Registers"). The values found are
 * kept in this image (resident: efi_main runs from its runtime-code copy),
 * so hv_power_off works after ExitBootServices and under the OS.
 *
 * Without a usable FADT (OVMF under Bochs has no ACPI tables at all)
 * hv_power_off probes PCI for the PM block of a PIIX4 (i440fx, Bochs and
 * QEMU pc) or an ICH9 (QEMU q35) as before, and writes SLP_TYP 0, which is
 * S5 on both.
 */
#include "hv.h"
#include "cpu.h"

/* What power-off writes: found by hv_find_power_off, in the resident image. */
static struct {
    BOOLEAN found;             /* a FADT with a PM1a control block and a \_S5 */
    UINT16 pm1a_cnt, pm1b_cnt; /* I/O ports; pm1b_cnt 0: none */
    UINT8 slp_typa, slp_typb;  /* 3 bits each */
} acpi_s5;

/* PM1 control register bits (ACPI 6.5, 4.8.3.2.1, Table 4.13 "PM1 Control
 * Registers Fixed Hardware Feature Control Bits"). */
#define PM1_SLP_TYP_SHIFT 10
#define PM1_SLP_TYP_MASK  (7U << PM1_SLP_TYP_SHIFT)
#define PM1_SLP_EN        (1U << 13)

/* Generic Address Structure (ACPI 6.5, 5.2.3.2): Address Space ID 1. */
#define GAS_SYSTEM_IO 1

#define ACPI_HEADER_SIZE 36 /* 5.2.6 "System Description Table Header" */
#define ACPI_MAX_TABLE   (16U << 20)
#define ACPI_MAX_ENTRIES 256 /* XSDT or RSDT entries looked at */

/* FADT offsets (ACPI 6.5, 5.2.9 "Fixed ACPI Description Table"). */
#define FADT_DSDT           40
#define FADT_PM1A_CNT_BLK   64
#define FADT_PM1B_CNT_BLK   68
#define FADT_FLAGS          112
#define FADT_X_DSDT         140
#define FADT_X_PM1A_CNT_BLK 172
#define FADT_X_PM1B_CNT_BLK 184
#define FADT_HW_REDUCED     (1U << 20) /* Flags: HW_REDUCED_ACPI */

static UINT32 rd32(const UINT8 *p)
{
    return (UINT32)p[0] | (UINT32)p[1] << 8 | (UINT32)p[2] << 16 | (UINT32)p[3] << 24;
}

static UINT64 rd64(const UINT8 *p)
{
    return rd32(p) | (UINT64)rd32(p + 4) << 32;
}

static BOOLEAN same(const void *a, const char *b, UINTN n)
{
    for (UINTN i = 0; i < n; i++)
        if (((const UINT8 *)a)[i] != (UINT8)b[i])
            return FALSE;
    return TRUE;
}

static UINT8 sum(const UINT8 *p, UINTN n)
{
    UINT8 s = 0;
    for (UINTN i = 0; i < n; i++)
        s += p[i];
    return s;
}

/* A system description table at `address` with `signature` (NULL: any) and
 * a sane length; NULL, with a log line, if not. A checksum that does not add
 * up to zero (5.2.6) is reported and the table used, as Linux does: firmware
 * ships such tables, and the fields read here are checked on their own. */
static const UINT8 *acpi_table(UINT64 address, const char *signature)
{
    const UINT8 *t = (const UINT8 *)address;
    if (!address)
        return NULL;
    if (signature && !same(t, signature, 4)) {
        hv_say("uefi-hv: ACPI: the table at 0x%lx is not a %s (signature %c%c%c%c); skipped\n", address,
               signature, t[0], t[1], t[2], t[3]);
        return NULL;
    }
    UINT32 length = rd32(t + 4);
    if (length < ACPI_HEADER_SIZE || length > ACPI_MAX_TABLE) {
        hv_say("uefi-hv: ACPI: %c%c%c%c at 0x%lx has a bad length %u; skipped\n", t[0], t[1], t[2], t[3],
               address, length);
        return NULL;
    }
    if (sum(t, length)) {
        hv_say("uefi-hv: ACPI: %c%c%c%c at 0x%lx has a bad checksum; used all the same\n", t[0], t[1], t[2],
               t[3], address);
    }
    return t;
}

/* The RSDP the firmware's configuration table points to (UEFI 2.10, 4.6
 * "EFI Configuration Table"): the ACPI 2.0 one, else ACPI 1.0's; checked as
 * 5.2.5.3 says: the first 20 bytes sum to zero, and from revision 2 on all
 * of Length too. */
static const UINT8 *find_rsdp(void)
{
    static const EFI_GUID guids[2] = { ACPI_20_TABLE_GUID, ACPI_TABLE_GUID };
    for (UINTN g = 0; g < 2; g++) {
        for (UINTN i = 0; i < ST->NumberOfTableEntries; i++) {
            const EFI_CONFIGURATION_TABLE *entry = &ST->ConfigurationTable[i];
            if (!same(&entry->VendorGuid, (const char *)&guids[g], sizeof(EFI_GUID)))
                continue;
            const UINT8 *rsdp = entry->VendorTable;
            if (!rsdp || !same(rsdp, "RSD PTR ", 8) || sum(rsdp, 20)) {
                hv_say("uefi-hv: ACPI: the %s RSDP at 0x%lx has a bad signature or checksum; skipped\n",
                       g ? "ACPI 1.0" : "ACPI 2.0", (UINT64)rsdp);
                continue;
            }
            if (rsdp[15] >= 2 && (rd32(rsdp + 20) < 36 || sum(rsdp, rd32(rsdp + 20)))) {
                hv_say("uefi-hv: ACPI: the RSDP at 0x%lx has a bad extended checksum; skipped\n",
                       (UINT64)rsdp);
                continue;
            }
            return rsdp;
        }
    }
    return NULL;
}

/* The tables the root table lists (5.2.8 XSDT: 64-bit addresses from byte
 * 36; 5.2.7 RSDT: 32-bit): the first with `signature` from `*next` on. */
static const UINT8 *find_listed(const UINT8 *root, const char *signature, UINT32 *next)
{
    BOOLEAN xsdt = same(root, "XSDT", 4);
    UINT32 size = xsdt ? 8 : 4, count = (rd32(root + 4) - ACPI_HEADER_SIZE) / size;
    while (*next < count && *next < ACPI_MAX_ENTRIES) {
        const UINT8 *at = root + ACPI_HEADER_SIZE + (*next)++ * size;
        UINT64 address = xsdt ? rd64(at) : rd32(at);
        const UINT8 *t =
            address && same((const UINT8 *)address, signature, 4) ? acpi_table(address, signature) : NULL;
        if (t)
            return t;
    }
    return NULL;
}

/* One AML data object (ACPI 6.5, 20.2.3 "Data Objects Encoding"): ZeroOp,
 * OneOp, OnesOp, or an integer after BytePrefix, WordPrefix, DWordPrefix or
 * QWordPrefix. Returns its length in bytes, 0 for anything else. */
static UINTN aml_integer(const UINT8 *p, const UINT8 *end, UINT64 *value)
{
    static const UINT8 sizes[] = { [0x0A] = 1, [0x0B] = 2, [0x0C] = 4, [0x0E] = 8 };
    if (p >= end)
        return 0;
    if (*p == 0x00 || *p == 0x01) { /* ZeroOp, OneOp */
        *value = *p;
        return 1;
    }
    if (*p == 0xFF) { /* OnesOp */
        *value = ~0ULL;
        return 1;
    }
    UINTN n = *p < sizeof sizes ? sizes[*p] : 0;
    if (!n || p + 1 + n > end)
        return 0;
    *value = 0;
    for (UINTN i = n; i; i--)
        *value = *value << 8 | p[i];
    return 1 + n;
}

/* Finds `Name (_S5, Package () { SLP_TYPa, SLP_TYPb, ... })` in the AML of
 * a DSDT or SSDT (20.2.5.1 "Namespace Modifier Objects Encoding": NameOp
 * 0x08 NameString, here "_S5_" or "\_S5_"; 20.2.5.4 "Expression Opcodes
 * Encoding": PackageOp 0x12 PkgLength NumElements PackageElementList;
 * 20.2.4 "Package Length Encoding"). An \_S5 that is a Method cannot be
 * evaluated here; such a table has no \_S5 as far as this goes. */
static BOOLEAN find_s5(const UINT8 *table, UINT8 *typa, UINT8 *typb)
{
    const UINT8 *end = table + rd32(table + 4);
    for (const UINT8 *p = table + ACPI_HEADER_SIZE; p + 4 < end; p++) {
        if (!same(p, "_S5_", 4))
            continue;
        BOOLEAN named = p[-1] == 0x08 || (p[-1] == '\\' && p[-2] == 0x08);
        const UINT8 *q = p + 4;
        if (!named || q + 2 >= end || q[0] != 0x12)
            continue;
        q++;
        q += 1 + (q[0] >> 6);   /* PkgLength: bits 7:6 of the lead byte count the bytes after it */
        if (q >= end || *q < 2) /* NumElements */
            continue;
        q++;
        UINT64 a, b;
        UINTN n = aml_integer(q, end, &a);
        UINTN m = n ? aml_integer(q + n, end, &b) : 0;
        if (!m || a > 7 || b > 7) {
            hv_say("uefi-hv: ACPI: the \\_S5 package in %c%c%c%c does not start with two 3-bit integers; "
                   "skipped\n",
                   table[0], table[1], table[2], table[3]);
            continue;
        }
        *typa = (UINT8)a;
        *typb = (UINT8)b;
        return TRUE;
    }
    return FALSE;
}

/* A PM1 control block of the FADT: the X_ Generic Address Structure at
 * `gas` when the FADT is long enough to have it, its address is not zero
 * and it is in system I/O space, else the 32-bit port at `legacy` (5.2.9:
 * X_PM1a_CNT_BLK supersedes PM1a_CNT_BLK). 0: none. */
static UINT16 pm1_control_port(const UINT8 *fadt, const char *name, UINT32 legacy, UINT32 gas)
{
    UINT32 length = rd32(fadt + 4);
    if (length >= gas + 12 && rd64(fadt + gas + 4)) {
        UINT64 address = rd64(fadt + gas + 4);
        if (fadt[gas] == GAS_SYSTEM_IO && address <= 0xFFFF)
            return (UINT16)address;
        hv_say("uefi-hv: ACPI: the FADT's X_%s_CNT_BLK is not a system I/O port (space %u, address 0x%lx); "
               "using %s_CNT_BLK\n",
               name, fadt[gas], address, name);
    }
    UINT32 port = rd32(fadt + legacy);
    return port <= 0xFFFF ? (UINT16)port : 0;
}

/* The FADT's PM1 control ports and the \_S5 values, from the DSDT or an
 * SSDT. FALSE, having said why, when there is no usable description. */
static BOOLEAN find_acpi_s5(const char **where)
{
    const UINT8 *rsdp = find_rsdp();
    if (!rsdp) {
        *where = "no ACPI tables";
        return FALSE;
    }
    const UINT8 *root = NULL;
    if (rsdp[15] >= 2 && rd64(rsdp + 24))
        root = acpi_table(rd64(rsdp + 24), "XSDT");
    if (!root)
        root = acpi_table(rd32(rsdp + 16), "RSDT");
    UINT32 next = 0;
    const UINT8 *fadt = root ? find_listed(root, "FACP", &next) : NULL;
    if (!fadt) {
        *where = "no ACPI FADT";
        return FALSE;
    }
    if (rd32(fadt + 4) < FADT_FLAGS + 4) {
        hv_say("uefi-hv: ACPI: the FADT is too short (%u bytes)\n", rd32(fadt + 4));
        *where = "no usable ACPI FADT";
        return FALSE;
    }
    if (rd32(fadt + FADT_FLAGS) & FADT_HW_REDUCED) {
        /* Sleep then goes through SLEEP_CONTROL_REG (4.8.3.7), not done here. */
        *where = "hardware-reduced ACPI: no PM1 control block";
        return FALSE;
    }
    acpi_s5.pm1a_cnt = pm1_control_port(fadt, "PM1a", FADT_PM1A_CNT_BLK, FADT_X_PM1A_CNT_BLK);
    acpi_s5.pm1b_cnt = pm1_control_port(fadt, "PM1b", FADT_PM1B_CNT_BLK, FADT_X_PM1B_CNT_BLK);
    if (!acpi_s5.pm1a_cnt) {
        *where = "the ACPI FADT has no PM1a control block in I/O space";
        return FALSE;
    }
    /* X_DSDT, when set, supersedes DSDT (5.2.9). */
    UINT64 dsdt_address = rd32(fadt + 4) >= FADT_X_DSDT + 8 ? rd64(fadt + FADT_X_DSDT) : 0;
    const UINT8 *dsdt = acpi_table(dsdt_address ? dsdt_address : rd32(fadt + FADT_DSDT), "DSDT");
    if (dsdt && find_s5(dsdt, &acpi_s5.slp_typa, &acpi_s5.slp_typb)) {
        *where = "\\_S5 in the DSDT";
        return TRUE;
    }
    next = 0;
    for (const UINT8 *ssdt; (ssdt = find_listed(root, "SSDT", &next));)
        if (find_s5(ssdt, &acpi_s5.slp_typa, &acpi_s5.slp_typb)) {
            *where = "\\_S5 in an SSDT";
            return TRUE;
        }
    *where = "no \\_S5 package in the ACPI DSDT or SSDTs";
    return FALSE;
}

/* PCI configuration space, mechanism #1 (ports 0xCF8/0xCFC). */
static UINT32 pci_read32(UINT32 bus, UINT32 dev, UINT32 fn, UINT32 reg)
{
    outl(0xCF8, 0x80000000U | bus << 16 | dev << 11 | fn << 8 | (reg & 0xFC));
    return inl(0xCFC);
}

/* Without ACPI: the PM1a control register of the chipset's power-management
 * block, PIIX4 (0:1.3, PMBA at 0x40, enabled by bit 0 of 0x80) or ICH9's LPC
 * bridge (0:1f.0, ACPI base at 0x40, enabled by bit 7 of 0x44); 0: neither. */
static UINT16 chipset_pm1a_cnt(const char **chipset)
{
    UINT32 id = pci_read32(0, 1, 3, 0);
    if (id == 0x71138086U && (pci_read32(0, 1, 3, 0x80) & 1)) {
        *chipset = "PIIX4 PM";
        return (UINT16)((pci_read32(0, 1, 3, 0x40) & 0xFFC0) + 4);
    }
    id = pci_read32(0, 31, 0, 0);
    if ((id & 0xFFFF) == 0x8086 && (id >> 16) == 0x2918 && (pci_read32(0, 31, 0, 0x44) & 0x80)) {
        *chipset = "ICH9 LPC";
        return (UINT16)((pci_read32(0, 31, 0, 0x40) & 0xFF80) + 4);
    }
    *chipset = NULL;
    return 0;
}

/* Start-up, with boot services (efi_main): where power-off will go, in one line. */
void hv_find_power_off(void)
{
    const char *where, *chipset;
    acpi_s5.found = find_acpi_s5(&where);
    if (acpi_s5.found) {
        char pm1b[64] = "";
        if (acpi_s5.pm1b_cnt)
            hv_snprintf(pm1b, sizeof pm1b, ", PM1b_CNT I/O 0x%x, SLP_TYPb %u", acpi_s5.pm1b_cnt,
                        acpi_s5.slp_typb);
        hv_say("uefi-hv: power-off through ACPI FADT: PM1a_CNT I/O 0x%x, SLP_TYPa %u%s (%s)\n",
               acpi_s5.pm1a_cnt, acpi_s5.slp_typa, pm1b, where);
        return;
    }
    UINT16 port = chipset_pm1a_cnt(&chipset);
    if (port)
        hv_say("uefi-hv: power-off through %s, PM1a_CNT I/O 0x%x, SLP_TYP 0 (%s)\n", chipset, port, where);
    else
        hv_say("uefi-hv: power-off: %s and no PIIX4 or ICH9 PM block; a fatal stop halts the CPU instead\n",
               where);
}

/* One PM1 control register: SLP_TYP first, then SLP_TYP with SLP_EN, the
 * other bits (SCI_EN) kept, as ACPICA's acpi_hw_legacy_sleep does. */
static void pm1_sleep(UINT16 port, UINT8 slp_typ, BOOLEAN enable)
{
    UINT16 value =
        (UINT16)((inw(port) & ~(PM1_SLP_TYP_MASK | PM1_SLP_EN)) | (UINT32)slp_typ << PM1_SLP_TYP_SHIFT);
    outw(port, (UINT16)(enable ? value | PM1_SLP_EN : value));
}

/* ACPI S5 (soft off) from VMX root: the FADT's registers and \_S5 values;
 * without them the chipset's PM block, probed now. If there is neither,
 * stop every instruction here. */
void hv_power_off(void)
{
    hv_log_fatal("uefi-hv: powering off\n");
    if (acpi_s5.found) {
        pm1_sleep(acpi_s5.pm1a_cnt, acpi_s5.slp_typa, FALSE);
        if (acpi_s5.pm1b_cnt)
            pm1_sleep(acpi_s5.pm1b_cnt, acpi_s5.slp_typb, FALSE);
        pm1_sleep(acpi_s5.pm1a_cnt, acpi_s5.slp_typa, TRUE);
        if (acpi_s5.pm1b_cnt)
            pm1_sleep(acpi_s5.pm1b_cnt, acpi_s5.slp_typb, TRUE);
    } else {
        const char *chipset;
        UINT16 port = chipset_pm1a_cnt(&chipset);
        if (port)
            outw(port, PM1_SLP_EN); /* SLP_TYP 0: S5 on PIIX4 and ICH9 */
    }
    halt_forever();
}

/* Reset from VMX root: the reset control register of the PCI-ISA bridge
 * (0xCF9: PIIX3/PIIX4, ICH and later PCHs; 0x06 = hard reset after 0x02),
 * then the keyboard controller's pulse of the reset line, as Linux's
 * reboot=pci and reboot=kbd do. */
void hv_reset(void)
{
    hv_log_fatal("uefi-hv: resetting the machine\n");
    outb(0xCF9, 0x02);
    outb(0xCF9, 0x06);
    for (UINT32 i = 0; i < 100000 && (inb(0x64) & 2); i++) /* input buffer full */
        cpu_pause();
    outb(0x64, 0xFE);
    halt_forever();
}

/*
 * VMRUN's consistency checks (AMD APM vol. 2, 15.5.1 "Basic Operation",
 * "Canonicalization and Consistency Checks") on the VMCB a CPU is about to
 * run: VMRUN exits with VMEXIT_INVALID when any fails, which says nothing of
 * which. The checks are the catalogue's vmrun_checks (dsl/vmcb.hv), as data
 * (svm_rules.c, generated); each is decided here by its kind, in catalogue
 * order, and the first that fails names itself, its APM section and the
 * values it saw.
 */
#include "hv.h"
#include "cpu.h"

#if HV_SVM

enum { EAX, EBX, ECX, EDX };

/* CPUID.leaf(subleaf 0):reg[bit]; 0 for a leaf beyond the CPU's maximum. */
static BOOLEAN cpuid_bit(UINT32 leaf, UINT32 reg, UINT32 bit)
{
    UINT32 r[4];
    cpuid(leaf & 0x80000000U, 0, r);
    if (leaf > r[EAX])
        return FALSE;
    cpuid(leaf, 0, r);
    return (r[reg] >> bit) & 1;
}

/* A control-register bit that exists only with a CPUID feature and is MBZ
 * without it (as KVM's __cr4_reserved_bits and efer_reserved_bits); or, with
 * mbz_with, one that is MBZ where CPUID says so. */
struct feature_bit {
    UINT8 bit;
    UINT32 leaf;
    UINT8 reg, cpuid_bit;
    BOOLEAN mbz_with;
};

/* APM vol. 2 3.1.3 "CR4 Register" */
static const struct feature_bit cr4_features[] = {
    { 11, 7, ECX, 2, FALSE },  /* UMIP */
    { 12, 7, ECX, 16, FALSE }, /* LA57 */
    { 13, 1, ECX, 5, FALSE },  /* VMXE: never on AMD */
    { 14, 1, ECX, 6, FALSE },  /* SMXE: never on AMD */
    { 16, 7, EBX, 0, FALSE },  /* FSGSBASE */
    { 17, 1, ECX, 17, FALSE }, /* PCIDE */
    { 18, 1, ECX, 26, FALSE }, /* OSXSAVE: XSAVE */
    { 20, 7, EBX, 7, FALSE },  /* SMEP */
    { 21, 7, EBX, 20, FALSE }, /* SMAP */
    { 22, 7, ECX, 3, FALSE },  /* PKE: PKU */
    { 23, 7, ECX, 7, FALSE },  /* CET: shadow stacks */
};

/* APM vol. 2 3.1.7 "Extended Feature Enable Register (EFER)" */
static const struct feature_bit efer_features[] = {
    { 11, 0x80000001U, EDX, 20, FALSE }, /* NXE: NX */
    { 12, 0x80000001U, ECX, 2, FALSE },  /* SVME: SVM */
    { 13, 0x80000008U, EBX, 20, TRUE },  /* LMSLE: MBZ where EferLmsleUnsupported */
    { 14, 0x80000001U, EDX, 25, FALSE }, /* FFXSR */
    { 15, 0x80000001U, ECX, 17, FALSE }, /* TCE */
    { 21, 0x80000021U, EAX, 8, FALSE },  /* AIBRSE: automatic IBRS */
};

/* The bits of `features` that are MBZ on this CPU. */
static UINT64 missing_features(const struct feature_bit *features, UINTN count)
{
    UINT64 mbz = 0;
    for (UINTN i = 0; i < count; i++)
        if (cpuid_bit(features[i].leaf, features[i].reg, features[i].cpuid_bit) == features[i].mbz_with)
            mbz |= 1ULL << features[i].bit;
    return mbz;
}

/* MAXPHYADDR: CPUID.80000008:EAX[7:0] (36 where the leaf is missing). */
static UINT32 max_phys_bits(void)
{
    UINT32 r[4];
    cpuid(0x80000000U, 0, r);
    if (r[EAX] < 0x80000008U)
        return 36;
    cpuid(0x80000008U, 0, r);
    return r[EAX] & 0xFF;
}

static UINT64 vmcb_read(const UINT8 *vmcb, UINT16 offset, UINT8 size)
{
    switch (size) {
    case 1:
        return vmcb[offset];
    case 2:
        return *(const UINT16 *)(vmcb + offset);
    case 4:
        return *(const UINT32 *)(vmcb + offset);
    default:
        return *(const UINT64 *)(vmcb + offset);
    }
}

/* forbidden: TRUE when some term does not hold; else FALSE with the values
 * of the fields its terms read (each once) in `detail`. */
static BOOLEAN forbidden_holds(const UINT8 *vmcb, const struct hv_svm_rule *rule, char *detail, UINTN size)
{
    for (UINT32 i = 0; i < rule->terms; i++) {
        const struct hv_svm_term *t = &rule->when[i];
        UINT64 bits = vmcb_read(vmcb, t->offset, t->size) & t->mask;
        if (bits != (t->set ? t->mask : 0))
            return TRUE;
    }
    UINTN used = 0;
    detail[0] = 0;
    for (UINT32 i = 0; i < rule->terms && used < size; i++) {
        const struct hv_svm_term *t = &rule->when[i];
        BOOLEAN shown = FALSE;
        for (UINT32 j = 0; j < i; j++)
            shown |= rule->when[j].offset == t->offset;
        if (!shown) {
            int n = hv_snprintf(detail + used, size - used, "%s%s = 0x%lx", used ? ", " : "", t->name,
                                vmcb_read(vmcb, t->offset, t->size));
            used += n > 0 ? (UINTN)n : 0;
        }
    }
    return FALSE;
}

/* event_injection: with EVENTINJ.V, the type is one of the catalogue's
 * event_types, and an exception's vector one of rule->mask (APM 15.20). */
static BOOLEAN event_injection_holds(UINT64 value, const struct hv_svm_rule *rule, char *detail, UINTN size)
{
    if (!(value & SVM_EVENTINJ_VALID))
        return TRUE;
    UINT64 type = (value & SVM_EVENTINJ_TYPE_MASK) >> SVM_EVENTINJ_TYPE_SHIFT;
    UINT64 vector = (value & SVM_EVENTINJ_VECTOR_MASK) >> SVM_EVENTINJ_VECTOR_SHIFT;
    if (!((rule->types >> type) & 1)) {
        hv_snprintf(detail, size, "%s = 0x%lx: type %lu is not an event type", rule->name, value, type);
        return FALSE;
    }
    if (type == SVM_EVENT_TYPE_EXCEPTION && (vector > 63 || !((rule->mask >> vector) & 1))) {
        hv_snprintf(detail, size, "%s = 0x%lx: vector %lu is not an exception's", rule->name, value, vector);
        return FALSE;
    }
    return TRUE;
}

/* The MBZ bits of an mbz, cr4_mbz or efer_mbz check on this CPU: the
 * catalogue's, and those of the features CPUID lacks. */
static UINT64 mbz_bits(const struct hv_svm_rule *rule)
{
    if (rule->kind == HV_SVM_RULE_CR4_MBZ)
        return rule->mask | missing_features(cr4_features, sizeof cr4_features / sizeof cr4_features[0]);
    if (rule->kind == HV_SVM_RULE_EFER_MBZ)
        return rule->mask | missing_features(efer_features, sizeof efer_features / sizeof efer_features[0]);
    return rule->mask;
}

/* TRUE when `rule` holds of the VMCB; else FALSE with why in `detail`. */
static BOOLEAN rule_holds(const UINT8 *vmcb, const struct hv_svm_rule *rule, char *detail, UINTN size)
{
    UINT64 value = rule->kind == HV_SVM_RULE_FORBIDDEN ? 0 : vmcb_read(vmcb, rule->offset, rule->size);

    switch (rule->kind) {
    case HV_SVM_RULE_FORBIDDEN:
        return forbidden_holds(vmcb, rule, detail, size);
    case HV_SVM_RULE_MBZ:
    case HV_SVM_RULE_CR4_MBZ:
    case HV_SVM_RULE_EFER_MBZ: {
        UINT64 mbz = mbz_bits(rule);
        if (!(value & mbz))
            return TRUE;
        hv_snprintf(detail, size, "%s = 0x%lx: bits 0x%lx are MBZ on this CPU", rule->name, value,
                    value & mbz);
        return FALSE;
    }
    case HV_SVM_RULE_LONG_MODE: /* CPUID.80000001:EDX.LM[29] */
        if (!(value & rule->mask) || cpuid_bit(0x80000001U, EDX, 29))
            return TRUE;
        hv_snprintf(detail, size, "%s = 0x%lx, CPUID.80000001:EDX.LM[29] = 0", rule->name, value);
        return FALSE;
    case HV_SVM_RULE_BELOW_MAXPHYADDR: {
        UINT32 bits = max_phys_bits();
        UINT64 base = value & ~0xFFFULL, limit = bits < 64 ? 1ULL << bits : ~0ULL;
        if (base < limit && rule->bytes <= limit - base)
            return TRUE;
        hv_snprintf(detail, size, "%s = 0x%lx, 0x%lx bytes, MAXPHYADDR %u", rule->name, value, rule->bytes,
                    bits);
        return FALSE;
    }
    case HV_SVM_RULE_EVENT_INJECTION:
        return event_injection_holds(value, rule, detail, size);
    case HV_SVM_RULE_END:
        break;
    }
    return TRUE;
}

BOOLEAN hv_svm_run_time_checks(struct hv_cpu *cpu)
{
#ifdef HV_TEST_BREAK_VMCB
    /* Tests only (tests/test_hypervisor_qemu.py): a VMCB that VMRUN would
     * refuse, EFER.SVME clear, so that a check must stop the launch. */
    *(UINT64 *)(cpu->vmcb + VMCB_EFER) &= ~(1ULL << 12);
#endif
    for (const struct hv_svm_rule *rule = hv_svm_rules; rule->kind != HV_SVM_RULE_END; rule++) {
        char detail[128];
        if (!rule_holds(cpu->vmcb, rule, detail, sizeof detail)) {
            hv_snprintf(cpu->error, sizeof cpu->error, "run-time check %s (%s) failed: %s: %s", rule->id,
                        rule->section, rule->title, detail);
            return FALSE;
        }
    }
    return TRUE;
}
#endif

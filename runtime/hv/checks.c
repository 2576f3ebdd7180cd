/*
 * Run-time checks: the rules of rules.c (generated from the spec), each
 * decided on exactly the values hv_launch_cpu is about to write, before any
 * VMX instruction. A failing rule names itself and its SDM section.
 */
#include "hv.h"
#include "cpu.h"
#include "checks.h"

static BOOLEAN canonical(UINT64 v)
{
    UINT32 r[4];
    cpuid(0x80000008U, 0, r);
    UINT32 bits = (r[0] >> 8) & 0xFF; /* linear-address width */
    if (bits == 0)
        bits = 48;
    INT64 s = (INT64)(v << (64 - bits)) >> (64 - bits);
    return (UINT64)s == v;
}

/* A valid PAT memory type (SDM 13.12.2 "IA32_PAT MSR"): 0, 1, 4, 5, 6 or 7; else the index. */
static int invalid_pat_entry(UINT64 pat)
{
    for (int i = 0; i < 8; i++) {
        UINT8 t = (pat >> (8 * i)) & 0xFF;
        if (t == 2 || t == 3 || t > 7)
            return i;
    }
    return -1;
}

/* TRUE when `rule` holds; else FALSE with why in `detail`. */
static BOOLEAN rule_holds(struct hv_cpu *cpu, const struct hv_rule *rule, char *detail, UINTN size)
{
    UINT64 value =
        rule->field_name && rule->kind != HV_RULE_CONTROL_ALLOWED ? hv_host_value(cpu, rule->field) : 0;
    UINT32 exit_controls = cpu->controls[HV_CTL_EXIT];
    BOOLEAN size64 = (exit_controls & HV_EXIT_HOST_ADDRESS_SPACE_SIZE) != 0;

    switch (rule->kind) {
    /* SDM 28.2.2 "Checks on Host Control Registers, MSRs, and SSP"; Appendix A.7, A.8 */
    case HV_RULE_CR_FIXED: {
        UINT64 fixed0 = rdmsr(rule->msr), fixed1 = rdmsr(rule->msr2);
        if ((value | fixed0) == value && (value & fixed1) == value)
            return TRUE;
        hv_snprintf(detail, size, "%s = 0x%lx, FIXED0 0x%lx, FIXED1 0x%lx", rule->field_name, value, fixed0,
                    fixed1);
        return FALSE;
    }
    case HV_RULE_CONTROL_ALLOWED: { /* SDM 28.2.1 "Checks on VMX Controls"; Appendix A.3-A.5 */
        BOOLEAN true_msrs = rule->msr2 && (hv.vmx_basic & VMX_BASIC_TRUE_CONTROLS);
        UINT32 msr = true_msrs ? rule->msr2 : rule->msr, controls = cpu->controls[rule->group];
        UINT64 cap = rdmsr(msr);
        if (rule->group == HV_CTL_PROC2 && !(cpu->controls[HV_CTL_PROC] & HV_PROC_ACTIVATE_SECONDARY))
            return TRUE; /* not in use */
        if ((controls & (UINT32)cap) == (UINT32)cap && (controls & ~(UINT32)(cap >> 32)) == 0)
            return TRUE;
        hv_snprintf(detail, size, "%s = 0x%08x, MSR 0x%x allows 0x%08x, requires 0x%08x", rule->field_name,
                    controls, msr, (UINT32)(cap >> 32), (UINT32)cap);
        return FALSE;
    }
    case HV_RULE_HOST_SELECTOR_RPL_TI:
        if ((value & 7) == 0)
            return TRUE;
        hv_snprintf(detail, size, "%s = 0x%lx: RPL (bits 1:0) and TI (bit 2) must be 0", rule->field_name,
                    value);
        return FALSE;
    case HV_RULE_HOST_SELECTOR_NONZERO:
        if (value != 0)
            return TRUE;
        hv_snprintf(detail, size, "%s = 0x0: must not be 0", rule->field_name);
        return FALSE;
    case HV_RULE_CANONICAL:
        if (canonical(value))
            return TRUE;
        hv_snprintf(detail, size, "%s = 0x%lx is not canonical", rule->field_name, value);
        return FALSE;
    case HV_RULE_HOST_64BIT: {
        UINT64 cr4 = hv_host_value(cpu, HOST_CR4);
        if (size64 && (cr4 & (1ULL << 5)))
            return TRUE;
        hv_snprintf(detail, size, "host address-space size %u, HOST_CR4.PAE %u: a 64-bit host needs both",
                    (unsigned)size64, (unsigned)((cr4 >> 5) & 1));
        return FALSE;
    }
    case HV_RULE_PAT_VALID: {
        int entry = exit_controls & HV_EXIT_LOAD_IA32_PAT ? invalid_pat_entry(value) : -1;
        if (entry < 0)
            return TRUE;
        hv_snprintf(detail, size, "%s = 0x%lx: entry %u has the invalid type %u", rule->field_name, value,
                    (unsigned)entry, (unsigned)((value >> (8 * entry)) & 0xFF));
        return FALSE;
    }
    case HV_RULE_EFER_CONSISTENT: {
        if (!(exit_controls & HV_EXIT_LOAD_IA32_EFER))
            return TRUE;
        BOOLEAN reserved_clear = (value & ~((1ULL << 0) | (1ULL << 8) | (1ULL << 10) | (1ULL << 11))) == 0;
        if (reserved_clear && ((value >> 10) & 1) == size64 && ((value >> 8) & 1) == size64)
            return TRUE;
        hv_snprintf(detail, size,
                    "%s = 0x%lx: reserved bits clear, LMA and LME equal to host "
                    "address-space size (%lu)",
                    rule->field_name, value, (UINT64)size64);
        return FALSE;
    }
    case HV_RULE_END:
        break;
    }
    return TRUE;
}

BOOLEAN hv_run_time_checks(struct hv_cpu *cpu)
{
    for (const struct hv_rule *rule = hv_rules; rule->kind != HV_RULE_END; rule++) {
        char detail[128];
        if (!rule_holds(cpu, rule, detail, sizeof detail)) {
            hv_snprintf(cpu->error, sizeof cpu->error, "run-time check %s failed (%s: %s): %s", rule->id,
                        rule->section, rule->title, detail);
            return FALSE;
        }
    }
    return TRUE;
}

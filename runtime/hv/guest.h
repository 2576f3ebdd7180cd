/*
 * The guest's registers, on either backend: a VMCS field through VMREAD and
 * VMWRITE (VMX), an offset in this CPU's VMCB (SVM, AMD APM vol. 2 Appendix B
 * "Layout of VMCB"). The exit actions that both backends share (CPUID, MSRs,
 * the VMCALL interface, XSETBV) reach the guest only through these; what
 * only one backend has stays in its own files (vmcs_setup.c, svm.c).
 */
#ifndef UEFI_HV_GUEST_H
#define UEFI_HV_GUEST_H

#include "hv.h"
#include "cpu.h"

/* This CPU's VMCB. The host's GS base is this CPU's struct hv_cpu (the
 * spec's HOST_GS_BASE, per_cpu_data); VMLOAD gives it back after each
 * #VMEXIT (svm_entry.S). */
static inline UINT8 *hv_current_vmcb(void)
{
    return ((struct hv_cpu *)rdmsr(MSR_IA32_GS_BASE))->vmcb;
}

#define HV_VMCB(type, offset) (*(type *)(hv_current_vmcb() + (offset)))

/* One register: the VMCS field (VMX) and the VMCB offset of 8 bytes (SVM). */
#define HV_GUEST_REGISTER(name, vmcs_field, vmcb_offset)                   \
    static inline UINT64 hv_guest_##name(void)                             \
    {                                                                      \
        return hv.svm ? HV_VMCB(UINT64, vmcb_offset) : vmread(vmcs_field); \
    }                                                                      \
    static inline void hv_set_guest_##name(UINT64 value)                   \
    {                                                                      \
        if (hv.svm)                                                        \
            HV_VMCB(UINT64, vmcb_offset) = value;                          \
        else                                                               \
            vmwrite(vmcs_field, value);                                    \
    }
/* Without a VMCB catalogue in the spec (HV_SVM 0) the offsets are never read. */
#if HV_SVM
#define HV_VMCB_OFFSET(offset) (offset)
#else
#define HV_VMCB_OFFSET(offset) 0
#endif
HV_GUEST_REGISTER(rip, GUEST_RIP, HV_VMCB_OFFSET(VMCB_RIP))
HV_GUEST_REGISTER(rsp, GUEST_RSP, HV_VMCB_OFFSET(VMCB_RSP))
HV_GUEST_REGISTER(rflags, GUEST_RFLAGS, HV_VMCB_OFFSET(VMCB_RFLAGS))
HV_GUEST_REGISTER(cr3, GUEST_CR3, HV_VMCB_OFFSET(VMCB_CR3))
HV_GUEST_REGISTER(cs_base, GUEST_CS_BASE, HV_VMCB_OFFSET(VMCB_CS_BASE))

/* CR0 and CR4 as the guest sees them (with VMX, the hypervisor's bits from
 * the read shadows: vmcs_setup.c), and whether it runs 64-bit code. */
UINT64 hv_guest_cr0(void);
UINT64 hv_guest_cr4(void);
BOOLEAN hv_guest_long_mode(void); /* IA32_EFER.LMA */
UINT32 hv_guest_code_size(void);  /* 16, 32 or 64: CS.L in long mode, else CS.D */

/* The guest's CPL: SS.DPL (SDM 6.5 "Privilege Levels"; the VMCB's CPL
 * field, APM 15.5.1). */
UINT32 hv_guest_cpl(void);

/* A hardware exception for the guest at its next entry (SDM 26.8.3 "VM-Entry
 * Controls for Event Injection", APM 15.20 "Event Injection"). */
void hv_inject_exception(UINT32 vector, BOOLEAN has_error_code, UINT32 error_code);

/* Segments of the running CPU, for the guest state at launch: the base from
 * the GDT (16-byte system descriptors for TR and LDTR) and the limit. */
UINT64 hv_descriptor_base(UINT64 gdt_base, UINT16 selector, BOOLEAN system);
UINT32 hv_segment_limit(UINT16 selector);

#endif /* UEFI_HV_GUEST_H */

/*
 * The guest's state on either backend (guest.h): what the shared exit
 * actions read and change, as a VMCS field or a VMCB offset.
 */
#include "hv.h"
#include "cpu.h"
#include "exits.h"
#include "guest.h"
#include "vmcs_setup.h"

#define SEGMENT_L (1U << 13) /* in VMX access rights; bit 9 of a VMCB attribute */
#define SEGMENT_D (1U << 14) /* ...; bit 10 */

UINT64 hv_guest_cr0(void)
{
    return hv.svm ? HV_VMCB(UINT64, HV_VMCB_OFFSET(VMCB_CR0)) : hv_guest_cr(0);
}

UINT64 hv_guest_cr4(void)
{
    return hv.svm ? HV_VMCB(UINT64, HV_VMCB_OFFSET(VMCB_CR4)) : hv_guest_cr(4);
}

BOOLEAN hv_guest_long_mode(void)
{
    if (hv.svm)
        return (HV_VMCB(UINT64, HV_VMCB_OFFSET(VMCB_EFER)) & X86_EFER_LMA) != 0;
    return (vmread(VM_ENTRY_CONTROLS) & HV_ENTRY_IA32E_MODE_GUEST) != 0;
}

/* The default operand and address size of the guest's code: 64 (CS.L in
 * IA-32e mode), else CS.D: 32 or 16 (SDM 3.4.5 "Segment Descriptors"); real
 * mode is 16. A VMCB attribute packs the descriptor's bits 55:52 at 11:8
 * (APM 15.5.1), VMX access rights at 15:12. */
UINT32 hv_guest_code_size(void)
{
    UINT32 ar = hv.svm ? (UINT32)HV_VMCB(UINT16, HV_VMCB_OFFSET(VMCB_CS_ATTRIB)) << 4 & 0xF000
                       : (UINT32)vmread(GUEST_CS_AR_BYTES);
    if (hv_guest_long_mode() && (ar & SEGMENT_L))
        return 64;
    return ar & SEGMENT_D ? 32 : 16;
}

UINT32 hv_guest_cpl(void)
{
    if (hv.svm)
        return HV_VMCB(UINT8, HV_VMCB_OFFSET(VMCB_CPL)) & 3;
    return (UINT32)(vmread(GUEST_SS_AR_BYTES) >> 5) & 3; /* SS.DPL, bits 6:5 (SDM 25.4.1) */
}

void hv_inject_exception(UINT32 vector, BOOLEAN has_error_code, UINT32 error_code)
{
    /* A fault is delivered with RF set in the RFLAGS image it pushes, so that
     * the instruction it restarts does not stop again on an instruction
     * breakpoint (SDM 19.3.1.1 "Instruction-Breakpoint Exception Condition").
     * An injected event pushes the guest's RFLAGS as they are, so RF is set
     * here for the fault-class exceptions, as KVM does; #DB, #BP and #OF are not. */
    if (vector != 1 && vector != 3 && vector != 4)
        hv_set_guest_rflags(hv_guest_rflags() | (1ULL << 16));
#if HV_SVM
    if (hv.svm) {
        HV_VMCB(UINT64, VMCB_EVENTINJ) =
            vector | (UINT64)SVM_EVENT_TYPE_EXCEPTION << SVM_EVENTINJ_TYPE_SHIFT |
            (has_error_code ? SVM_EVENTINJ_ERROR_CODE_VALID : 0) | SVM_EVENTINJ_VALID |
            (UINT64)error_code << SVM_EVENTINJ_ERROR_CODE_SHIFT;
        return;
    }
#endif
    vmwrite(VM_ENTRY_INTR_INFO_FIELD, vector | INTR_TYPE_HW_EXCEPTION << 8 |
                                          (has_error_code ? INTR_INFO_ERROR_CODE : 0) | INTR_INFO_VALID);
    if (has_error_code)
        vmwrite(VM_ENTRY_EXCEPTION_ERROR_CODE, error_code);
}

/* The base of a segment of the running CPU, from its GDT descriptor. */
UINT64 hv_descriptor_base(UINT64 gdt_base, UINT16 sel, BOOLEAN system)
{
    if ((sel & ~7U) == 0 || (sel & 4)) /* null, or in an LDT (UEFI has none) */
        return 0;
    UINT64 d = *(UINT64 *)(gdt_base + (sel & ~7U));
    UINT64 base = ((d >> 16) & 0xFFFFFF) | ((d >> 56) & 0xFF) << 24;
    if (system) /* 16-byte descriptors (SDM 9.2.3 "TSS Descriptor in 64-bit mode") */
        base |= *(UINT64 *)(gdt_base + (sel & ~7U) + 8) << 32;
    return base;
}

UINT32 hv_segment_limit(UINT16 sel)
{
    UINT32 limit;
    return lsl(sel, &limit) ? limit : 0;
}

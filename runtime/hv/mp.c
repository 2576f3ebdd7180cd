/*
 * Every logical CPU through EFI_MP_SERVICES_PROTOCOL (UEFI PI spec, Vol. 2,
 * 13.4). gnu-efi does not declare it, so it is declared here. APs may call
 * no other UEFI service than WhoAmI; they report through struct hv_cpu.
 */
#include "hv.h"

typedef VOID(EFIAPI *EFI_AP_PROCEDURE)(VOID *argument);

typedef struct _EFI_MP_SERVICES_PROTOCOL EFI_MP_SERVICES_PROTOCOL;
struct _EFI_MP_SERVICES_PROTOCOL {
    EFI_STATUS(EFIAPI *GetNumberOfProcessors)
    (EFI_MP_SERVICES_PROTOCOL *This, UINTN *NumberOfProcessors, UINTN *NumberOfEnabledProcessors);
    EFI_STATUS(EFIAPI *GetProcessorInfo)(EFI_MP_SERVICES_PROTOCOL *This, UINTN ProcessorNumber, VOID *Buffer);
    EFI_STATUS(EFIAPI *StartupAllAPs)
    (EFI_MP_SERVICES_PROTOCOL *This, EFI_AP_PROCEDURE Procedure, BOOLEAN SingleThread, EFI_EVENT WaitEvent,
     UINTN TimeoutInMicroSeconds, VOID *ProcedureArgument, UINTN **FailedCpuList);
    EFI_STATUS(EFIAPI *StartupThisAP)
    (EFI_MP_SERVICES_PROTOCOL *This, EFI_AP_PROCEDURE Procedure, UINTN ProcessorNumber, EFI_EVENT WaitEvent,
     UINTN TimeoutInMicroseconds, VOID *ProcedureArgument, BOOLEAN *Finished);
    EFI_STATUS(EFIAPI *SwitchBSP)
    (EFI_MP_SERVICES_PROTOCOL *This, UINTN ProcessorNumber, BOOLEAN EnableOldBSP);
    EFI_STATUS(EFIAPI *EnableDisableAP)
    (EFI_MP_SERVICES_PROTOCOL *This, UINTN ProcessorNumber, BOOLEAN EnableAP, UINT32 *HealthFlag);
    EFI_STATUS(EFIAPI *WhoAmI)(EFI_MP_SERVICES_PROTOCOL *This, UINTN *ProcessorNumber);
};

static EFI_GUID mp_services_guid = {
    0x3fdda605, 0xa76e, 0x4f46, { 0xad, 0x29, 0x12, 0xf4, 0x53, 0x1b, 0x3d, 0x08 }
};
static EFI_MP_SERVICES_PROTOCOL *mp;
static void (*ap_work)(struct hv_cpu *cpu);

/* The number of logical CPUs; 1 when the firmware has no MP services. */
UINTN hv_cpu_count(void)
{
    UINTN count = 1, enabled = 1;
    if (!mp && EFI_ERROR(uefi_call_wrapper(BS->LocateProtocol, 3, &mp_services_guid, NULL, (VOID **)&mp)))
        mp = NULL;
    if (mp && EFI_ERROR(uefi_call_wrapper(mp->GetNumberOfProcessors, 3, mp, &count, &enabled)))
        count = 1;
    return count;
}

UINTN hv_who_am_i(void)
{
    UINTN n = 0;
    if (mp)
        uefi_call_wrapper(mp->WhoAmI, 2, mp, &n);
    return n;
}

static VOID EFIAPI run_on_ap(VOID *argument)
{
    (void)argument;
    UINTN n = hv_who_am_i();
    if (hv.cpus && n < hv.cpu_count)
        ap_work(hv.cpus[n]);
}

/* Runs fn on every AP, one at a time (their messages stay readable and the
 * per-CPU set-up never races), and waits for all of them. */
EFI_STATUS hv_for_each_ap(void (*fn)(struct hv_cpu *cpu))
{
    if (!mp || hv.cpu_count < 2)
        return EFI_SUCCESS;
    ap_work = fn;
    EFI_STATUS status = uefi_call_wrapper(mp->StartupAllAPs, 7, mp, run_on_ap, TRUE, NULL, 0, NULL, NULL);
    return status == EFI_NOT_STARTED ? EFI_SUCCESS : status; /* no enabled AP */
}

/*
 * The firmware's EFI_MP_SERVICES_PROTOCOL (UEFI PI spec, Vol. 2, 13.4), as
 * far as hvcheck calls it: gnu-efi does not declare it.
 */
#ifndef HVCHECK_MP_SERVICES_H
#define HVCHECK_MP_SERVICES_H

#include <efi.h>

#define MP_SERVICES_GUID                                   \
    {                                                      \
        0x3fdda605, 0xa76e, 0x4f46,                        \
        {                                                  \
            0xad, 0x29, 0x12, 0xf4, 0x53, 0x1b, 0x3d, 0x08 \
        }                                                  \
    }

typedef VOID(EFIAPI *AP_PROCEDURE)(VOID *);
typedef struct MP MP;
struct MP {
    EFI_STATUS(EFIAPI *GetNumberOfProcessors)(MP *, UINTN *, UINTN *);
    EFI_STATUS(EFIAPI *GetProcessorInfo)(MP *, UINTN, VOID *);
    EFI_STATUS(EFIAPI *StartupAllAPs)(MP *, AP_PROCEDURE, BOOLEAN, EFI_EVENT, UINTN, VOID *, UINTN **);
    EFI_STATUS(EFIAPI *StartupThisAP)(MP *, AP_PROCEDURE, UINTN, EFI_EVENT, UINTN, VOID *, BOOLEAN *);
    EFI_STATUS(EFIAPI *SwitchBSP)(MP *, UINTN, BOOLEAN);
    EFI_STATUS(EFIAPI *EnableDisableAP)(MP *, UINTN, BOOLEAN, UINT32 *);
    EFI_STATUS(EFIAPI *WhoAmI)(MP *, UINTN *);
};

#endif /* HVCHECK_MP_SERVICES_H */

/* The firmware's EFI_MP_SERVICES_PROTOCOL (UEFI PI spec, Vol. 2, 13.4), as far
 * as the test kit's programs call it (the OS model, acpitables): gnu-efi does
 * not declare it. */
#ifndef OSKIT_MP_SERVICES_H
#define OSKIT_MP_SERVICES_H

#include <efi.h>

#define MP_SERVICES_GUID \
    { 0x3fdda605, 0xa76e, 0x4f46, { 0xad, 0x29, 0x12, 0xf4, 0x53, 0x1b, 0x3d, 0x08 } }
#define PROCESSOR_AS_BSP_BIT     1
#define PROCESSOR_ENABLED_BIT    2

struct processor_information {
    UINT64 processor_id;                /* the APIC id */
    UINT32 status_flag;
    UINT32 package, core, thread;
    UINT8 extended[64];                 /* PI 1.7's extended topology, unused */
};

struct mp_services {
    EFI_STATUS (EFIAPI *get_number_of_processors)(struct mp_services *, UINTN *all,
                                                  UINTN *enabled);
    EFI_STATUS (EFIAPI *get_processor_info)(struct mp_services *, UINTN number,
                                            struct processor_information *info);
};

#endif

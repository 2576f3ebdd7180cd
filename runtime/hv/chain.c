/*
 * What runs next. `uefi-hv image --chain FILE` puts FILE on the ESP and
 * writes \EFI\UEFI-HV\CHAIN.TXT next to it: line 1 the ESP path of the
 * image, line 2 its load options. Without that file, the spec's `chain`
 * option names the image (HV_SPEC_CHAIN, spec.h); with neither, efi_main returns
 * and the firmware's boot manager goes on with its next boot option.
 */
#include "hv.h"

#define CHAIN_FILE L"\\EFI\\UEFI-HV\\CHAIN.TXT"

static UINTN read_chain_file(EFI_FILE_HANDLE root, char *buf, UINTN size)
{
    EFI_FILE_HANDLE file;
    if (EFI_ERROR(uefi_call_wrapper(root->Open, 5, root, &file, CHAIN_FILE, EFI_FILE_MODE_READ, 0)))
        return 0;
    UINTN n = size - 1;
    if (EFI_ERROR(uefi_call_wrapper(file->Read, 3, file, &n, buf)))
        n = 0;
    uefi_call_wrapper(file->Close, 1, file);
    buf[n] = 0;
    return n;
}

/* Copies one line of `s` (without CR/LF) to `out`; returns the rest. */
static const char *take_line(const char *s, CHAR16 *out, UINTN max)
{
    UINTN n = 0;
    for (; *s && *s != '\n'; s++)
        if (*s != '\r' && n + 1 < max)
            out[n++] = (CHAR16)(UINT8)*s;
    out[n] = 0;
    return *s ? s + 1 : s;
}

EFI_STATUS hv_start_next_image(EFI_HANDLE image)
{
    EFI_LOADED_IMAGE *self;
    EFI_STATUS status = uefi_call_wrapper(BS->HandleProtocol, 3, image, &LoadedImageProtocol, (VOID **)&self);
    if (EFI_ERROR(status))
        return status;
    CHAR16 path[256], options[512]; /* live until the chained image returns */
    char text[1024];
    EFI_FILE_HANDLE root = LibOpenRoot(self->DeviceHandle);
    UINTN n = root ? read_chain_file(root, text, sizeof text) : 0;
    if (root)
        uefi_call_wrapper(root->Close, 1, root);
    path[0] = options[0] = 0;
    if (n)
        take_line(take_line(text, path, 256), options, 512);
#ifdef HV_SPEC_CHAIN
    if (!path[0])
        StrCpy(path, HV_SPEC_CHAIN);
#endif
    if (!path[0]) {
        hv_say("uefi-hv: nothing to chain to; returning to the firmware's boot manager\n");
        return EFI_NOT_FOUND;
    }
    EFI_DEVICE_PATH *file_path = FileDevicePath(self->DeviceHandle, path);
    EFI_HANDLE next;
    status = uefi_call_wrapper(BS->LoadImage, 6, FALSE, image, file_path, NULL, 0, &next);
    if (file_path)
        FreePool(file_path);
    if (EFI_ERROR(status)) {
        Print(L"uefi-hv: cannot load %s: %r\n", path, status);
        return status;
    }
    if (options[0]) {
        EFI_LOADED_IMAGE *child;
        if (!EFI_ERROR(
                uefi_call_wrapper(BS->HandleProtocol, 3, next, &LoadedImageProtocol, (VOID **)&child))) {
            child->LoadOptions = options;
            child->LoadOptionsSize = (UINT32)((StrLen(options) + 1) * sizeof(CHAR16));
        }
    }
    Print(L"uefi-hv: starting %s\n", path);
    status = uefi_call_wrapper(BS->StartImage, 3, next, NULL, NULL);
    Print(L"uefi-hv: %s returned %r\n", path, status);
    return status;
}

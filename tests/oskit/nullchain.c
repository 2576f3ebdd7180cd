/* The "null hypervisor": an EFI application that only does what uefi-hv
 * does last, start the chained image, so that an image can boot the same
 * kernel, initramfs and command line without any hypervisor.
 *
 * It reads \EFI\UEFI-HV\CHAIN.TXT as `uefi-hv image --chain` writes it
 * (uefi_hv/image.py: line 1 the image's ESP path, line 2 its load options)
 * and starts that image with those options. It is the baseline of the OS
 * tests: Linux in Bochs without uefi-hv, and the boot cost uefi-hv adds.
 */
#include <efi.h>
#include <efilib.h>

#define CHAIN_TXT L"\\EFI\\UEFI-HV\\CHAIN.TXT"

/* One line of `text` (no CR/LF) into `out`; returns the rest. */
static const CHAR8 *take_line(const CHAR8 *text, CHAR16 *out, UINTN max)
{
    UINTN n = 0;
    for (; *text && *text != '\n'; text++)
        if (*text != '\r' && n + 1 < max)
            out[n++] = *text;
    out[n] = 0;
    return *text ? text + 1 : text;
}

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)
{
    static CHAR8 text[2048];
    static CHAR16 path[256], options[1024];
    EFI_LOADED_IMAGE *self, *next;
    EFI_FILE_HANDLE root, file;
    EFI_HANDLE next_handle;
    EFI_STATUS status;
    UINTN size = sizeof(text) - 1;

    InitializeLib(image, systab);
    status = uefi_call_wrapper(BS->HandleProtocol, 3, image, &LoadedImageProtocol, (VOID **)&self);
    if (EFI_ERROR(status))
        return status;
    root = LibOpenRoot(self->DeviceHandle);
    if (!root) {
        Print(L"nullchain: cannot open the boot partition\n");
        return EFI_NOT_FOUND;
    }
    status = uefi_call_wrapper(root->Open, 5, root, &file, CHAIN_TXT, EFI_FILE_MODE_READ, 0);
    if (EFI_ERROR(status)) {
        Print(L"nullchain: no %s: %r\n", CHAIN_TXT, status);
        return status;
    }
    status = uefi_call_wrapper(file->Read, 3, file, &size, text);
    uefi_call_wrapper(file->Close, 1, file);
    if (EFI_ERROR(status))
        return status;
    text[size] = 0;
    take_line(take_line(text, path, 256), options, 1024);

    Print(L"nullchain: no hypervisor; starting %s\n", path);
    status = uefi_call_wrapper(BS->LoadImage, 6, FALSE, image,
                               FileDevicePath(self->DeviceHandle, path), NULL, 0, &next_handle);
    if (EFI_ERROR(status)) {
        Print(L"nullchain: LoadImage %s: %r\n", path, status);
        return status;
    }
    uefi_call_wrapper(BS->HandleProtocol, 3, next_handle, &LoadedImageProtocol, (VOID **)&next);
    next->LoadOptions = options;
    next->LoadOptionsSize = (UINT32)((StrLen(options) + 1) * sizeof(CHAR16));
    status = uefi_call_wrapper(BS->StartImage, 3, next_handle, NULL, NULL);
    Print(L"nullchain: %s returned %r\n", path, status);
    return status;
}

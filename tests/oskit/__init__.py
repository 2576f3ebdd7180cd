"""Test support for the OS side of uefi-hv: what boots *under* the hypervisor.

kernel    the Debian kernel, downloaded and unpacked into .cache/linux/
initramfs the /init program (oscheck.c) built static, packed as a newc cpio
osmodel   an EFI program that behaves like an OS kernel (ExitBootServices,
          SetVirtualAddressMap, its own GDT/IDT/page tables, INIT-SIPI-SIPI)
"""

"""Without VMX (QEMU's TCG has none), the same hypervisor image says so,
changes nothing, and the boot goes on to the chained application."""

from __future__ import annotations

from pathlib import Path

import pytest

from uefi_hv import DSL_DIR
from uefi_hv.build import build_hypervisor
from uefi_hv.emulate import QemuMachine
from uefi_hv.image import make_image

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("hv-qemu")
    efi = build_hypervisor(DSL_DIR / "default.hv", workdir)
    make_image(efi["BOOTX64.EFI"], workdir / "hv.img", chain=efi["hvcheck.efi"])
    return workdir / "hv.img"


def test_without_vmx_the_boot_continues_to_the_chained_app(image, run_dir):
    with QemuMachine(image, cpus=1, run_dir=run_dir) as vm:
        vm.wait_for_line("VMX is not available", timeout=90)
        vm.wait_for_line("hvcheck: no uefi-hv hypervisor present", timeout=60)
        event = vm.wait_event("SHUTDOWN", timeout=60)
        serial = vm.serial
    assert "the hypervisor is not started" in serial
    # QEMU's default CPU is an AMD one with SVM: the hypervisor says so.
    assert ("uefi-hv: VMX is not available on this CPU (CPUID.1:ECX.VMX[5] = 0): it is an AMD CPU with SVM "
            "(CPUID.80000001:ECX.SVM[2] = 1), which uefi-hv does not drive yet; the hypervisor is not started"
            in serial), serial
    # QEMU's own ACPI tables (q35: the ICH9 PM block at OVMF's 0x600) are
    # read before the VMX check: the parser on a real firmware's FADT and AML.
    assert "uefi-hv: power-off through ACPI FADT: PM1a_CNT I/O 0x604, SLP_TYPa 0 (\\_S5 in the DSDT)" in serial
    assert "uefi-hv: starting \\EFI\\UEFI-HV\\NEXT.EFI" in serial
    assert "hvcheck: firmware services: 4 of 4 checks passed" in serial
    assert event["data"]["reason"] == "guest-shutdown"

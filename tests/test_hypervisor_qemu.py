"""The hypervisor live in QEMU's TCG, driven over QMP: TCG has no VMX but
emulates AMD's SVM with nested paging (docs/emulators.md), so on `-cpu EPYC`
the same image takes its SVM backend, virtualises every CPU and hvcheck
passes. On a CPU that has neither, it says why, changes nothing, and the
boot goes on to the chained application."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uefi_hv import DSL_DIR
from uefi_hv.build import build_efi, build_hypervisor
from uefi_hv.emulate import QemuMachine
from uefi_hv.image import make_image

pytestmark = pytest.mark.qemu

#: hvcheck's load option for QEMU 7.2's TCG, which delivers no XSETBV
#: intercept and checks INVD against the WBINVD one (runtime/hvcheck/hvcheck.c).
QEMU_GAPS = "qemu_tcg_gaps=1"
EFER = re.compile(r"\bEFER=([0-9a-f]+)")
EFER_SVME = 1 << 12


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    return build_hypervisor(DSL_DIR / "default.hv", tmp_path_factory.mktemp("hv-qemu"))


@pytest.fixture(scope="module")
def image(built, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hv-qemu-img") / "hv.img"
    make_image(built["BOOTX64.EFI"], path, chain=built["hvcheck.efi"], cmdline=QEMU_GAPS)
    return path


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_svm_virtualises_every_cpu_and_hvcheck_passes(image, run_dir, cpus):
    with QemuMachine(image, cpus=cpus, cpu_model="EPYC", run_dir=run_dir) as vm:
        assert len(vm.qmp("query-cpus-fast")) == cpus
        vm.wait_for_line(r"hvcheck: self-test of the uefi-hv hypervisor", timeout=120)
        # While hvcheck runs every CPU is a guest under VMRUN: QEMU shows the
        # guest's EFER, with SVME set (VMRUN requires it; the guest reads it clear).
        registers = vm.hmp("info registers -a")
        screen = vm.screendump(run_dir / "screen.png")
        verdict = vm.wait_for_line(r"HVCHECK: (PASS|FAIL)", timeout=180)
        event = vm.wait_event("SHUTDOWN", timeout=60)
        serial = vm.serial
    assert "uefi-hv: backend SVM (AMD-V)" in serial
    assert f"uefi-hv: {cpus} of {cpus} CPU(s) virtualised" in serial
    efers = [int(v, 16) for v in EFER.findall(registers)]
    assert len(efers) == cpus and all(e & EFER_SVME for e in efers), registers
    assert verdict == "HVCHECK: PASS", serial[-3000:]
    assert f"hvcheck: summary: {cpus} of {cpus} CPU(s) virtualised" in serial
    for cpu in range(cpus):
        assert f"hvcheck: cpu {cpu}: SVM hidden CPUID.80000001:ECX[2]: ok" in serial
        assert f"hvcheck: cpu {cpu}: VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA raise #UD: ok" in serial
        assert f"hvcheck: cpu {cpu}: DEVIRTUALIZE: SVM off, hypervisor gone: ok" in serial
    assert screen.stat().st_size > 0 and screen.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert event["data"]["reason"] == "guest-shutdown"


def test_a_vmcb_vmrun_would_refuse_is_named_by_its_check_and_the_boot_goes_on(tmp_path, run_dir):
    """svm_checks.c built with HV_TEST_BREAK_VMCB clears EFER.SVME in the
    guest's VMCB just before VMRUN's consistency checks run: VMRUN-EFER-SVME
    stops the launch on the BSP, by name, SVM goes off again and the firmware
    starts hvcheck, which finds no hypervisor."""
    built = build_hypervisor(DSL_DIR / "default.hv", tmp_path / "broken", cflags=["-DHV_TEST_BREAK_VMCB"])
    image = tmp_path / "broken.img"
    make_image(built["BOOTX64.EFI"], image, chain=built["hvcheck.efi"], cmdline=QEMU_GAPS)
    with QemuMachine(image, cpus=1, cpu_model="EPYC", run_dir=run_dir) as vm:
        vm.wait_for_line("hvcheck: no uefi-hv hypervisor present", timeout=120)
        event = vm.wait_event("SHUTDOWN", timeout=60)
        serial = vm.serial
    assert "uefi-hv: backend SVM (AMD-V)" in serial, serial[-3000:]
    failed = re.search(r"^uefi-hv: cpu 0: run-time check VMRUN-EFER-SVME \(APM 15\.5\.1\) failed: "
                       r"EFER\.SVME is zero: EFER = 0x([0-9a-f]+)\r?$", serial, re.M)
    assert failed, serial[-3000:]
    assert not int(failed.group(1), 16) & EFER_SVME and int(failed.group(1), 16) & 0x500 == 0x500  # LME, LMA
    assert "virtualised" not in serial and "HVCHECK: PASS" not in serial
    assert event["data"]["reason"] == "guest-shutdown"


@pytest.mark.parametrize("model, why", [
    ("qemu64,-svm", "SVM is not available on this CPU (CPUID.80000001:ECX.SVM[2] = 0)"),
    ("qemu64", "SVM has no nested paging on this CPU (CPUID.8000000A:EDX.NP[0] = 0)"),
])
def test_without_vmx_or_usable_svm_the_boot_continues_to_the_chained_app(image, run_dir, model, why):
    with QemuMachine(image, cpus=1, cpu_model=model, run_dir=run_dir) as vm:
        vm.wait_for_line("hvcheck: no uefi-hv hypervisor present", timeout=90)
        event = vm.wait_event("SHUTDOWN", timeout=60)
        serial = vm.serial
    assert f"uefi-hv: {why}; the hypervisor is not started" in serial, serial
    # QEMU's own ACPI tables (q35: the ICH9 PM block at OVMF's 0x600) are
    # read before the CPU check: the parser on a real firmware's FADT and AML.
    assert "uefi-hv: power-off through ACPI FADT: PM1a_CNT I/O 0x604, SLP_TYPa 0 (\\_S5 in the DSDT)" in serial
    assert "uefi-hv: starting \\EFI\\UEFI-HV\\NEXT.EFI" in serial
    assert "hvcheck: firmware services: 4 of 4 checks passed" in serial
    assert event["data"]["reason"] == "guest-shutdown"


def test_a_guest_triple_fault_under_svm_resets_the_machine(built, tmp_path, run_dir):
    """SVM's shutdown intercept: the triple fault is the spec's `triple_fault`
    exit (its meaning in dsl/vmcb.hv), logged with the VMCB's guest state, and
    the platform is reset as bare metal would be (QEMU, -no-reboot: a
    SHUTDOWN event, reason guest-reset)."""
    src = tmp_path / "triple_fault.c"
    src.write_text("#include <efi.h>\n#include <efilib.h>\n"
                   "EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)\n{\n"
                   "    struct { UINT16 limit; UINT64 base; } __attribute__((packed)) idtr = { 0, 0 };\n"
                   "    InitializeLib(image, systab);\n"
                   "    Print(L\"guest: triple fault next\\n\");\n"
                   "    __asm__ volatile(\"cli; lidt %0; int3\" : : \"m\"(idtr));\n"
                   "    for (;;)\n        ;\n    return EFI_SUCCESS;\n}\n")
    app = build_efi([src], tmp_path / "triple_fault.efi")
    image = make_image(built["BOOTX64.EFI"], tmp_path / "tf.img", chain=app)
    with QemuMachine(image, cpus=1, cpu_model="EPYC", run_dir=run_dir) as vm:
        event = vm.wait_event("SHUTDOWN", timeout=120)
        serial = vm.serial
    first = serial.index("guest: triple fault next")
    assert "uefi-hv: cpu 0: the guest triple-faulted (shutdown)" in serial[first:], serial[-2000:]
    assert "uefi-hv: cpu 0: guest RIP 0x" in serial[first:] and "guest CR0 0x" in serial[first:]
    assert "uefi-hv: resetting the machine" in serial[first:]
    assert event["data"]["reason"] == "guest-reset", event

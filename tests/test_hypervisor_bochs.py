"""The generated hypervisor on real (emulated) VMX: Bochs boots OVMF, the
hypervisor virtualises the firmware and chain-starts hvcheck.efi, which
checks from inside the guest what the spec promises. Specs that break an
SDM host-state rule, built with --no-check, are stopped by the run-time
checks before VMLAUNCH, and the firmware carries on."""

from __future__ import annotations

from pathlib import Path

import pytest

from uefi_hv import DSL_DIR
from uefi_hv.build import build_efi
from uefi_hv.emulate import boot
from uefi_hv.generate import generate_hypervisor
from uefi_hv.image import make_image

pytestmark = pytest.mark.bochs


def build_image(spec: Path, workdir: Path, check: bool = True) -> Path:
    """spec -> BOOTX64.EFI + hvcheck.efi -> a GPT image that chains hvcheck."""
    built = generate_hypervisor(str(spec), workdir / "src", check=check)
    efi = {}
    for name, files in built.items():
        sources = [p for p in files if p.suffix in (".c", ".S")]
        efi[name] = build_efi(sources, workdir / name, include_dirs=sorted({p.parent for p in files}))
    image = workdir / "hv.img"
    make_image(efi["BOOTX64.EFI"], image, chain=efi["hvcheck.efi"])
    return image


def broken_spec(tmp_path: Path, old: str, new: str) -> Path:
    """The default spec with one host-state line changed (and its catalogue)."""
    text = (DSL_DIR / "default.hv").read_text()
    assert old in text
    (tmp_path / "vmcs.hv").write_text((DSL_DIR / "vmcs.hv").read_text())
    spec = tmp_path / "broken.hv"
    spec.write_text(text.replace(old, new))
    return spec


@pytest.fixture(scope="session")
def default_image(tmp_path_factory) -> Path:
    return build_image(DSL_DIR / "default.hv", tmp_path_factory.mktemp("hv-default"))


def test_one_cpu_is_virtualised_and_hvcheck_passes(default_image, run_dir):
    result = boot(default_image, emulator="bochs", cpus=1, timeout=60, fail=["HVCHECK: FAIL"],
                  run_dir=run_dir)
    serial = result.serial
    assert "uefi-hv: cpu 0: virtualised" in serial, result
    for check in ("hypervisor-present bit", "VMX hidden", "signature \"UefiHvUefiHv\"", "VMCALL ping",
                  "CPUID exit counter grew by 5", "VMCALL exit counter grew by 4",
                  "VMXON in the guest raises #UD", "Stall(10 ms)", "periodic timer event",
                  "file I/O"):
        assert f"{check}" in serial and not any(
            check in line and "FAIL" in line for line in serial.splitlines()), check
    assert "HVCHECK: PASS" in serial, result
    assert "hvcheck: cpu 0 exits by reason: cpuid=" in serial
    assert result.ok, result


def test_two_cpus_are_virtualised_and_hvcheck_passes_on_both(default_image, run_dir):
    """The AP is woken by OVMF's INIT-SIPI-SIPI after it became a guest: the
    hypervisor emulates INIT and SIPI, the AP runs hvcheck's checks."""
    result = boot(default_image, emulator="bochs", cpus=2, timeout=90, fail=["HVCHECK: FAIL"],
                  run_dir=run_dir)
    serial = result.serial
    assert "uefi-hv: cpu 0: virtualised" in serial, result
    assert "uefi-hv: cpu 1: virtualised" in serial, result
    assert "hvcheck: cpu 0: every CPU virtualised: ok" in serial
    for cpu in (0, 1):
        assert f"hvcheck: cpu {cpu}: VMCALL ping: ok" in serial
        assert f"hvcheck: cpu {cpu}: CPUID exit counter grew by 5: ok" in serial
        assert f"hvcheck: cpu {cpu}: VMXON in the guest raises #UD: ok" in serial
    assert "hvcheck: summary: 2 of 2 CPU(s) virtualised" in serial
    assert "HVCHECK: PASS" in serial, result
    assert result.ok, result


def test_the_haswell_model_works_too(default_image, run_dir):
    """Another capability set (XSAVES, fewer secondary controls): same result."""
    result = boot(default_image, emulator="bochs", cpus=1, timeout=60, fail=["HVCHECK: FAIL"],
                  cpu_model="corei7_haswell_4770", run_dir=run_dir)
    assert "HVCHECK: PASS" in result.serial, result


@pytest.mark.parametrize("old, new, rule", [
    ("HOST_TR_SELECTOR = HOST_TR", "HOST_TR_SELECTOR = 0", "HOST-TR-NONZERO"),
    ("HOST_CS_SELECTOR = HOST_CS", "HOST_CS_SELECTOR = 0x0B", "HOST-SEL-RPL-TI:HOST_CS_SELECTOR"),
    ("HOST_RIP               = symbol(vmexit_entry)", "HOST_RIP               = 0x8000000000000000",
     "CANONICAL:HOST_RIP"),
], ids=["host-tr-0", "host-cs-rpl-3", "host-rip-non-canonical"])
def test_a_broken_host_state_is_stopped_by_the_run_time_check(tmp_path, run_dir, old, new, rule):
    image = build_image(broken_spec(tmp_path, old, new), tmp_path / "build", check=False)
    result = boot(image, emulator="bochs", cpus=1, timeout=60, run_dir=run_dir)
    serial = result.serial
    assert f"run-time check {rule} failed" in serial, result
    assert "uefi-hv: not launching: a check failed" in serial
    assert "VMX is off on every CPU and the hypervisor's memory is freed; the boot continues" in serial
    # The firmware goes on: the chained hvcheck runs, finds no hypervisor,
    # and the firmware's services still work.
    assert "hvcheck: no uefi-hv hypervisor present" in serial
    assert "hvcheck: firmware services: 4 of 4 checks passed" in serial, result
    assert result.ok, result        # a clean power-off, no VMFAIL in the Bochs log

"""Bochs: real VMX in software under OVMF; a run is judged by its serial
output and the Bochs log, and Bochs is stopped as soon as the run is decided."""

from __future__ import annotations

import re

import pytest

from uefi_hv.emulate import boot, judge_bochs_log_line
from uefi_hv.errors import MissingTool, UsageError, UserError

from conftest import BANNER_RE

pytestmark = pytest.mark.bochs


def test_banner_sees_vmx_on_a_tigerlake_cpu(banner_image, run_dir, assert_no_leftovers):
    r = boot(banner_image, emulator="bochs", timeout=60, run_dir=run_dir)
    assert r.ok, r
    assert r.reason == "clean power-off"
    banner = re.search(BANNER_RE, r.serial)
    assert banner and banner.group("vmx") == "1" and banner.group("vendor") == "GenuineIntel"
    assert "model=tigerlake" in (run_dir / "bochsrc.bxrc").read_text()
    assert "ACPI control: soft power off" in r.log
    assert (run_dir / "serial.txt").exists()
    assert_no_leftovers(r)


def test_two_cpus_and_another_model_boot_too(banner_image, run_dir, assert_no_leftovers):
    r = boot(banner_image, emulator="bochs", cpus=2, cpu_model="corei7_haswell_4770",
             timeout=60, run_dir=run_dir)
    assert r.ok, r
    assert "vmx=1" in r.serial
    bxrc = (run_dir / "bochsrc.bxrc").read_text()
    assert "count=2" in bxrc and "model=corei7_haswell_4770" in bxrc
    assert_no_leftovers(r)


def test_bochs_stops_at_the_expected_marker(hang_image, run_dir, assert_no_leftovers):
    r = boot(hang_image, emulator="bochs", timeout=60, expect=[r"hanging \w+"], run_dir=run_dir)
    assert r.ok, r
    assert r.reason == "marker 'hanging \\w+' seen"
    assert r.elapsed < 60          # it did not wait for the timeout
    assert_no_leftovers(r)


def test_a_failure_marker_fails_the_run_at_once(hang_image, run_dir, assert_no_leftovers):
    r = boot(hang_image, emulator="bochs", timeout=60, expect=["NEVER PRINTED"],
             fail=["hanging forever"], run_dir=run_dir)
    assert not r.ok
    assert r.reason.startswith("failure marker 'hanging forever' seen")
    assert_no_leftovers(r)


def test_a_failure_line_printed_just_before_power_off_still_fails_the_run(
        banner_image, run_dir, assert_no_leftovers):
    # The banner's last line comes right before ResetSystem: the console's last
    # lines are read before the power-off in the log is accepted as success.
    r = boot(banner_image, emulator="bochs", fail=[r"banner: vmx=\d"], timeout=60,
             run_dir=run_dir)
    assert not r.ok, r
    assert r.reason.startswith("failure marker"), r.reason
    assert_no_leftovers(r)


def test_a_triple_fault_is_named_from_the_bochs_log(triple_fault_image, run_dir,
                                                    assert_no_leftovers):
    r = boot(triple_fault_image, emulator="bochs", timeout=60, run_dir=run_dir)
    assert not r.ok
    assert r.reason.startswith("Bochs: triple fault:"), r.reason
    assert "triple fault next" in r.serial
    assert_no_leftovers(r)


def test_a_marker_that_never_comes_times_out_and_bochs_is_stopped(hang_image, run_dir,
                                                                   assert_no_leftovers):
    r = boot(hang_image, emulator="bochs", timeout=20, expect=["NEVER PRINTED"], run_dir=run_dir)
    assert not r.ok
    assert r.reason == "timeout after 20 s without 'NEVER PRINTED'"
    assert_no_leftovers(r)


def test_bad_images_are_refused_before_bochs_starts(tmp_path, no_esp_image):
    with pytest.raises(UsageError, match="no such image"):
        boot(tmp_path / "nope.img", emulator="bochs")
    with pytest.raises(UserError, match="no EFI System Partition"):
        boot(no_esp_image, emulator="bochs", run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("line, verdict", [
    ("00710877674p[ACPI  ] >>PANIC<< ACPI control: soft power off", ("power-off", False)),
    ("01234567890e[VMX   ] VMFAIL: VMCS invalid host TR selector",
     ("Bochs: VMFAIL: VMCS invalid host TR selector", True)),
    ("01234567890e[CPU1  ] VMENTER FAIL: VMCS SMI blocked when not in SMM mode",
     ("Bochs: VMENTER FAIL: VMCS SMI blocked when not in SMM mode", True)),
    ("00123456789p[CPU0  ] >>PANIC<< exception(): 3rd (13) exception with no resolution",
     ("Bochs: triple fault: >>PANIC<< exception(): 3rd (13) exception with no resolution", True)),
    ("00123456789p[MEM0  ] >>PANIC<< allocate_block: out of memory",
     ("Bochs: PANIC: >>PANIC<< allocate_block: out of memory", True)),
    ("00450922360e[CPU0  ] RDMSR: Unknown register 0x17", None),
])
def test_bochs_log_lines_are_judged(line, verdict):
    assert judge_bochs_log_line(line) == verdict


def test_missing_firmware_names_its_debian_package(monkeypatch, tmp_path, banner_image):
    import uefi_hv.emulate as emulate

    table = {"bochs": {"rom": {"path": str(tmp_path / "OVMF.fd"), "package": "ovmf",
                               "address": "0xffe00000"},
                       "vgarom": {"path": str(tmp_path / "VGABIOS"), "package": "vgabios"}}}
    monkeypatch.setattr(emulate, "_firmware_table", lambda: table)
    with pytest.raises(MissingTool, match="apt-get install ovmf") as caught:
        boot(banner_image, emulator="bochs", run_dir=tmp_path / "run")
    assert caught.value.package == "ovmf"
    assert not (tmp_path / "run").exists()

"""The OS model takes the machine over like a kernel: ExitBootServices,
SetVirtualAddressMap, its own GDT/IDT/page tables, and the AP started twice
with INIT-SIPI-SIPI. Without uefi-hv it proves those mechanics; chained
behind uefi-hv it proves the hypervisor survives them on both CPUs."""

from __future__ import annotations

import re

import pytest

from uefi_hv.emulate import boot
from uefi_hv.image import make_image

from oskit.fixtures import hypervisor_dir, osmodel_efi, osmodel_x2apic_efi  # noqa: F401 (fixtures)
from oskit.harness import assert_run_ok, chained_image, require_chain
from oskit.osmodel import (FAIL, MECHANICS_PASS, PASS, assert_aps_started_twice, assert_real_init_sipi_exits,
                           assert_task_switch_exits,
                           build_osmodel, verdicts)

TAKEOVER = ("OSMODEL: ExitBootServices done",
            "OSMODEL: SetVirtualAddressMap done",
            "OSMODEL: own GDT, IDT and page tables loaded")


@pytest.mark.bochs
def test_without_the_hypervisor_the_model_takes_over_two_cpus_in_bochs(
        osmodel_efi, tmp_path, run_dir, assert_no_leftovers):
    image = make_image(osmodel_efi, tmp_path / "osmodel.img")
    r = boot(image, emulator="bochs", cpus=2, timeout=60, fail=[FAIL], run_dir=run_dir)
    assert_run_ok(r)
    assert r.reason == "clean power-off"        # ResetSystem after SetVirtualAddressMap
    for step in TAKEOVER:
        assert step in r.serial
    assert "hypervisor=0 vmx=1" in r.serial     # Bochs's own CPU, VMX visible
    assert_aps_started_twice(r.serial, cpus=2)
    assert verdicts(r.serial) == [MECHANICS_PASS]
    assert_no_leftovers(r)


@pytest.mark.qemu
def test_without_the_hypervisor_the_model_takes_over_two_cpus_in_qemu(
        osmodel_efi, tmp_path, run_dir, assert_no_leftovers):
    image = make_image(osmodel_efi, tmp_path / "osmodel.img")
    r = boot(image, emulator="qemu", cpus=2, timeout=60, fail=[FAIL], run_dir=run_dir)
    assert_run_ok(r)
    assert r.reason == "clean power-off"
    for step in TAKEOVER:
        assert step in r.serial
    assert_aps_started_twice(r.serial, cpus=2)
    assert verdicts(r.serial) == [MECHANICS_PASS]
    assert_no_leftovers(r)


@pytest.mark.qemu
def test_an_exception_after_the_takeover_is_reported_on_com1(tmp_path, run_dir,
                                                             assert_no_leftovers):
    efi = build_osmodel(tmp_path / "fault.efi", fault_test=True)
    image = make_image(efi, tmp_path / "fault.img")
    r = boot(image, emulator="qemu", cpus=1, timeout=60,
             expect=[r"OSMODEL: FAIL: exception vector \d+"], run_dir=run_dir)
    assert_run_ok(r)
    assert re.search(r"^OSMODEL: FAIL: exception vector 6, error code 0x0, at RIP 0x[0-9a-f]+ "
                     r"on APIC 0$", r.serial, re.M), r.serial
    assert_no_leftovers(r)


@pytest.mark.bochs
def test_under_the_hypervisor_both_cpus_see_it_through_the_os_takeover(
        hypervisor_dir, osmodel_efi, tmp_path, run_dir, assert_no_leftovers):
    image = chained_image(hypervisor_dir, osmodel_efi, tmp_path / "chained.img")
    r = boot(image, emulator="bochs", cpus=2, timeout=60, fail=[FAIL], run_dir=run_dir)
    require_chain(r.serial)
    assert "uefi-hv: 2 of 2 CPU(s) virtualised" in r.serial
    # The verdict line first: the run may end "ok" on the power-off that
    # follows it (a failure marker just before a power-off can be missed).
    found = verdicts(r.serial)
    assert found == [PASS], f"{r}; verdicts {found}"
    assert_run_ok(r)
    for step in TAKEOVER:
        assert step in r.serial
    # Ring 0 on each CPU: the signature, VMX hidden, and the ping answered by
    # the hypervisor's instance on that CPU.
    assert r.serial.count("hypervisor=1 vmx=0; leaf 0x40000000: 'UefiHvUefiHv'") == 3
    assert "OSMODEL: BSP: VMCALL ping answered, hypervisor CPU 0" in r.serial
    assert_aps_started_twice(r.serial, cpus=2, hypervisor=True)
    assert_real_init_sipi_exits(r.serial, cpus=2)
    assert_task_switch_exits(r.serial, cpus=2)
    # The memory the hypervisor keeps (VMCALL GET_RESIDENT_RANGES) is runtime
    # memory in the map the OS took at ExitBootServices: one line per range.
    summary = re.search(r"^OSMODEL: BSP: all (\d+) uefi-hv ranges \((\d+) KiB\) are runtime "
                        r"memory in the OS's memory map$", r.serial, re.M)
    assert summary, r.serial[-3000:]
    ranges = re.findall(r"^OSMODEL: BSP: uefi-hv range 0x[0-9a-f]+-0x[0-9a-f]+ \((\d+) KiB\) lies in "
                        r"EfiRuntimeServices(?:Code and Data|Code|Data) in the OS's memory map$",
                        r.serial, re.M)
    assert len(ranges) == int(summary.group(1)) >= 1
    assert sum(map(int, ranges)) == int(summary.group(2))
    # ... and it is all of it: what the hypervisor said it keeps at start-up.
    kept = re.search(r"resident memory (\d+) KiB per CPU \+ (\d+) KiB shared \+ (\d+) KiB code",
                     r.serial)
    assert kept, "no 'resident memory' line"
    per_cpu, shared, code = map(int, kept.groups())
    assert int(summary.group(2)) == 2 * per_cpu + shared + code
    # Isolation: from the OS, none of those pages shows the hypervisor's bytes,
    # a store into each is refused (#GP) and counted as one EPT violation, and
    # the VMCALLs that would map or remove the hypervisor are refused.
    assert "uefi-hv: cpu 0: ExitBootServices: all of the hypervisor's memory is hidden from the guest" in r.serial
    isolated = re.search(r"^OSMODEL: BSP: the hypervisor's (\d+) pages read as zeros; a store into each raised "
                         r"#GP, (\d+) EPT violations counted$", r.serial, re.M)
    assert isolated and int(isolated.group(1)) == int(isolated.group(2)) == int(summary.group(2)) // 4, \
        r.serial[-3000:]
    assert "OSMODEL: BSP: after ExitBootServices GET_RESIDENT_RANGES and DEVIRTUALIZE are refused" in r.serial
    # A GDT the OS points into the hypervisor's memory is a zeroed one.
    assert re.search(r"^OSMODEL: BSP: a GDT in the hypervisor's memory \(0x[0-9a-f]+\) holds no descriptor, "
                     r"as a zeroed one$", r.serial, re.M), r.serial[-3000:]
    # So does an IDT: INT 32 with its gate there raises #GP(32 * 8 + 2), as
    # with its gate in a zeroed page.
    assert re.search(r"^OSMODEL: BSP: an IDT in the hypervisor's memory \(0x[0-9a-f]+\) holds no gate: INT 32 "
                     r"raised #GP\(0x102\), as with a zeroed one$", r.serial, re.M), r.serial[-3000:]
    assert_no_leftovers(r)


@pytest.mark.bochs
@pytest.mark.parametrize("cpus", [2, 4])
def test_under_the_hypervisor_the_model_starts_the_aps_in_x2apic_mode(
        hypervisor_dir, osmodel_x2apic_efi, tmp_path, run_dir, cpus, assert_no_leftovers):
    """INIT and SIPI through WRMSR 0x830, which no EPT protection can see:
    each AP takes them as a CPU does, as INIT and SIPI VM exits."""
    image = chained_image(hypervisor_dir, osmodel_x2apic_efi, tmp_path / "chained.img")
    r = boot(image, emulator="bochs", cpus=cpus, timeout=60 + 15 * cpus, fail=[FAIL], run_dir=run_dir)
    require_chain(r.serial)
    assert f"uefi-hv: {cpus} of {cpus} CPU(s) virtualised" in r.serial, r
    assert "OSMODEL: BSP: local APIC switched to x2APIC mode" in r.serial, r
    found = verdicts(r.serial)
    assert found == [PASS], f"{r}; verdicts {found}"
    assert_aps_started_twice(r.serial, cpus=cpus, hypervisor=True)
    assert_real_init_sipi_exits(r.serial, cpus=cpus)
    assert_task_switch_exits(r.serial, cpus=cpus)
    assert_run_ok(r)
    assert_no_leftovers(r)


@pytest.mark.qemu
@pytest.mark.parametrize("cpus", [2, 4])
def test_under_the_svm_hypervisor_the_model_takes_over_in_qemu(
        hypervisor_dir, osmodel_efi, tmp_path, run_dir, cpus, assert_no_leftovers):
    """The same takeover on QEMU's EPYC, under the SVM backend: the APs are
    started twice through the emulated APIC page, and the hypervisor's memory
    is hidden in nested paging as it is in EPT."""
    image = chained_image(hypervisor_dir, osmodel_efi, tmp_path / "chained.img")
    r = boot(image, emulator="qemu", cpus=cpus, cpu_model="EPYC", timeout=120, fail=[FAIL], run_dir=run_dir)
    require_chain(r.serial)
    assert "uefi-hv: backend SVM (AMD-V)" in r.serial
    assert f"uefi-hv: {cpus} of {cpus} CPU(s) virtualised" in r.serial, r
    found = verdicts(r.serial)
    assert found == [PASS], f"{r}; verdicts {found}"
    assert_run_ok(r)
    for step in TAKEOVER:
        assert step in r.serial
    assert r.serial.count("hypervisor=1 vmx=0; leaf 0x40000000: 'UefiHvUefiHv'") == 1 + 2 * (cpus - 1)  # each AP twice
    assert_aps_started_twice(r.serial, cpus=cpus, hypervisor=True)
    assert "uefi-hv: the hypervisor's memory is hidden from the guest in nested paging" in r.serial
    assert "uefi-hv: cpu 0: ExitBootServices: all of the hypervisor's memory is hidden from the guest" in r.serial
    summary = re.search(r"^OSMODEL: BSP: all (\d+) uefi-hv ranges \((\d+) KiB\) are runtime "
                        r"memory in the OS's memory map$", r.serial, re.M)
    assert summary, r.serial[-3000:]
    # Counted under the meaning of a nested page fault: "EPT violation".
    isolated = re.search(r"^OSMODEL: BSP: the hypervisor's (\d+) pages read as zeros; a store into each raised "
                         r"#GP, (\d+) EPT violations counted$", r.serial, re.M)
    assert isolated and int(isolated.group(1)) == int(isolated.group(2)) == int(summary.group(2)) // 4, \
        r.serial[-3000:]
    assert "OSMODEL: BSP: after ExitBootServices GET_RESIDENT_RANGES and DEVIRTUALIZE are refused" in r.serial
    assert_no_leftovers(r)


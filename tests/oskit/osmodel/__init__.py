"""The OS model (osmodel.c, osmodel.S): an EFI program that takes the machine
over like an OS kernel and checks uefi-hv from ring 0 on every CPU.

    build_osmodel(output, spec=dsl/default.hv) -> Path to the .efi
"""

from __future__ import annotations

import re
from pathlib import Path

from uefi_hv.build import build_efi

from oskit.initramfs import DEFAULT_SPEC, OSKIT, probe_defines

SOURCES = (Path(__file__).resolve().parent / "osmodel.c",
           Path(__file__).resolve().parent / "osmodel.S")

#: Console lines of the model's verdicts.
PASS = "OSMODEL: PASS"
MECHANICS_PASS = "OSMODEL: MECHANICS PASS, hypervisor absent"
FAIL = "OSMODEL: FAIL"


def build_osmodel(output: Path, spec: Path = DEFAULT_SPEC, fault_test: bool = False,
                  x2apic: bool = False) -> Path:
    """Build the OS model for the hypervisor of `spec` (its signature and
    the VMCALL numbers) into the EFI application `output`. `fault_test`:
    it executes UD2 once it runs on its own IDT (the exception report's test).
    `x2apic`: it switches the BSP's local APIC to x2APIC mode before it starts
    the APs, so that INIT and SIPI go through MSR 0x830."""
    flags = probe_defines(spec) + (["-DOSMODEL_FAULT_TEST"] if fault_test else []) \
        + (["-DOSMODEL_X2APIC"] if x2apic else [])
    return build_efi(list(SOURCES), Path(output), include_dirs=[OSKIT], extra_cflags=flags)


def verdicts(serial: str) -> list[str]:
    """The model's verdict lines (PASS, MECHANICS PASS, FAIL), in order."""
    return re.findall(r"^OSMODEL: (?:PASS|MECHANICS PASS.*|FAIL.*)$", serial, re.M)


def assert_aps_started_twice(serial: str, cpus: int, hypervisor: bool = False) -> None:
    """The model started every AP (APIC ids 1..cpus-1 in the emulators), one
    at a time, in both rounds; under the hypervisor each AP's ping was
    answered by the hypervisor's instance on that CPU."""
    assert f"OSMODEL: MP services: {cpus} CPU(s), the BSP and {cpus - 1} AP(s)" in serial
    if cpus == 1:
        assert "OSMODEL: BSP: the only CPU: no AP to start" in serial
    for round_ in (1, 2):
        for apic in range(1, cpus):
            assert re.search(rf"^OSMODEL: AP round {round_}: APIC {apic}, ", serial, re.M), \
                (round_, apic)
            assert f"OSMODEL: BSP: APIC {apic} reported, round {round_}" in serial
            assert f"OSMODEL: BSP: APIC {apic}: task switch to TSS B and back by IRET, round {round_}: ok" \
                in serial
        assert serial.count(f"OSMODEL: AP round {round_}: in long mode") == cpus - 1
        if hypervisor:
            for cpu in range(1, cpus):
                assert (f"OSMODEL: AP round {round_}: VMCALL ping answered, hypervisor CPU {cpu}"
                        in serial), (round_, cpu)


def init_sipi_exits(serial: str) -> dict[tuple[int, int], tuple[int, int]]:
    """(round, APIC id) -> (INIT exits, SIPI exits) the hypervisor counted on
    that AP when it ran in that round (VMCALL GET_EXIT_COUNT)."""
    found = re.findall(r"^OSMODEL: AP round (\d+): APIC (\d+): the hypervisor saw INIT exits (\d+), "
                       r"SIPI exits (\d+) on this CPU$", serial, re.M)
    return {(int(r), int(a)): (int(i), int(s)) for r, a, i, s in found}


def assert_real_init_sipi_exits(serial: str, cpus: int) -> None:
    """Each of the model's INIT-SIPI-SIPI reached each AP as exactly one INIT
    VM exit and one SIPI VM exit (the second SIPI finds the AP running, and
    a running CPU ignores it), counted between the two rounds."""
    exits = init_sipi_exits(serial)
    for apic in range(1, cpus):
        assert (1, apic) in exits and (2, apic) in exits, (apic, exits)
        (init1, sipi1), (init2, sipi2) = exits[1, apic], exits[2, apic]
        assert init1 >= 1 and sipi1 >= 1, (apic, exits)
        assert (init2 - init1, sipi2 - sipi1) == (1, 1), (apic, exits)


def assert_task_switch_exits(serial: str, cpus: int) -> None:
    """Each AP's task switch there and back (CALL to TSS B, IRET) was two
    task-switch VM exits in each round, the hypervisor's to do."""
    found = re.findall(r"^OSMODEL: AP round (\d+): APIC (\d+): the hypervisor saw task-switch exits (\d+) "
                       r"on this CPU$", serial, re.M)
    exits = {(int(r), int(a)): int(n) for r, a, n in found}
    for apic in range(1, cpus):
        assert (exits.get((1, apic)), exits.get((2, apic))) == (2, 4), (apic, exits)

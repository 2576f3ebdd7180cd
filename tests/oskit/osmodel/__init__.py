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


def build_osmodel(output: Path, spec: Path = DEFAULT_SPEC, fault_test: bool = False) -> Path:
    """Build the OS model for the hypervisor of `spec` (its signature and
    the VMCALL numbers) into the EFI application `output`. `fault_test`:
    it executes UD2 once it runs on its own IDT (the exception report's test)."""
    flags = probe_defines(spec) + (["-DOSMODEL_FAULT_TEST"] if fault_test else [])
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
        assert serial.count(f"OSMODEL: AP round {round_}: in long mode") == cpus - 1
        if hypervisor:
            for cpu in range(1, cpus):
                assert (f"OSMODEL: AP round {round_}: VMCALL ping answered, hypervisor CPU {cpu}"
                        in serial), (round_, cpu)

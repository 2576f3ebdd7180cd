"""The seed, read off the hypervisor's sources (generated and runtime/hv): no path of the hypervisor built
from examples/interrupts.hv VMREADs HOST_IDTR_BASE, and every host IDT gate
it looks up is found through the global host_idt_base, in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uefi_hv import DSL_DIR
from uefi_hv.generate import generate_hypervisor, runtime_sources
from uefi_hv.lower import lower
from uefi_hv.parse import load_spec

SPEC = DSL_DIR / "examples" / "interrupts.hv"
HOST_IDTR_BASE = 0x6C0E                    # SDM Appendix B.4.4 "Natural-Width Host-State Fields", index 7

#: A VMREAD of HOST_IDTR_BASE in C, by name or by encoding.
C_VMREAD = re.compile(r"vmread\s*\(\s*(HOST_IDTR_BASE|0x0*6c0e)\b", re.I)
#: The encoding loaded for an assembly VMREAD (AT&T: `mov $0x6c0e, %reg`).
ASM_ENCODING = re.compile(r"\$\s*(0x0*6c0e|27662|HOST_IDTR_BASE)\b", re.I)
#: An IDT gate address: BASE + 16 * VECTOR or BASE + VECTOR * 16.
GATE_ADDRESS = re.compile(r"\(\s*([^()+]+?)\s*\+\s*(?:16\s*\*\s*\w+|\w+\s*\*\s*16)\s*\)")


def hypervisor_sources(hv_dir: Path) -> list[Path]:
    """Every source of the hypervisor: generated into `hv_dir`, and runtime/hv."""
    return sorted(hv_dir.iterdir()) + runtime_sources("hv")


def idt_base_violations(hv_dir: Path) -> list[str]:
    """What in the hypervisor's sources breaks the seed, one line each."""
    found = []
    for path in hypervisor_sources(hv_dir):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//")[0] if path.suffix != ".S" else line.split("#")[0]
            where = f"{path.name}:{n}: {line.strip()}"
            if path.suffix in (".c", ".h") and C_VMREAD.search(code):
                found.append(f"VMREAD of HOST_IDTR_BASE: {where}")
            if path.suffix == ".S" and "vmread" in code.lower() and ASM_ENCODING.search(code):
                found.append(f"VMREAD of HOST_IDTR_BASE: {where}")
            if path.suffix == ".S" and ASM_ENCODING.search(code):
                found.append(f"HOST_IDTR_BASE's encoding loaded in assembly: {where}")
            for m in GATE_ADDRESS.finditer(code):
                if m.group(1) != "HV_DISPATCH_IDT_BASE":
                    found.append(f"a gate address from {m.group(1)!r}, not the global: {where}")
    return found


@pytest.fixture(scope="module")
def default_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("irq-src")
    generate_hypervisor(str(SPEC), out)
    return out / "hv"


def test_no_path_vmreads_host_idtr_base_or_finds_a_gate_elsewhere(default_build):
    assert idt_base_violations(default_build) == []


def test_the_gate_is_looked_up_in_one_place_through_the_global(default_build):
    lookups = [(p.name, line.strip()) for p in hypervisor_sources(default_build)
               for line in p.read_text().splitlines() if GATE_ADDRESS.search(line.split("//")[0])]
    assert [(name, "HV_DISPATCH_IDT_BASE" in line) for name, line in lookups] == [("interrupts.c", True)]
    # ... and the plan makes that base the spec's global.
    assert lower(load_spec(SPEC)).neutral.dispatch_idt_global == "host_idt_base"


def test_the_scan_catches_the_benchmark_variant_that_vmreads(tmp_path):
    """The benchmark's build variant (idt_base_from_vmcs) is exactly what the
    scan exists to catch: it must find it."""
    generate_hypervisor(str(SPEC), tmp_path, idt_base_from_vmcs=True)
    found = idt_base_violations(tmp_path / "hv")
    assert any(f.startswith("VMREAD of HOST_IDTR_BASE: hv.h:") for f in found), found


def test_the_option_wants_and_requires_both_controls():
    """`option external_interrupts = on`: pin.external_interrupt_exiting (bit
    0) and exit.ack_interrupt_on_exit (bit 15) are wanted and required, so a
    CPU without them is named at run time instead of running without them."""
    groups = {g["name"]: (g["wanted"], g["required"]) for g in lower(load_spec(SPEC)).vmx.control_groups}
    for group, bit in (("pin", 0), ("exit", 15)):
        wanted, required = groups[group]
        assert wanted >> bit & 1 and required >> bit & 1, (group, hex(wanted), hex(required))

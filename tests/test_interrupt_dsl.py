"""`dispatch_idt { own = ... }`: the vectors a spec keeps for the hypervisor.
The parser takes interrupt vectors (32..255), each once, and the generated
host IDT points their gates at the hypervisor's own handler."""

from __future__ import annotations

import re

import pytest

from uefi_hv import DSL_DIR
from uefi_hv.generate import generate_hypervisor
from uefi_hv.parse import SpecError, load_spec

EXAMPLE = (DSL_DIR / "examples" / "interrupts.hv").read_text()
DISPATCH = "exit external_interrupt -> dispatch_idt { idt_base = host_idt_base }"


def owning(tmp_path, own: str):
    """examples/interrupts.hv with `own = ...` on its dispatch_idt line."""
    assert DISPATCH in EXAMPLE
    spec = tmp_path / "own.hv"
    spec.write_text(EXAMPLE.replace(DISPATCH, DISPATCH.replace(" }", f"; own = {own} }}")))
    return spec


def test_owned_vectors_are_parsed_sorted(tmp_path):
    spec = load_spec(owning(tmp_path, "0xF8, 0x40"))
    handler = next(h for h in spec.exits if h.action == "dispatch_idt")
    assert handler.options == {"idt_base": "host_idt_base", "own": [0x40, 0xF8]}


@pytest.mark.parametrize("own, message", [
    ("0x10", r"own\.hv:14:\d+: error: own lists interrupt vectors, 32 to 255 \(0-31 are exceptions, "
             r"SDM 6\.2\), e\.g\. own = 0xF8; not 0x10"),
    ("256", r"not 0x100"),
    ("host_idt_base", r"not host_idt_base"),
    ("0xF8, 0xF8", r"vector 0xf8 is listed twice"),
])
def test_a_bad_vector_list_is_named(tmp_path, own, message):
    with pytest.raises(SpecError, match=message):
        load_spec(owning(tmp_path, own))


def test_owned_vectors_get_the_hypervisors_gate(tmp_path):
    generate_hypervisor(str(owning(tmp_path, "0xF8, 0x40")), tmp_path / "out")
    # runtime/hv/interrupts.{c,S} give the owned vectors their gate when spec.h says so
    spec_h = (tmp_path / "out" / "hv" / "spec.h").read_text()
    assert re.search(r"^#define HV_OWNED_VECTORS +1$", spec_h, re.M)
    assert re.search(r"^#define HV_OWNED_VECTOR_MASKS +\{ 0x0ULL, 0x1ULL, 0x0ULL, 0x100000000000000ULL \}$",
                     spec_h, re.M)
    check = (tmp_path / "out" / "hvcheck" / "hvcheck.h").read_text()
    assert re.search(r"#define OWNED_VECTOR +0xF8\b", check)
    assert re.search(r"#define IPI_VECTOR +0xF0\b", check)


def test_the_shipped_example_owns_nothing(tmp_path):
    generate_hypervisor(str(DSL_DIR / "examples" / "interrupts.hv"), tmp_path)
    assert re.search(r"^#define HV_OWNED_VECTORS +0$", (tmp_path / "hv" / "spec.h").read_text(), re.M)

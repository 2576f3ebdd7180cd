"""`dispatch_idt { own = ... }`: the vectors a spec keeps for the hypervisor.
The parser takes interrupt vectors (32..255), each once, and the generated
host IDT points their gates at the hypervisor's own handler."""

from __future__ import annotations

import pytest

from uefi_hv import DSL_DIR
from uefi_hv.lower import lower
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
    # runtime/hv/interrupts.{c,S} give the owned vectors their gate from these
    plan = lower(load_spec(owning(tmp_path, "0xF8, 0x40"))).neutral
    assert plan.owned_vectors == [0x40, 0xF8]
    assert plan.owned_masks == [0, 1, 0, 1 << (0xF8 - 192)]
    # hvcheck's own vectors stay clear of them: the highest free ones
    assert (plan.guest_probe_vector, plan.guest_raise_vector) == (0xF0, 0xEF)


def test_the_shipped_example_owns_nothing():
    plan = lower(load_spec(DSL_DIR / "examples" / "interrupts.hv")).neutral
    assert plan.owned_vectors == [] and plan.owned_masks == [0, 0, 0, 0]

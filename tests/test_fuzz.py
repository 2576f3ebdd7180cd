"""Whatever the input, parse + check ends in diagnostics or a spec, never a
traceback: property-based, over mutated valid specs and random text."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uefi_hv import DSL_DIR
from uefi_hv.check import check_spec, runtime_rules
from uefi_hv.parse import SpecError, parse_text

DEFAULT = (DSL_DIR / "default.hv").read_text()
INTERRUPTS = (DSL_DIR / "examples" / "interrupts.hv").read_text()

# Words of the language and of the catalogue, and things around them.
WORDS = [
    "import", "hypervisor", "const", "global", "option", "fields", "index", "when", "control_bits", "bit",
    "exit_reasons", "vm_instruction_errors", "msrs", "host_state", "once", "per_cpu", "read", "msr", "rdmsr",
    "symbol", "controls", "require", "prefer", "msr_bitmap", "write", "exit", "->", "..", "{", "}", "(", ")",
    "=", ",", ";", "#", "//", '"', '"vmcs.hv"', '"default.hv"', '"x"', '"\\"', "\n",
    "0", "1", "0x08", "0x10000", "0xFFFFFFFFFFFFFFFF", "0x1_0000_0000_0000_0000", "9" * 30, "0" * 50,
    "HOST_IDTR_BASE", "HOST_CS_SELECTOR", "HOST_TR_SELECTOR", "HOST_RIP", "HOST_CR4", "HOST_IA32_PAT",
    "GUEST_RIP", "host_idt_base", "sidt.base", "sgdt.base", "cr0", "cr4", "IA32_EFER", "vmexit_entry",
    "host_stack_top", "proc2.enable_ept", "proc2.unrestricted_guest", "exit.ack_interrupt_on_exit",
    "pin.external_interrupt_exiting", "exit.host_address_space_size", "external_interrupts", "chain",
    "on", "off", "cpuid", "dispatch_idt", "idt_base", "hide", "vmx", "inject_ud", "external_interrupt",
    "interrupt_window", "triple_fault", "feature_control_locked", "inject_gp", "control", "guest", "host",
    "natural", "16", "64", "vmcb", "save", "at", "size", "intercepts", "svm_exit_codes", "intercept", "means",
    "event_injection", "bits", "event_types", '"vmcb.hv"', "misc1.cpuid", "INTERCEPT_MISC1", "RIP",
    "vmrun_checks", "apm", '"15.5.1"', "kind", "forbidden", "mbz", "field", "mask", "set", "clear", "and",
    "exceptions", "EFER", "misc2.vmrun",
    "\t", "\u00e9", "\u0000", "\ufeff", "\r", "\\",
]

tokens = st.sampled_from(WORDS)
token_text = st.lists(tokens, max_size=30).map(" ".join)


@st.composite
def mutated(draw):
    text = draw(st.sampled_from([DEFAULT, INTERRUPTS]))
    for _ in range(draw(st.integers(1, 4))):
        n = len(text)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 40)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + " " + draw(tokens) + " " + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.one_of(tokens, st.text(string.printable, max_size=8))) + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


def parse_and_check(text):
    try:
        spec = parse_text(text, "fuzz.hv", DSL_DIR / "fuzz.hv")
        diags = check_spec(spec)
        rules = runtime_rules(spec)
    except SpecError as e:
        message = str(e)            # formatting the diagnostics must not fail either
        assert message and e.diagnostics
        for d in e.diagnostics:
            assert d.loc is not None and d.loc.line >= 1 and d.loc.col >= 1
        return
    for d in diags:
        assert str(d).startswith(f"{d.loc.file}:{d.loc.line}:")
    assert rules


def fast(n):
    """n examples, no deadline (the first example loads the grammar), no example database."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@fast(1400)
@given(mutated())
def test_mutated_valid_specs_never_raise_a_traceback(text):
    parse_and_check(text)


@fast(400)
@given(token_text)
def test_token_soup_never_raises_a_traceback(text):
    parse_and_check('import "vmcs.hv"\n' + text)


@fast(300)
@given(st.text(max_size=200))
def test_random_text_never_raises_a_traceback(text):
    parse_and_check(text)

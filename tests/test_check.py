"""The SDM checks: each one fails on a spec that breaks its rule and passes
on the default spec; diagnostics name the check, its section and the line."""

import re
import subprocess
import sys

import pytest

from uefi_hv import DSL_DIR, ROOT
from uefi_hv import model as m
from uefi_hv.check import CHECKS, check_spec, checks_markdown, load_and_check, runtime_rules, DOC_BEGIN, DOC_END
from uefi_hv.parse import SpecError, load_spec, parse_text

DEFAULT = (DSL_DIR / "default.hv").read_text()
VMCB = (DSL_DIR / "vmcb.hv").read_text()


def variant(replace=(), append=""):
    """The default spec with some text replaced (each must be there) and some appended."""
    text = DEFAULT
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text + "\n" + append


def diagnose(text, name="spec.hv"):
    return check_spec(parse_text(text, name, DSL_DIR / name))


def vmcb_variant(old, new):
    """The default spec with dsl/vmcb.hv in place of its import, `old` replaced by `new` in it."""
    assert old in VMCB, old
    return variant([('import "vmcb.hv"', VMCB.replace(old, new, 1))])


# check id -> a spec that breaks the rule
VIOLATIONS = {
    "HOST-SOURCE": variant([("    HOST_CR0               = read(cr0)              per_cpu\n", "")]),
    "HOST-SEL-RPL-TI": variant([("const HOST_DS = 0x10", "const HOST_DS = 0x13")]),
    "HOST-CS-NONZERO": variant([("const HOST_CS = 0x08", "const HOST_CS = 0")]),
    "HOST-TR-NONZERO": variant([("const HOST_TR = 0x18", "const HOST_TR = 0")]),
    "HOST-SS-NULL": variant([("HOST_SS_SELECTOR = HOST_DS", "HOST_SS_SELECTOR = 0"),
                             ("exit.host_address_space_size, ", "")]),
    "HOST-64BIT": variant([("exit.host_address_space_size, ", "")]),
    "HOST-CR4-PAE": variant([("read(cr4)", "0x2000")]),
    "HOST-CR3-WIDTH": variant([("HOST_CR3               = symbol(host_cr3)", "HOST_CR3 = 0x10000000000000")]),
    "HOST-BASE-CANONICAL": variant([("HOST_FS_BASE           = 0", "HOST_FS_BASE = 0x0000800000000000")]),
    "HOST-SYSENTER-CANONICAL": variant([("HOST_IA32_SYSENTER_ESP = 0", "HOST_IA32_SYSENTER_ESP = 0x8000000000000000")]),
    "HOST-RIP-CANONICAL": variant([("symbol(vmexit_entry)", "0x0000900000000000")]),
    "HOST-EFER": variant([("read(msr IA32_EFER)  per_cpu", "0x1")]),
    "HOST-PAT": variant([("read(msr IA32_PAT)   per_cpu", "0x0202")], "controls { prefer exit.load_ia32_pat }"),
    "CTL-SECONDARY": variant([("require proc.use_msr_bitmaps, proc.activate_secondary_controls",
                               "require proc.use_msr_bitmaps")]),
    "CTL-UG-EPT": variant([("proc2.enable_ept, ", "")]),
    "CTL-ACK-EXTINT": variant(append="controls { prefer exit.ack_interrupt_on_exit }"),
    "CTL-VIRTUAL-NMI": variant([("    require pin.nmi_exiting\n", "")]),
    "CTL-POSTED-INTR": variant(append="controls { prefer pin.process_posted_interrupts }"),
    "CTL-APIC-VIRT": variant(append="controls { prefer proc2.virtualize_x2apic_mode }"),
    "CTL-PREEMPT-SAVE": variant(append="controls { prefer exit.save_vmx_preemption_timer_value }"),
    "CTL-ENTRY-SMM": variant(append="controls { prefer entry.entry_to_smm }"),
    "MSR-BITMAP-CONTROL": variant([("require proc.use_msr_bitmaps, ", "require ")]),
    "MSR-BITMAP-RANGE": variant(append="msr_bitmap { read 0x40000000 = inject_gp }"),
    "MSR-HANDLER": variant([("exit rdmsr, wrmsr -> msr", "")]),
    "MSR-OVERLAP": variant(append="msr_bitmap { read IA32_VMX_MISC = inject_gp }"),
    "EXIT-UNHANDLED": variant(append="controls { prefer proc.hlt_exiting }"),
    "EXIT-CONTROL": variant(append="exit rdtsc -> inject_ud"),
    "EXTINT-DISPATCH": variant(
        append="controls { require pin.external_interrupt_exiting, exit.ack_interrupt_on_exit }"),
    "EXTINT-WINDOW": variant(append="controls { require pin.external_interrupt_exiting, exit.ack_interrupt_on_exit }\n"
                                    "exit external_interrupt -> dispatch_idt { idt_base = host_idt_base }"),
    "SEED-IDT-GLOBAL": variant(append="global firmware_idt = symbol(host_idt)\n"
                                      "exit external_interrupt -> dispatch_idt { idt_base = firmware_idt }"),
    "VALUE-WIDTH": variant([("HOST_ES_SELECTOR = HOST_DS", "HOST_ES_SELECTOR = 0x10000")]),
    "DUP-ASSIGN": variant(append="host_state { HOST_FS_BASE = 0 }"),
    "GLOBAL-BEFORE-DEF": variant([("global host_idt_base = sidt.base", "")], "global host_idt_base = sidt.base"),
    "SYM-PER-CPU": variant([("symbol(host_stack_top) per_cpu", "symbol(host_stack_top)")]),
    "GLOBAL-UNUSED": variant(append="global boot_cr3 = read(cr3)"),
    "ID-SIGNATURE": variant([('signature "UefiHvUefiHv"', 'signature "UefiHv"')]),
    "ID-VERSION": variant([('version   "0.1.0"', 'version "0.1.0-rc1"')]),
    "LOG-RATE": variant([("option external_interrupts = off",
                          "option external_interrupts = off\noption log_rate = 500")]),
    "ICR-EMULATION": variant([("exit sipi\n", "")], "option apic_icr_emulation = on"),
    "MICROCODE-UPDATE": variant([("    write IA32_BIOS_UPDT_TRIG = microcode_update\n", "")]),
    "SELF-PROTECTION": variant(append='option self_protection_violation = "ignore"'),
    # the VMCB catalogue (dsl/vmcb.hv, which default.hv imports)
    "VMCB-AREA": variant(append="vmcb save at 0x400 { PAST_THE_PAGE at 0xC00 size 8 }"),
    "VMCB-ALIGN": variant(append="vmcb control at 0x000 { ODD at 0x3F1 size 4 }"),
    "VMCB-OVERLAP": variant(append="vmcb control at 0x000 { EXITCODE_LOW at 0x070 size 4 }"),
    "SVM-EXIT-CODE": variant(append="svm_exit_codes { cpuid_too = 0x172 intercept misc1.cpuid means cpuid }"),
    # VMRUN's consistency checks (vmrun_checks in dsl/vmcb.hv)
    "VMRUN-LIST": vmcb_variant('    asid            "ASID is equal to zero"\n', '    asid_gone "ASID"\n'),
    "VMRUN-KINDS": vmcb_variant("kind long_mode field EFER mask 0x500", "kind mbz field EFER mask 0x500"),
    "VMRUN-INTERCEPT": vmcb_variant("kind forbidden when misc2.vmrun clear", "kind forbidden when misc2.vmmcall clear"),
    "VMRUN-EVENTINJ": variant(append="event_types { reserved = 5 }"),
}


def test_microcode_update_is_only_for_writes_of_the_update_trigger():
    spec = variant([("    write IA32_BIOS_UPDT_TRIG = microcode_update\n",
                     "    read IA32_BIOS_UPDT_TRIG = microcode_update\n"
                     "    write IA32_BIOS_UPDT_TRIG = microcode_update\n")])
    messages = [d.message for d in diagnose(spec) if d.check_id == "MICROCODE-UPDATE"]
    assert messages == ["microcode_update is only for `write IA32_BIOS_UPDT_TRIG`"]


def test_every_check_has_a_violating_spec():
    assert set(VIOLATIONS) == set(CHECKS)


@pytest.mark.parametrize("check_id", sorted(VIOLATIONS))
def test_a_spec_breaking_the_rule_fails_with_the_check_id_section_and_line(check_id):
    diags = [d for d in diagnose(VIOLATIONS[check_id]) if d.check_id == check_id]
    assert diags, f"{check_id} did not fire"
    info = CHECKS[check_id]
    for d in diags:
        assert d.severity == info.severity
        assert d.loc is not None and d.loc.line >= 1
        text = str(d)
        assert text.startswith(f"{d.loc.file}:{d.loc.line}:{d.loc.col}: {info.severity}[{check_id}, {info.section}]: ")
        assert text.splitlines()[-1].strip() == "^"


CATALOGUES = ("vmcs.hv", "vmcb.hv")        # imported by specs, not specs themselves
SHIPPED_SPECS = sorted(str(p.relative_to(DSL_DIR)) for p in DSL_DIR.rglob("*.hv") if p.name not in CATALOGUES)


def test_the_shipped_specs_are_found():
    assert {"default.hv", "examples/interrupts.hv"} <= set(SHIPPED_SPECS)


@pytest.mark.parametrize("spec", SHIPPED_SPECS)
def test_the_shipped_specs_satisfy_every_check(spec):
    assert check_spec(load_spec(DSL_DIR / spec)) == []


def test_a_handled_exit_needs_its_causing_control_asked_for():
    diags = [d for d in diagnose(VIOLATIONS["EXIT-CONTROL"]) if d.check_id == "EXIT-CONTROL"]
    assert [d.severity for d in diags] == ["error"]
    assert "proc.rdtsc_exiting" in diags[0].message and "`prefer proc.rdtsc_exiting`" in diags[0].message
    assert diagnose(variant(append="controls { prefer proc.rdtsc_exiting }\nexit rdtsc -> inject_ud")) == []


def test_an_exit_with_other_causes_or_a_control_the_runtime_sets_needs_none():
    assert m.EXIT_ACTIONS["cr_access"].causing_controls("cr_access") == ()
    assert m.EXIT_ACTIONS["inject_pending"].causing_controls("interrupt_window") == ()
    assert m.EXIT_ACTIONS["log_shutdown"].causing_controls("ept_violation") == ("proc2.enable_ept",)
    assert m.EXIT_ACTIONS["cpuid"].causing_controls("cpuid") == ()


def test_the_exit_action_registry_names_catalogue_controls_and_reasons():
    catalogue = load_spec(DSL_DIR / "vmcs.hv")
    for control, reasons in m.EXIT_CAUSES.items():
        assert control in catalogue.controls, control
        assert set(reasons) <= set(catalogue.exit_reasons), control
    assert set(m.EXIT_OTHER_CAUSES) <= {r for rs in m.EXIT_CAUSES.values() for r in rs}
    for a in m.EXIT_ACTIONS.values():
        assert set(a.sets) <= set(catalogue.controls), a.name
        assert set(a.sets) <= set(m.EXIT_CAUSES), a.name


@pytest.mark.parametrize("text", [
    # SS may be 0 in a 64-bit host (SDM 28.2.3)
    variant([("HOST_SS_SELECTOR = HOST_DS", "HOST_SS_SELECTOR = 0")]),
    # a high-half address is canonical
    variant([("HOST_FS_BASE           = 0", "HOST_FS_BASE = 0xFFFF800000000000")]),
    # a 64-bit host's EFER: SCE, LME, LMA, NXE
    variant([("read(msr IA32_EFER)  per_cpu", "0xD01")]),
    # the power-on PAT is valid
    variant([("read(msr IA32_PAT)   per_cpu", "0x0007040600070406")], "controls { prefer exit.load_ia32_pat }"),
    # a 16-bit field takes 0xFFFF
    variant([("HOST_IA32_SYSENTER_CS = 0", "HOST_IA32_SYSENTER_CS = 0xFFFFFFFF")]),
    # the seed's interrupt path, wired to the global
    variant([("option external_interrupts = off", "option external_interrupts = on")]),
])
def test_specs_at_the_edge_of_a_rule_pass(text):
    assert [str(d) for d in diagnose(text)] == []


def test_the_interrupt_path_must_read_the_same_global_as_host_idtr_base():
    text = variant([("HOST_IDTR_BASE         = host_idt_base", "HOST_IDTR_BASE = symbol(host_idt)"),
                    ("option external_interrupts = off", "option external_interrupts = on")])
    diags = diagnose(text)
    assert [d.check_id for d in diags if d.severity == "error"] == ["SEED-IDT-GLOBAL"]
    assert "HOST_IDTR_BASE must be the global host_idt_base" in diags[0].message


def test_load_and_check_raises_with_all_errors_and_prints_warnings(tmp_path, capsys):
    bad = tmp_path / "bad.hv"
    bad.write_text(VIOLATIONS["HOST-CS-NONZERO"].replace("const HOST_TR = 0x18", "const HOST_TR = 0"))
    with pytest.raises(SpecError) as e:
        load_and_check(bad)
    assert {d.check_id for d in e.value.diagnostics} >= {"HOST-CS-NONZERO", "HOST-TR-NONZERO"}
    assert e.value.exit_status == 1
    warn = tmp_path / "warn.hv"
    warn.write_text(VIOLATIONS["GLOBAL-UNUSED"])
    spec = load_and_check(warn)
    assert spec.globals[-1].name == "boot_cr3"
    assert "warning[GLOBAL-UNUSED" in capsys.readouterr().err


def test_runtime_rules_are_the_kinds_the_generator_implements():
    rules = runtime_rules(load_spec(DSL_DIR / "default.hv"))
    for r in rules:
        assert r.kind in m.RUNTIME_RULE_KINDS
        assert set(r.args) == set(m.RUNTIME_RULE_KINDS[r.kind]), r
        assert r.section.startswith("SDM")
    kinds = {r.kind for r in rules}
    assert kinds == set(m.RUNTIME_RULE_KINDS) - {"pat_valid"}      # default.hv does not load PAT
    assert len({r.id for r in rules}) == len(rules)
    groups = {r.args["group"]: r.args for r in rules if r.kind == "control_allowed"}
    assert groups["pin"] == {"group": "pin", "capability_msr": 0x481, "true_msr": 0x48D}
    assert groups["proc2"]["true_msr"] is None
    fields = {r.args["field"] for r in rules if r.kind == "canonical"}
    assert fields == {"HOST_FS_BASE", "HOST_GS_BASE", "HOST_GDTR_BASE", "HOST_IDTR_BASE", "HOST_TR_BASE",
                      "HOST_IA32_SYSENTER_ESP", "HOST_IA32_SYSENTER_EIP", "HOST_RIP"}


def test_the_docs_action_table_is_the_action_registry():
    from uefi_hv.check import ACTIONS_DOC_BEGIN, ACTIONS_DOC_END, actions_markdown

    doc = (ROOT / "docs" / "dsl.md").read_text()
    table = doc.split(ACTIONS_DOC_BEGIN, 1)[1].split(ACTIONS_DOC_END, 1)[0]
    assert table.strip() == actions_markdown().strip(), \
        "docs/dsl.md is stale: run python -m uefi_hv.check --update-docs docs/dsl.md"
    assert "| `dispatch_idt` | external_interrupt | `idt_base = GLOBAL`; `own = V, ... (32..255)` |" in table


def test_the_docs_table_is_the_check_registry():
    doc = (ROOT / "docs" / "dsl.md").read_text()
    table = doc.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0]
    assert table.strip() == checks_markdown().strip(), \
        "docs/dsl.md is stale: run python -m uefi_hv.check --update-docs docs/dsl.md"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "uefi_hv", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT)


def test_cli_check_exit_statuses(tmp_path):
    ok = run_cli("check", "dsl/default.hv")
    assert ok.returncode == 0 and "dsl/default.hv: ok" in ok.stdout, ok.stderr
    (tmp_path / "bad.hv").write_text(VIOLATIONS["HOST-TR-NONZERO"])
    bad = run_cli("check", str(tmp_path / "bad.hv"))
    assert bad.returncode == 1
    assert re.search(r"bad\.hv:\d+:\d+: error\[HOST-TR-NONZERO, SDM 28\.2\.3\]", bad.stderr)
    assert "Traceback" not in bad.stderr
    missing = run_cli("check", str(tmp_path / "nothere.hv"))
    assert missing.returncode == 2 and "no such spec file" in missing.stderr


def test_cli_explain_prints_the_rule_with_its_section():
    out = run_cli("explain", "host-sel-rpl-ti")
    assert out.returncode == 0
    assert out.stdout.startswith("HOST-SEL-RPL-TI (SDM 28.2.3, error)")
    assert "RPL" in out.stdout
    unknown = run_cli("explain", "HOST-SEL")
    assert unknown.returncode == 2 and "did you mean 'HOST-SEL-RPL-TI'" in unknown.stderr


def test_the_icr_emulation_names_what_it_needs():
    found = diagnose(variant([("exit sipi\n", ""), ("proc2.enable_ept, ", "")],
                             "option apic_icr_emulation = on"))
    messages = [d.message for d in found if d.check_id == "ICR-EMULATION"]
    assert "option apic_icr_emulation needs proc2.enable_ept in the controls block" in messages
    assert "option apic_icr_emulation needs `exit sipi -> sipi`" in messages
    assert not [d for d in diagnose(variant(append="option apic_icr_emulation = on")) if d.severity == "error"]


# --- the VMCB catalogue ----------------------------------------------------------

def vmcb_diagnostics(check_id, text):
    return [d for d in diagnose(variant(append=text)) if d.check_id == check_id]


def test_a_vmcb_field_outside_its_area_names_the_area_and_the_apm_table():
    (d,) = vmcb_diagnostics("VMCB-AREA", "vmcb control at 0x000 { SPILLS at 0x3FC size 8 }")
    assert "VMCB field SPILLS (0x3fc-0x403) is outside the control area (0x000-0x3ff)" in d.message
    assert "APM Table B-1" in d.message
    assert str(d).startswith("spec.hv:") and "error[VMCB-AREA, APM vol. 2 Appendix B]" in str(d)


def test_overlapping_vmcb_fields_name_each_other_and_where_the_first_is():
    (d,) = vmcb_diagnostics("VMCB-OVERLAP", "vmcb save at 0x400 { RIP_HIGH at 0x17C size 4 }")
    assert d.loc.file == "spec.hv"
    assert d.message.startswith("VMCB field RIP_HIGH (0x57c-0x57f) overlaps RIP (0x578-0x57f, at dsl/vmcb.hv:")
    # a wide field overlapping one that is not its neighbour is found too
    diags = vmcb_diagnostics("VMCB-OVERLAP", "vmcb control at 0x000 { WIDE at 0x3C0 size 0x30 NARROW at 0x3D0 size 1 "
                                             "OTHER at 0x3E0 size 1 }")
    assert [d.message.split(" (")[0] for d in diags] == ["VMCB field NARROW", "VMCB field OTHER"]


def test_only_fields_of_2_4_or_8_bytes_must_be_aligned():
    assert vmcb_diagnostics("VMCB-ALIGN", "vmcb control at 0x000 { BYTES at 0x3F1 size 15 }") == []
    (d,) = vmcb_diagnostics("VMCB-ALIGN", "vmcb control at 0x000 { WORD at 0x3F1 size 2 }")
    assert d.message.startswith("VMCB field WORD at 0x3f1 is 2 bytes but not 2-byte aligned")


def test_an_intercepts_exit_code_is_its_vectors_base_plus_its_bit():
    (d,) = vmcb_diagnostics("SVM-EXIT-CODE", VIOLATIONS["SVM-EXIT-CODE"].rsplit("\n", 1)[1])
    assert "intercept misc1.cpuid (bit 18 of misc1) exits with 0x60 + 18 = 0x72; write cpuid_too = 0x72" in d.message
    (d,) = vmcb_diagnostics("SVM-EXIT-CODE", "svm_exit_codes { vmrun_too = 0x90 intercept misc2.vmrun }")
    assert "exits with 0x80 + 0 = 0x80" in d.message
    # vector 5 (misc3) has no such rule here
    assert vmcb_diagnostics("SVM-EXIT-CODE", "svm_exit_codes { invpcid = 0xA2 intercept misc3.invpcid }") == []


# --- VMRUN's consistency checks ---------------------------------------------------

def diagnostics_of(check_id, text):
    return [d for d in diagnose(text) if d.check_id == check_id]


def test_a_catalogue_without_one_of_vmruns_checks_names_it_by_id():
    (d,) = diagnostics_of("VMRUN-LIST", VIOLATIONS["VMRUN-LIST"])
    assert d.message.startswith("vmrun_checks lacks VMRUN-ASID of APM 15.5.1")
    assert "error[VMRUN-LIST, APM vol. 2 15.5.1]" in str(d)


def test_every_kind_the_runtime_evaluates_is_used_by_a_check():
    (d,) = diagnostics_of("VMRUN-KINDS", VIOLATIONS["VMRUN-KINDS"])
    assert d.message.startswith("no VMRUN check is of kind long_mode, which the runtime evaluates")
    assert diagnostics_of("VMRUN-KINDS", vmcb_variant(
        '    eventinj        "illegal event injection" apm "15.5.1, 15.20"\n'
        '                    kind event_injection field EVENTINJ exceptions 0..1, 3..8, 10..14, 16..19, 21, 28..30\n',
        ""))[0].message.startswith("no VMRUN check is of kind event_injection")


def test_the_vmrun_intercept_check_tests_the_bit_svm_c_sets():
    (d,) = diagnostics_of("VMRUN-INTERCEPT", VIOLATIONS["VMRUN-INTERCEPT"])
    assert d.message == ("VMRUN-INTERCEPT is `kind forbidden when misc2.vmmcall clear`, but svm.c sets misc2.vmrun: "
                         "write `kind forbidden when misc2.vmrun clear`")
    no_intercept = vmcb_variant("vmrun           = 0x80  intercept misc2.vmrun ", "vmrun = 0x80 ")
    (d,) = diagnostics_of("VMRUN-INTERCEPT", no_intercept)
    assert d.message.startswith("the exit code vmrun names the intercept (none), not misc2.vmrun")


def test_the_event_injection_check_accepts_only_the_apms_types_and_exception_vectors():
    (d,) = diagnostics_of("VMRUN-EVENTINJ", VIOLATIONS["VMRUN-EVENTINJ"])
    assert d.message.startswith("event type reserved = 5 is reserved (APM 15.20 defines 0 INTR, 2 NMI, 3 exception")
    (d,) = diagnostics_of("VMRUN-EVENTINJ", vmcb_variant("exceptions 0..1, 3..8", "exceptions 0..8, 32"))
    assert d.message == "VMRUN-EVENTINJ lets vectors 2, 32 through as an exception; exceptions are vectors 0-31 " \
                        "and 2 is the NMI's"
    diags = diagnostics_of("VMRUN-EVENTINJ", vmcb_variant("    valid            bit 31 ", "    v bit 31 "))
    assert [d.message for d in diags] == \
        ["event_injection lacks valid, which VMRUN-EVENTINJ reads (SVM_EVENTINJ_VALID)"]


def test_a_spec_without_the_vmcb_catalogue_needs_no_vmrun_checks():
    text = DEFAULT.replace('import "vmcb.hv"', "").replace("hide = vmx, smx, svm", "hide = vmx, smx")
    assert [d for d in diagnose(text) if d.check_id and d.check_id.startswith("VMRUN-")] == []


@pytest.mark.parametrize("check_id", ["VMRUN-EFER-SVME", "VMRUN-CR4-MBZ", "VMRUN-EVENTINJ"])
def test_cli_explain_knows_vmruns_checks(check_id):
    out = run_cli("explain", check_id.lower())
    assert out.returncode == 0, out.stderr
    assert f"{check_id} (APM vol. 2 15.5.1" in out.stdout and ", run-time): " in out.stdout
    assert f"run-time check {check_id} (APM 15.5.1" in out.stdout and "dsl/vmcb.hv:" in out.stdout
    assert 'APM vol. 2 15.5.1 "Basic Operation: Canonicalization and Consistency Checks"' in out.stdout
    if check_id == "VMRUN-EVENTINJ":       # a static check too: both are shown
        assert out.stdout.startswith("VMRUN-EVENTINJ (APM vol. 2 15.5.1, 15.20, error)")
    unknown = run_cli("explain", "VMRUN-CR4")
    assert unknown.returncode == 2 and "did you mean 'VMRUN-CR4-MBZ'" in unknown.stderr


def test_docs_list_the_catalogues_vmrun_checks():
    from uefi_hv.check import VMRUN_DOC_BEGIN, VMRUN_DOC_END, vmrun_checks_markdown

    doc = (ROOT / "docs" / "dsl.md").read_text()
    table = doc.split(VMRUN_DOC_BEGIN, 1)[1].split(VMRUN_DOC_END, 1)[0]
    assert table.strip() == vmrun_checks_markdown().strip(), \
        "docs/dsl.md is stale: python -m uefi_hv.check --update-docs docs/dsl.md"
    assert "| `VMRUN-EFER-SVME` | APM 15.5.1 | EFER.SVME is zero | `kind forbidden when EFER clear 0x1000` |" in table

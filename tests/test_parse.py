"""The spec language: what parses into what, and the errors a person sees."""

import re

import pytest

from uefi_hv import DSL_DIR
from uefi_hv import model as m
from uefi_hv.errors import UsageError
from uefi_hv.parse import SpecError, load_spec, parse_text


def parse(text, name="spec.hv", where=None):
    return parse_text(text, name, (where or DSL_DIR) / name)


def errors(text, name="spec.hv", where=None):
    with pytest.raises(SpecError) as e:
        parse(text, name, where)
    return str(e.value), e.value.diagnostics


def test_the_default_spec_captures_the_idt_base_once_and_host_idtr_base_reads_it():
    spec = load_spec(DSL_DIR / "default.hv")
    assert spec.globals == [m.Global("host_idt_base", m.ReadReg("sidt.base"), spec.globals[0].loc)]
    idtr = next(a for a in spec.host_state if a.field == "HOST_IDTR_BASE")
    assert idtr.source == m.GlobalRef("host_idt_base") and idtr.when == "once"
    assert spec.identity == m.Identity("uefi-hv", "UefiHvUefiHv", "0.1.0", spec.identity.loc)


def test_the_default_spec_gives_every_host_state_field_a_source():
    spec = load_spec(DSL_DIR / "default.hv")
    hosts = {f.name for f in spec.fields.values() if f.type == "host"}
    assert {a.field for a in spec.host_state} == hosts


def test_sources_and_evaluation_times():
    spec = parse('import "vmcs.hv"\n'
                 'const SEL = 0x1_0\n'
                 'global g = read(cr3)\n'
                 'host_state {\n'
                 '  HOST_CS_SELECTOR = 8; HOST_DS_SELECTOR = SEL\n'
                 '  HOST_CR0 = read(cr0) per_cpu  HOST_IA32_EFER = read(msr IA32_EFER)\n'
                 '  HOST_IA32_PAT = rdmsr(0x277) once  HOST_RSP = symbol(host_stack_top) per_cpu\n'
                 '  HOST_CR3 = g  HOST_GDTR_BASE = sgdt.base\n'
                 '}\n')
    got = {a.field: (a.source, a.when) for a in spec.host_state}
    assert got == {
        "HOST_CS_SELECTOR": (m.Const(8), "once"), "HOST_DS_SELECTOR": (m.Const(16), "once"),
        "HOST_CR0": (m.ReadReg("cr0"), "per_cpu"), "HOST_IA32_EFER": (m.ReadMsr(0xC0000080), "once"),
        "HOST_IA32_PAT": (m.ReadMsr(0x277), "once"), "HOST_RSP": (m.Symbol("host_stack_top"), "per_cpu"),
        "HOST_CR3": (m.GlobalRef("g"), "once"), "HOST_GDTR_BASE": (m.ReadReg("sgdt.base"), "once"),
    }


def test_controls_intercepts_and_exit_handlers():
    spec = load_spec(DSL_DIR / "default.hv")
    reqs = {r.control: r.required for r in spec.control_reqs}
    assert reqs["proc.use_msr_bitmaps"] is True and reqs["proc2.enable_ept"] is False
    i = spec.msr_intercepts
    assert (i[0].first, i[0].last, i[0].access, i[0].action) == (0x3A, 0x3A, "read", "feature_control_locked")
    assert (i[2].first, i[2].last) == (0x480, 0x491)
    handlers = {h.reason: (h.action, h.options) for h in spec.exits}
    assert handlers["cpuid"] == ("cpuid", {"hide": ["vmx", "smx", "svm"], "signature": True})
    assert handlers["getsec"] == ("inject_ud", {})
    assert handlers["rdmsr"] == handlers["wrmsr"] == ("msr", {})
    assert handlers["vmlaunch"] == handlers["invvpid"] == ("inject_ud", {})
    assert handlers["triple_fault"] == ("triple_fault", {})
    assert handlers["ept_misconfig"] == ("log_shutdown", {})
    assert handlers["init_signal"] == ("init", {}) and handlers["sipi"] == ("sipi", {})
    assert "external_interrupt" not in handlers
    assert spec.settings == {"external_interrupts": False}
    for h in spec.exits:
        assert h.action in m.EXIT_ACTIONS


def test_external_interrupts_on_brings_the_seeds_interrupt_path():
    spec = load_spec(DSL_DIR / "examples" / "interrupts.hv")
    assert spec.settings["external_interrupts"] is True
    reqs = {r.control: r.required for r in spec.control_reqs}
    assert reqs["pin.external_interrupt_exiting"] and reqs["exit.ack_interrupt_on_exit"]
    handlers = {h.reason: (h.action, h.options) for h in spec.exits}
    assert handlers["external_interrupt"] == ("dispatch_idt", {"idt_base": "host_idt_base"})
    assert handlers["interrupt_window"] == ("inject_pending", {})
    # the switch alone is enough: the handlers come with it
    short = parse('import "default.hv"\noption external_interrupts = on\noption chain = "\\\\EFI\\\\next.efi"\n')
    assert {h.reason: h.action for h in short.exits}["external_interrupt"] == "dispatch_idt"
    assert short.settings["chain"] == "\\EFI\\next.efi"


def test_syntax_errors_point_at_the_line_with_a_caret_and_say_what_was_expected():
    text, diags = errors('import "vmcs.hv"\nhost_state {\n  HOST_CR3 = = 3\n}\n')
    first = text.splitlines()
    assert first[0].startswith("spec.hv:3:14: error: unexpected '='; expected ")
    assert "a number" in first[0] and "a name" in first[0]
    assert first[1] == "      HOST_CR3 = = 3"
    assert first[2] == "    " + " " * 13 + "^"
    assert not re.search(r"Token\(|__ANON|\$END|EQUAL|LBRACE", text)


@pytest.mark.parametrize("text, message", [
    ('import "vmcs.hv"\nhost_state { HOST_CR0 = read(cr0)', "unexpected end of file; expected"),
    ('import "vmcs.hv" $', "unexpected character '$'"),
    ('hypervisor { }', "unexpected '{'; expected a string in double quotes"),
    ('controls { require proc.hlt_exiting proc.use_io_bitmaps }', "expected ','"),
])
def test_syntax_errors_in_words(text, message):
    out, diags = errors(text)
    assert message in out
    assert len(diags) == 1 and diags[0].loc.line >= 1


@pytest.mark.parametrize("text, message", [
    ("host_state { HOST_IDT_BASE = 0 }", "unknown host-state field 'HOST_IDT_BASE'; did you mean 'HOST_IDTR_BASE'"),
    ("host_state { GUEST_RIP = 0 }", "GUEST_RIP is a guest-state field"),
    ("controls { require proc2.enable_eptt }", "did you mean 'proc2.enable_ept'"),
    ("controls { require enable_ept }", "did you mean 'proc2.enable_ept'"),
    ("exit cpuid -> cpuidd", "unknown action 'cpuidd'; did you mean 'cpuid'"),
    ("exit cpuidd", "unknown exit reason 'cpuidd'; did you mean 'cpuid'"),
    ("exit cpuid { hid = vmx }", "unknown option 'hid' of cpuid; did you mean 'hide'"),
    ("exit cpuid { hide = vmxx }", "cannot hide 'vmxx'; did you mean 'vmx'"),
    ("exit hlt -> cpuid", "action cpuid handles only cpuid exits, not hlt"),
    ("exit external_interrupt -> dispatch_idt { idt_base = nothing }", "unknown global 'nothing'"),
    ("msr_bitmap { read IA32_EFERR = inject_gp }", "unknown MSR 'IA32_EFERR'; did you mean 'IA32_EFER'"),
    ("msr_bitmap { read 0x10 = inject_gpp }", "unknown MSR action 'inject_gpp'; did you mean 'inject_gp'"),
    ("msr_bitmap { read 0x20 .. 0x10 = inject_gp }", "runs backwards"),
    ("host_state { HOST_CR0 = read(cr9) }", "cannot read 'cr9'"),
    ("host_state { HOST_RSP = symbol(host_stak_top) }",
     "unknown symbol 'host_stak_top'; did you mean 'host_stack_top'"),
    ("host_state { HOST_RSP = host_stack_top }", "write symbol(host_stack_top)"),
    ("host_state { HOST_CR0 = cr0 }", "write read(cr0)"),
    ("host_state { HOST_CR0 = HOST_CSS }", "unknown name 'HOST_CSS'"),
    ("option chian = \"x\"", "unknown option 'chian'; did you mean 'chain'"),
    ("option external_interrupts = maybe", "is on or off"),
    ("option log_rate = \"fast\"", "option log_rate takes a number, not 'fast'"),
    ("const A = B", "unknown constant 'B'"),
    ('hypervisor "x" { signatur "y" }', "did you mean 'signature'"),
    ('hypervisor "x" { signature "UefiHvUefi\u00e9v" }', "the signature must be printable ASCII"),
    ('import "nothere.hv"', 'cannot import "nothere.hv"'),
    ("exit rdmsr, wrmsr", "say what the handler does"),
])
def test_unknown_names_get_a_did_you_mean(text, message):
    out, diags = errors('import "vmcs.hv"\n' + text + "\n")
    assert message in out, out
    assert all(d.loc.file == "spec.hv" and d.loc.line == 2 for d in diags), out


def test_every_error_is_reported_not_just_the_first():
    out, diags = errors('import "vmcs.hv"\nhost_state { HOST_IDT_BASE = 0 }\nexit cpuidd\noption chian = 1\n')
    assert sorted(d.loc.line for d in diags) == [2, 3, 4]
    assert out.endswith("3 errors in the spec")


def test_catalogue_encodings_written_must_agree_with_type_width_and_index():
    out, _ = errors("control_bits pin { nmi_exiting bit 3 }\n"
                    "fields host natural { HOST_IDTR_BASE index 7 = 0x6C0F }\n")
    assert "HOST_IDTR_BASE: the encoding written, 0x6c0f, disagrees with type host, width natural, index 7, " \
           "which give 0x6c0e" in out
    out, _ = errors("fields host natural { X index 512 }")
    assert "at most 511" in out
    out, _ = errors("fields host 48 { X index 1 }")
    assert "unknown field width '48'" in out


def test_imports_resolve_beside_the_file_then_in_dsl(tmp_path):
    (tmp_path / "mine.hv").write_text('const MY_CS = 0x08\n')
    (tmp_path / "top.hv").write_text('import "vmcs.hv"\nimport "mine.hv"\n')
    spec = load_spec(tmp_path / "top.hv")
    assert spec.constants["MY_CS"].value == 8 and "HOST_IDTR_BASE" in spec.fields
    (tmp_path / "a.hv").write_text('import "b.hv"\n')
    (tmp_path / "b.hv").write_text('import "a.hv"\n')
    with pytest.raises(SpecError, match="imports itself"):
        load_spec(tmp_path / "a.hv")


def test_an_error_in_an_imported_file_points_into_that_file(tmp_path):
    (tmp_path / "broken.hv").write_text('const A = \n')
    (tmp_path / "top.hv").write_text('import "broken.hv"\n')
    with pytest.raises(SpecError, match=r"broken\.hv:1:11: error: unexpected end of file; expected a number or a name"):
        load_spec(tmp_path / "top.hv")


def test_an_importing_file_overrides_options_and_identity(tmp_path):
    (tmp_path / "mine.hv").write_text('import "default.hv"\nhypervisor "mine" { signature "MineMineMine" }\n'
                                      'option external_interrupts = on\n')
    spec = load_spec(tmp_path / "mine.hv")
    assert spec.identity.name == "mine" and spec.identity.signature == "MineMineMine"
    assert spec.identity.version == "0.1.0"
    assert spec.settings["external_interrupts"] is True


def test_a_missing_spec_file_is_misuse_not_a_spec_error(tmp_path):
    with pytest.raises(UsageError) as e:
        load_spec(tmp_path / "nothere.hv")
    assert e.value.exit_status == 2
    with pytest.raises(UsageError):
        load_spec(tmp_path)


def test_a_spec_that_is_not_utf8_is_a_spec_error(tmp_path):
    (tmp_path / "bin.hv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(tmp_path / "bin.hv")


def test_integer_literals():
    spec = parse('import "vmcs.hv"\nconst A = 0x6C0E\nconst B = 27662\nconst C = 0xFFFF_8000_0000_0000\n'
                 'const D = 007\nconst E = A\n')
    assert {k: c.value for k, c in spec.constants.items()} == \
        {"A": 0x6C0E, "B": 27662, "C": 0xFFFF800000000000, "D": 7, "E": 0x6C0E}


def test_comments_in_both_styles():
    spec = parse('# hash\nimport "vmcs.hv" // slashes\nconst A = 1 # trailing\n')
    assert spec.constants["A"].value == 1


def _check_in_a_fresh_process(cache_home):
    import os
    import subprocess
    import sys
    from uefi_hv import ROOT
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home))
    return subprocess.run([sys.executable, "-m", "uefi_hv", "check", "dsl/default.hv"], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_the_grammar_cache_is_optional_and_survives_damage(tmp_path):
    nowhere = _check_in_a_fresh_process("/dev/null/cache")          # nowhere writable
    assert nowhere.returncode == 0, nowhere.stderr
    first = _check_in_a_fresh_process(tmp_path)                      # fills the cache
    assert first.returncode == 0, first.stderr
    (cached,) = (tmp_path / "uefi-hv").iterdir()
    cached.write_bytes(b"not a pickle\n")
    damaged = _check_in_a_fresh_process(tmp_path)
    assert damaged.returncode == 0 and "Traceback" not in damaged.stderr, damaged.stderr


@pytest.mark.parametrize("typo", ["host_idtr_base", "HOST_idtr_bsae", "HOST_IDTR_BSAE"])
def test_did_you_mean_ignores_case(typo):
    from uefi_hv.parse import did_you_mean

    hint = did_you_mean(typo, ["HOST_IDTR_BASE", "HOST_CR3", "GUEST_RIP"])
    assert hint.startswith("; did you mean 'HOST_IDTR_BASE'"), hint


def test_an_implied_action_cannot_be_named():
    with pytest.raises(SpecError, match=r"action wait_for_sipi is not named in a spec: an AP's `cli; hlt`"):
        parse_text("import \"vmcs.hv\"\nexit hlt -> wait_for_sipi\n", file="implied.hv")


def test_an_imported_catalogue_is_read_once_per_version_and_each_spec_owns_its_tables(tmp_path):
    from uefi_hv.resolve import catalogue_of

    cat = tmp_path / "cat.hv"
    cat.write_text((DSL_DIR / "vmcs.hv").read_text())
    (tmp_path / "top.hv").write_text('import "cat.hv"\n')
    first = load_spec(tmp_path / "top.hv")
    built = catalogue_of.cache_info().misses
    again = load_spec(tmp_path / "top.hv")
    assert catalogue_of.cache_info().misses == built and again.fields == first.fields
    again.fields.clear()
    again.controls.clear()
    assert load_spec(tmp_path / "top.hv").controls == first.controls and "HOST_CR3" in first.fields
    cat.write_text(cat.read_text() + "msrs { MY_MSR = 0x1234 }\n")       # a new version on disk
    assert load_spec(tmp_path / "top.hv").msrs["MY_MSR"].number == 0x1234


# --- the VMCB catalogue (dsl/vmcb.hv) -------------------------------------------------

CATALOGUES = 'import "vmcs.hv"\nimport "vmcb.hv"\n'


def test_the_vmcb_catalogue_parses_into_offsets_intercepts_exit_codes_and_event_fields():
    spec = load_spec(DSL_DIR / "default.hv")
    assert "vmcb.hv" in [p.rsplit("/", 1)[-1] for p in spec.files]
    rip = spec.vmcb_fields["RIP"]
    assert (rip.area, rip.offset, rip.size) == ("save", 0x578, 8)        # 0x400 + 0x178
    assert spec.vmcb_fields["EXITCODE"].offset == 0x070
    assert spec.vmcb_fields["CS_SELECTOR"].offset == 0x410 and spec.vmcb_fields["CS_SELECTOR"].description == ""
    misc1 = spec.intercept_groups["misc1"]
    assert misc1 == m.InterceptGroup("misc1", "INTERCEPT_MISC1", misc1.loc) and misc1.loc.file.endswith("vmcb.hv")
    assert spec.intercepts["misc1.cpuid"].bit == 18 and spec.intercepts["misc2.vmrun"].mask == 1
    cpuid = spec.svm_exits["cpuid"]
    assert (cpuid.code, cpuid.intercept, cpuid.means, cpuid.description) == (0x72, "misc1.cpuid", "cpuid", "CPUID")
    npf, invalid = spec.svm_exits["npf"], spec.svm_exits["invalid"]
    assert (npf.code, npf.intercept, npf.means) == (0x400, None, "ept_violation")
    assert (invalid.code, invalid.intercept, invalid.means) == (0xFFFFFFFFFFFFFFFF, None, None)
    assert list(spec.svm_exits)[:3] == ["intr", "nmi", "init"]            # catalogue order
    kind = spec.event_injection["type"]
    assert (kind.first, kind.last, kind.width, kind.mask) == (8, 10, 3, 0x700)
    assert spec.event_injection["valid"].mask == 1 << 31
    assert {t.name: t.number for t in spec.event_types.values()}["exception"] == 3
    # the second msrs block joins the first
    assert spec.msrs["VM_HSAVE_PA"].number == 0xC0010117 and spec.msrs["IA32_EFER"].number == 0xC0000080


def test_vmcb_entries_share_lines_and_their_descriptions_are_optional():
    spec = parse(CATALOGUES + 'vmcb control at 0x000 { MINE at 0x300 size 4  YOURS at 0x304 size 2 "yours" }\n'
                              'vmcb save at 0x400 { LATE at 0x800 size 8 }\n')
    assert (spec.vmcb_fields["MINE"].offset, spec.vmcb_fields["MINE"].description) == (0x300, "")
    assert (spec.vmcb_fields["YOURS"].size, spec.vmcb_fields["YOURS"].description) == (2, "yours")
    assert spec.vmcb_fields["LATE"].offset == 0xC00 and spec.vmcb_fields["LATE"].loc.line == 4


def test_the_words_of_the_vmcb_statements_are_still_names_elsewhere():
    spec = parse(CATALOGUES + "const at = 1\nconst size = 2\nconst bits = 3\nconst intercept = 4\nconst means = 5\n"
                              "vmcb control at 0x000 { size at 0x300 size 4 }\n"
                              "svm_exit_codes { at = 0x1000 \"at\" }\n")
    assert [spec.constants[n].value for n in ("at", "size", "bits", "intercept", "means")] == [1, 2, 3, 4, 5]
    assert spec.vmcb_fields["size"].offset == 0x300 and spec.svm_exits["at"].code == 0x1000


def test_a_spec_without_the_vmcb_catalogue_has_none():
    spec = parse('import "vmcs.hv"\n')
    assert not (spec.vmcb_fields or spec.intercepts or spec.svm_exits or spec.event_injection or spec.event_types)


@pytest.mark.parametrize("text, message", [
    ("svm_exit_codes { mine = 0x1000 means cpuidd }",
     "unknown exit reason 'cpuidd'; did you mean 'cpuid'?; `means` names the VMX exit reason"),
    ("svm_exit_codes { mine = 0x1000 intercept misc1.cpuidd }",
     "unknown intercept 'misc1.cpuidd'; did you mean 'misc1.cpuid'"),
    ("svm_exit_codes { cpuid = 0x1000 }", "SVM exit code 'cpuid' is declared twice"),
    ("svm_exit_codes { cpuid_again = 0x72 }", "SVM exit code 0x72 is declared twice (first as cpuid)"),
    ("intercepts misc4 at INTERCEPT_MISC4 { mine bit 0 }",
     "unknown VMCB field 'INTERCEPT_MISC4'; did you mean 'INTERCEPT_MISC3' or 'INTERCEPT_MISC2' or "
     "'INTERCEPT_MISC1'?; `intercepts misc4 at FIELD` names the VMCB field"),
    ("intercepts misc3 at INTERCEPT_MISC2 { mine bit 9 }", "intercepts misc3 is already at INTERCEPT_MISC3"),
    ("intercepts misc4 at TLB_CONTROL { mine bit 9 }", "intercept misc4.mine is bit 9, outside TLB_CONTROL (1 byte)"),
    ("intercepts misc3 at INTERCEPT_MISC3 { cpuid bit 9 }",
     "intercept misc3.cpuid: misc1.cpuid has the name already; intercept names are unique across groups"),
    ("intercepts misc3 at INTERCEPT_MISC3 { mine bit 2 }", "bit 2 of misc3 is already misc3.invpcid"),
    ("intercepts misc3 at INTERCEPT_MISC3 { mine bit 32 }", "intercept bit 32 is not in a 32-bit intercept vector"),
    ("vmcb stack at 0x000 { X at 0 size 1 }", "unknown VMCB area 'stack'; expected control or save"),
    ("vmcb save at 0x400 { RIP at 0x300 size 8 }", "VMCB field RIP is declared twice (first at dsl/vmcb.hv:"),
    ("vmcb save at 0x400 { NOTHING at 0x300 size 0 }", "VMCB field NOTHING has size 0"),
    ("event_injection { mine bits 7..3 }", "bits 7..3 run backwards; write 3..7"),
    ("event_injection { mine bit 64 }", "bit 64 of mine is outside EVENTINJ, a 64-bit field"),
    ("event_injection { mine bits 9..12 }", "bits 9..12 of mine overlap type (bits 8..10)"),
    ("event_types { nmi = 5 }", "event type 'nmi' is declared twice"),
])
def test_vmcb_catalogue_errors_point_at_their_line(text, message):
    out, diags = errors(CATALOGUES + text + "\n")
    assert message in out, out
    assert diags and all(d.loc.file == "spec.hv" and d.loc.line == 3 for d in diags), out


def test_a_wrong_meaning_in_an_imported_catalogue_points_into_that_file(tmp_path):
    (tmp_path / "cat.hv").write_text((DSL_DIR / "vmcb.hv").read_text().replace("means cpuid ", "means cpuidd"))
    (tmp_path / "top.hv").write_text('import "vmcs.hv"\nimport "cat.hv"\n')
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "top.hv")
    (d,) = e.value.diagnostics
    assert d.loc.file.endswith("cat.hv") and d.loc.line > 1 and "unknown exit reason 'cpuidd'" in d.message


def test_the_two_catalogues_are_shared_between_specs_not_declared_again():
    from uefi_hv.resolve import catalogue_of

    first = load_spec(DSL_DIR / "default.hv")
    built = catalogue_of.cache_info().misses
    again = load_spec(DSL_DIR / "default.hv")
    assert catalogue_of.cache_info().misses == built
    assert again.svm_exits == first.svm_exits and again.vmcb_fields == first.vmcb_fields
    again.svm_exits.clear()
    assert load_spec(DSL_DIR / "default.hv").svm_exits == first.svm_exits


# --- VMRUN's consistency checks (vmrun_checks in dsl/vmcb.hv) ---------------------------------

def test_the_vmcb_catalogue_lists_every_consistency_check_of_vmrun_by_id():
    from uefi_hv.check import APM_VMRUN_CHECKS

    spec = load_spec(DSL_DIR / "default.hv")
    checks = spec.vmrun_checks
    assert [c.id for c in checks.values()] == list(APM_VMRUN_CHECKS)        # catalogue order, the APM's
    svme = checks["efer_svme"]
    assert (svme.id, svme.section, svme.title, svme.kind) == \
        ("VMRUN-EFER-SVME", "APM vol. 2 15.5.1", "EFER.SVME is zero", "forbidden")
    assert svme.when == (m.VmcbTerm("EFER", 0x1000, False),) and svme.loc.file.endswith("vmcb.hv")
    assert checks["cr0_cd_nw"].when == (m.VmcbTerm("CR0", 1 << 30, False), m.VmcbTerm("CR0", 1 << 29, True))
    assert checks["cs_l_d"].when[-1] == m.VmcbTerm("CS_ATTRIB", 0x600, True)
    assert checks["intercept"].when == (m.VmcbTerm("INTERCEPT_MISC2", 1, False, "misc2.vmrun"),)
    assert (checks["cr0_high"].kind, checks["cr0_high"].field, checks["cr0_high"].mask) == \
        ("mbz", "CR0", 0xFFFFFFFF00000000)
    assert (checks["msrpm"].field, checks["msrpm"].size, checks["iopm"].size) == ("MSRPM_BASE_PA", 0x2000, 0x3000)
    inject = checks["eventinj"]
    assert inject.sections == ("15.5.1", "15.20") and inject.section == "APM vol. 2 15.5.1, 15.20"
    assert 2 not in inject.exceptions and {0, 13, 14, 18} <= set(inject.exceptions) and max(inject.exceptions) < 32
    assert inject.arguments() == "kind event_injection field EVENTINJ exceptions 0..1, 3..8, 10..14, 16..19, 21, 28..30"
    assert {c.kind for c in checks.values()} == set(m.VMRUN_CHECK_KINDS)


def test_a_vmrun_check_of_a_spec_reads_as_written():
    spec = parse(CATALOGUES + 'vmrun_checks apm "15.20" {\n'
                              '    mine "mine fails" apm "15.5.1, 15.20" kind forbidden when misc1.cpuid set\n'
                              '         and TSC_OFFSET clear 0xFF ;\n'
                              '    wide "wide fails" kind mbz field CPL mask 0x80\n'
                              '}\n')
    mine, wide = spec.vmrun_checks["mine"], spec.vmrun_checks["wide"]
    assert mine.id == "VMRUN-MINE" and mine.sections == ("15.5.1", "15.20") and mine.loc.line == 4
    assert mine.when == (m.VmcbTerm("INTERCEPT_MISC1", 1 << 18, True, "misc1.cpuid"),
                         m.VmcbTerm("TSC_OFFSET", 0xFF, False))
    assert wide.sections == ("15.20",) and (wide.field, wide.mask) == ("CPL", 0x80)
    assert list(spec.vmrun_checks)[-2:] == ["mine", "wide"]


def test_the_words_of_vmrun_checks_are_still_names_elsewhere():
    spec = parse(CATALOGUES + "const apm = 1\nconst kind = 2\nconst mask = 3\nconst set = 4\nconst clear = 5\n"
                              "const exceptions = 6\nconst field = 7\n"
                              'vmrun_checks apm "15.5.1" { kind "k" kind mbz field CR0 mask 1 }\n')
    assert [spec.constants[n].value for n in ("apm", "kind", "mask", "set", "clear", "exceptions", "field")] == \
        [1, 2, 3, 4, 5, 6, 7]
    assert spec.vmrun_checks["kind"].id == "VMRUN-KIND"


VMRUN = 'vmrun_checks apm "15.5.1" { mine "mine" '


@pytest.mark.parametrize("text, message", [
    (VMRUN + "kind mbzz field CR0 mask 1 }", "unknown VMRUN check kind 'mbzz'; did you mean 'mbz'?; the runtime "
                                            "evaluates forbidden, mbz, cr4_mbz"),
    (VMRUN + "kind mbz field CR00 mask 1 }", "unknown VMCB field 'CR00'; did you mean 'CR0'"),
    (VMRUN + "kind forbidden when EFR clear 1 }", "unknown VMCB field 'EFR'; did you mean 'EFER'"),
    (VMRUN + "kind forbidden when misc2.vmrunn clear }",
     "unknown intercept 'misc2.vmrunn'; did you mean 'misc2.vmrun'"),
    (VMRUN + "kind mbz field CR0 }", "VMRUN check mine: kind mbz needs mask: `kind mbz field FIELD mask MASK`"),
    (VMRUN + "kind forbidden }", "kind forbidden needs when: `kind forbidden when FIELD set|clear MASK and ...`"),
    (VMRUN + "kind mbz field CR0 mask 1 size 4 }", "kind mbz takes no size; it takes field and mask"),
    (VMRUN + "kind mbz field CR0 field CR4 mask 1 }", "field is given twice"),
    (VMRUN + "kind mbz field GUEST_ASID mask 0x1_0000_0000 }", "mask 0x100000000 is wider than GUEST_ASID (4 bytes)"),
    (VMRUN + "kind mbz field CR0 mask 0 }", "mask 0 tests no bit"),
    (VMRUN + "kind mbz field GUEST_INSN_BYTES mask 1 }",
     "VMCB field GUEST_INSN_BYTES is 15 bytes; a check reads a field of 1, 2, 4 or 8 bytes"),
    (VMRUN + "kind below_maxphyaddr field CR3 size 0 }", "size 0: a table is at least 1 byte"),
    (VMRUN + "kind forbidden when EFER clear }", "`EFER clear` needs the bits it tests: `EFER clear MASK`"),
    (VMRUN + "kind forbidden when misc2.vmrun clear 1 }", "an intercept is one bit: write `misc2.vmrun clear`"),
    (VMRUN + "kind event_injection field EVENTINJ exceptions 8..3 }", "vectors 8..3 run backwards; write 3..8"),
    (VMRUN + "kind event_injection field EVENTINJ exceptions 1, 0..3 }", "vector 1 is listed twice"),
    (VMRUN + "kind event_injection field EVENTINJ exceptions 256 }", "vector 256 is not a vector (0 to 255)"),
    ('vmrun_checks apm "15.5.9" { mine "mine" kind mbz field CR0 mask 1 }',
     "unknown APM section '15.5.9'; did you mean '15.5.1'?"),
    ('vmrun_checks apm "15.5.1" { asid "again" kind mbz field CR0 mask 1 }',
     "VMRUN check asid (VMRUN-ASID) is declared twice (first at dsl/vmcb.hv:"),
    (VMRUN + "kind forbidden when }", "unexpected '}'"),
])
def test_vmrun_check_errors_point_at_their_line(text, message):
    out, diags = errors(CATALOGUES + text + "\n")
    assert message in out, out
    assert diags and all(d.loc.file == "spec.hv" and d.loc.line == 3 for d in diags), out


def test_a_wrong_field_in_an_imported_vmrun_check_points_into_that_file(tmp_path):
    (tmp_path / "cat.hv").write_text((DSL_DIR / "vmcb.hv").read_text().replace("field DR6 mask", "field DR66 mask"))
    (tmp_path / "top.hv").write_text('import "vmcs.hv"\nimport "cat.hv"\n')
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "top.hv")
    (d,) = e.value.diagnostics
    assert d.loc.file.endswith("cat.hv") and "unknown VMCB field 'DR66'; did you mean 'DR6'" in d.message
    line = (tmp_path / "cat.hv").read_text().splitlines()[d.loc.line - 1]
    assert line.strip().endswith("field DR66 mask 0xFFFF_FFFF_0000_0000")

"""The VMCS field catalogue (dsl/vmcs.hv) against the SDM's Appendix B."""

import json

import pytest

from uefi_hv import DSL_DIR
from uefi_hv.check import catalogue, cmd_fields

# SDM Appendix B bit layout, written out again here rather than imported.
TYPE = {"control": 0, "exit-info": 1, "guest": 2, "host": 3}
WIDTH = {"16": 0, "64": 1, "32": 2, "natural": 3}

# Encodings copied by hand from the SDM's tables (and KVM's vmx.h).
WELL_KNOWN = {
    "VIRTUAL_PROCESSOR_ID": 0x0000,
    "GUEST_ES_SELECTOR": 0x0800,
    "GUEST_TR_SELECTOR": 0x080E,
    "HOST_ES_SELECTOR": 0x0C00,
    "HOST_CS_SELECTOR": 0x0C02,
    "HOST_TR_SELECTOR": 0x0C0C,
    "IO_BITMAP_A": 0x2000,
    "MSR_BITMAP": 0x2004,
    "TSC_OFFSET": 0x2010,
    "EPT_POINTER": 0x201A,
    "XSS_EXIT_BITMAP": 0x202C,
    "GUEST_PHYSICAL_ADDRESS": 0x2400,
    "VMCS_LINK_POINTER": 0x2800,
    "GUEST_IA32_EFER": 0x2806,
    "HOST_IA32_PAT": 0x2C00,
    "HOST_IA32_EFER": 0x2C02,
    "PIN_BASED_VM_EXEC_CONTROL": 0x4000,
    "CPU_BASED_VM_EXEC_CONTROL": 0x4002,
    "VM_EXIT_CONTROLS": 0x400C,
    "VM_ENTRY_CONTROLS": 0x4012,
    "VM_ENTRY_INTR_INFO_FIELD": 0x4016,
    "SECONDARY_VM_EXEC_CONTROL": 0x401E,
    "VM_INSTRUCTION_ERROR": 0x4400,
    "VM_EXIT_REASON": 0x4402,
    "VM_EXIT_INTR_INFO": 0x4404,
    "VM_EXIT_INSTRUCTION_LEN": 0x440C,
    "GUEST_INTERRUPTIBILITY_INFO": 0x4824,
    "GUEST_ACTIVITY_STATE": 0x4826,
    "VMX_PREEMPTION_TIMER_VALUE": 0x482E,
    "HOST_IA32_SYSENTER_CS": 0x4C00,
    "CR0_GUEST_HOST_MASK": 0x6000,
    "EXIT_QUALIFICATION": 0x6400,
    "GUEST_CR0": 0x6800,
    "GUEST_RSP": 0x681C,
    "GUEST_RIP": 0x681E,
    "GUEST_RFLAGS": 0x6820,
    "HOST_CR0": 0x6C00,
    "HOST_CR3": 0x6C02,
    "HOST_CR4": 0x6C04,
    "HOST_IDTR_BASE": 0x6C0E,
    "HOST_RSP": 0x6C14,
    "HOST_RIP": 0x6C16,
}


@pytest.fixture(scope="module")
def cat():
    return catalogue()


def test_every_encoding_is_rederived_from_type_width_and_index(cat):
    assert len(cat.fields) > 150
    for f in cat.fields.values():
        assert 0 <= f.index <= 0x1FF
        assert f.encoding == f.index << 1 | TYPE[f.type] << 10 | WIDTH[f.width] << 13, f.name
        assert f.encoding & 1 == 0 and f.encoding & (1 << 12) == 0, f.name


def test_well_known_encodings_match_the_sdm(cat):
    for name, encoding in WELL_KNOWN.items():
        assert cat.fields[name].encoding == encoding, f"{name}: {cat.fields[name].encoding:#x} != {encoding:#x}"


def test_64_bit_fields_have_a_high_half_and_others_do_not(cat):
    assert cat.fields["EPT_POINTER"].high_encoding == 0x201B
    assert cat.fields["VMCS_LINK_POINTER"].high_encoding == 0x2801
    for f in cat.fields.values():
        assert (f.high_encoding is not None) == (f.width == "64"), f.name


def test_encodings_and_names_are_unique(cat):
    encodings = [f.encoding for f in cat.fields.values()]
    assert len(set(encodings)) == len(encodings)


def test_all_four_types_and_widths_are_present(cat):
    present = {(f.type, f.width) for f in cat.fields.values()}
    for t in TYPE:
        for w in WIDTH:
            if (t, w) != ("exit-info", "16"):      # the SDM has no 16-bit read-only field
                assert (t, w) in present, (t, w)


def test_fields_that_exist_only_with_a_control_name_a_real_control(cat):
    assert cat.fields["HOST_IA32_EFER"].exists_when == "exit.load_ia32_efer"
    assert cat.fields["EPT_POINTER"].exists_when == "proc2.enable_ept"
    for f in cat.fields.values():
        assert f.exists_when is None or f.exists_when in cat.controls, f.name


def test_control_bits_are_at_their_sdm_positions(cat):
    c = cat.controls
    expect = {
        "pin.external_interrupt_exiting": 0, "pin.nmi_exiting": 3, "pin.virtual_nmis": 5,
        "pin.activate_vmx_preemption_timer": 6, "pin.process_posted_interrupts": 7,
        "proc.interrupt_window_exiting": 2, "proc.hlt_exiting": 7, "proc.use_io_bitmaps": 25,
        "proc.use_msr_bitmaps": 28, "proc.activate_secondary_controls": 31, "proc.nmi_window_exiting": 22,
        "proc2.enable_ept": 1, "proc2.enable_rdtscp": 3, "proc2.enable_vpid": 5, "proc2.unrestricted_guest": 7,
        "proc2.enable_invpcid": 12, "proc2.enable_xsaves_xrstors": 20,
        "exit.save_debug_controls": 2, "exit.host_address_space_size": 9, "exit.load_ia32_perf_global_ctrl": 12,
        "exit.ack_interrupt_on_exit": 15, "exit.save_ia32_pat": 18, "exit.load_ia32_pat": 19,
        "exit.save_ia32_efer": 20, "exit.load_ia32_efer": 21,
        "entry.load_debug_controls": 2, "entry.ia32e_mode_guest": 9, "entry.entry_to_smm": 10,
        "entry.load_ia32_perf_global_ctrl": 13, "entry.load_ia32_pat": 14, "entry.load_ia32_efer": 15,
    }
    for name, bit in expect.items():
        assert c[name].bit == bit, name
        assert c[name].mask == 1 << bit


def test_exit_reasons_and_vm_instruction_errors_have_sdm_numbers(cat):
    r = {x.name: x.number for x in cat.exit_reasons.values()}
    assert r["exception_or_nmi"] == 0 and r["external_interrupt"] == 1 and r["triple_fault"] == 2
    assert r["cpuid"] == 10 and r["vmcall"] == 18 and r["cr_access"] == 28 and r["rdmsr"] == 31
    assert r["invalid_guest_state"] == 33 and r["ept_violation"] == 48 and r["ept_misconfig"] == 49
    assert r["xsetbv"] == 55
    e = {x.number: x.name for x in cat.vm_instruction_errors.values()}
    assert e[7] == "entry_invalid_control_fields" and e[8] == "entry_invalid_host_state_fields"
    assert e[12] == "vmread_vmwrite_unsupported_component" and 14 not in e


def test_fields_json_lists_the_catalogue(capsys):
    class Args:
        json = True
    assert cmd_fields(Args()) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["HOST_IDTR_BASE"] == {**by_name["HOST_IDTR_BASE"], "encoding": 0x6C0E,
                                          "width": "natural", "type": "host"}
    assert {r["type"] for r in rows} == {"control", "exit-info", "guest", "host"}
    assert {r["width"] for r in rows} == {"16", "32", "64", "natural"}


def test_the_catalogue_is_written_in_the_dsl():
    assert (DSL_DIR / "vmcs.hv").read_text().count("index") > 150


# --- the VMCB catalogue (dsl/vmcb.hv) against the AMD64 APM vol. 2 ----------------

# Offsets in the VMCB, copied by hand from APM Tables B-1 and B-2 (and KVM's
# struct vmcb_control_area / vmcb_save_area): save-area fields at 0x400 + the table's offset.
VMCB_WELL_KNOWN = {
    "INTERCEPT_CR": 0x000, "INTERCEPT_MISC1": 0x00C, "INTERCEPT_MISC2": 0x010, "IOPM_BASE_PA": 0x040,
    "MSRPM_BASE_PA": 0x048, "TSC_OFFSET": 0x050, "GUEST_ASID": 0x058, "TLB_CONTROL": 0x05C, "VINTR": 0x060,
    "INTERRUPT_SHADOW": 0x068, "EXITCODE": 0x070, "EXITINFO1": 0x078, "EXITINFO2": 0x080, "EXITINTINFO": 0x088,
    "NP_CONTROL": 0x090, "EVENTINJ": 0x0A8, "N_CR3": 0x0B0, "VMCB_CLEAN": 0x0C0, "NEXT_RIP": 0x0C8,
    "ES_SELECTOR": 0x400, "CS_SELECTOR": 0x410, "CS_ATTRIB": 0x412, "CS_LIMIT": 0x414, "CS_BASE": 0x418,
    "GDTR_LIMIT": 0x464, "IDTR_BASE": 0x488, "TR_SELECTOR": 0x490, "CPL": 0x4CB, "EFER": 0x4D0,
    "CR4": 0x548, "CR3": 0x550, "CR0": 0x558, "DR7": 0x560, "DR6": 0x568, "RFLAGS": 0x570, "RIP": 0x578,
    "RSP": 0x5D8, "RAX": 0x5F8, "STAR": 0x600, "KERNEL_GS_BASE": 0x620, "SYSENTER_CS": 0x628, "CR2": 0x640,
    "G_PAT": 0x668, "DBGCTL": 0x670,
}

# Exit codes from APM Appendix C (and KVM's uapi svm.h).
SVM_EXIT_WELL_KNOWN = {
    "intr": 0x60, "nmi": 0x61, "cpuid": 0x72, "hlt": 0x78, "ioio": 0x7B, "msr": 0x7C, "shutdown": 0x7F,
    "vmrun": 0x80, "vmmcall": 0x81, "xsetbv": 0x8D, "npf": 0x400, "invalid": 0xFFFFFFFFFFFFFFFF,
}


@pytest.fixture(scope="module")
def svm():
    from uefi_hv.parse import parse_text

    return parse_text('import "vmcs.hv"\nimport "vmcb.hv"\n', "catalogues.hv", DSL_DIR / "catalogues.hv")


def test_vmcb_offsets_match_the_apm(svm):
    for name, offset in VMCB_WELL_KNOWN.items():
        assert svm.vmcb_fields[name].offset == offset, f"{name}: {svm.vmcb_fields[name].offset:#x} != {offset:#x}"
    assert {f.area for f in svm.vmcb_fields.values()} == {"control", "save"}
    for f in svm.vmcb_fields.values():
        assert (f.offset < 0x400) == (f.area == "control"), f.name


def test_svm_exit_codes_match_the_apm_and_mean_vmx_exit_reasons(svm):
    for name, code in SVM_EXIT_WELL_KNOWN.items():
        assert svm.svm_exits[name].code == code, name
    for x in svm.svm_exits.values():
        assert x.means is None or x.means in svm.exit_reasons, x.name
        assert x.intercept is None or x.intercept in svm.intercepts, x.name
    meaning = {x.name: x.means for x in svm.svm_exits.values()}
    assert (meaning["cpuid"], meaning["vmmcall"], meaning["npf"], meaning["invalid"]) == \
        ("cpuid", "vmcall", "ept_violation", None)


def test_intercept_bits_match_the_apm(svm):
    bits = {b.qualname: b.bit for b in svm.intercepts.values()}
    assert (bits["misc1.intr"], bits["misc1.cpuid"], bits["misc1.hlt"], bits["misc1.msr_prot"]) == (0, 18, 24, 28)
    assert (bits["misc1.shutdown"], bits["misc2.vmrun"], bits["misc2.vmmcall"], bits["misc2.xsetbv"]) == (31, 0, 1, 13)
    assert {g.name: g.field for g in svm.intercept_groups.values()} == \
        {"misc1": "INTERCEPT_MISC1", "misc2": "INTERCEPT_MISC2", "misc3": "INTERCEPT_MISC3"}


def test_svm_msrs_join_the_vmx_catalogues(svm):
    assert svm.msrs["VM_CR"].number == 0xC0010114 and svm.msrs["VM_HSAVE_PA"].number == 0xC0010117
    assert svm.msrs["IA32_EFER"].number == 0xC0000080

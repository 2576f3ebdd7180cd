"""lower: a checked Spec -> a Plan, every decision the spec implies made in
one place: the handlers the settings imply (HLT and MWAIT for
`option apic_icr_emulation`), what
each option does, the control masks, the host-state slots, the run-time rules.

The plan has three parts. `neutral` is what any backend needs: the identity,
the VMCALL interface, the exits by reason and action, the interrupt vectors,
the globals, the settings. `vmx` is Intel's: the VMCS catalogue, the control
words, the host-state fields, the MSR intercepts, the run-time rules. `svm`
is AMD's catalogue (dsl/vmcb.hv): the VMCB layout, the intercepts, the exit
codes with the VMX exit reason each means; a second backend (AMD SVM)
reuses the front end and the neutral half.
generate.py renders templates from a plan; nothing there decides anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uefi_hv import model
from uefi_hv.errors import UserError

#: The VMCALL interface (docs/vmcall.md): RAX = VMCALL_BASE + function.
#: "UHV" in the bytes above the function number.
VMCALL_BASE = 0x5548560000
VMCALL_PONG = 0x474E4F50          # "PONG" in RBX, little-endian
VMCALL_FUNCTIONS = (
    ("PING", 0, "RBX = HV_VMCALL_PONG, RCX = the calling CPU's number"),
    ("VERSION", 1, "RBX = version, RCX:RDX = the signature's bytes"),
    ("GET_CPU_COUNT", 2, "RBX = CPUs virtualised, RCX = CPUs found"),
    ("GET_EXIT_COUNT", 3, "in: RBX = exit reason, RCX = CPU (~0: this one); out: RBX = count"),
    ("GET_EXIT_TOTAL", 4, "in: RBX = CPU (~0: this one); out: RBX = all exits of that CPU"),
    ("DEVIRTUALIZE", 5, "VMX off on the calling CPU; it goes on natively after the VMCALL"),
    ("GET_IRQ_COUNT", 6, "in: RBX = vector, RCX = CPU (~0: this one); out: RBX = external-interrupt exits"),
    ("GET_RESIDENT_RANGES", 7, "in: RBX = index; out: RBX = base, RCX = bytes, RDX = ranges (of the memory it keeps)"),
    ("RAISE_VECTOR", 8, "in: RBX = vector (32..255, not owned); the calling CPU gets it as an external interrupt"),
    ("EXIT_BOOT_SERVICES", 9, "the hypervisor's own ExitBootServices notification: its memory hidden from the "
                              "guest, the OS's restrictions on; returns to the caller's caller"),
)

#: The status a VMCALL returns in RAX (docs/vmcall.md): name, value, meaning.
VMCALL_STATUSES = (
    ("OK", 0, "success"),
    ("UNKNOWN", 0xFFFFFFFFFFFFFFFF, "unknown function, or one this spec does not support"),
    ("BAD_ARGUMENT", 0xFFFFFFFFFFFFFFFE, "an argument out of range: nothing changed"),
    ("REFUSED", 0xFFFFFFFFFFFFFFFD, "not the OS's (after ExitBootServices): nothing changed"),
)

CPUID_REGS = ("eax", "ebx", "ecx", "edx")

#: Controls the generated C relies on by role -> the spec name it has in the catalogue.
CONTROL_ROLES = {
    "HV_PROC_ACTIVATE_SECONDARY": "proc.activate_secondary_controls",
    "HV_PROC_USE_MSR_BITMAPS": "proc.use_msr_bitmaps",
    "HV_PROC_INTERRUPT_WINDOW_EXITING": "proc.interrupt_window_exiting",
    "HV_PROC_CR8_LOAD_EXITING": "proc.cr8_load_exiting",
    "HV_PROC_HLT_EXITING": "proc.hlt_exiting",
    "HV_PROC_NMI_WINDOW_EXITING": "proc.nmi_window_exiting",
    "HV_PIN_VIRTUAL_NMIS": "pin.virtual_nmis",
    "HV_PROC_MWAIT_EXITING": "proc.mwait_exiting",
    "HV_PROC2_ENABLE_EPT": "proc2.enable_ept",
    "HV_PROC2_ENABLE_VPID": "proc2.enable_vpid",
    "HV_PROC2_UNRESTRICTED_GUEST": "proc2.unrestricted_guest",
    "HV_PROC2_ENABLE_USER_WAIT_AND_PAUSE": "proc2.enable_user_wait_and_pause",
    "HV_PROC2_ENABLE_XSAVES_XRSTORS": "proc2.enable_xsaves_xrstors",
    "HV_EXIT_HOST_ADDRESS_SPACE_SIZE": "exit.host_address_space_size",
    "HV_EXIT_LOAD_IA32_EFER": "exit.load_ia32_efer",
    "HV_EXIT_LOAD_IA32_PAT": "exit.load_ia32_pat",
    "HV_ENTRY_IA32E_MODE_GUEST": "entry.ia32e_mode_guest",
    "HV_ENTRY_LOAD_IA32_EFER": "entry.load_ia32_efer",
    "HV_ENTRY_LOAD_IA32_PAT": "entry.load_ia32_pat",
}

#: Symbol(name) -> the C expression of its value (cpu: the struct hv_cpu *).
SYMBOL_EXPRESSIONS = {
    "vmexit_entry": "(UINT64)hv_vmexit_entry",
    "host_stack_top": "cpu->host_stack_top",
    "host_cr3": "hv.host_cr3",
    "host_gdt": "(UINT64)cpu->host_gdt",
    "host_tss": "(UINT64)cpu->host_tss",
    "host_idt": "(UINT64)hv.host_idt",
    "per_cpu_data": "(UINT64)cpu",
}

#: The SDM's tables of host-state fields (Appendix B "Field Encoding in VMCS"), by field width.
HOST_GROUPS = (("16", "16-Bit Host-State Fields"), ("64", "64-Bit Host-State Fields"),
               ("32", "32-Bit Host-State Fields"), ("natural", "Natural-Width Host-State Fields"))

#: Fields the generated C writes or reads by name: the catalogue must have them.
FIELDS_USED = (
    "GUEST_RSP", "GUEST_RIP", "GUEST_RFLAGS", "GUEST_CR0", "GUEST_CR3", "GUEST_CR4", "GUEST_DR7",
    "CR0_GUEST_HOST_MASK", "CR0_READ_SHADOW", "CR4_GUEST_HOST_MASK", "CR4_READ_SHADOW",
    *(f"GUEST_{s}_{p}" for s in ("ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR")
      for p in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES")),
    "GUEST_GDTR_BASE", "GUEST_GDTR_LIMIT", "GUEST_IDTR_BASE", "GUEST_IDTR_LIMIT",
    "GUEST_IA32_DEBUGCTL", "GUEST_SYSENTER_CS", "GUEST_SYSENTER_ESP", "GUEST_SYSENTER_EIP",
    "GUEST_IA32_PAT", "GUEST_IA32_EFER", "VMCS_LINK_POINTER", "GUEST_ACTIVITY_STATE",
    "GUEST_PDPTR0", "GUEST_PDPTR1", "GUEST_PDPTR2", "GUEST_PDPTR3", "XSS_EXIT_BITMAP",
    "GUEST_INTERRUPTIBILITY_INFO", "GUEST_PENDING_DBG_EXCEPTIONS", "EXCEPTION_BITMAP",
    "PAGE_FAULT_ERROR_CODE_MASK", "PAGE_FAULT_ERROR_CODE_MATCH", "CR3_TARGET_COUNT",
    "VM_EXIT_MSR_STORE_COUNT", "VM_EXIT_MSR_LOAD_COUNT", "VM_ENTRY_MSR_LOAD_COUNT",
    "VM_ENTRY_INTR_INFO_FIELD", "VM_ENTRY_EXCEPTION_ERROR_CODE", "MSR_BITMAP", "EPT_POINTER",
    "VIRTUAL_PROCESSOR_ID", "VM_INSTRUCTION_ERROR", "VM_EXIT_REASON", "EXIT_QUALIFICATION",
    "VM_EXIT_INSTRUCTION_LEN", "VM_EXIT_INTR_INFO", "GUEST_PHYSICAL_ADDRESS",
    "VM_ENTRY_CONTROLS", "CPU_BASED_VM_EXEC_CONTROL", "HOST_CR4",
    "IDT_VECTORING_INFO_FIELD", "IDT_VECTORING_ERROR_CODE", "VM_ENTRY_INSTRUCTION_LEN",
)




@dataclass
class HypervisorPlan:
    """What any backend needs. The names are those the templates use."""

    identity: model.Identity
    spec_name: str                     # the spec's file name, for the banner
    signature_regs: list               # the 12-byte signature as EBX, ECX, EDX
    version_number: int                # major << 16 | minor << 8 | patch
    vmcall: dict                       # base, pong and the functions (docs/vmcall.md)
    exits: list                        # {reason, action, number}, the implied handlers included
    actions: dict                      # every action of model.EXIT_ACTIONS -> used by the spec
    cpuid: dict                        # signature: bool, hide: [{name, leaf, reg, reg_index, bit}],
                                       # fast: bool, full_path_leaves: [int] (vmexit.S's short path)
    dispatch_idt_global: str           # the global dispatch_idt finds the host IDT through
    owned_vectors: list                # `own`: the hypervisor's vectors, sorted
    owned_masks: list                  # ... as four 64-bit words
    guest_probe_vector: int            # hvcheck's self-IPI vector: the highest not owned
    guest_raise_vector: int            # the next one down: hvcheck's RAISE_VECTOR
    globals: list                      # {name, expr (C), text (as the spec says it)}
    registers: list                    # host_reg_* the runtime provides
    chain: str                         # option chain, as an ESP path ("" for none)
    log_rate: int                      # option log_rate, log_burst
    log_burst: int
    apic_icr_emulation: bool           # option apic_icr_emulation (Bochs 2.7's pending INIT)
    host_page_tables: bool             # HOST_CR3 = symbol(host_cr3): the hypervisor's own
    self_protection: bool              # option self_protection (with EPT: spec.h)
    protection_violation: str          # option self_protection_violation
    os_may_devirtualize: bool          # option os_may_devirtualize, os_may_map_hypervisor
    os_may_map_hypervisor: bool
    cpuid_exit_counts: bool            # option cpuid_exit_counts: CPUID leaf 0x40000002


@dataclass
class VmxPlan:
    """Intel VMX's half: the VMCS catalogue and what goes into the VMCS."""

    catalogue_files: str
    fields: list                       # {name, encoding, type, width, high}, by encoding
    controls: list                     # {macro, group, bit, qualname, named}
    control_groups: list               # {name, field, msr, true_msr, wanted, required}
    msrs: list                         # the catalogue's MSRs
    msr: dict                          # MSR name -> number
    roles: list                        # CONTROL_ROLES resolved: {macro, mask, qualname}
    exit_reasons: list                 # {number, name, offset}
    exit_reason_count: int
    vm_errors: list                    # {number, name, offset}
    vm_error_count: int
    host_fields: list                  # {name, expr, per_cpu, slot, when...}, in cpu->host[] order
    host_groups: list                  # the same, grouped as the SDM's Appendix B
    msr_intercepts: list               # {first, last, write, enum}
    rules: list                        # the run-time rules: {id, section, title, kind, args, field}
    rule_kinds: list                   # model.RUNTIME_RULE_KINDS
    ept: bool                          # EPT among the wanted controls


@dataclass
class SvmPlan:
    """AMD SVM's catalogue, for svm.h: empty (svm False) when the spec imports none."""

    svm: bool                          # the spec has a VMCB catalogue
    vmcb_fields: list                  # {name, offset, size, description}, by offset
    svm_intercepts: list               # {name, bit, group, field}, in catalogue order
    svm_exits: list                    # {name, code, meaning, intercept_offset, intercept_mask, text}: C
                                       # expressions (macros), in catalogue order
    svm_event_injection: list          # {name, first, width, mask, description}, by first bit
    svm_event_types: list              # {name, number, description}, by number
    svm_rules: list                    # VMRUN's consistency checks, in catalogue order: {name, id, section,
                                       # title, kind, field, size, mask, bytes, types, when: [{field, size,
                                       # mask, set}]}
    svm_rule_kinds: list               # model.VMRUN_CHECK_KINDS, the enum svm_checks.c switches on


@dataclass
class Plan:
    """A spec, lowered: the backend-neutral half, the VMX half and SVM's catalogue."""

    neutral: HypervisorPlan
    vmx: VmxPlan
    svm: SvmPlan


def _source_expression(source, spec) -> str:
    if isinstance(source, model.Const):
        return f"{source.value:#x}ULL"
    if isinstance(source, model.GlobalRef):
        return f"hv.{source.name}"
    if isinstance(source, model.ReadReg):
        if source.reg not in model.REGISTERS:
            raise UserError(f"error: {spec.file}: read({source.reg}) is not a register the "
                            f"generated code can read; use one of {', '.join(model.REGISTERS)}")
        return f"host_reg_{source.reg.replace('.', '_')}(cpu)"
    if isinstance(source, model.ReadMsr):
        names = sorted(m.name for m in getattr(spec, "msrs", {}).values() if m.number == source.msr)
        return f"rdmsr({source.msr:#x}{' /* ' + names[0] + ' */' if names else ''})"
    if isinstance(source, model.Symbol):
        if source.name not in SYMBOL_EXPRESSIONS:
            raise UserError(f"error: {spec.file}: symbol({source.name}) is not provided by the "
                            f"generated code; use one of {', '.join(sorted(SYMBOL_EXPRESSIONS))}")
        return SYMBOL_EXPRESSIONS[source.name]
    raise UserError(f"error: {spec.file}: cannot generate code for the source {source!r}")


def _source_text(source) -> str:
    if isinstance(source, model.ReadReg):
        return source.reg
    if isinstance(source, model.ReadMsr):
        return f"rdmsr({source.msr:#x})"
    if isinstance(source, model.Symbol):
        return f"symbol({source.name})"
    if isinstance(source, model.GlobalRef):
        return source.name
    return f"{getattr(source, 'value', source)}"


def lower(spec: model.Spec) -> Plan:
    """Every decision a checked Spec implies, made once: implicit handlers,
    what options do, control masks, host-state slots. Only sorted or
    definition-ordered sequences: what is generated from it is deterministic."""

    missing = [name for name in FIELDS_USED if name not in spec.fields]
    if missing:
        raise UserError(f"error: {spec.file}: the VMCS field catalogue lacks {', '.join(missing)}, "
                        f"which the generated hypervisor writes; add them to the catalogue (dsl/vmcs.hv)")

    fields = [{"name": f.name, "encoding": f.encoding, "type": f.type, "width": f.width,
               "high": f.high_encoding} for f in sorted(spec.fields.values(), key=lambda f: f.encoding)]
    group_order = list(model.CONTROL_GROUPS)
    controls: list[dict[str, Any]] = [
        {"macro": f"CTL_{c.group.upper()}_{c.name.upper()}", "group": c.group, "bit": c.bit,
         "qualname": c.qualname, "named": False}
        for c in sorted(spec.controls.values(), key=lambda c: (group_order.index(c.group), c.bit))]

    wanted = {g: 0 for g in group_order}
    required = {g: 0 for g in group_order}
    for req in spec.control_reqs:
        bit = spec.controls[req.control]
        wanted[bit.group] |= bit.mask
        if req.required:
            required[bit.group] |= bit.mask
    secondary = spec.controls.get("proc.activate_secondary_controls")
    if secondary and wanted["proc2"]:
        # SDM 26.6.2 "Processor-Based VM-Execution Controls": the secondary
        # controls are used only when this is 1.
        wanted["proc"] |= secondary.mask
        if required["proc2"]:
            required["proc"] |= secondary.mask
    for c in controls:     # the names a "required control missing" message can need
        c["named"] = bool(required[c["group"]] & (1 << c["bit"]))
    control_groups = [{"name": g, "field": field, "msr": spec.msr_number(msr),
                       "true_msr": spec.msr_number(true_msr) or 0,
                       "wanted": wanted[g], "required": required[g]}
                      for g, (field, msr, true_msr) in model.CONTROL_GROUPS.items()]
    roles = []
    for macro, qualname in CONTROL_ROLES.items():
        role = spec.controls.get(qualname)
        roles.append({"macro": macro, "mask": role.mask if role else 0, "qualname": qualname if role else ""})

    reasons = sorted(spec.exit_reasons.values(), key=lambda r: r.number)
    errors = sorted(spec.vm_instruction_errors.values(), key=lambda e: e.number)

    host_fields: list[dict[str, Any]] = []
    for assign in spec.host_state:
        f = spec.fields[assign.field]
        when = f.exists_when
        host_fields.append({
            "name": f.name, "width": f.width, "encoding": f.encoding,
            "expr": _source_expression(assign.source, spec),
            "per_cpu": assign.when == "per_cpu",
            "comment": "the global, captured once" if isinstance(assign.source, model.GlobalRef) else "",
            "when_group": when.split(".")[0] if when else "",
            "when_mask": spec.controls[when].mask if when and when in spec.controls else 0,
            "when_macro": f"CTL_{when.upper().replace('.', '_')}" if when else "",
            "when": when or "",
        })
    host_groups: list[dict[str, Any]] = []
    for width, title in HOST_GROUPS:
        members = sorted((h for h in host_fields if h["width"] == width), key=lambda h: h["encoding"])
        if members:
            host_groups.append({"title": title, "fields": members})
    host_fields = [h for g in host_groups for h in g["fields"]]   # the order of cpu->host[]
    for slot, h in enumerate(host_fields):
        h["slot"] = slot

    exits: list[dict[str, Any]] = []
    actions: dict[str, bool] = {}
    cpuid_opts: dict[str, Any] = {"signature": False, "hide": [], "fast": False, "full_path_leaves": []}
    dispatch_idt_global = ""
    owned_vectors = []
    for handler in spec.exits:
        exits.append({"reason": handler.reason, "action": handler.action,
                      "number": spec.exit_reasons[handler.reason].number})
        actions[handler.action] = True
        if handler.action == "cpuid":
            cpuid_opts["signature"] = bool(handler.options.get("signature"))
            for name in handler.options.get("hide", []):
                hidden = model.CPUID_HIDE[name]          # parse accepts no other name
                cpuid_opts["hide"].append({"name": name, "leaf": hidden.leaf, "reg": hidden.reg,
                                           "reg_index": CPUID_REGS.index(hidden.reg), "bit": hidden.bit})
            # The CPUID exit's short path (vmexit.S) passes a leaf through as
            # it is; the leaves the action changes take the full path: 1 and 7
            # (bits that mirror the guest's CR4, the hypervisor bit, WAITPKG),
            # every leaf with a bit the spec hides, and 0x400000xx (its own).
            cpuid_opts["fast"] = handler.reason == "cpuid"
            cpuid_opts["full_path_leaves"] = sorted({0x1, 0x7} | {h["leaf"] for h in cpuid_opts["hide"]})
        if handler.action == "dispatch_idt":
            dispatch_idt_global = str(handler.options.get("idt_base", "host_idt_base"))
            owned_vectors = sorted(handler.options.get("own", []))
    # The handlers the spec's settings imply (model.SettingInfo.implies),
    # where the spec does not handle the reason itself.
    for setting in sorted(n for n, s in model.SETTING_INFO.items() if s.implies and spec.settings.get(n)):
        for reason, implied in model.SETTING_INFO[setting].implies:
            if reason in spec.exit_reasons and not any(e["reason"] == reason for e in exits):
                exits.append({"reason": reason, "action": implied, "number": spec.exit_reasons[reason].number})
                actions[implied] = True
    exits.sort(key=lambda e: e["number"])
    actions = {a: actions.get(a, False) for a in model.EXIT_ACTIONS}

    msr_intercepts = [{"first": m.first, "last": m.last, "write": m.access == "write",
                       "enum": "MSR_" + m.action.upper()} for m in spec.msr_intercepts]

    rules = []
    for r in _runtime_rules(spec):
        rule = {"id": r.id, "section": r.section, "title": r.title.replace('"', "'"), "kind": r.kind,
                "args": dict(r.args)}
        if r.kind == "cr_fixed":
            rule["field"] = "HOST_" + r.args["reg"].upper()
        elif r.kind == "control_allowed":
            rule["group_field"] = model.CONTROL_GROUPS[r.args["group"]][0]
        elif "field" in r.args:
            rule["field"] = r.args["field"]
        rules.append(rule)

    sig = spec.identity.signature.encode("ascii")
    if len(sig) != 12:
        raise UserError(f"error: {spec.file}: the signature must be 12 bytes, not {len(sig)}")
    signature_regs = [int.from_bytes(sig[i:i + 4], "little") for i in (0, 4, 8)]
    try:
        major, minor, patch = (int(x) for x in (spec.identity.version.split(".") + ["0", "0"])[:3])
    except ValueError:
        raise UserError(f"error: {spec.file}: version '{spec.identity.version}' is not MAJOR.MINOR.PATCH")

    host_symbols = {a.source.name for a in spec.host_state if isinstance(a.source, model.Symbol)}
    guest_vectors = [v for v in range(0xF0, 0x3F, -1) if v not in owned_vectors]   # hvcheck's, highest first
    return Plan(
        neutral=HypervisorPlan(
            identity=spec.identity,
            spec_name=Path(spec.file).name,
            signature_regs=signature_regs,
            version_number=major << 16 | minor << 8 | patch,
            vmcall={"base": VMCALL_BASE, "pong": VMCALL_PONG, "statuses": VMCALL_STATUSES,
                   "functions": [{"name": n, "number": i, "text": t} for n, i, t in VMCALL_FUNCTIONS]},
            exits=exits,
            actions=actions,
            cpuid=cpuid_opts,
            dispatch_idt_global=dispatch_idt_global,
            owned_vectors=owned_vectors,
            owned_masks=[sum(1 << (v & 63) for v in owned_vectors if v >> 6 == w) for w in range(4)],
            guest_probe_vector=guest_vectors[0],
            guest_raise_vector=guest_vectors[1],
            globals=[{"name": g.name, "expr": _source_expression(g.source, spec),
                     "text": _source_text(g.source)} for g in spec.globals],
            registers=[r.replace(".", "_") for r in model.REGISTERS],
            chain=str(spec.settings.get("chain", "") or "").replace("/", "\\\\"),
            log_rate=spec.int_setting("log_rate"),
            log_burst=spec.int_setting("log_burst"),
            apic_icr_emulation=bool(spec.settings.get("apic_icr_emulation")),
            self_protection=spec.bool_setting("self_protection"),
            protection_violation=str(spec.settings.get("self_protection_violation",
                                                       model.SETTING_DEFAULTS["self_protection_violation"])),
            os_may_devirtualize=spec.bool_setting("os_may_devirtualize"),
            os_may_map_hypervisor=spec.bool_setting("os_may_map_hypervisor"),
            cpuid_exit_counts=spec.bool_setting("cpuid_exit_counts"),
            host_page_tables="host_cr3" in host_symbols,
        ),
        vmx=VmxPlan(
            catalogue_files=", ".join(Path(f).name for f in (spec.files or [spec.file])),
            fields=fields,
            controls=controls,
            control_groups=control_groups,
            msrs=sorted(spec.msrs.values(), key=lambda r: (r.number, r.name)),
            msr={r.name: r.number for r in spec.msrs.values()},
            roles=roles,
            exit_reasons=_with_offsets([{"number": r.number, "name": r.name} for r in reasons]),
            exit_reason_count=reasons[-1].number + 1 if reasons else 1,
            vm_errors=_with_offsets([{"number": e.number, "name": e.name} for e in errors]),
            vm_error_count=errors[-1].number + 1 if errors else 1,
            host_fields=host_fields,
            host_groups=host_groups,
            msr_intercepts=msr_intercepts,
            rules=rules,
            rule_kinds=list(model.RUNTIME_RULE_KINDS),
            ept=bool(wanted["proc2"] & spec.controls["proc2.enable_ept"].mask)
            if "proc2.enable_ept" in spec.controls else False,
        ),
        svm=_lower_svm(spec),
    )


def _lower_svm(spec: model.Spec) -> SvmPlan:
    """The VMCB catalogue as svm.h names it: VMCB_<FIELD>, SVM_EXIT_<CODE>,
    SVM_INTERCEPT_<BIT>, EXIT_REASON_<MEANS>."""
    intercepts = []
    for bit in spec.intercepts.values():
        group = spec.intercept_groups.get(bit.group)
        if group is None:
            raise UserError(f"error: {spec.file}: intercept {bit.qualname} has no `intercepts {bit.group} at FIELD`")
        intercepts.append({"name": bit.name, "bit": bit.bit, "group": bit.group, "field": group.field})
    exits = []
    for x in spec.svm_exits.values():
        cause = spec.intercepts[x.intercept] if x.intercept else None
        exits.append({
            "name": x.name, "code": x.code,
            "meaning": f"EXIT_REASON_{x.means.upper()}" if x.means else "HV_SVM_NO_MEANING",
            "intercept_offset": f"VMCB_{spec.intercept_groups[cause.group].field}" if cause else "0",
            "intercept_mask": f"SVM_INTERCEPT_{cause.name.upper()}" if cause else "0",
            "text": x.description or x.name,
        })
    sizes = {f.name: f.size for f in spec.vmcb_fields.values()}
    # EVENTINJ.TYPE is 3 bits: the types the catalogue defines, as a mask (the
    # static check VMRUN-EVENTINJ holds them to the APM's).
    event_types = sum(1 << t.number for t in spec.event_types.values() if t.number < 64)
    rules = []
    for c in spec.vmrun_checks.values():
        rules.append({
            "name": c.name, "id": c.id, "section": "APM " + ", ".join(c.sections), "title": c.title,
            "kind": c.kind, "field": c.field, "size": sizes.get(c.field or "", 0),
            "mask": sum(1 << v for v in c.exceptions if v < 64) if c.kind == "event_injection" else c.mask,
            "bytes": c.size, "types": event_types if c.kind == "event_injection" else 0,
            "when": [{"field": t.field, "size": sizes[t.field], "mask": t.mask, "set": t.set} for t in c.when],
        })
    return SvmPlan(
        svm=bool(spec.vmcb_fields),
        vmcb_fields=[{"name": f.name, "offset": f.offset, "size": f.size, "description": f.description}
                     for f in sorted(spec.vmcb_fields.values(), key=lambda f: (f.offset, f.name))],
        svm_intercepts=intercepts,
        svm_exits=exits,
        svm_event_injection=[{"name": f.name, "first": f.first, "width": f.width, "mask": f.mask,
                              "description": f.description}
                             for f in sorted(spec.event_injection.values(), key=lambda f: f.first)],
        svm_event_types=[{"name": t.name, "number": t.number, "description": t.description}
                         for t in sorted(spec.event_types.values(), key=lambda t: (t.number, t.name))],
        svm_rules=rules,
        svm_rule_kinds=list(model.VMRUN_CHECK_KINDS),
    )


def _with_offsets(named: list[dict]) -> list[dict]:
    """Each entry's offset in the concatenation of the NUL-terminated names."""
    offset = 0
    for entry in named:
        entry["offset"] = offset
        offset += len(entry["name"]) + 1
    return named


def _runtime_rules(spec):
    from uefi_hv import check
    return check.runtime_rules(spec)



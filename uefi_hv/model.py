"""The spec as plain data: what parse produces, check reads and generate renders.

This is the contract between the steps. resolve.py builds these objects
from the declarations parse.py reads; nothing here knows about Lark or Jinja.
Every object that came from a spec carries a `Loc` so that a diagnostic can
point at the line.

Encodings follow SDM Appendix B "Field Encoding in VMCS":
    bit 0 access type (0 full, 1 high), bits 9:1 index, bits 11:10 type,
    bits 14:13 width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

# --- VMCS field catalogue ------------------------------------------------

FIELD_TYPES = {"control": 0, "exit-info": 1, "guest": 2, "host": 3}
FIELD_WIDTHS = {"16": 0, "64": 1, "32": 2, "natural": 3}
WIDTH_BITS = {"16": 16, "64": 64, "32": 32, "natural": 64}  # natural = 64 in a 64-bit host


def encode_field(type_: str, width: str, index: int) -> int:
    """SDM Appendix B: access | index << 1 | type << 10 | width << 13, with
    access 0 (full); Field.high_encoding sets it for the HIGH half."""
    return index << 1 | FIELD_TYPES[type_] << 10 | FIELD_WIDTHS[width] << 13


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Field:
    """One VMCS field, e.g. HOST_IDTR_BASE (natural, host, index 7 -> 0x6C0E)."""

    name: str                      # the SDM's name as an identifier: HOST_IDTR_BASE
    type: str                      # key of FIELD_TYPES
    width: str                     # key of FIELD_WIDTHS
    index: int
    exists_when: Optional[str] = None   # a control, e.g. "exit.load_ia32_efer"
    description: str = ""          # the SDM's wording
    loc: Optional[Loc] = None

    @property
    def encoding(self) -> int:
        return encode_field(self.type, self.width, self.index)

    @property
    def high_encoding(self) -> Optional[int]:
        """The HIGH alias (32-bit access to bits 63:32) of a 64-bit field."""
        return self.encoding | 1 if self.width == "64" else None

    @property
    def bits(self) -> int:
        return WIDTH_BITS[self.width]


# --- control bits ---------------------------------------------------------

# group -> (VMCS field holding it, capability MSR, TRUE_* MSR or None), by
# their catalogue names: the encodings and MSR numbers live in dsl/vmcs.hv alone.
CONTROL_GROUPS = {
    "pin": ("PIN_BASED_VM_EXEC_CONTROL", "IA32_VMX_PINBASED_CTLS", "IA32_VMX_TRUE_PINBASED_CTLS"),
    "proc": ("CPU_BASED_VM_EXEC_CONTROL", "IA32_VMX_PROCBASED_CTLS", "IA32_VMX_TRUE_PROCBASED_CTLS"),
    "proc2": ("SECONDARY_VM_EXEC_CONTROL", "IA32_VMX_PROCBASED_CTLS2", None),
    "exit": ("VM_EXIT_CONTROLS", "IA32_VMX_EXIT_CTLS", "IA32_VMX_TRUE_EXIT_CTLS"),
    "entry": ("VM_ENTRY_CONTROLS", "IA32_VMX_ENTRY_CTLS", "IA32_VMX_TRUE_ENTRY_CTLS"),
}


@dataclass(frozen=True)
class ControlBit:
    group: str                     # key of CONTROL_GROUPS
    name: str                      # e.g. "ack_interrupt_on_exit"
    bit: int
    description: str = ""
    loc: Optional[Loc] = None

    @property
    def qualname(self) -> str:     # "exit.ack_interrupt_on_exit"
        return f"{self.group}.{self.name}"

    @property
    def mask(self) -> int:
        return 1 << self.bit


@dataclass(frozen=True)
class ExitReason:
    number: int                    # SDM Appendix C "VMX Basic Exit Reasons", e.g. 10
    name: str                      # e.g. "cpuid"
    description: str = ""
    loc: Optional[Loc] = None


# --- sources of values ----------------------------------------------------

@dataclass(frozen=True)
class Const:
    value: int


@dataclass(frozen=True)
class GlobalRef:
    name: str                      # a Global's name, e.g. host_idt_base


@dataclass(frozen=True)
class ReadReg:
    """A register or descriptor-table read: cr0, cr3, cr4, sidt.base, sgdt.base,
    tr (selector), cs/ss/ds/es/fs/gs (selectors), fs.base, gs.base."""

    reg: str


@dataclass(frozen=True)
class ReadMsr:
    msr: int


@dataclass(frozen=True)
class Symbol:
    """A symbol of the generated code: vmexit_entry, host_stack_top, host_gdt,
    host_tss, host_idt, host_cr3 ..."""

    name: str


Source = Union[Const, GlobalRef, ReadReg, ReadMsr, Symbol]


@dataclass(frozen=True)
class Global:
    """A value captured once at start-up, before any VMCS is written (the seed:
    `host_idt_base` from SIDT), read by every consumer instead of re-reading."""

    name: str
    source: Source
    loc: Optional[Loc] = None


@dataclass(frozen=True)
class Constant:
    name: str
    value: int
    loc: Optional[Loc] = None


@dataclass(frozen=True)
class HostAssign:
    field: str                     # a host-state Field's name
    source: Source
    when: str = "once"             # "once" (constant host state) or "per_cpu"
    loc: Optional[Loc] = None


@dataclass(frozen=True)
class ControlReq:
    control: str                   # qualified: "proc2.enable_ept"
    required: bool                 # require (missing -> run-time error) / prefer (dropped)
    loc: Optional[Loc] = None


@dataclass(frozen=True)
class MsrIntercept:
    first: int                     # MSR range first..last inclusive
    last: int
    access: str                    # "read" or "write"
    action: str                    # e.g. "feature_control_locked", "inject_gp", "passthrough_log"
    loc: Optional[Loc] = None


@dataclass(frozen=True)
class ExitHandler:
    reason: str                    # an ExitReason's name
    action: str                    # what the generated handler does, e.g. "cpuid", "inject_ud", "log_stop"
    options: dict = field(default_factory=dict, hash=False)   # e.g. {"hide": ["vmx"]}
    loc: Optional[Loc] = None


@dataclass(frozen=True)
class Identity:
    name: str = "uefi-hv"
    signature: str = "UefiHvUefiHv"    # exactly 12 bytes: CPUID 0x40000000 EBX:ECX:EDX
    version: str = "0.1.0"
    loc: Optional[Loc] = None


@dataclass
class Spec:
    file: str
    identity: Identity = field(default_factory=Identity)
    fields: dict[str, Field] = field(default_factory=dict)          # catalogue by name
    controls: dict[str, ControlBit] = field(default_factory=dict)   # by qualname
    exit_reasons: dict[str, ExitReason] = field(default_factory=dict)
    constants: dict[str, Constant] = field(default_factory=dict)
    globals: list[Global] = field(default_factory=list)             # in definition order
    host_state: list[HostAssign] = field(default_factory=list)
    control_reqs: list[ControlReq] = field(default_factory=list)
    msr_intercepts: list[MsrIntercept] = field(default_factory=list)
    exits: list[ExitHandler] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)       # e.g. {"external_interrupts": True, "chain": "..."}
    # added by the DSL step (parse.py, resolve.py):
    vm_instruction_errors: dict[str, "VmInstructionError"] = field(default_factory=dict)  # by name
    msrs: dict[str, "Msr"] = field(default_factory=dict)            # by name
    # the VMCB catalogue (dsl/vmcb.hv), empty when the spec imports none:
    vmcb_fields: dict[str, "VmcbField"] = field(default_factory=dict)            # by name
    intercept_groups: dict[str, "InterceptGroup"] = field(default_factory=dict)  # by name: misc1
    intercepts: dict[str, "InterceptBit"] = field(default_factory=dict)          # by qualname: misc1.cpuid
    svm_exits: dict[str, "SvmExit"] = field(default_factory=dict)                # by name, in catalogue order
    event_injection: dict[str, "EventField"] = field(default_factory=dict)       # by name
    event_types: dict[str, "EventType"] = field(default_factory=dict)            # by name
    vmrun_checks: dict[str, "VmrunCheck"] = field(default_factory=dict)          # by name, in catalogue order
    setting_locs: dict[str, Loc] = field(default_factory=dict)      # where each setting was written
    files: list[str] = field(default_factory=list)                  # spec files, in load order
    file_order: dict[str, tuple] = field(default_factory=dict, repr=False)  # file -> lines of its import chain
    sources: dict[str, str] = field(default_factory=dict, repr=False)   # file -> text (for diagnostics)

    def bool_setting(self, name: str) -> bool:
        """A bool setting (SETTINGS), its default where the spec leaves it out."""
        return bool(self.settings.get(name, SETTING_DEFAULTS[name]))

    def int_setting(self, name: str) -> int:
        """An int setting (SETTINGS), its default where the spec leaves it out."""
        value = self.settings.get(name, SETTING_DEFAULTS[name])
        if not isinstance(value, int):
            raise TypeError(f"setting {name} is {value!r}, not a number")
        return value

    def msr_number(self, name: Optional[str]) -> Optional[int]:
        """The number of a catalogue MSR (None for None); a catalogue without
        it is the spec's error, named as such."""
        if name is None:
            return None
        if name not in self.msrs:
            from uefi_hv.errors import UserError
            raise UserError(f"error: {self.file}: the catalogue lacks the MSR {name}, which the "
                            f"generated hypervisor reads; add it to the msrs block (dsl/vmcs.hv)")
        return self.msrs[name].number


# --- additions for the DSL (parse/check) and the generator --------------------

@dataclass(frozen=True)
class VmInstructionError:
    """SDM 32.4 "VM Instruction Error Numbers": read from
    VM_INSTRUCTION_ERROR after a VMX instruction fails with ZF=1."""

    number: int
    name: str                      # e.g. "entry_invalid_host_state_fields"
    description: str = ""          # the SDM's wording
    loc: Optional[Loc] = None


@dataclass(frozen=True)
class Msr:
    """A model-specific register named in the catalogue (read(msr NAME), msr_bitmap)."""

    name: str                      # e.g. "IA32_EFER"
    number: int
    description: str = ""
    loc: Optional[Loc] = None


# --- the VMCB catalogue (AMD64 APM vol. 2, Appendix B "Layout of VMCB") ------------

#: A VMCB area -> the bytes of the 4 KiB VMCB it may hold: the control area
#: (Table B-1), then the state save area (Table B-2) from 0x400 to the page's end.
VMCB_AREAS = {"control": (0x000, 0x400), "save": (0x400, 0x1000)}

#: Intercept group -> the first exit code of its bits (APM Appendix C "SVM
#: Intercept Exit Codes"): an intercept of bit N exits with base + N.
SVM_EXIT_CODE_BASES = {"misc1": 0x60, "misc2": 0x80}


@dataclass(frozen=True)
class VmcbField:
    """A field of the VMCB: plain memory, an offset and a size."""

    name: str                      # e.g. "RIP"; VMCB_RIP in C
    area: str                      # key of VMCB_AREAS
    offset: int                    # from the start of the VMCB, e.g. 0x578
    size: int                      # bytes
    description: str = ""
    loc: Optional[Loc] = None

    @property
    def end(self) -> int:          # one past its last byte
        return self.offset + self.size


@dataclass(frozen=True)
class InterceptGroup:
    """An intercept vector: `intercepts misc1 at INTERCEPT_MISC1`."""

    name: str                      # e.g. "misc1"
    field: str                     # the VmcbField holding its bits
    loc: Optional[Loc] = None


@dataclass(frozen=True)
class InterceptBit:
    group: str                     # an InterceptGroup's name
    name: str                      # e.g. "cpuid": unique across groups (SVM_INTERCEPT_CPUID)
    bit: int
    description: str = ""
    loc: Optional[Loc] = None

    @property
    def qualname(self) -> str:     # "misc1.cpuid"
        return f"{self.group}.{self.name}"

    @property
    def mask(self) -> int:
        return 1 << self.bit


@dataclass(frozen=True)
class SvmExit:
    """An exit code (EXITCODE, APM Appendix C), with the intercept that causes
    it and the VMX exit reason of the same event (`means`)."""

    name: str                      # e.g. "cpuid"
    code: int                      # e.g. 0x72
    intercept: Optional[str] = None    # an InterceptBit's qualname
    means: Optional[str] = None        # an ExitReason's name
    description: str = ""
    loc: Optional[Loc] = None


@dataclass(frozen=True)
class EventField:
    """A field of EVENTINJ and EXITINTINFO (APM 15.20 "Event Injection"): bits first..last."""

    name: str
    first: int
    last: int
    description: str = ""
    loc: Optional[Loc] = None

    @property
    def width(self) -> int:
        return self.last - self.first + 1

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.first


@dataclass(frozen=True)
class EventType:
    """A value of EVENTINJ.TYPE."""

    number: int
    name: str
    description: str = ""
    loc: Optional[Loc] = None


#: The AMD64 APM vol. 2 sections the catalogue and the checks cite -> their
#: titles (check.APM_EDITION names the edition).
APM_SECTIONS = {
    "15.5.1": "Basic Operation: Canonicalization and Consistency Checks",
    "15.20": "Event Injection",
    "Appendix B": "Layout of VMCB",
    "Appendix C": "SVM Intercept Exit Codes",
}


@dataclass(frozen=True)
class VmrunKind:
    """What the runtime (svm_checks.c) evaluates for a VMRUN check of a kind."""

    args: tuple                    # the arguments a check of the kind gives, in order
    text: str


#: VmrunCheck.kind -> its arguments and what svm_checks.c decides; the C has
#: one case per kind (HV_SVM_RULE_<KIND>, svm.h).
VMRUN_CHECK_KINDS = {
    "forbidden": VmrunKind(("when",), "fails when every term holds: `FIELD set MASK` (every bit of MASK set), "
                                      "`FIELD clear MASK` (every bit clear); an intercept, `misc2.vmrun clear`, "
                                      "is its vector's field and bit"),
    "mbz": VmrunKind(("field", "mask"), "fails when a bit of `mask` is set in the field"),
    "cr4_mbz": VmrunKind(("field", "mask"), "fails when a bit of `mask` is set in the field, or a CR4 bit of a "
                                            "feature CPUID lacks (UMIP, LA57, VMXE, SMXE, FSGSBASE, PCIDE, OSXSAVE, "
                                            "SMEP, SMAP, PKE, CET)"),
    "efer_mbz": VmrunKind(("field", "mask"), "fails when a bit of `mask` is set in the field, or an EFER bit of a "
                                             "feature CPUID lacks (NXE, SVME, LMSLE, FFXSR, TCE, AIBRSE)"),
    "long_mode": VmrunKind(("field", "mask"), "fails when a bit of `mask` is set in the field and the CPU has no "
                                              "long mode (CPUID.80000001:EDX.LM[29] = 0)"),
    "below_maxphyaddr": VmrunKind(("field", "size"), "fails when the `size` bytes at the physical address in the "
                                                     "field (its bits 11:0 ignored) reach 2^MAXPHYADDR "
                                                     "(CPUID.80000008:EAX[7:0])"),
    "event_injection": VmrunKind(("field", "exceptions"), "with the field's `valid` bit set (event_injection): "
                                                          "fails when its `type` is not a number of event_types, or "
                                                          "is `exception` with a `vector` not among `exceptions`"),
}

#: The sizes of a VMCB field a check can read as a number.
VMRUN_FIELD_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class VmcbTerm:
    """A term of a `forbidden` check: every bit of `mask` set (or clear) in a VMCB field."""

    field: str                     # a VmcbField's name
    mask: int
    set: bool
    intercept: Optional[str] = None    # the InterceptBit's qualname, when written as one

    def __str__(self) -> str:
        state = "set" if self.set else "clear"
        return f"{self.intercept} {state}" if self.intercept else f"{self.field} {state} {self.mask:#x}"


@dataclass(frozen=True)
class VmrunCheck:
    """One of the consistency checks VMRUN makes (APM vol. 2 15.5.1): VMRUN
    exits with VMEXIT_INVALID when it fails. svm_checks.c decides it on the
    VMCB before the first VMRUN, by its kind (VMRUN_CHECK_KINDS)."""

    name: str                      # e.g. "efer_svme"
    title: str                     # the APM's words: "EFER.SVME is zero"
    kind: str                      # a key of VMRUN_CHECK_KINDS
    sections: tuple = ("15.5.1",)  # keys of APM_SECTIONS
    field: Optional[str] = None    # the VmcbField it reads (all kinds but forbidden)
    mask: int = 0                  # mbz, cr4_mbz, efer_mbz, long_mode
    size: int = 0                  # below_maxphyaddr: bytes
    exceptions: tuple = ()         # event_injection: the vectors an exception may have
    when: tuple = ()               # forbidden: its VmcbTerms
    loc: Optional[Loc] = None

    @property
    def id(self) -> str:           # "VMRUN-EFER-SVME"
        return vmrun_check_id(self.name)

    @property
    def section(self) -> str:      # "APM vol. 2 15.5.1", as check.apm() writes it
        return "APM vol. 2 " + ", ".join(self.sections)

    def arguments(self) -> str:
        """Its kind and arguments as the catalogue writes them."""
        words = [f"kind {self.kind}"]
        if self.field is not None:
            words.append(f"field {self.field}")
        if self.kind in ("mbz", "cr4_mbz", "efer_mbz", "long_mode"):
            words.append(f"mask {self.mask:#x}")
        if self.kind == "below_maxphyaddr":
            words.append(f"size {self.size:#x}")
        if self.exceptions:
            words.append("exceptions " + vector_ranges(self.exceptions))
        if self.when:
            words.append("when " + " and ".join(str(t) for t in self.when))
        return " ".join(words)


def vector_ranges(vectors) -> str:
    """Sorted vectors as the catalogue writes them: 0..1, 3..8, 21."""
    runs: list[list[int]] = []
    for v in sorted(vectors):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def vmrun_check_id(name: str) -> str:
    """The id of the VMRUN check `name`: efer_svme -> VMRUN-EFER-SVME."""
    return "VMRUN-" + name.upper().replace("_", "-")


#: Registers `read(...)` can name (see ReadReg); all are read in the
#: hypervisor's own host environment.
REGISTERS = ("cr0", "cr3", "cr4", "cs", "ss", "ds", "es", "fs", "gs", "tr",
             "fs.base", "gs.base", "sidt.base", "sgdt.base")

#: Symbols the generated code provides (Symbol.name) -> True when the value
#: differs per CPU (so only `per_cpu` may use it).
SYMBOLS = {
    "vmexit_entry": False,      # the VM-exit entry point (assembly)
    "host_stack_top": True,     # top of this CPU's host stack
    "host_cr3": False,          # the hypervisor's own page tables
    "host_gdt": True,           # this CPU's GDT (it holds this CPU's TSS descriptor)
    "host_tss": True,           # this CPU's TSS
    "host_idt": False,          # the hypervisor's IDT, shared by all CPUs
    "per_cpu_data": True,       # this CPU's data block (e.g. for GS base)
}


@dataclass(frozen=True)
class ActionInfo:
    """An action a VM-exit handler can take (ExitHandler.action)."""

    name: str
    reasons: tuple = ()            # exit reasons it can handle; () = any
    options: dict = field(default_factory=dict, hash=False)   # option -> kind: flag|names|global|int|string
    text: str = ""
    # Only implied, never named in a spec (`exit hlt -> wait_for_sipi` is refused).
    internal: bool = False
    # Exit-causing controls the runtime sets by itself for this action, so
    # that the spec need not ask for them.
    sets: tuple = ()

    def causing_controls(self, reason: str) -> tuple:
        """The controls, any one of which a spec handling `reason` with this
        action must ask for so that the exit happens at all; () when it
        happens without one, or the runtime sets the control itself."""
        causes = tuple(c for c, reasons in EXIT_CAUSES.items() if reason in reasons)
        if reason in EXIT_OTHER_CAUSES or set(causes) & set(self.sets):
            return ()
        return causes


EXIT_ACTIONS = {a.name: a for a in (
    ActionInfo("cpuid", ("cpuid",), {"hide": "names", "signature": "flag"},
               "executes CPUID for the guest; `hide` clears feature bits (vmx: CPUID.1:ECX[5], "
               "smx: CPUID.1:ECX[6], svm: CPUID.80000001:ECX[2]); "
               "`signature` answers leaf 0x40000000 with the hypervisor's signature"),
    ActionInfo("msr", ("rdmsr", "wrmsr"), {},
               "applies the `msr_bitmap` intercepts; other MSRs that exit are executed for the guest"),
    ActionInfo("vmcall", ("vmcall",), {}, "the hypervisor's VMCALL interface (docs/vmcall.md)"),
    ActionInfo("xsetbv", ("xsetbv",), {}, "validates and executes XSETBV"),
    ActionInfo("invd", ("invd",), {}, "emulates INVD as WBINVD"),
    ActionInfo("cr_access", ("cr_access",), {}, "emulates MOV to/from CR0/CR3/CR4/CR8"),
    ActionInfo("inject_ud", (), {}, "injects #UD (e.g. the VMX instructions)"),
    ActionInfo("triple_fault", ("triple_fault",), {},
               "logs the guest state and resets the machine (0xCF9), as the shutdown of a triple fault "
               "does on bare metal"),
    ActionInfo("log_shutdown", (), {}, "logs the exit and shuts down"),
    ActionInfo("init", ("init_signal",), {}, "an INIT (xAPIC or x2APIC) puts the vCPU in its INIT state, "
               "waiting for SIPI (activity state 3), as INIT does to a CPU"),
    ActionInfo("wait_for_sipi", ("hlt",), {}, "an AP's `cli; hlt` waits in the hypervisor for its "
               "emulated SIPI (implied by `option apic_icr_emulation`)", internal=True,
               sets=("proc.hlt_exiting",)),
    ActionInfo("mwait_idle", ("mwait",), {}, "an AP's MONITOR/MWAIT loop: a recorded SIPI starts it, "
               "else MWAIT returns (implied by `option apic_icr_emulation`)", internal=True,
               sets=("proc.mwait_exiting",)),
    ActionInfo("sipi", ("sipi",), {}, "starts the vCPU at the SIPI vector"),
    ActionInfo("task_switch", ("task_switch",), {},
               "does a 32-bit task switch (CALL, JMP, IRET, task gate) for the guest, as SDM 9.3 "
               "\"Task Switching\" lists"),
    ActionInfo("dispatch_idt", ("external_interrupt",), {"idt_base": "global", "own": "vectors"},
               "calls the host handler of the acknowledged interrupt through the gate at "
               "`idt_base + 16 * vector` (the seed: `idt_base` is a global, never a VMREAD): by "
               "default one that queues it for the guest; for the vectors in `own` (32..255), "
               "the hypervisor's (counted, EOIed, never seen by the guest). See docs/interrupts.md"),
    ActionInfo("nmi", ("exception_or_nmi",), {},
               "an NMI that exits (pin.nmi_exiting) is the guest's: injected when it can take one, with "
               "NMI-window exiting while it cannot (pin.virtual_nmis); NMIs taken in VMX root the same "
               "(docs/runtime.md)"),
    ActionInfo("nmi_window", ("nmi_window",), {}, "injects the pending NMI when the guest can take it",
               sets=("proc.nmi_window_exiting",)),
    ActionInfo("inject_pending", ("interrupt_window",), {},
               "injects the pending interrupt when the guest can take it",
               sets=("proc.interrupt_window_exiting",)),
)}

#: Control -> the exit reasons it makes happen (SDM 27.1.3 "Instructions That
#: Cause VM Exits Conditionally", 27.2 "Other Causes of VM Exits").
EXIT_CAUSES = {
    "pin.external_interrupt_exiting": ("external_interrupt",),
    "pin.nmi_exiting": ("exception_or_nmi",),
    "pin.activate_vmx_preemption_timer": ("vmx_preemption_timer",),
    "proc.interrupt_window_exiting": ("interrupt_window",),
    "proc.nmi_window_exiting": ("nmi_window",),
    "proc.hlt_exiting": ("hlt",), "proc.invlpg_exiting": ("invlpg",), "proc.mwait_exiting": ("mwait",),
    "proc.rdpmc_exiting": ("rdpmc",), "proc.rdtsc_exiting": ("rdtsc",),
    "proc.cr3_load_exiting": ("cr_access",), "proc.cr3_store_exiting": ("cr_access",),
    "proc.cr8_load_exiting": ("cr_access",), "proc.cr8_store_exiting": ("cr_access",),
    "proc.mov_dr_exiting": ("dr_access",), "proc.unconditional_io_exiting": ("io_instruction",),
    "proc.use_io_bitmaps": ("io_instruction",), "proc.monitor_trap_flag": ("monitor_trap_flag",),
    "proc.monitor_exiting": ("monitor",), "proc.pause_exiting": ("pause",),
    "proc2.enable_ept": ("ept_violation", "ept_misconfig"),
    "proc2.descriptor_table_exiting": ("gdtr_idtr_access", "ldtr_tr_access"),
    "proc2.wbinvd_exiting": ("wbinvd",), "proc2.rdrand_exiting": ("rdrand",),
    "proc2.rdseed_exiting": ("rdseed",), "proc2.pause_loop_exiting": ("pause",),
}

#: Reasons of EXIT_CAUSES that also happen without any of those controls.
EXIT_OTHER_CAUSES = {
    "cr_access": "MOV to CR0/CR4 exits for the bits the guest/host masks own",
    "exception_or_nmi": "exceptions exit for the vectors set in the exception bitmap",
}

#: The actions a spec may name (the others are only implied).
SPEC_ACTIONS = tuple(a.name for a in EXIT_ACTIONS.values() if not a.internal)

#: Actions of msr_bitmap intercepts (MsrIntercept.action).
MSR_ACTIONS = {
    "feature_control_locked": "reads of IA32_FEATURE_CONTROL return it locked with VMX off",
    "inject_gp": "inject #GP(0), as a CPU without the MSR does",
    "passthrough_log": "execute the access for the guest and log it",
    "microcode_update": "load the guest's microcode update (WRMSR IA32_BIOS_UPDT_TRIG) in VMX root",
}

@dataclass(frozen=True)
class SettingInfo:
    """A setting a spec may make (`option NAME = VALUE`)."""

    name: str
    kind: str                      # bool, string or int
    default: object
    text: str
    # Handlers a spec with the setting on gets too, unless it handles the
    # reason itself: (reason, action) pairs; such actions are `internal`.
    implies: tuple = ()


SETTING_INFO = {s.name: s for s in (
    SettingInfo("external_interrupts", "bool", False,
                "external-interrupt exiting with acknowledge on exit, and the seed's handlers"),
    SettingInfo("chain", "string", "", "the EFI image the hypervisor starts next"),
    SettingInfo("log_rate", "int", 20, "COM1 lines per second from VMX root, sustained"),
    SettingInfo("log_burst", "int", 32, "... and in a burst (the token bucket's depth)"),
    # For emulators whose INIT is broken: Bochs 2.7 leaves an INIT pending
    # after its INIT VM exit, so the CPU exits again at every VM entry.
    SettingInfo("apic_icr_emulation", "bool", False,
                "for Bochs 2.7, whose INIT stays pending after its VM exit: the local APIC page is "
                "write-protected in EPT, ICR writes are emulated, INIT-SIPI to a virtualised CPU is "
                "recorded for it, and APs' HLT and MWAIT exit to take it",
                implies=(("hlt", "wait_for_sipi"), ("mwait", "mwait_idle"))),
    SettingInfo("self_protection", "bool", True,
                "the hypervisor's memory is unreachable from the guest: in EPT every page of it maps to one "
                "read-only zeroed decoy page (docs/runtime.md, Isolation); off only for research builds"),
    SettingInfo("self_protection_violation", "string", "inject_gp",
                "what a guest write or instruction fetch in the hypervisor's memory gets: `inject_gp` "
                "(#GP(0), logged and counted) or `stop` (logged, the machine stopped)"),
    SettingInfo("os_may_devirtualize", "bool", False,
                "VMCALL DEVIRTUALIZE is answered after ExitBootServices too (else the OS gets an error)"),
    SettingInfo("os_may_map_hypervisor", "bool", False,
                "VMCALL GET_RESIDENT_RANGES is answered after ExitBootServices too (else the OS gets an error)"),
    SettingInfo("cpuid_exit_counts", "bool", False,
                "CPUID leaf 0x40000002 answers, from any ring, the calling CPU's VM exits of the reason in ECX "
                "(EAX: bits 31:0, EDX: bits 63:32; EBX: all of its exits): for benchmarks of code that runs in "
                "ring 3, as Linux's /init. It tells ring 3 how often the rest of the system exits, a side "
                "channel: off but for such builds"),
)}

#: The values `option self_protection_violation` takes.
PROTECTION_VIOLATION_POLICIES = ("inject_gp", "stop")

#: Settings -> kind, and what a setting the spec leaves out means.
SETTINGS = {s.name: s.kind for s in SETTING_INFO.values()}
SETTING_DEFAULTS = {s.name: s.default for s in SETTING_INFO.values()}

#: RuntimeRule.kind -> the args it carries (the generator implements each).
RUNTIME_RULE_KINDS = {
    "cr_fixed": ("reg", "fixed0_msr", "fixed1_msr"),
    "control_allowed": ("group", "capability_msr", "true_msr"),
    "host_selector_rpl_ti": ("field",),
    "host_selector_nonzero": ("field",),
    "canonical": ("field",),
    "host_64bit": (),
    "pat_valid": ("field",),
    "efer_consistent": ("field",),
}


@dataclass(frozen=True)
class RuntimeRule:
    """An SDM rule only the CPU can decide, run by the generated code on the
    values it is about to write, just before VMLAUNCH."""

    id: str                        # e.g. "HOST-SEL-RPL-TI:HOST_CS_SELECTOR"
    section: str                   # e.g. "SDM 28.2.3" (check.SDM_SECTIONS has the titles)
    title: str
    kind: str                      # key of RUNTIME_RULE_KINDS
    args: dict = field(default_factory=dict, hash=False)

@dataclass(frozen=True)
class CpuidBit:
    """A CPUID feature bit: CPUID.leaf:reg[bit]."""

    leaf: int
    reg: str                       # eax, ebx, ecx or edx
    bit: int
    why: str = ""


#: CPUID feature bits a `cpuid` handler can hide (option hide = NAME): the
#: parser accepts these names, lower() turns them into the bits cleared.
CPUID_HIDE = {
    "vmx": CpuidBit(1, "ecx", 5, "the guest sees no VMX (so it never tries VMXON)"),
    "smx": CpuidBit(1, "ecx", 6, "no SMX: GETSEC would exit, and the hypervisor does not emulate it"),
    "svm": CpuidBit(0x80000001, "ecx", 2, "the guest sees no SVM"),
}

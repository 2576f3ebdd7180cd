"""The spec as plain data: what parse produces, check reads and generate renders.

This is the contract between the steps. The parser (parse.py, Lark
Transformer) builds these objects; nothing here knows about Lark or Jinja.
Every object that came from a spec carries a `Loc` so that a diagnostic can
point at the line.

Encodings follow SDM Vol. 3 Appendix B ("Field Encoding in VMCS"):
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


def encode_field(type_: str, width: str, index: int, high: bool = False) -> int:
    """SDM Appendix B: access | index << 1 | type << 10 | width << 13."""
    return int(high) | index << 1 | FIELD_TYPES[type_] << 10 | FIELD_WIDTHS[width] << 13


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

# group -> (VMCS field holding it, capability MSR, TRUE_* MSR or None)
CONTROL_GROUPS = {
    "pin": ("PIN_BASED_VM_EXEC_CONTROL", 0x481, 0x48D),
    "proc": ("CPU_BASED_VM_EXEC_CONTROL", 0x482, 0x48E),
    "proc2": ("SECONDARY_VM_EXEC_CONTROL", 0x48B, None),
    "exit": ("VM_EXIT_CONTROLS", 0x483, 0x48F),
    "entry": ("VM_ENTRY_CONTROLS", 0x484, 0x490),
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
    number: int                    # SDM Appendix C, e.g. 10
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

    def field_named(self, name: str) -> Field:
        return self.fields[name]

"""declarations: a spec file as written, between parse.py and resolve.py.

parse.py turns each file's text into these: one small frozen dataclass per
declaration, names still names (a name may be declared by another file),
every one with its `Loc`. resolve.py looks the names up across the spec and
its imports and builds the `model.Spec`. Nothing here knows about Lark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional, Union

from uefi_hv.model import Loc

# --- problems ------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Something wrong with a declaration on its own (or with an import),
    found while reading; resolve.py reports it where it stands in the spec."""

    message: str
    loc: Loc


@dataclass(frozen=True)
class Oversized(Problem):
    """A literal wider than 64 bits (no VMCS field or MSR holds one). It ends
    the declaration it is in, and the rest of that declaration's block."""


# --- values as written -------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    value: int
    loc: Loc


@dataclass(frozen=True)
class Name:
    """A name to look up later: a constant, a global, an MSR, a control, an exit reason ..."""

    value: str
    loc: Loc


@dataclass(frozen=True)
class Text:
    """A string in double quotes, unescaped."""

    value: str
    loc: Loc


@dataclass(frozen=True)
class RegisterRead:
    """read(cr3), sidt.base: `register` is checked against model.REGISTERS by resolve.py."""

    register: str
    register_loc: Loc
    loc: Loc


@dataclass(frozen=True)
class MsrRead:
    """read(msr IA32_EFER), rdmsr(0x277)."""

    msr: Union[Number, Name]
    loc: Loc


@dataclass(frozen=True)
class SymbolUse:
    """symbol(host_stack_top)."""

    name: str
    name_loc: Loc
    loc: Loc


#: What a constant, a global or a host-state field is given.
Source = Union[Number, Name, RegisterRead, MsrRead, SymbolUse]
#: What an exit handler's option lists.
OptionValue = Union[Number, Name, Text]

# --- declarations ------------------------------------------------------------------


@dataclass(frozen=True)
class ImportDecl:
    name: str                      # as written: "vmcs.hv"
    loc: Loc


@dataclass(frozen=True)
class HypervisorDecl:
    """hypervisor "name" { signature ... version ... }; a property left out keeps
    what an imported file said (or the default)."""

    name: str
    signature: Optional[str]
    version: Optional[str]
    loc: Loc


@dataclass(frozen=True)
class OptionDecl:
    name: str                      # a key of model.SETTINGS
    value: Union[bool, str, int]   # of the setting's kind
    loc: Loc


@dataclass(frozen=True)
class ConstDecl:
    name: str
    value: Union[Number, Name]
    loc: Loc


@dataclass(frozen=True)
class GlobalDecl:
    name: str
    source: Source
    loc: Loc


@dataclass(frozen=True)
class FieldDecl:
    name: str
    type: str                      # a key of model.FIELD_TYPES
    width: str                     # a key of model.FIELD_WIDTHS
    index: int
    written: Optional[Number]      # the encoding written after '=', to agree with the computed one
    when: Optional[Name]           # the control the field exists with
    description: str
    loc: Loc


@dataclass(frozen=True)
class ControlBitDecl:
    group: str                     # a key of model.CONTROL_GROUPS
    name: str
    bit: int
    description: str
    loc: Loc


@dataclass(frozen=True)
class NumberedDecl:
    """A line of an exit_reasons, vm_instruction_errors, msrs or event_types block."""

    table: str                     # "exit_reasons", "vm_instruction_errors", "msrs" or "event_types"
    name: str
    number: int
    description: str
    loc: Loc


@dataclass(frozen=True)
class VmcbFieldDecl:
    """A line of a `vmcb control` or `vmcb save` block: its offset made
    absolute (the area's base added)."""

    area: str                      # a key of model.VMCB_AREAS
    name: str
    offset: int                    # from the start of the VMCB
    size: int                      # bytes
    description: str
    loc: Loc


@dataclass(frozen=True)
class InterceptGroupDecl:
    """`intercepts misc1 at INTERCEPT_MISC1 { ... }`: the group and the VMCB
    field that holds its bits (a field another file may declare)."""

    group: str
    field: Name
    loc: Loc


@dataclass(frozen=True)
class InterceptBitDecl:
    group: str
    name: str
    bit: int
    description: str
    loc: Loc


@dataclass(frozen=True)
class SvmExitDecl:
    """A line of svm_exit_codes; `intercept` (group.name) and `means` (an exit
    reason) are looked up by resolve.py."""

    name: str
    code: int
    intercept: Optional[Name]
    means: Optional[Name]
    description: str
    loc: Loc


@dataclass(frozen=True)
class EventFieldDecl:
    """A line of event_injection: bits first..last (one bit: first == last)."""

    name: str
    first: int
    last: int
    description: str
    loc: Loc


@dataclass(frozen=True)
class VmcbTermDecl:
    """A term of `when`: `EFER clear 0x1000`, `CR0 set 0x8000_0000`, or an
    intercept, `misc2.vmrun clear` (its mask is its bit)."""

    target: Name                   # a VMCB field, or an intercept's group.name
    set: bool                      # set: every bit of the mask set; clear: every one clear
    mask: Optional[Number]         # None for an intercept
    loc: Loc


@dataclass(frozen=True)
class VmrunArg:
    """An argument of a VMRUN check, after its kind: `field EFER`, `mask 0x1000`,
    `size 0x2000`, `exceptions 0..1, 3..8`, `when EFER set 0x100 and ...`."""

    key: str                       # a word of model.VMRUN_CHECK_ARGS
    value: Union[Name, Number, tuple]   # field: Name; mask, size: Number; exceptions: the vectors;
    loc: Loc                            # when: the VmcbTermDecls


@dataclass(frozen=True)
class VmrunCheckDecl:
    """A line of `vmrun_checks`: the kind and the fields it names are looked up
    by resolve.py."""

    name: str                      # the id is VMRUN- and the name: efer_svme -> VMRUN-EFER-SVME
    title: str                     # the APM's words
    sections: Text                 # the APM sections, "15.5.1" (the block's, or the check's own)
    kind: Name
    args: tuple[VmrunArg, ...]
    loc: Loc


@dataclass(frozen=True)
class HostAssignDecl:
    field: str
    source: Source
    when: str                      # "once" or "per_cpu"
    loc: Loc


@dataclass(frozen=True)
class ControlReqDecl:
    control: str
    required: bool                 # require / prefer
    loc: Loc


@dataclass(frozen=True)
class InterceptDecl:
    access: str                    # "read" or "write"
    msrs: tuple[Union[Number, Name], ...]   # one MSR, or the first and last of a range
    action: Name
    loc: Loc


@dataclass(frozen=True)
class ExitOption:
    key: str
    values: tuple[OptionValue, ...]
    loc: Loc


@dataclass(frozen=True)
class ExitDecl:
    reasons: tuple[Name, ...]
    action: Optional[Name]         # None: `exit cpuid`, the reason's own action
    options: tuple[ExitOption, ...]
    loc: Loc


#: The declarations of the catalogues (dsl/vmcs.hv, dsl/vmcb.hv); the rest are the hypervisor's.
CatalogueDecl = Union[FieldDecl, ControlBitDecl, NumberedDecl, VmcbFieldDecl, InterceptGroupDecl,
                      InterceptBitDecl, SvmExitDecl, EventFieldDecl, VmrunCheckDecl]
CATALOGUE_DECLS = (FieldDecl, ControlBitDecl, NumberedDecl, VmcbFieldDecl, InterceptGroupDecl, InterceptBitDecl,
                   SvmExitDecl, EventFieldDecl, VmrunCheckDecl)
SpecDecl = Union[HypervisorDecl, OptionDecl, ConstDecl, GlobalDecl, HostAssignDecl, ControlReqDecl,
                 InterceptDecl, ExitDecl]
Declaration = Union[CatalogueDecl, SpecDecl]

# --- files -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)      # eq=False: hashed by identity, a cache key (resolve.catalogue_of)
class SourceFile:
    """One file as read: its text and, in order, its declarations, imports
    and the problems found in them; or the syntax error that stopped it."""

    shown: str                     # its name in diagnostics
    path: Path
    text: str
    entries: tuple[Union[Declaration, ImportDecl, Problem], ...]
    syntax_error: Optional[Problem] = None

    @cached_property
    def only_catalogue(self) -> bool:
        """It declares catalogue entries and nothing else (no imports either), as vmcs.hv and vmcb.hv."""
        return self.syntax_error is None and all(isinstance(e, CATALOGUE_DECLS + (Problem,)) for e in self.entries)


@dataclass(frozen=True)
class Included:
    """A file where the spec reads it: the spec itself, or an import with the
    lines of the imports that led to it. In `entries` each of its imports is
    replaced by the Included file, or by the Problem of reading it, or is
    gone (a file already read)."""

    source: SourceFile
    chain: tuple[int, ...]
    entries: tuple[Union[Declaration, Problem, "Included"], ...] = field(default=())

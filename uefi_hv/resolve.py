"""resolve: a spec's raw declarations (declarations.py, read by parse.py)
-> a `model.Spec`, or one `SpecError` with every problem found.

Two passes over the spec as if every import were pasted in place. The first
declares: the catalogue's fields, control bits, exit reasons, VM-instruction
errors and MSRs, the VMCB's fields, intercepts, exit codes, event
injection and VMRUN's consistency checks, the identity and the options, each as it comes, with the
problems parse found where they stand. The second resolves the names the
spec uses against the whole, so a spec may use a field, control or constant
that an import declares; an unknown name gets a "did you mean".

The catalogue a file declares is a frozen value, built once per version of
the file and of the catalogue it extends (`catalogue_of`): specs import
dsl/vmcs.hv and dsl/vmcb.hv thousands of times (the fuzz test, the
generator) and share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Optional

from uefi_hv import declarations as d
from uefi_hv import model as m
from uefi_hv.diagnostics import Diagnostic, SpecError, did_you_mean, source_line

__all__ = ["Catalogue", "catalogue_of", "resolve"]

Report = Callable[[d.Problem], None]

# --- the catalogue -----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Catalogue:
    """What a file's catalogue declarations declare, in order. Its fields are
    still declarations: whether one exists depends on a control (`when`),
    which a later file may declare."""

    controls: Mapping[str, m.ControlBit]                 # by qualified name
    exit_reasons: Mapping[str, m.ExitReason]
    vm_instruction_errors: Mapping[str, m.VmInstructionError]
    msrs: Mapping[str, m.Msr]
    fields: tuple[d.FieldDecl, ...]
    vmcb_fields: Mapping[str, m.VmcbField]
    intercept_groups: Mapping[str, d.InterceptGroupDecl]  # their fields looked up once all are declared
    intercepts: Mapping[str, m.InterceptBit]             # by qualified name
    svm_exits: Mapping[str, d.SvmExitDecl]               # their intercepts and meanings: the same
    event_injection: Mapping[str, m.EventField]
    event_types: Mapping[str, m.EventType]
    vmrun_checks: Mapping[str, d.VmrunCheckDecl]         # their kinds and fields: looked up as svm_exits'
    problems: tuple[d.Problem, ...]                      # found reading and declaring them, in order

    @cached_property
    def own_fields(self) -> tuple[Mapping[str, m.Field], tuple[d.Problem, ...]]:
        """Its fields (and their problems) when no other file adds to it, as
        for every spec that imports vmcs.hv and declares no catalogue entry."""
        problems: list[d.Problem] = []
        fields = _resolve_fields(self.fields, self.controls, problems.append)
        return MappingProxyType(fields), tuple(problems)

    @cached_property
    def own_svm(self) -> tuple[Mapping[str, m.InterceptGroup], Mapping[str, m.SvmExit],
                               Mapping[str, m.VmrunCheck], tuple[d.Problem, ...]]:
        """Its intercept groups, SVM exit codes and VMRUN checks, resolved (as own_fields)."""
        problems: list[d.Problem] = []
        groups, exits = _resolve_svm(self.intercept_groups, self.svm_exits, self.vmcb_fields, self.intercepts,
                                     self.exit_reasons, problems.append)
        checks = _resolve_vmrun_checks(self.vmrun_checks, self.vmcb_fields, self.intercepts, groups,
                                       problems.append)
        return MappingProxyType(groups), MappingProxyType(exits), MappingProxyType(checks), tuple(problems)


# The model class and the word for an entry of each numbered table.
_NUMBERED = {
    "exit_reasons": (m.ExitReason, "exit reason"),
    "vm_instruction_errors": (m.VmInstructionError, "VM-instruction error"),
    "msrs": (m.Msr, "MSR"),
    "event_types": (m.EventType, "event type"),
}

#: The catalogue's tables of model objects, declared as they come (the numbered ones aside).
_TABLES = ("controls", "vmcb_fields", "intercepts", "event_injection")
#: ... and of declarations that name something, resolved once all is declared.
_PENDING = ("intercept_groups", "svm_exits", "vmrun_checks")


class _CatalogueTables:
    """The catalogue while it is declared: first come, first served; a second
    declaration of a name (or a bit, or a number) is a problem."""

    def __init__(self, report: Report, start: Optional[Catalogue] = None):
        self.report = report
        self.unchanged: Optional[Catalogue] = start      # until something is declared
        self.controls: dict[str, m.ControlBit] = dict(start.controls) if start else {}
        self.numbered: dict[str, dict] = {t: dict(getattr(start, t)) if start else {} for t in _NUMBERED}
        self.fields: list[d.FieldDecl] = list(start.fields) if start else []
        self.vmcb_fields: dict[str, m.VmcbField] = dict(start.vmcb_fields) if start else {}
        self.intercept_groups: dict[str, d.InterceptGroupDecl] = dict(start.intercept_groups) if start else {}
        self.intercepts: dict[str, m.InterceptBit] = dict(start.intercepts) if start else {}
        self.svm_exits: dict[str, d.SvmExitDecl] = dict(start.svm_exits) if start else {}
        self.event_injection: dict[str, m.EventField] = dict(start.event_injection) if start else {}
        self.vmrun_checks: dict[str, d.VmrunCheckDecl] = dict(start.vmrun_checks) if start else {}

    def empty(self) -> bool:
        return not (self.fields or any(self.numbered.values())
                    or any(getattr(self, t) for t in _TABLES + _PENDING))

    def declare(self, decl: d.CatalogueDecl) -> None:
        self.unchanged = None
        if isinstance(decl, d.FieldDecl):
            self.fields.append(decl)           # checked once every control is known: _resolve_fields
        elif isinstance(decl, d.ControlBitDecl):
            self._control(decl)
        elif isinstance(decl, d.NumberedDecl):
            self._numbered(decl)
        elif isinstance(decl, d.VmcbFieldDecl):
            self._vmcb_field(decl)
        elif isinstance(decl, d.InterceptGroupDecl):
            self._intercept_group(decl)
        elif isinstance(decl, d.InterceptBitDecl):
            self._intercept(decl)
        elif isinstance(decl, d.SvmExitDecl):
            self._svm_exit(decl)
        elif isinstance(decl, d.VmrunCheckDecl):
            self._vmrun_check(decl)
        else:
            self._event_field(decl)

    def _control(self, decl: d.ControlBitDecl) -> None:
        cb = m.ControlBit(decl.group, decl.name, decl.bit, decl.description, decl.loc)
        other = next((c for c in self.controls.values() if c.group == cb.group and c.bit == cb.bit), None)
        if cb.qualname in self.controls:
            self.report(d.Problem(f"control {cb.qualname} is declared twice", decl.loc))
        elif other:
            self.report(d.Problem(f"bit {cb.bit} of {cb.group} is already {other.qualname}", decl.loc))
        else:
            self.controls[cb.qualname] = cb

    def _numbered(self, decl: d.NumberedDecl) -> None:
        make, what = _NUMBERED[decl.table]
        table = self.numbered[decl.table]
        if decl.name in table:
            self.report(d.Problem(f"{what} '{decl.name}' is declared twice", decl.loc))
        elif any(x.number == decl.number for x in table.values()):
            self.report(d.Problem(f"{what} number {decl.number} is declared twice", decl.loc))
        else:
            table[decl.name] = make(number=decl.number, name=decl.name, description=decl.description, loc=decl.loc)

    # -- the VMCB catalogue: where a field lies and whether fields overlap is
    #    check.py's (APM Appendix B); here, only names and numbers given twice
    def _vmcb_field(self, decl: d.VmcbFieldDecl) -> None:
        first = self.vmcb_fields.get(decl.name)
        if first is not None:
            self.report(d.Problem(f"VMCB field {decl.name} is declared twice (first at {first.loc})", decl.loc))
        else:
            self.vmcb_fields[decl.name] = m.VmcbField(decl.name, decl.area, decl.offset, decl.size,
                                                      decl.description, decl.loc)

    def _intercept_group(self, decl: d.InterceptGroupDecl) -> None:
        first = self.intercept_groups.get(decl.group)
        if first is not None and first.field.value != decl.field.value:
            self.report(d.Problem(f"intercepts {decl.group} is already at {first.field.value} (at {first.loc}); "
                                  f"a group is one intercept vector", decl.field.loc))
        elif first is None:
            self.intercept_groups[decl.group] = decl

    def _intercept(self, decl: d.InterceptBitDecl) -> None:
        bit = m.InterceptBit(decl.group, decl.name, decl.bit, decl.description, decl.loc)
        named = next((b for b in self.intercepts.values() if b.name == bit.name), None)
        other = next((b for b in self.intercepts.values() if b.group == bit.group and b.bit == bit.bit), None)
        if named is not None and named.group == bit.group:
            self.report(d.Problem(f"intercept {bit.qualname} is declared twice", decl.loc))
        elif named is not None:
            self.report(d.Problem(f"intercept {bit.qualname}: {named.qualname} has the name already; intercept "
                                  f"names are unique across groups (both would be SVM_INTERCEPT_{bit.name.upper()})",
                                  decl.loc))
        elif other is not None:
            self.report(d.Problem(f"bit {bit.bit} of {bit.group} is already {other.qualname}", decl.loc))
        else:
            self.intercepts[bit.qualname] = bit

    def _svm_exit(self, decl: d.SvmExitDecl) -> None:
        other = next((x for x in self.svm_exits.values() if x.code == decl.code), None)
        if decl.name in self.svm_exits:
            self.report(d.Problem(f"SVM exit code '{decl.name}' is declared twice", decl.loc))
        elif other is not None:
            self.report(d.Problem(f"SVM exit code {decl.code:#x} is declared twice (first as {other.name})",
                                  decl.loc))
        else:
            self.svm_exits[decl.name] = decl

    def _vmrun_check(self, decl: d.VmrunCheckDecl) -> None:
        first = self.vmrun_checks.get(decl.name)
        if first is not None:
            self.report(d.Problem(f"VMRUN check {decl.name} ({m.vmrun_check_id(decl.name)}) is declared twice "
                                  f"(first at {first.loc})", decl.loc))
        else:
            self.vmrun_checks[decl.name] = decl

    def _event_field(self, decl: d.EventFieldDecl) -> None:
        field = m.EventField(decl.name, decl.first, decl.last, decl.description, decl.loc)
        other = next((f for f in self.event_injection.values() if f.mask & field.mask), None)
        if decl.name in self.event_injection:
            self.report(d.Problem(f"event_injection field {decl.name} is declared twice", decl.loc))
        elif other is not None:
            self.report(d.Problem(f"bits {field.first}..{field.last} of {field.name} overlap {other.name} "
                                  f"(bits {other.first}..{other.last})", decl.loc))
        else:
            self.event_injection[decl.name] = field

    def frozen(self, problems: tuple[d.Problem, ...]) -> Catalogue:
        def view(table: dict) -> Mapping:
            return MappingProxyType(dict(table))
        return Catalogue(controls=view(self.controls), exit_reasons=view(self.numbered["exit_reasons"]),
                         vm_instruction_errors=view(self.numbered["vm_instruction_errors"]),
                         msrs=view(self.numbered["msrs"]), fields=tuple(self.fields),
                         vmcb_fields=view(self.vmcb_fields), intercept_groups=view(self.intercept_groups),
                         intercepts=view(self.intercepts), svm_exits=view(self.svm_exits),
                         event_injection=view(self.event_injection), event_types=view(self.numbered["event_types"]),
                         vmrun_checks=view(self.vmrun_checks), problems=problems)


def _resolve_fields(decls: Iterable[d.FieldDecl], controls: Mapping[str, m.ControlBit],
                   report: Report) -> dict[str, m.Field]:
    """The fields that exist, once every control is known: the encoding
    written agrees with the computed one, no name or encoding twice, and the
    control a field exists with (`when`) is declared."""
    fields: dict[str, m.Field] = {}
    by_encoding: dict[int, str] = {}
    for decl in decls:
        f = m.Field(decl.name, decl.type, decl.width, decl.index, decl.when.value if decl.when else None,
                    decl.description, decl.loc)
        if decl.written is not None and decl.written.value != f.encoding:
            report(d.Problem(f"{f.name}: the encoding written, {decl.written.value:#06x}, disagrees with type "
                             f"{f.type}, width {f.width}, index {f.index}, which give {f.encoding:#06x} "
                             f"(SDM Appendix B)", decl.written.loc))
        elif f.name in fields:
            report(d.Problem(f"field {f.name} is declared twice (first at {fields[f.name].loc})", decl.loc))
        elif f.encoding in by_encoding:
            report(d.Problem(f"{f.name} has the encoding {f.encoding:#06x} of {by_encoding[f.encoding]}", decl.loc))
        elif decl.when and decl.when.value not in controls:
            report(d.Problem(_unknown_control(decl.when.value, controls), decl.when.loc))
        else:
            by_encoding[f.encoding] = f.name
            fields[f.name] = f
    return fields


def _resolve_svm(group_decls: Mapping[str, d.InterceptGroupDecl], exit_decls: Mapping[str, d.SvmExitDecl],
                 vmcb_fields: Mapping[str, m.VmcbField], intercepts: Mapping[str, m.InterceptBit],
                 exit_reasons: Mapping[str, m.ExitReason],
                 report: Report) -> tuple[dict[str, m.InterceptGroup], dict[str, m.SvmExit]]:
    """The intercept groups and SVM exit codes, once the whole catalogue is
    known: a group is at a VMCB field wide enough for its bits; an exit's
    intercept is a declared one, its meaning an exit reason of the VMX
    catalogue (exit_reasons)."""
    groups: dict[str, m.InterceptGroup] = {}
    for decl in group_decls.values():
        field = vmcb_fields.get(decl.field.value)
        if field is None:
            report(d.Problem(f"unknown VMCB field '{decl.field.value}'{did_you_mean(decl.field.value, vmcb_fields)}; "
                             f"`intercepts {decl.group} at FIELD` names the VMCB field that holds its bits",
                             decl.field.loc))
            continue
        groups[decl.group] = m.InterceptGroup(decl.group, field.name, decl.loc)
        for bit in intercepts.values():
            if bit.group == decl.group and bit.bit >= 8 * field.size:
                report(d.Problem(f"intercept {bit.qualname} is bit {bit.bit}, outside {field.name} "
                                 f"({field.size} byte{'s' if field.size > 1 else ''})", bit.loc or decl.loc))
    exits: dict[str, m.SvmExit] = {}
    for x in exit_decls.values():
        ok = True
        if x.intercept is not None and x.intercept.value not in intercepts:
            report(d.Problem(f"unknown intercept '{x.intercept.value}'"
                             f"{did_you_mean(x.intercept.value, intercepts)}; intercepts are named group.name, "
                             f"e.g. misc1.cpuid", x.intercept.loc))
            ok = False
        if x.means is not None and x.means.value not in exit_reasons:
            report(d.Problem(f"unknown exit reason '{x.means.value}'{did_you_mean(x.means.value, exit_reasons)}; "
                             f"`means` names the VMX exit reason of the same event (exit_reasons, vmcs.hv)",
                             x.means.loc))
            ok = False
        if ok:
            exits[x.name] = m.SvmExit(x.name, x.code, x.intercept.value if x.intercept else None,
                                      x.means.value if x.means else None, x.description, x.loc)
    return groups, exits


def _resolve_vmrun_checks(decls: Mapping[str, d.VmrunCheckDecl], vmcb_fields: Mapping[str, m.VmcbField],
                          intercepts: Mapping[str, m.InterceptBit], groups: Mapping[str, m.InterceptGroup],
                          report: Report) -> dict[str, m.VmrunCheck]:
    """VMRUN's consistency checks, once the whole catalogue is known: each
    names a kind the runtime evaluates (model.VMRUN_CHECK_KINDS) with the
    arguments that kind takes, APM sections the project knows, and VMCB
    fields (or intercepts) that it can read as numbers."""
    checks: dict[str, m.VmrunCheck] = {}
    for decl in decls.values():
        check = _VmrunCheckResolution(decl, vmcb_fields, intercepts, groups, report).resolve()
        if check is not None:
            checks[decl.name] = check
    return checks


class _VmrunCheckResolution:
    """One VMRUN check being resolved; `ok` turns False at its first problem (all are reported)."""

    def __init__(self, decl: d.VmrunCheckDecl, vmcb_fields: Mapping[str, m.VmcbField],
                 intercepts: Mapping[str, m.InterceptBit], groups: Mapping[str, m.InterceptGroup], report: Report):
        self.decl, self.vmcb_fields, self.intercepts, self.groups = decl, vmcb_fields, intercepts, groups
        self.report = report
        self.ok = True

    def problem(self, message: str, loc: m.Loc) -> None:
        self.report(d.Problem(message, loc))
        self.ok = False

    def resolve(self) -> Optional[m.VmrunCheck]:
        decl = self.decl
        sections = tuple(s.strip() for s in decl.sections.value.split(","))
        for s in sections:
            if s not in m.APM_SECTIONS:
                self.problem(f"unknown APM section '{s}'{did_you_mean(s, m.APM_SECTIONS)}; the sections cited are "
                             f"{', '.join(m.APM_SECTIONS)} (model.APM_SECTIONS)", decl.sections.loc)
        kind = m.VMRUN_CHECK_KINDS.get(decl.kind.value)
        if kind is None:
            hint = did_you_mean(decl.kind.value, m.VMRUN_CHECK_KINDS)
            self.problem(f"unknown VMRUN check kind '{decl.kind.value}'{hint}; the runtime evaluates "
                         f"{', '.join(m.VMRUN_CHECK_KINDS)}", decl.kind.loc)
            return None
        given: dict[str, d.VmrunArg] = {}
        for arg in decl.args:
            if arg.key in given:
                self.problem(f"{arg.key} is given twice", arg.loc)
            elif arg.key not in kind.args:
                self.problem(f"kind {decl.kind.value} takes no {arg.key}; it takes {_words(kind.args)}", arg.loc)
            else:
                given[arg.key] = arg
        missing = [a for a in kind.args if a not in given]
        if missing:
            self.problem(f"VMRUN check {decl.name}: kind {decl.kind.value} needs {_words(missing)}: "
                         f"`kind {decl.kind.value} {' '.join(_ARG_SHAPES[a] for a in kind.args)}`", decl.loc)
        if not self.ok:
            return None
        # parse.py gives each argument its shape: field a Name, mask and size
        # a Number, exceptions the vectors, when the terms
        value_of = {key: a.value for key, a in given.items()}
        values: dict = {}
        field_name, mask, size = value_of.get("field"), value_of.get("mask"), value_of.get("size")
        if isinstance(field_name, d.Name):
            field = self.field(field_name)
            values["field"] = field.name if field else None
            if field is not None and isinstance(mask, d.Number):
                values["mask"] = self.mask(mask, field)
        if isinstance(size, d.Number):
            if size.value == 0:
                self.problem("size 0: a table is at least 1 byte", size.loc)
            values["size"] = size.value
        if isinstance(value_of.get("exceptions"), tuple):
            values["exceptions"] = value_of["exceptions"]
        terms = value_of.get("when")
        if isinstance(terms, tuple):
            values["when"] = tuple(self.term(t) for t in terms)
        if not self.ok:
            return None
        return m.VmrunCheck(decl.name, decl.title, decl.kind.value, sections, loc=decl.loc, **values)

    def field(self, name: d.Name) -> Optional[m.VmcbField]:
        field = self.vmcb_fields.get(name.value)
        if field is None:
            self.problem(f"unknown VMCB field '{name.value}'{did_you_mean(name.value, self.vmcb_fields)}", name.loc)
        elif field.size not in m.VMRUN_FIELD_SIZES:
            self.problem(f"VMCB field {field.name} is {field.size} bytes; a check reads a field of 1, 2, 4 or 8 "
                         f"bytes", name.loc)
            return None
        return field

    def mask(self, mask: d.Number, field: m.VmcbField) -> int:
        if mask.value == 0:
            self.problem("mask 0 tests no bit", mask.loc)
        elif mask.value >> (8 * field.size):
            self.problem(f"mask {mask.value:#x} is wider than {field.name} ({field.size} "
                         f"byte{'s' if field.size > 1 else ''})", mask.loc)
        return mask.value

    def term(self, term: d.VmcbTermDecl) -> m.VmcbTerm:
        if term.mask is None:                   # an intercept (parse.py lets no field go without a mask)
            bit = self.intercepts.get(term.target.value)
            group = self.groups.get(bit.group) if bit else None
            if bit is None or group is None:
                hint = did_you_mean(term.target.value, self.intercepts)
                self.problem(f"unknown intercept '{term.target.value}'{hint}; a term without a mask is an "
                             f"intercept, group.name", term.target.loc)
                return m.VmcbTerm("", 0, term.set)
            return m.VmcbTerm(group.field, bit.mask, term.set, bit.qualname)
        field = self.field(term.target)
        if field is None:
            return m.VmcbTerm("", 0, term.set)
        return m.VmcbTerm(field.name, self.mask(term.mask, field), term.set)


#: How each argument of a VMRUN check is written, for messages.
_ARG_SHAPES = {"field": "field FIELD", "mask": "mask MASK", "size": "size BYTES",
               "exceptions": "exceptions V, A..B", "when": "when FIELD set|clear MASK and ..."}


def _words(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _unknown_control(name: str, controls: Mapping[str, m.ControlBit]) -> str:
    """What to say of a control name that is not in `controls`."""
    hint = did_you_mean(name, controls)
    if not hint and "." not in name:   # unqualified: find its group
        groups = [q for q in controls if q.split(".", 1)[1] == name]
        hint = f"; did you mean {' or '.join(repr(g) for g in groups)}?" if groups else ""
    return f"unknown control '{name}'{hint}" + \
        ("" if hint or "." in name else "; controls are named group.name, e.g. proc2.enable_ept")


@lru_cache(maxsize=32)
def catalogue_of(source: d.SourceFile, start: Optional[Catalogue] = None) -> Catalogue:
    """The catalogue a file declares on its own (`source.only_catalogue`),
    added to `start` (the catalogue of the files before it, as vmcb.hv adds
    to vmcs.hv), with the problems found in this file alone. Imported files
    are read once per version (parse.py), so this is built once per version
    of the file and of `start` too."""
    problems: list[d.Problem] = []
    tables = _CatalogueTables(problems.append, start)
    for entry in source.entries:
        if isinstance(entry, d.Problem):
            problems.append(entry)
        elif isinstance(entry, d.CATALOGUE_DECLS):
            tables.declare(entry)
    return tables.frozen(tuple(problems))


# --- the spec ----------------------------------------------------------------------


def resolve(spec_file: d.Included) -> m.Spec:
    """The Spec of a spec file read with its imports; raises SpecError with every problem found."""
    resolution = _Resolution(spec_file.source.shown)
    resolution.declare(spec_file, imported=False)
    # Names are resolved only when every file parsed (otherwise they would
    # only echo the syntax error).
    if resolution.parsed:
        resolution.resolve_names()
    spec = resolution.spec
    if not resolution.problems and not spec.fields:
        resolution.error("the spec declares no VMCS fields; start it with: import \"vmcs.hv\"",
                         m.Loc(spec.file, 1, 1))
    if resolution.problems:
        raise SpecError([Diagnostic("error", p.message, p.loc, source_line=source_line(
            spec.sources.get(p.loc.file, ""), p.loc.line)) for p in resolution.problems])
    return spec


class _Resolution:
    """One spec being resolved: `declare` walks it, `resolve_names` builds the rest of its Spec."""

    def __init__(self, file: str):
        self.spec = m.Spec(file=file)
        self.problems: list[d.Problem] = []
        self.parsed = True
        self.catalogue = _CatalogueTables(self.problems.append)
        self.declared: list[d.SpecDecl] = []    # the rest, for resolve_names, in spec order

    def error(self, message: str, loc: m.Loc) -> None:
        self.problems.append(d.Problem(message, loc))

    # -- the first pass
    def declare(self, included: d.Included, imported: bool) -> None:
        source = included.source
        self.spec.file_order[source.shown] = included.chain
        self.spec.sources[source.shown] = source.text
        self.spec.files.append(source.shown)
        if source.syntax_error is not None:
            self.problems.append(source.syntax_error)
            self.parsed = False
            return
        # A file of catalogue declarations alone, read into an empty
        # catalogue or into one that only such files made, always declares
        # the same: share its frozen catalogue.
        if imported and source.only_catalogue and (self.catalogue.empty() or self.catalogue.unchanged is not None):
            shared = catalogue_of(source, self.catalogue.unchanged)
            self.catalogue = _CatalogueTables(self.problems.append, shared)
            self.problems.extend(shared.problems)
            return
        for entry in included.entries:
            if isinstance(entry, d.Included):
                self.declare(entry, imported=True)
            elif isinstance(entry, d.Problem):
                self.problems.append(entry)
            elif isinstance(entry, d.CATALOGUE_DECLS):
                self.catalogue.declare(entry)
            elif isinstance(entry, d.HypervisorDecl):
                self.identity(entry)
            elif isinstance(entry, d.OptionDecl):
                self.option(entry)
            else:
                self.declared.append(entry)

    def identity(self, decl: d.HypervisorDecl) -> None:
        old = self.spec.identity
        self.spec.identity = m.Identity(
            name=decl.name, signature=old.signature if decl.signature is None else decl.signature,
            version=old.version if decl.version is None else decl.version, loc=decl.loc)

    def option(self, decl: d.OptionDecl) -> None:
        old = self.spec.setting_locs.get(decl.name)
        if old is not None and old.file == decl.loc.file:
            self.error(f"option {decl.name} is set twice in this file (first at line {old.line})", decl.loc)
            return
        self.spec.settings[decl.name] = decl.value          # an importing file overrides its import
        self.spec.setting_locs[decl.name] = decl.loc

    # -- the second pass
    def resolve_names(self) -> None:
        spec = self.spec
        spec.controls = self.catalogue.controls
        spec.exit_reasons = self.catalogue.numbered["exit_reasons"]
        spec.vm_instruction_errors = self.catalogue.numbered["vm_instruction_errors"]
        spec.msrs = self.catalogue.numbered["msrs"]
        spec.vmcb_fields = self.catalogue.vmcb_fields
        spec.intercepts = self.catalogue.intercepts
        spec.event_injection = self.catalogue.event_injection
        spec.event_types = self.catalogue.numbered["event_types"]
        if self.catalogue.unchanged is not None:          # imported catalogues alone: resolved once
            fields, problems = self.catalogue.unchanged.own_fields
            spec.fields = dict(fields)
            self.problems.extend(problems)
            groups, exits, checks, problems = self.catalogue.unchanged.own_svm
            spec.intercept_groups, spec.svm_exits, spec.vmrun_checks = dict(groups), dict(exits), dict(checks)
            self.problems.extend(problems)
        else:
            spec.fields = _resolve_fields(self.catalogue.fields, spec.controls, self.problems.append)
            spec.intercept_groups, spec.svm_exits = _resolve_svm(
                self.catalogue.intercept_groups, self.catalogue.svm_exits, spec.vmcb_fields, spec.intercepts,
                spec.exit_reasons, self.problems.append)
            spec.vmrun_checks = _resolve_vmrun_checks(self.catalogue.vmrun_checks, spec.vmcb_fields, spec.intercepts,
                                                      spec.intercept_groups, self.problems.append)
        for const in self._declared(d.ConstDecl):
            self.constant(const)
        globals_ = self._declared(d.GlobalDecl)
        global_names = {g.name for g in globals_}
        for g in globals_:
            if g.name in spec.constants:
                self.error(f"global {g.name} has the name of a constant", g.loc)
                continue
            source = self.source(g.source, global_names)
            if source is not None:
                spec.globals.append(m.Global(g.name, source, g.loc))   # duplicates: check DUP-GLOBAL
        for assign in self._declared(d.HostAssignDecl):
            self.host_assign(assign, global_names)
        for req in self._declared(d.ControlReqDecl):
            if req.control in spec.controls:
                spec.control_reqs.append(m.ControlReq(req.control, req.required, req.loc))
            else:
                self.error(_unknown_control(req.control, spec.controls), req.loc)
        for intercept in self._declared(d.InterceptDecl):
            self.msr_intercept(intercept)
        for exit_ in self._declared(d.ExitDecl):
            self.exit_handlers(exit_, global_names)
        self.apply_settings()

    def _declared(self, kind: type) -> list:
        return [decl for decl in self.declared if isinstance(decl, kind)]

    def constant(self, decl: d.ConstDecl) -> None:
        spec = self.spec
        value = self.number(decl.value, "a constant")
        if value is None:
            return
        if decl.name in spec.constants:
            self.error(f"constant {decl.name} is defined twice (first at {spec.constants[decl.name].loc})",
                       decl.loc)
        elif decl.name in spec.msrs or decl.name in spec.fields:
            what = "MSR" if decl.name in spec.msrs else "field"
            self.error(f"constant {decl.name} has the name of a catalogue {what}", decl.loc)
        else:
            spec.constants[decl.name] = m.Constant(decl.name, value, decl.loc)

    def host_assign(self, decl: d.HostAssignDecl, global_names: set[str]) -> None:
        spec = self.spec
        fld = spec.fields.get(decl.field)
        if fld is None:
            hosts = [f for f, x in spec.fields.items() if x.type == "host"]
            self.error(f"unknown host-state field '{decl.field}'{did_you_mean(decl.field, hosts)}", decl.loc)
            return
        if fld.type != "host":
            kind = {"exit-info": "a read-only exit-information",
                    "control": "a control"}.get(fld.type, "a guest-state")
            self.error(f"{decl.field} is {kind} field; host_state assigns host-state fields (HOST_...)", decl.loc)
            return
        source = self.source(decl.source, global_names)
        if source is not None:
            spec.host_state.append(m.HostAssign(decl.field, source, decl.when, decl.loc))

    def msr_intercept(self, decl: d.InterceptDecl) -> None:
        numbers = [self.msr_number(msr) for msr in decl.msrs]
        first, last = numbers[0], numbers[-1]
        if first is None or last is None:
            return
        if last < first:
            self.error(f"MSR range {first:#x} .. {last:#x} runs backwards", decl.loc)
        elif last > 0xFFFFFFFF:
            self.error(f"MSR {last:#x} is not a 32-bit MSR number", decl.loc)
        elif decl.action.value not in m.MSR_ACTIONS:
            self.error(f"unknown MSR action '{decl.action.value}'{did_you_mean(decl.action.value, m.MSR_ACTIONS)}; "
                       f"the actions are {', '.join(sorted(m.MSR_ACTIONS))}", decl.action.loc)
        else:
            self.spec.msr_intercepts.append(m.MsrIntercept(first, last, decl.access, decl.action.value, decl.loc))

    # -- names

    def number(self, value: d.Source, what: str) -> Optional[int]:
        constants = self.spec.constants
        if isinstance(value, d.Number):
            return value.value
        if isinstance(value, d.Name) and value.value in constants:
            return constants[value.value].value
        if isinstance(value, d.Name):
            self.error(f"unknown constant '{value.value}'{did_you_mean(value.value, constants)}", value.loc)
        else:
            self.error(f"{what} must be a number or a constant", value.loc)
        return None

    def msr_number(self, value: d.Source) -> Optional[int]:
        spec = self.spec
        if isinstance(value, d.Name) and value.value in spec.msrs:
            return spec.msrs[value.value].number
        if isinstance(value, d.Name) and value.value not in spec.constants:
            names = list(spec.msrs) + list(spec.constants)
            self.error(f"unknown MSR '{value.value}'{did_you_mean(value.value, names)}", value.loc)
            return None
        return self.number(value, "an MSR")

    def source(self, value: d.Source, global_names: set[str]) -> Optional[m.Source]:
        spec = self.spec
        if isinstance(value, d.Number):
            return m.Const(value.value)
        if isinstance(value, d.Name):
            name = value.value
            if name in spec.constants:
                return m.Const(spec.constants[name].value)
            if name in global_names:
                return m.GlobalRef(name)
            if name in m.SYMBOLS:
                self.error(f"'{name}' is a symbol of the generated code: write symbol({name})", value.loc)
            elif name in m.REGISTERS:
                self.error(f"to read {name}, write read({name})", value.loc)
            else:
                names = list(spec.constants) + list(global_names)
                self.error(f"unknown name '{name}': not a constant or a global{did_you_mean(name, names)}",
                           value.loc)
            return None
        if isinstance(value, d.RegisterRead):
            if value.register not in m.REGISTERS:
                self.error(f"cannot read '{value.register}'{did_you_mean(value.register, m.REGISTERS)}; "
                           f"registers: {', '.join(m.REGISTERS)}", value.register_loc)
                return None
            return m.ReadReg(value.register)
        if isinstance(value, d.MsrRead):
            number = self.msr_number(value.msr)
            return m.ReadMsr(number) if number is not None else None
        if value.name not in m.SYMBOLS:
            self.error(f"unknown symbol '{value.name}'{did_you_mean(value.name, m.SYMBOLS)}; the generated code "
                       f"provides {', '.join(m.SYMBOLS)}", value.name_loc)
            return None
        return m.Symbol(value.name)

    # -- exit handlers
    def exit_handlers(self, decl: d.ExitDecl, global_names: set[str]) -> None:
        spec = self.spec
        unknown = [r for r in decl.reasons if r.value not in spec.exit_reasons]
        for r in unknown:
            self.error(f"unknown exit reason '{r.value}'{did_you_mean(r.value, spec.exit_reasons)}", r.loc)
        if unknown:
            return
        action = decl.action
        if action is None:
            names = {r.value for r in decl.reasons}
            if len(names) == 1 and next(iter(names)) in m.SPEC_ACTIONS:
                action = d.Name(next(iter(names)), decl.loc)
            else:
                self.error("say what the handler does: exit REASON -> ACTION, e.g. -> inject_ud; "
                           f"actions: {', '.join(m.SPEC_ACTIONS)}", decl.loc)
                return
        info = m.EXIT_ACTIONS.get(action.value)
        if info is not None and info.internal:
            self.error(f"action {action.value} is not named in a spec: {info.text}", action.loc)
            return
        if info is None:
            self.error(f"unknown action '{action.value}'{did_you_mean(action.value, m.SPEC_ACTIONS)}; "
                       f"actions: {', '.join(m.SPEC_ACTIONS)}", action.loc)
            return
        for r in decl.reasons:
            if info.reasons and r.value not in info.reasons:
                self.error(f"action {action.value} handles only {', '.join(info.reasons)} exits, not {r.value}",
                           r.loc)
                return
        options = self.exit_options(info, decl.options, global_names)
        for r in decl.reasons:
            spec.exits.append(m.ExitHandler(r.value, action.value, dict(options), r.loc))

    def exit_options(self, info: m.ActionInfo, given: tuple[d.ExitOption, ...],
                     global_names: set[str]) -> dict:
        """The options of an exit handler, checked against its action's schema (model.EXIT_ACTIONS)."""
        opts: dict = {}
        for option in given:
            key, values, loc = option.key, option.values, option.loc
            kind = info.options.get(key)
            if kind is None:
                known = f"; {info.name} takes {', '.join(info.options)}" if info.options else \
                        f"; {info.name} takes no options"
                self.error(f"unknown option '{key}' of {info.name}{did_you_mean(key, info.options)}{known}", loc)
                continue
            if key in opts:
                self.error(f"option {key} is given twice", loc)
                continue
            if kind == "flag":
                if values:
                    self.error(f"{key} takes no value", loc)
                    continue
                opts[key] = True
            elif kind == "names":
                names = []
                for v in values:
                    if v.value not in m.CPUID_HIDE:
                        self.error(f"cannot hide '{v.value}'{did_you_mean(str(v.value), m.CPUID_HIDE)}; "
                                   f"hideable: {', '.join(m.CPUID_HIDE)}", v.loc)
                    else:
                        names.append(v.value)
                if not values:
                    self.error(f"{key} needs a value: {key} = {next(iter(m.CPUID_HIDE))}", loc)
                opts[key] = names
            elif kind == "global":
                if len(values) != 1 or not isinstance(values[0], d.Name):
                    self.error(f"{key} names one global, e.g. {key} = host_idt_base", loc)
                    continue
                if values[0].value not in global_names:
                    self.error(f"unknown global '{values[0].value}'{did_you_mean(values[0].value, global_names)}",
                               values[0].loc)
                    continue
                opts[key] = values[0].value
            elif kind == "vectors":
                # SDM 6.2: vectors 0-31 are the exceptions'; interrupts use 32-255.
                vectors: list[int] = []
                for v in values:
                    if not isinstance(v, d.Number) or not 32 <= v.value <= 255:
                        shown = f"{v.value:#x}" if isinstance(v, d.Number) else v.value
                        self.error(f"{key} lists interrupt vectors, 32 to 255 (0-31 are exceptions, "
                                   f"SDM 6.2), e.g. {key} = 0xF8; not {shown}", v.loc)
                    elif v.value in vectors:
                        self.error(f"vector {v.value:#x} is listed twice", v.loc)
                    else:
                        vectors.append(v.value)
                if not values:
                    self.error(f"{key} needs at least one vector: {key} = 0xF8", loc)
                opts[key] = sorted(vectors)
        return opts

    def apply_settings(self) -> None:
        """`option external_interrupts = on`: the controls and handlers of the
        seed's interrupt path, unless the spec wrote its own."""
        spec = self.spec
        if not spec.settings.get("external_interrupts"):
            return
        loc = spec.setting_locs["external_interrupts"]
        for name in ("pin.external_interrupt_exiting", "exit.ack_interrupt_on_exit"):
            if name in spec.controls and not any(r.control == name for r in spec.control_reqs):
                spec.control_reqs.append(m.ControlReq(name, True, loc))
        handled = {h.reason for h in spec.exits}
        idt = next((g.name for g in spec.globals if g.source == m.ReadReg("sidt.base")), None)
        if "external_interrupt" not in handled and idt:
            spec.exits.append(m.ExitHandler("external_interrupt", "dispatch_idt", {"idt_base": idt}, loc))
        if "interrupt_window" not in handled:
            spec.exits.append(m.ExitHandler("interrupt_window", "inject_pending", {}, loc))

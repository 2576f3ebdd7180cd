"""parse: spec text (dsl/*.hv) -> a `Spec` (model.py), or one `SpecError`
listing every problem found, each as `file:line:col: error: ...` with the
offending line and a caret.

Two steps. Here, every file (the spec and its imports, depth first) is
parsed with dsl/grammar.lark (Lark, LALR) and turned by a Transformer into
raw declarations (declarations.py), each with its Loc; a declaration wrong
on its own (an unknown field width, a literal over 64 bits) is a Problem in
its place. Then resolve.py looks the names up across the whole, so a spec
may use a field, control or constant that an import declares. Only the
language's own rules are decided in the two; the SDM's rules are check.py's.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Union

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.tree import Meta

from uefi_hv import DSL_DIR
from uefi_hv import declarations as d
from uefi_hv import model as m
from uefi_hv.diagnostics import Diagnostic, SpecError, did_you_mean
from uefi_hv.errors import UsageError
from uefi_hv.resolve import resolve

__all__ = ["GRAMMAR", "SpecError", "did_you_mean", "load_spec", "parse_text", "parser", "read_source"]

GRAMMAR = DSL_DIR / "grammar.lark"

# --- the parser ------------------------------------------------------------------

_parser: Optional[Lark] = None


def _cache_file(grammar: str) -> Optional[str]:
    """Where Lark keeps the analysed grammar between processes, or None when
    there is nowhere writable (the parser then builds it in memory)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(grammar.encode()).hexdigest()[:16]
    path = os.path.join(base, "uefi-hv", f"grammar-{digest}-py{sys.version_info[0]}{sys.version_info[1]}.lark")
    if os.path.exists(path):
        return path
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError:
        return None
    return path if os.access(os.path.dirname(path), os.W_OK) else None


def parser() -> Lark:
    """The spec parser: built once per process, from the on-disk cache when there is one."""
    global _parser
    if _parser is None:
        grammar = GRAMMAR.read_text()
        options = dict(parser="lalr", propagate_positions=True, maybe_placeholders=False)
        cache = _cache_file(grammar)
        try:
            _parser = Lark(grammar, cache=cache or False, **options)
        except Exception:  # a damaged cache file: build from the grammar
            _parser = Lark(grammar, **options)
    return _parser


# Terminals in words, for "expected ..." messages (keywords and punctuation
# are quoted as written).
_WORDS = {
    "NAME": "a name", "QNAME": "a qualified name like proc2.enable_ept", "INT": "a number",
    "STRING": "a string in double quotes", "$END": "the end of the file",
}


_DECLARATIONS = {"import", "hypervisor", "const", "global", "option", "fields", "control_bits", "exit_reasons",
                 "vm_instruction_errors", "msrs", "vmcb", "intercepts", "svm_exit_codes", "event_injection",
                 "event_types", "vmrun_checks", "host_state", "controls", "msr_bitmap", "exit"}


def _words(terminals) -> str:
    patterns = {t.name: t.pattern for t in parser().terminals}
    names = []
    values = {t: patterns[t].value for t in terminals or () if t in patterns and patterns[t].type == "str"}
    declarations = _DECLARATIONS <= set(values.values())
    for t in sorted(terminals or (), key=lambda t: (t == "$END", t)):
        if declarations and values.get(t) in _DECLARATIONS:
            word = "a new declaration (import, const, global, host_state, controls, exit ...)"
        elif t in _WORDS:
            word = _WORDS[t]
        else:
            word = f"'{values[t]}'" if t in values else t.lower()
        if word not in names:
            names.append(word)
    if not names:
        return "nothing more"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _syntax_error(e: UnexpectedInput, file: str, text: str) -> d.Problem:
    line = e.line if isinstance(e.line, int) and e.line > 0 else 1
    col = e.column if isinstance(e.column, int) and e.column > 0 else 1
    if isinstance(e, UnexpectedCharacters):
        pos = e.pos_in_stream
        ch = text[pos] if isinstance(pos, int) and 0 <= pos < len(text) else "?"
        msg = f"unexpected character {ch!r}"
        if e.allowed:
            msg += f"; expected {_words(e.allowed)}"
    elif isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        msg = f"unexpected end of file; expected {_words(e.expected)}"
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    elif isinstance(e, UnexpectedToken):
        tok = e.token
        what = {"NAME": "name", "QNAME": "name", "INT": "number", "STRING": "string"}.get(tok.type)
        shown = str(tok)[:40]
        msg = f"unexpected {what} '{shown}'" if what else f"unexpected '{shown}'"
        msg += f"; expected {_words(e.accepts or e.expected)}"
    else:  # pragma: no cover - Lark's other errors
        msg = str(e).splitlines()[0]
    return d.Problem(msg, m.Loc(file, line, col))


# --- literals ----------------------------------------------------------------------

def _int(text: str) -> Optional[int]:
    """The value of an INT as written (0x1F, 1_000), or None when it does not fit in 64 bits."""
    s = text.replace("_", "")
    hexa = s[:2] in ("0x", "0X")
    digits = (s[2:] if hexa else s).lstrip("0")
    if len(digits) > (16 if hexa else 20):      # before int(): Python refuses >4300 decimal digits
        return None
    value = int(digits or "0", 16 if hexa else 10)
    return None if value >> 64 else value


def _string(tok: Token) -> str:
    s = str(tok)[1:-1]
    return re.sub(r"\\(.)", r"\1", s) if "\\" in s else s


_TRUE = {"on", "true", "yes"}
_FALSE = {"off", "false", "no"}
_TYPE_NAMES = {"control": "control", "exit_info": "exit-info", "guest": "guest", "host": "host"}


def _up_to_oversized(entries: Iterable) -> list:
    """The entries of a block up to its first oversized literal, which ends the
    block: what follows is not read, so one bad literal makes one report."""
    kept = []
    for entry in entries:
        kept.append(entry)
        if isinstance(entry, d.Oversized):
            break
    return kept


# --- the transformer: a file's tree -> its declarations ---------------------------

@dataclass(frozen=True)
class _FieldLine:
    """A line of a fields block, before the block gives it its type and width."""

    name: d.Name
    index: int
    written: Optional[d.Number]
    when: Optional[d.Name]
    description: str


@dataclass(frozen=True)
class _NumberedLine:
    """A line of a control_bits, exit_reasons, vm_instruction_errors or msrs block."""

    name: d.Name
    number: d.Number
    description: str


@dataclass(frozen=True)
class _VmcbLine:
    """A line of a vmcb block, its offset still the area's."""

    name: d.Name
    offset: int
    size: int
    description: str


@dataclass(frozen=True)
class _VmrunLine:
    """A line of vmrun_checks, before the block gives it its sections."""

    name: d.Name
    title: str
    sections: Optional[d.Text]     # its own `apm "..."`, or None
    kind: d.Name
    args: tuple[d.VmrunArg, ...]


@v_args(meta=True)
class _Declarations(Transformer):
    """One file's tree -> its entries in order: declarations, imports, and a
    Problem in place of each declaration wrong on its own. No name is looked
    up here (another file may declare it): resolve.py does that.

    Each callback gets the rule's Meta (its position: the parser propagates
    positions) and its transformed children; a value rule gives a declarations value (Number, Name, ...) or
    the Oversized problem of its literal, which the declaration around it passes on.
    """

    def __init__(self, file: str):
        super().__init__(visit_tokens=False)
        self.file = file

    def _loc(self, at: Union[Meta, Token]) -> m.Loc:
        if isinstance(at, Token):
            return m.Loc(self.file, at.line or 1, at.column or 1)
        return m.Loc(self.file, getattr(at, "line", 1), getattr(at, "column", 1))

    def _literal(self, tok: Token) -> Union[int, d.Oversized]:
        value = _int(str(tok))
        if value is None:
            return d.Oversized(f"{tok[:24]}{'...' if len(tok) > 24 else ''} does not fit in 64 bits", self._loc(tok))
        return value

    def _literals(self, *toks: Token) -> Union[list[int], d.Oversized]:
        """The tokens' values, or the first that does not fit in 64 bits."""
        values = [self._literal(t) for t in toks]
        for value in values:
            if isinstance(value, d.Oversized):
                return value
        return [v for v in values if isinstance(v, int)]

    def start(self, meta, items) -> list:
        return [entry for item in items for entry in (item if isinstance(item, list) else [item])]

    def import_stmt(self, meta, children) -> d.ImportDecl:
        return d.ImportDecl(_string(children[0]), self._loc(meta))

    def hypervisor(self, meta, children) -> list:
        name, *props = children
        entries: list = []
        given: dict[str, str] = {}
        for key, value in props:
            if key.value not in ("signature", "version"):
                entries.append(d.Problem(f"unknown hypervisor property '{key.value}'"
                                         f"{did_you_mean(key.value, ['signature', 'version'])}", key.loc))
            elif key.value == "signature" and not all(" " <= c <= "~" for c in value.value):
                # the generated code packs it into EBX:ECX:EDX as ASCII
                entries.append(d.Problem(f"the signature must be printable ASCII: \"{value.value}\"", value.loc))
            else:
                given[key.value] = value.value
        entries.append(d.HypervisorDecl(_string(name), given.get("signature"), given.get("version"),
                                        self._loc(meta)))
        return entries

    def hv_prop(self, meta, children) -> tuple[d.Name, d.Text]:
        key, value = children
        return d.Name(str(key), self._loc(meta)), d.Text(_string(value), self._loc(value))

    def const_def(self, meta, children) -> Union[d.ConstDecl, d.Oversized]:
        name, value = children
        return value if isinstance(value, d.Oversized) else d.ConstDecl(str(name), value, self._loc(name))

    def global_def(self, meta, children) -> Union[d.GlobalDecl, d.Oversized]:
        name, source = children
        return source if isinstance(source, d.Oversized) else d.GlobalDecl(str(name), source, self._loc(name))

    def option_def(self, meta, children) -> Union[d.OptionDecl, d.Problem]:
        name_tok, value = children
        if isinstance(value, d.Oversized):
            return value
        name, loc, written = str(name_tok), self._loc(name_tok), value.value
        kind = m.SETTINGS.get(name)
        if kind is None:
            return d.Problem(f"unknown option '{name}'{did_you_mean(name, m.SETTINGS)}", loc)
        if kind == "bool":
            word = str(written).lower() if not isinstance(written, int) else {1: "on", 0: "off"}.get(written, "")
            if word not in _TRUE | _FALSE:
                return d.Problem(f"option {name} is on or off, not '{written}'", loc)
            return d.OptionDecl(name, word in _TRUE, loc)
        if kind == "string" and not isinstance(value, d.Text):
            return d.Problem(f"option {name} takes a string in double quotes", loc)
        if kind == "int" and not isinstance(value, d.Number):
            return d.Problem(f"option {name} takes a number, not '{written}'", loc)
        return d.OptionDecl(name, written, loc)

    # -- the catalogue: a block's lines become declarations where the block's
    #    type, width or group is known
    def fields_block(self, meta, children) -> Union[list, d.Problem]:
        type_tok, width_tok, *lines = children
        type_, width = _TYPE_NAMES.get(str(type_tok)), str(width_tok)
        if type_ is None:
            return d.Problem(f"unknown field type '{type_tok}'; expected control, exit_info, guest or host"
                             f"{did_you_mean(type_tok, _TYPE_NAMES)}", self._loc(type_tok))
        if width not in m.FIELD_WIDTHS:
            return d.Problem(f"unknown field width '{width}'; expected 16, 32, 64 or natural", self._loc(width_tok))
        return _up_to_oversized(
            line if isinstance(line, d.Problem) else
            d.FieldDecl(line.name.value, type_, width, line.index, line.written, line.when, line.description,
                        line.name.loc)
            for line in lines)

    def field_def(self, meta, children) -> Union[_FieldLine, d.Problem]:
        name, index_tok, *rest = children
        written_tok = next((t for t in rest if isinstance(t, Token) and t.type == "INT"), None)
        when = next((t for t in rest if isinstance(t, d.Name)), None)
        desc = next((_string(t) for t in rest if isinstance(t, Token) and t.type == "STRING"), "")
        index = self._literal(index_tok)
        if isinstance(index, d.Oversized):
            return index
        if index > 0x1FF:
            return d.Problem(f"field index {index} does not fit in bits 9:1 of an encoding (at most 511)",
                             self._loc(index_tok))
        written = None
        if written_tok is not None:
            value = self._literal(written_tok)
            if isinstance(value, d.Oversized):
                return value
            written = d.Number(value, self._loc(written_tok))
        return _FieldLine(d.Name(str(name), self._loc(name)), index, written, when, desc)

    def control_bits(self, meta, children) -> Union[list, d.Problem]:
        group_tok, *lines = children
        group = str(group_tok)
        if group not in m.CONTROL_GROUPS:
            return d.Problem(f"unknown control group '{group}'; expected one of {', '.join(m.CONTROL_GROUPS)}"
                             f"{did_you_mean(group, m.CONTROL_GROUPS)}", self._loc(group_tok))
        return _up_to_oversized(
            line if isinstance(line, d.Oversized) else
            d.Problem(f"control bit {line.number.value} is not in a 32-bit control field", line.number.loc)
            if line.number.value > 31 else
            d.ControlBitDecl(group, line.name.value, line.number.value, line.description, line.name.loc)
            for line in lines)

    def _numbered(self, table: str, lines: list) -> list:
        return _up_to_oversized(
            line if isinstance(line, d.Oversized) else
            d.NumberedDecl(table, line.name.value, line.number.value, line.description, line.name.loc)
            for line in lines)

    def exit_reasons(self, meta, lines) -> list:
        return self._numbered("exit_reasons", lines)

    def vm_errors(self, meta, lines) -> list:
        return self._numbered("vm_instruction_errors", lines)

    def msrs_block(self, meta, lines) -> list:
        return self._numbered("msrs", lines)

    def numbered(self, meta, children) -> Union[_NumberedLine, d.Oversized]:
        """NAME "=" INT STRING? in exit_reasons, vm_instruction_errors and msrs;
        NAME "bit" INT STRING? in control_bits."""
        name, number_tok, *desc = children
        number = self._literal(number_tok)
        if isinstance(number, d.Oversized):
            return number
        return _NumberedLine(d.Name(str(name), self._loc(name)), d.Number(number, self._loc(number_tok)),
                             _string(desc[0]) if desc else "")

    bit_def = numbered

    # -- the VMCB catalogue (dsl/vmcb.hv)
    def vmcb_area(self, meta, children) -> Union[list, d.Problem]:
        area_tok, base_tok, *lines = children
        area = str(area_tok)
        if area not in m.VMCB_AREAS:
            return d.Problem(f"unknown VMCB area '{area}'; expected {' or '.join(m.VMCB_AREAS)}"
                             f"{did_you_mean(area, m.VMCB_AREAS)}", self._loc(area_tok))
        base = self._literal(base_tok)
        if isinstance(base, d.Oversized):
            return base
        return _up_to_oversized(
            line if isinstance(line, d.Problem) else
            d.VmcbFieldDecl(area, line.name.value, base + line.offset, line.size, line.description, line.name.loc)
            for line in lines)

    def vmcb_field(self, meta, children) -> Union[_VmcbLine, d.Problem]:
        name, offset_tok, size_tok, *desc = children
        values = self._literals(offset_tok, size_tok)
        if isinstance(values, d.Oversized):
            return values
        offset, size = values
        if size == 0:
            return d.Problem(f"VMCB field {name} has size 0; a field is at least 1 byte", self._loc(size_tok))
        return _VmcbLine(d.Name(str(name), self._loc(name)), offset, size, _string(desc[0]) if desc else "")

    def intercepts_block(self, meta, children) -> list:
        group_tok, field_tok, *lines = children
        group = str(group_tok)
        declared = d.InterceptGroupDecl(group, d.Name(str(field_tok), self._loc(field_tok)), self._loc(group_tok))
        return [declared] + _up_to_oversized(
            line if isinstance(line, d.Oversized) else
            d.Problem(f"intercept bit {line.number.value} is not in a 32-bit intercept vector", line.number.loc)
            if line.number.value > 31 else
            d.InterceptBitDecl(group, line.name.value, line.number.value, line.description, line.name.loc)
            for line in lines)

    def svm_exit_codes(self, meta, lines) -> list:
        return _up_to_oversized(lines)

    def svm_exit(self, meta, children) -> Union[d.SvmExitDecl, d.Oversized]:
        """NAME "=" INT ("intercept" QNAME)? ("means" NAME)? STRING?"""
        name, code_tok, *rest = children
        code = self._literal(code_tok)
        if isinstance(code, d.Oversized):
            return code
        words = {t.type: d.Name(str(t), self._loc(t)) for t in rest if t.type in ("QNAME", "NAME")}
        desc = next((_string(t) for t in rest if t.type == "STRING"), "")
        return d.SvmExitDecl(str(name), code, words.get("QNAME"), words.get("NAME"), desc, self._loc(name))

    def event_injection(self, meta, lines) -> list:
        def field(line) -> Union[d.EventFieldDecl, d.Problem]:
            if isinstance(line, _NumberedLine):     # NAME "bit" INT
                line = d.EventFieldDecl(line.name.value, line.number.value, line.number.value, line.description,
                                        line.name.loc)
            if isinstance(line, d.EventFieldDecl) and line.last > 63:
                return d.Problem(f"bit {line.last} of {line.name} is outside EVENTINJ, a 64-bit field", line.loc)
            return line
        return _up_to_oversized(field(line) for line in lines)

    def bits_def(self, meta, children) -> Union[d.EventFieldDecl, d.Problem]:
        name, first_tok, last_tok, *desc = children
        values = self._literals(first_tok, last_tok)
        if isinstance(values, d.Oversized):
            return values
        first, last = values
        if last < first:
            return d.Problem(f"bits {first}..{last} run backwards; write {last}..{first}", self._loc(first_tok))
        return d.EventFieldDecl(str(name), first, last, _string(desc[0]) if desc else "", self._loc(name))

    def event_types(self, meta, lines) -> list:
        return self._numbered("event_types", lines)

    # -- VMRUN's consistency checks (APM vol. 2 15.5.1)
    def vmrun_checks(self, meta, children) -> list:
        sections_tok, *lines = children
        sections = d.Text(_string(sections_tok), self._loc(sections_tok))
        return _up_to_oversized(
            line if isinstance(line, d.Problem) else
            d.VmrunCheckDecl(line.name.value, line.title, line.sections or sections, line.kind, line.args,
                             line.name.loc)
            for line in lines)

    def vmrun_check(self, meta, children) -> Union[_VmrunLine, d.Problem]:
        """NAME STRING ("apm" STRING)? "kind" NAME vmrun_arg*"""
        tokens = [c for c in children if isinstance(c, Token)]
        args = [c for c in children if not isinstance(c, Token)]
        name, title, *own, kind = tokens
        problem = next((a for a in args if isinstance(a, d.Problem)), None)
        if problem is not None:
            return problem
        return _VmrunLine(d.Name(str(name), self._loc(name)), _string(title),
                          d.Text(_string(own[0]), self._loc(own[0])) if own else None,
                          d.Name(str(kind), self._loc(kind)), tuple(args))

    def _number_arg(self, key: str, meta, children) -> Union[d.VmrunArg, d.Oversized]:
        value = self._literal(children[0])
        if isinstance(value, d.Oversized):
            return value
        return d.VmrunArg(key, d.Number(value, self._loc(children[0])), self._loc(meta))

    def check_field(self, meta, children) -> d.VmrunArg:
        return d.VmrunArg("field", d.Name(str(children[0]), self._loc(children[0])), self._loc(meta))

    def check_mask(self, meta, children) -> Union[d.VmrunArg, d.Oversized]:
        return self._number_arg("mask", meta, children)

    def check_size(self, meta, children) -> Union[d.VmrunArg, d.Oversized]:
        return self._number_arg("size", meta, children)

    def check_exceptions(self, meta, ranges) -> Union[d.VmrunArg, d.Problem]:
        problem = next((r for r in ranges if isinstance(r, d.Problem)), None)
        if problem is not None:
            return problem
        vectors: list[int] = []
        for r in ranges:
            for v in r:
                if v in vectors:
                    return d.Problem(f"vector {v} is listed twice", self._loc(meta))
                vectors.append(v)
        return d.VmrunArg("exceptions", tuple(sorted(vectors)), self._loc(meta))

    def vector_range(self, meta, children) -> Union[tuple, d.Problem]:
        values = self._literals(*children)
        if isinstance(values, d.Oversized):
            return values
        first, last = values[0], values[-1]
        if last < first:
            return d.Problem(f"vectors {first}..{last} run backwards; write {last}..{first}", self._loc(meta))
        if last > 255:
            return d.Problem(f"vector {last} is not a vector (0 to 255)", self._loc(children[-1]))
        return tuple(range(first, last + 1))

    def check_when(self, meta, terms) -> Union[d.VmrunArg, d.Problem]:
        problem = next((t for t in terms if isinstance(t, d.Problem)), None)
        return problem or d.VmrunArg("when", tuple(terms), self._loc(meta))

    def vmcb_term(self, meta, children) -> Union[d.VmcbTermDecl, d.Problem]:
        """(NAME | QNAME) ("set" | "clear") INT?"""
        target, state, *mask_tok = children
        name = d.Name(str(target), self._loc(target))
        if target.type == "QNAME" and mask_tok:
            return d.Problem(f"an intercept is one bit: write `{target} {state}`, without a mask",
                             self._loc(mask_tok[0]))
        if target.type == "NAME" and not mask_tok:
            return d.Problem(f"`{target} {state}` needs the bits it tests: `{target} {state} MASK`, "
                             f"e.g. EFER clear 0x1000", self._loc(meta))
        mask = None
        if mask_tok:
            value = self._literal(mask_tok[0])
            if isinstance(value, d.Oversized):
                return value
            mask = d.Number(value, self._loc(mask_tok[0]))
        return d.VmcbTermDecl(name, state == "set", mask, self._loc(meta))

    def bit_state(self, meta, children) -> str:
        return str(children[0])

    # -- the hypervisor
    def host_state(self, meta, assigns) -> list:
        return _up_to_oversized(assigns)

    def assign(self, meta, children) -> Union[d.HostAssignDecl, d.Oversized]:
        name, source, *when = children
        if isinstance(source, d.Oversized):
            return source
        return d.HostAssignDecl(str(name), source, when[0] if when else "once", self._loc(name))

    def controls(self, meta, reqs) -> list:
        return [req for line in reqs for req in line]

    def control_req(self, meta, children) -> list[d.ControlReqDecl]:
        req, *names = children
        return [d.ControlReqDecl(name.value, req == "require", name.loc) for name in names]

    def msr_bitmap(self, meta, intercepts) -> list:
        return _up_to_oversized(intercepts)

    def intercept(self, meta, children) -> Union[d.InterceptDecl, d.Oversized]:
        access, *msrs, action = children
        oversized = next((x for x in msrs if isinstance(x, d.Oversized)), None)
        return oversized or d.InterceptDecl(access, tuple(msrs), d.Name(str(action), self._loc(action)),
                                            self._loc(meta))

    def exit_def(self, meta, children) -> Union[d.ExitDecl, d.Oversized]:
        reasons = tuple(d.Name(str(t), self._loc(t)) for t in children if isinstance(t, Token))
        action = next((c for c in children if isinstance(c, d.Name)), None)
        options = next((c for c in children if isinstance(c, list)), [])
        oversized = next((o for o in options if isinstance(o, d.Oversized)), None)
        return oversized or d.ExitDecl(reasons, action, tuple(options), self._loc(meta))

    def option_block(self, meta, options) -> list:
        return options

    def exit_option(self, meta, children) -> Union[d.ExitOption, d.Oversized]:
        key, *values = children
        oversized = next((v for v in values if isinstance(v, d.Oversized)), None)
        return oversized or d.ExitOption(str(key), tuple(values), self._loc(key))

    # -- words of a declaration
    def action(self, meta, children) -> d.Name:
        return d.Name(str(children[0]), self._loc(meta))

    def control_name(self, meta, children) -> d.Name:
        return d.Name(str(children[0]), self._loc(meta))

    def when(self, meta, children) -> str:
        return str(children[0])

    req = access = when

    # -- values
    def number(self, meta, children) -> Union[d.Number, d.Oversized]:
        value = self._literal(children[0])
        return value if isinstance(value, d.Oversized) else d.Number(value, self._loc(meta))

    def name(self, meta, children) -> d.Name:
        return d.Name(str(children[0]), self._loc(meta))

    def string(self, meta, children) -> d.Text:
        return d.Text(_string(children[0]), self._loc(meta))

    def register(self, meta, children) -> Token:
        return children[0]

    def read_reg(self, meta, children) -> d.RegisterRead:
        reg = children[0]
        return d.RegisterRead(str(reg), self._loc(reg), self._loc(meta))

    def read_msr(self, meta, children) -> Union[d.MsrRead, d.Oversized]:
        msr = children[0]
        return msr if isinstance(msr, d.Oversized) else d.MsrRead(msr, self._loc(meta))

    def symbol(self, meta, children) -> d.SymbolUse:
        name = children[0]
        return d.SymbolUse(str(name), self._loc(name), self._loc(meta))


# --- files and imports -------------------------------------------------------------

def read_source(text: str, shown: str, path: Path) -> d.SourceFile:
    """One file's text -> its entries (or its syntax error); `shown` names it in diagnostics."""
    try:
        tree = parser().parse(text)
    except UnexpectedInput as e:
        return d.SourceFile(shown, path, text, (), _syntax_error(e, shown, text))
    return d.SourceFile(shown, path, text, tuple(_Declarations(shown).transform(tree)))


@lru_cache(maxsize=64)
def _read_import_version(path: Path, shown: str, mtime_ns: int, size: int) -> d.SourceFile:
    """An imported file, read once per process for each version of it on disk
    (vmcs.hv is 500 lines; the fuzz test and the generator import it thousands
    of times). Its SourceFile is also the key of its catalogue (resolve.py)."""
    return read_source(path.read_text(encoding="utf-8"), shown, path)


def _read_import(path: Path) -> d.SourceFile:
    st = path.stat()
    return _read_import_version(path, _shown(path), st.st_mtime_ns, st.st_size)


def _shown(path: Path) -> str:
    """A path as diagnostics show it: relative to the working directory when below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


class _Imports:
    """Follows a spec's imports depth first: each file once, cycles refused."""

    def __init__(self) -> None:
        self.reading: list[Path] = []       # the import chain, for cycles
        self.read: set[Path] = set()

    def include(self, source: d.SourceFile, chain: tuple[int, ...] = ()) -> d.Included:
        """`source` with its imports read in place; `chain` is the lines of the
        imports that led here (it orders declarations as if every import were
        pasted in place)."""
        self.reading.append(source.path)
        self.read.add(source.path)
        entries: list = []
        for entry in source.entries:
            if isinstance(entry, d.ImportDecl):
                imported = self._import(entry, source, chain)
                if imported is not None:
                    entries.append(imported)
            else:
                entries.append(entry)
        self.reading.pop()
        return d.Included(source, chain, tuple(entries))

    def _import(self, imp: d.ImportDecl, importer: d.SourceFile,
                chain: tuple[int, ...]) -> Union[d.Included, d.Problem, None]:
        found = _find(imp.name, importer.path.parent)
        if found is None:
            return d.Problem(f"cannot import \"{imp.name}\": no such file beside {importer.shown} or in "
                             f"{_shown(DSL_DIR)}", imp.loc)
        if found in self.reading:
            return d.Problem(f"\"{imp.name}\" imports itself (import cycle)", imp.loc)
        if found in self.read:
            return None                      # imported twice: once is enough
        if found.suffix != ".hv":
            return d.Problem(f"cannot import \"{imp.name}\": a spec file ends in .hv", imp.loc)
        try:
            source = _read_import(found)
        except (OSError, UnicodeDecodeError) as e:
            return d.Problem(f"cannot read \"{imp.name}\": {getattr(e, 'strerror', None) or e}", imp.loc)
        return self.include(source, chain + (imp.loc.line,))


def _find(name: str, beside: Path) -> Optional[Path]:
    """The file an import names: beside the importing file, else in dsl/."""
    if not name or "\0" in name:
        return None
    for base in (beside, DSL_DIR):
        candidate = base / name
        try:
            if candidate.is_file():
                return candidate.resolve()
        except (OSError, ValueError):
            continue
    return None


# --- entry points ------------------------------------------------------------------

def parse_text(text: str, file: str = "<spec>", path: Optional[Path] = None) -> m.Spec:
    """Parse spec text shown as `file`; imports resolve beside `path` (default:
    the working directory), then in dsl/. Raises SpecError with every diagnostic."""
    spec_file = read_source(text, file, path or Path.cwd() / "<spec>.hv")
    return resolve(_Imports().include(spec_file))


def load_spec(path) -> m.Spec:
    """Parse a spec file and its imports into a Spec (no SDM checks: see
    check.load_and_check). Raises SpecError, or UsageError for a missing file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"error: {path}: no such spec file") from None
    except IsADirectoryError:
        raise UsageError(f"error: {path} is a directory, not a spec file") from None
    except UnicodeDecodeError as e:
        raise SpecError([Diagnostic("error", f"not UTF-8 text ({e.reason} at byte {e.start})",
                                    m.Loc(str(path), 1, 1))]) from None
    except OSError as e:
        raise UsageError(f"error: cannot read {path}: {e.strerror}") from None
    return parse_text(text, _shown(p.resolve()) if p.is_absolute() else str(path), p.resolve())

"""diagnostics: what parse and check report about a spec: a Diagnostic per
problem (file:line:col, severity, the check's id and SDM section, the line
with a caret), a SpecError carrying all of them, and the "did you mean" hint.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Optional

from uefi_hv import model as m
from uefi_hv.errors import UserError


@dataclass
class Diagnostic:
    """One problem in a spec, pointing at its line."""

    severity: str                   # "error" or "warning"
    message: str
    loc: Optional[m.Loc] = None
    check_id: Optional[str] = None  # e.g. "HOST-SEL-RPL-TI" (None: a language error)
    section: Optional[str] = None   # e.g. "SDM 28.2.3"
    source_line: Optional[str] = None

    def __str__(self) -> str:
        tag = self.severity
        if self.check_id:
            tag += f"[{self.check_id}, {self.section}]" if self.section else f"[{self.check_id}]"
        text = f"{self.loc}: {tag}: {self.message}" if self.loc else f"uefi-hv: {tag}: {self.message}"
        if self.loc and self.source_line is not None:
            line = _printable(self.source_line)
            col = max(1, min(self.loc.col, len(line) + 1))
            if len(line) > 100:            # a window around the column
                start = max(0, col - 60)
                line = ("..." if start else "") + line[start:start + 100] + ("..." if start + 100 < len(line) else "")
                col = col - start + (3 if start else 0)
            text += f"\n    {line}\n    {' ' * (col - 1)}^"
        return text


def _printable(line: str) -> str:
    """The source line as it can be shown on a terminal, one column per character."""
    line = line.expandtabs(1)
    return "".join(c if c.isprintable() else "?" for c in line)


class SpecError(UserError):
    """The spec has errors; carries all of them (and any warnings)."""

    exit_status = 1

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        errors = sum(d.severity == "error" for d in diagnostics)
        text = "\n".join(str(d) for d in diagnostics)
        super().__init__(f"{text}\n{errors} error{'s' if errors != 1 else ''} in the spec")


def did_you_mean(name: str, candidates) -> str:
    """' (did you mean X?)' from the closest names, or ''. Case does not
    count: `host_idtr_base` and `HOST_idtr_bsae` find HOST_IDTR_BASE."""
    by_folded: dict[str, list[str]] = {}
    for c in candidates:
        by_folded.setdefault(str(c).casefold(), []).append(str(c))
    close = difflib.get_close_matches(str(name).casefold(), list(by_folded), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"'{c}'" for f in close for c in by_folded[f]) + "?"


def source_line(text: str, line: int) -> Optional[str]:
    """Line `line` (from 1) of `text`, "" past its end."""
    lines = text.splitlines()
    return lines[line - 1] if 0 < line <= len(lines) else ""

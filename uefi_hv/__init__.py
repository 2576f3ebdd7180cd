"""uefi-hv: a firmware-level x86 hypervisor (Intel VMX and AMD SVM) generated from a spec.

Data flow (one module per step, docs/architecture.md):
    parse -> resolve -> model -> check -> lower -> generate -> build -> image -> emulate
and cli, the thin shell over them.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root: dsl/, templates/ and ovmf/ live beside the package.
ROOT = Path(__file__).resolve().parent.parent
DSL_DIR = ROOT / "dsl"
TEMPLATES_DIR = ROOT / "templates"
#: The hand-written runtime (plain C and assembly, compiled as it is) around
#: what the templates generate from the spec.
RUNTIME_DIR = ROOT / "runtime"
OVMF_DIR = ROOT / "ovmf"

"""The initramfs of the OS tests: /init is oscheck.c, built static.

    probe_defines(spec) -> ["-DOSKIT_SIGNATURE=...", ...]   (hvprobe.h's inputs)
    build_oscheck(output, spec) -> Path                      (a static ELF)
    write_newc(entries, output) -> Path                      (a cpio archive)
    oscheck_initramfs(workdir, spec) -> Path                 (both, ready to boot)

The expected signature and the VMCALL numbers come from the spec and from
uefi_hv.lower, the same place the hypervisor's C gets them: the check
cannot drift from what is built.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from uefi_hv import ROOT
from uefi_hv.errors import MissingTool, UserError

OSKIT = Path(__file__).resolve().parent
DEFAULT_SPEC = ROOT / "dsl" / "default.hv"
LIBC_STATIC = Path("/usr/lib/x86_64-linux-gnu/libc.a")


def vmcall_numbers() -> tuple[int, int]:
    """(RAX of the ping, RBX of its answer), from docs/vmcall.md's source of truth."""
    from uefi_hv import lower

    return vmcall_rax("PING"), lower.VMCALL_PONG


def vmcall_rax(function: str) -> int:
    """RAX of the VMCALL `function` (docs/vmcall.md), from uefi_hv.lower."""
    from uefi_hv import lower

    numbers = {name: number for name, number, _ in lower.VMCALL_FUNCTIONS}
    if function not in numbers:
        raise UserError(f"error: uefi_hv.lower.VMCALL_FUNCTIONS has no {function} "
                        f"(it has {', '.join(numbers)})")
    return lower.VMCALL_BASE + numbers[function]


def probe_defines(spec: Path = DEFAULT_SPEC) -> list[str]:
    """The -D options hvprobe.h needs, for the hypervisor built from `spec`."""
    from uefi_hv.parse import load_spec

    parsed = load_spec(str(spec))
    signature = parsed.identity.signature
    if len(signature) != 12 or not signature.isascii() or '"' in signature or "\\" in signature:
        raise UserError(f"error: {spec}: signature {signature!r} is not 12 plain ASCII bytes")
    ping, pong = vmcall_numbers()
    return [f'-DOSKIT_SIGNATURE="{signature}"', f"-DOSKIT_VMCALL_PING={ping:#x}ULL",
            f"-DOSKIT_VMCALL_PONG={pong:#x}ULL",
            f"-DOSKIT_VMCALL_GET_RESIDENT_RANGES={vmcall_rax('GET_RESIDENT_RANGES'):#x}ULL",
            f"-DOSKIT_VMCALL_GET_EXIT_COUNT={vmcall_rax('GET_EXIT_COUNT'):#x}ULL",
            f"-DOSKIT_VMCALL_DEVIRTUALIZE={vmcall_rax('DEVIRTUALIZE'):#x}ULL",
            f"-DOSKIT_EXIT_REASON_EPT_VIOLATION={parsed.exit_reasons['ept_violation'].number}",
            f"-DOSKIT_EXIT_REASON_INIT={parsed.exit_reasons['init_signal'].number}",
            f"-DOSKIT_EXIT_REASON_SIPI={parsed.exit_reasons['sipi'].number}",
            f"-DOSKIT_EXIT_REASON_TASK_SWITCH={parsed.exit_reasons['task_switch'].number}",
            f"-DOSKIT_EXIT_REASON_CPUID={parsed.exit_reasons['cpuid'].number}",
            # Every reason's name by number, for the exit counts /init prints.
            f"-DOSKIT_EXIT_REASON_COUNT={max(r.number for r in parsed.exit_reasons.values()) + 1}",
            "-DOSKIT_EXIT_REASON_NAMES=" + ",".join(f'[{r.number}]="{name}"'
                                                    for name, r in parsed.exit_reasons.items())]


def build_oscheck(output: Path, spec: Path = DEFAULT_SPEC) -> Path:
    """oscheck.c -> a static x86-64 executable at `output` (glibc static:
    the Debian package libc6-dev)."""
    if shutil.which("gcc") is None:
        raise MissingTool("the program 'gcc'", "gcc")
    if not LIBC_STATIC.is_file():
        raise MissingTool(f"glibc's static library {LIBC_STATIC}", "libc6-dev")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["gcc", "-static", "-Os", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
           *probe_defines(spec), f"-I{OSKIT}", str(OSKIT / "oscheck.c"), "-o", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"error: building oscheck failed:\n{proc.stderr}".rstrip())
    return output


# --- cpio, "newc" format -----------------------------------------------------------
# Written here rather than with cpio(1): neither cpio nor bsdcpio is installed by
# the project's packages, and the archive must hold a /dev/console device node,
# which cpio can only copy from a real node (mknod needs root). The format is
# the kernel's Documentation/driver-api/early-userspace/buffer-format.rst.

@dataclass
class Entry:
    name: str                   # path inside the archive, no leading '/'
    mode: int                   # st_mode: type and permissions
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(name: str) -> Entry:
    return Entry(name, stat.S_IFDIR | 0o755)


def file(name: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | mode, data)


def char_device(name: str, major: int, minor: int) -> Entry:
    return Entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write_newc(entries: Iterable[Entry], output: Path) -> Path:
    """A newc cpio archive of `entries` (parents before children), owned by
    root, mtime 0: the same entries give the same bytes."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = e.name.encode() + b"\0"
        is_dir = stat.S_ISDIR(e.mode)
        fields = (ino if e.mode else 0, e.mode, 0, 0, 2 if is_dir else 1, 0, len(e.data),
                  0, 0, e.rdev[0], e.rdev[1], len(name), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += e.data + _pad4(len(e.data))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(bytes(out))
    return output


def oscheck_initramfs(workdir: Path, spec: Path = DEFAULT_SPEC) -> Path:
    """workdir/initramfs.cpio: /init (oscheck), /dev/console (5, 1), and
    mount points /proc and /sys. Returns its path."""
    workdir = Path(workdir)
    init = build_oscheck(workdir / "oscheck", spec)
    return write_newc([directory("dev"), char_device("dev/console", 5, 1),
                       directory("proc"), directory("sys"),
                       file("init", init.read_bytes(), 0o755)],
                      workdir / "initramfs.cpio")

"""build: C and assembly sources -> a PE32+ EFI application, with gcc and gnu-efi.

The recipe is Debian's gnu-efi one (see /usr/share/doc/gnu-efi): compile
position-independent, link a shared object against crt0-efi and the gnu-efi
linker script, then let objcopy turn the ELF into a PE32+ image of subsystem
10 (EFI application).  Every option lives in this file, once.

The output is reproducible: the same sources give the same bytes.  Sources
are compiled inside a temporary directory under fixed names, so no absolute
path of the caller's tree reaches the objects, and the PE header's
TimeDateStamp is checked to be zero (SOURCE_DATE_EPOCH=0 for objcopy; an
objcopy that stamps anyway is corrected, checksum included).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from uefi_hv.errors import MissingTool, UsageError, UserError, require_program

GNU_EFI_INCLUDE = Path("/usr/include/efi")
GNU_EFI_LIB = Path("/usr/lib")
GNU_EFI_CRT0 = GNU_EFI_LIB / "crt0-efi-x86_64.o"
GNU_EFI_LDS = GNU_EFI_LIB / "elf_x86_64_efi.lds"

#: Why each flag: UEFI code runs in the firmware's address space with its
#: interrupt handlers on our stack (no red zone), without libc (freestanding,
#: no stack protector or probes), with 16-bit CHAR16 (short wchar), loaded at
#: any address (pic), calling the firmware with the Microsoft x64 ABI
#: (GNU_EFI_USE_MS_ABI turns uefi_call_wrapper into a direct ms_abi call).
#: No floating-point or SIMD register is touched (-mgeneral-regs-only, as the
#: Linux kernel builds): the hypervisor runs its exit handlers in VMX root with
#: the guest's x87/SSE/AVX state still in the registers, and saves none of it.
CFLAGS = (
    "-std=gnu11", "-O2",
    "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-fpic", "-fshort-wchar", "-mno-red-zone", "-mgeneral-regs-only",
    "-fno-stack-protector", "-fno-stack-check", "-fno-strict-aliasing",
    "-maccumulate-outgoing-args",
    "-DGNU_EFI_USE_MS_ABI", "-DEFI_FUNCTION_WRAPPER",
)
INCLUDE_DIRS = (GNU_EFI_INCLUDE, GNU_EFI_INCLUDE / "x86_64")
LDFLAGS = ("-nostdlib", "-znocombreloc", "-shared", "-Bsymbolic", "--build-id=none",
           "-T", str(GNU_EFI_LDS), "-L", str(GNU_EFI_LIB))
LIBS = ("-lefi", "-lgnuefi")
#: The ELF sections that become the PE image (gnu-efi's Make.rules).
SECTIONS = (".text", ".sdata", ".data", ".dynamic", ".dynsym", ".rel", ".rela",
            ".rel.*", ".rela.*", ".reloc")
EFI_SUBSYSTEM_APPLICATION = 10

SOURCE_SUFFIXES = (".c", ".S")


def require_toolchain() -> None:
    """Raise MissingTool, naming the Debian package, for whatever is missing."""
    for program, package in (("gcc", "gcc"), ("ld", "binutils"), ("objcopy", "binutils")):
        require_program(program, package)
    for path in (GNU_EFI_INCLUDE / "efi.h", GNU_EFI_CRT0, GNU_EFI_LDS,
                 GNU_EFI_LIB / "libefi.a", GNU_EFI_LIB / "libgnuefi.a"):
        if not path.exists():
            raise MissingTool(f"gnu-efi's {path}", "gnu-efi")


def _run(cmd: Sequence[str], cwd: Path, what: str) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH="0", LC_ALL="C")
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"error: {what} failed:\n{proc.stdout}{proc.stderr}".rstrip())


def build_efi(sources: list[Path], output: Path, include_dirs: Iterable[Path] = (),
              extra_cflags: Iterable[str] = ()) -> Path:
    """Compile and link `sources` (.c, and .S assembly run through cpp) into
    the EFI application `output`; returns `output`.

    Headers are found in `include_dirs` (searched before gnu-efi's).
    Compiler diagnostics are errors (-Werror) and come back as a UserError
    holding gcc's message.
    """
    sources = [Path(s) for s in sources]
    if not sources:
        raise UsageError("error: build_efi needs at least one source file")
    for src in sources:
        if not src.is_file():
            raise UsageError(f"error: source file {src} does not exist")
        if src.suffix not in SOURCE_SUFFIXES:
            raise UsageError(f"error: {src}: cannot build a '{src.suffix}' file "
                             f"(sources are {', '.join(SOURCE_SUFFIXES)})")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise UsageError(f"error: two sources share a file name: {sorted(names)}")
    require_toolchain()

    includes = [Path(d).resolve() for d in include_dirs]
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="uefi-hv-build-") as tmp:
        work = Path(tmp)
        # Fixed, relative names inside the temporary directory: the objects
        # cannot carry the caller's paths, and -ffile-prefix-map maps the
        # include directories (for __FILE__ in their headers) the same way.
        prefix_maps = [f"-ffile-prefix-map={d}=inc{i}" for i, d in enumerate(includes)]
        prefix_maps.append(f"-ffile-prefix-map={work}=.")
        include_flags = [f"-I{d}" for d in (*includes, *INCLUDE_DIRS)]
        objects = []
        for src in sources:
            local = work / src.name
            shutil.copyfile(src, local)
            obj = local.name + ".o"
            _run(["gcc", *CFLAGS, *extra_cflags, *prefix_maps, *include_flags,
                  "-c", local.name, "-o", obj], work, f"compiling {src}")
            objects.append(obj)
        _run(["ld", *LDFLAGS, str(GNU_EFI_CRT0), *objects, "-o", "app.so", *LIBS],
             work, f"linking {output.name}")
        _run(["objcopy", *(f"-j{s}" for s in SECTIONS), "--target", "efi-app-x86_64",
              f"--subsystem={EFI_SUBSYSTEM_APPLICATION}", "app.so", "app.efi"],
             work, f"converting {output.name} to PE32+")
        image = bytearray((work / "app.efi").read_bytes())
    _zero_timestamp(image)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = output.with_name(output.name + ".tmp")
    tmp_out.write_bytes(image)
    tmp_out.replace(output)
    return output


# --- PE32+ header -----------------------------------------------------------

def pe_header(image: bytes | bytearray) -> dict:
    """The few PE32+ header fields a test or a check needs:
    magic (0x20B for PE32+), subsystem, timestamp, checksum, machine."""
    if image[:2] != b"MZ":
        raise UserError("error: not a PE image (no MZ signature)")
    pe = struct.unpack_from("<I", image, 0x3C)[0]
    if image[pe:pe + 4] != b"PE\0\0":
        raise UserError("error: not a PE image (no PE signature)")
    machine, _, timestamp = struct.unpack_from("<HHI", image, pe + 4)
    opt = pe + 24
    magic = struct.unpack_from("<H", image, opt)[0]
    checksum, subsystem = struct.unpack_from("<IH", image, opt + 64)
    return {"machine": machine, "timestamp": timestamp, "magic": magic,
            "checksum": checksum, "subsystem": subsystem,
            "timestamp_offset": pe + 8, "checksum_offset": opt + 64}


def pe_checksum(image: bytes | bytearray, checksum_offset: int) -> int:
    """The PE optional header's CheckSum (the imagehlp algorithm): 16-bit
    one's-complement-style sum of the file, skipping the field itself, plus
    the file length."""
    data = bytes(image) + b"\0" * (len(image) & 1)
    total = 0
    for i, (word,) in enumerate(struct.iter_unpack("<H", data)):
        if checksum_offset // 2 <= i < checksum_offset // 2 + 2:
            continue
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ((total & 0xFFFF) + (total >> 16) + len(image)) & 0xFFFFFFFF


def _zero_timestamp(image: bytearray) -> None:
    hdr = pe_header(image)
    if hdr["timestamp"] == 0:
        return
    struct.pack_into("<I", image, hdr["timestamp_offset"], 0)
    if hdr["checksum"]:
        struct.pack_into("<I", image, hdr["checksum_offset"],
                         pe_checksum(image, hdr["checksum_offset"]))


# --- CLI ----------------------------------------------------------------------

def build_programs(built: dict[str, list[Path]], outdir: Path, cflags: Sequence[str] = ()) -> dict[str, Path]:
    """Compile each program of `built` ({"BOOTX64.EFI": [sources and
    headers], ...}, as generate returns it) into `outdir`/<name>; the folders
    of its files are its include path."""
    efi = {}
    for name, files in sorted(built.items()):
        sources = [Path(f) for f in files if Path(f).suffix in SOURCE_SUFFIXES]
        efi[name] = build_efi(sources, Path(outdir) / name,
                              include_dirs=sorted({Path(f).parent for f in files}), extra_cflags=cflags)
    return efi


def build_hypervisor(spec, outdir, check: bool = True, cflags: Sequence[str] = (),
                     **options) -> dict[str, Path]:
    """The whole pipeline for one spec: generate into `outdir`/src, then
    build `outdir`/BOOTX64.EFI and `outdir`/hvcheck.efi; returns
    {"BOOTX64.EFI": path, "hvcheck.efi": path}. `check=False` skips the
    static checks (tests of the run-time checks); `cflags` are added to the
    compiler's (a test's -DHV_MAX_CPUS=2); `options` go to generate_hypervisor."""
    from uefi_hv.generate import generate_hypervisor

    spec = Path(spec)
    if not spec.is_file():
        raise UsageError(f"error: spec file {spec} does not exist")
    outdir = Path(outdir)
    return build_programs(generate_hypervisor(str(spec), outdir / "src", check=check, **options),
                          outdir, cflags)


def cmd_build(args) -> int:
    outdir = Path(args.output)
    if args.banner:
        from uefi_hv.generate import generate_banner

        efi = build_programs({"BOOTX64.EFI": generate_banner(outdir / "src")}, outdir)
    else:
        efi = build_hypervisor(args.spec, outdir, check=not args.no_check)
    for name, out in sorted(efi.items()):
        print(f"built {out}")
    return 0

"""image: a raw GPT disk image with one EFI System Partition, ready for a USB stick.

The image is written as it will sit on the stick: a protective MBR and GPT
made by sfdisk, one FAT32 EFI System Partition formatted and filled by mtools
(`-i IMAGE@@OFFSET`), so no root, no loop device and no mount are needed.
The firmware's removable-media boot path is `\\EFI\\BOOT\\BOOTX64.EFI`
(UEFI spec 3.5.1.1).

For the hypervisor's chained boot, `--chain` puts the next image at
`\\EFI\\UEFI-HV\\NEXT.EFI` and writes `\\EFI\\UEFI-HV\\CHAIN.TXT`: line 1 the
ESP path of that image, line 2 its load options (the Linux command line,
with `initrd=` when an initrd comes along).
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional

from uefi_hv.build import build_hypervisor
from uefi_hv.errors import UsageError, UserError, require_program

SECTOR = 512
MIB = 1 << 20
ESP_TYPE_GUID = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
ESP_START_LBA = 2048                # 1 MiB: aligned for any flash erase block
GPT_TAIL_SECTORS = 33               # backup partition array (32) + backup header
MIN_SIZE_MIB = 64                   # FAT32 needs >= 65525 clusters; 64 MiB is safe
VOLUME_LABEL = "UEFI-HV"

BOOT_PATH = "EFI/BOOT/BOOTX64.EFI"
CHAIN_DIR = "EFI/UEFI-HV"
CHAIN_IMAGE = CHAIN_DIR + "/NEXT.EFI"
CHAIN_INITRD = CHAIN_DIR + "/INITRD"
CHAIN_TXT = CHAIN_DIR + "/CHAIN.TXT"

TOOLS = {"sfdisk": "fdisk", "mformat": "mtools", "mmd": "mtools", "mcopy": "mtools"}


def esp_path(dest: str) -> str:
    """`EFI/UEFI-HV/NEXT.EFI` -> `\\EFI\\UEFI-HV\\NEXT.EFI`, as the firmware names it."""
    return "\\" + dest.replace("/", "\\")


# --- building --------------------------------------------------------------------

def make_image(efi: Path, output: Path, add: Iterable[tuple[Path, str]] = (),
               chain: Optional[Path] = None, cmdline: str = "",
               initrd: Optional[Path] = None, size_mib: int = 0) -> Path:
    """Write the disk image `output` booting `efi`; returns `output`.

    add: (source file, destination path on the ESP) pairs.
    chain/cmdline/initrd: the image the hypervisor starts next (CHAIN.TXT).
    size_mib: the whole image's size; 0 picks one that fits the files.
    """
    for program, package in TOOLS.items():
        require_program(program, package)
    if not cmdline.isascii():
        raise UsageError("error: --cmdline must be ASCII (CHAIN.TXT is read by firmware code)")
    if (cmdline or initrd) and not chain:
        raise UsageError("error: --cmdline and --initrd describe the chained image: "
                         "give --chain PATH too")

    files: dict[str, Path] = {}          # ESP path -> host file, in insertion order

    def put(src: Path, dest: str) -> None:
        src = Path(src)
        if not src.is_file():
            raise UsageError(f"error: {src} does not exist or is not a file")
        dest = _clean_dest(dest, src)
        if dest.upper() in (d.upper() for d in files):   # FAT names ignore case
            raise UsageError(f"error: two files would land on the ESP at {dest}")
        files[dest] = src

    put(efi, BOOT_PATH)
    with tempfile.TemporaryDirectory(prefix="uefi-hv-image-") as tmp:
        if chain:
            put(chain, CHAIN_IMAGE)
            options = cmdline
            if initrd:
                put(initrd, CHAIN_INITRD)
                options = (options + " " if options else "") + "initrd=" + esp_path(CHAIN_INITRD)
            chain_txt = Path(tmp) / "CHAIN.TXT"
            chain_txt.write_text(esp_path(CHAIN_IMAGE) + "\n" + options + "\n", encoding="ascii")
            files[CHAIN_TXT] = chain_txt
        for src, dest in add:
            put(src, dest)
        _write_image(files, Path(output), size_mib)
    return Path(output)


def _clean_dest(dest: str, src: Path) -> str:
    """A destination on the ESP as a relative POSIX path; a trailing '/' means
    'into this directory, under the source's name'."""
    dest = dest.replace("\\", "/")
    if dest.endswith("/") or not dest.strip("/"):
        dest = dest + src.name
    path = PurePosixPath(dest.lstrip("/"))
    if any(part in ("", ".", "..") for part in path.parts):
        raise UsageError(f"error: bad destination on the ESP: '{dest}'")
    return str(path)


def _write_image(files: dict[str, Path], output: Path, size_mib: int) -> None:
    payload = sum(src.stat().st_size for src in files.values())
    # FAT32 with 512-byte clusters: two FATs of 4 bytes per cluster take 1.6%;
    # 4 MiB more cover directories and rounding, 2 MiB the GPT and alignment.
    needed_mib = math.ceil(payload * 1.02 / MIB) + 4 + 2
    smallest = max(MIN_SIZE_MIB, needed_mib)
    if size_mib and size_mib < smallest:
        raise UsageError(f"error: --size-mib {size_mib} is too small: these files need "
                         f"{smallest} MiB (FAT32 itself needs {MIN_SIZE_MIB})")
    total_sectors = (size_mib or smallest) * MIB // SECTOR
    esp_sectors = (total_sectors - GPT_TAIL_SECTORS - ESP_START_LBA) // 2048 * 2048

    # GUIDs and the volume serial derive from the contents: the same files
    # give the same disk identity, different sticks get different ones.
    digest = hashlib.sha256()
    for dest, src in files.items():
        digest.update(dest.encode() + b"\0")
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(MIB), b""):
                digest.update(chunk)
    seed = digest.digest()
    disk_guid = uuid.UUID(bytes=seed[:16], version=4)
    part_guid = uuid.UUID(bytes=seed[16:32], version=4)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = output.with_name(output.name + ".tmp")
    tmp_out.unlink(missing_ok=True)
    with open(tmp_out, "wb") as f:
        f.truncate(total_sectors * SECTOR)
    try:
        layout = (f"label: gpt\nlabel-id: {disk_guid}\nunit: sectors\n"
                  f"start={ESP_START_LBA}, size={esp_sectors}, type={ESP_TYPE_GUID}, "
                  f"uuid={part_guid}, name=\"EFI System Partition\"\n")
        _tool(["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", str(tmp_out)], layout)
        fat = f"{tmp_out}@@{ESP_START_LBA * SECTOR}"
        _tool(["mformat", "-i", fat, "-F", "-T", str(esp_sectors), "-H", str(ESP_START_LBA),
               "-v", VOLUME_LABEL, "-N", seed[:4].hex(), "::"])
        made: set[str] = set()
        for dest, src in files.items():
            parents = list(PurePosixPath(dest).parents)[-2::-1]     # outermost first
            for parent in parents:
                key = str(parent).upper()
                if key not in made:
                    _tool(["mmd", "-i", fat, f"::/{parent}"])
                    made.add(key)
            _tool(["mcopy", "-i", fat, str(src), f"::/{dest}"])
    except BaseException:
        tmp_out.unlink(missing_ok=True)
        raise
    tmp_out.replace(output)


def _tool(cmd: list[str], stdin: Optional[str] = None) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
    proc = subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"error: {cmd[0]} failed while writing the image:\n"
                        f"{proc.stdout}{proc.stderr}".rstrip())


# --- CLI ------------------------------------------------------------------------

def _resolve_source(source: str, workdir: Path) -> Path:
    """An .efi file, a build directory holding BOOTX64.EFI, or a spec to build."""
    path = Path(source)
    if path.is_dir():
        efi = path / "BOOTX64.EFI"
        if not efi.is_file():
            raise UsageError(f"error: build directory {path} holds no BOOTX64.EFI")
        return efi
    if not path.is_file():
        raise UsageError(f"error: {path} does not exist (give an .efi file, a build "
                         "directory or a .hv spec)")
    if path.suffix == ".hv":
        return build_hypervisor(path, workdir)["BOOTX64.EFI"]
    return path


def cmd_image(args) -> int:
    add = []
    for item in args.add:
        src, sep, dest = item.partition(":")
        if not sep or not src or not dest:
            raise UsageError(f"error: --add wants SRC:DEST, got '{item}'")
        add.append((Path(src), dest))
    with tempfile.TemporaryDirectory(prefix="uefi-hv-build-") as tmp:
        efi = _resolve_source(args.source, Path(tmp))
        out = make_image(efi, Path(args.output), add=add,
                         chain=Path(args.chain) if args.chain else None,
                         cmdline=args.cmdline,
                         initrd=Path(args.initrd) if args.initrd else None,
                         size_mib=args.size_mib)
    print(f"wrote {out} ({out.stat().st_size // MIB} MiB, GPT + EFI System Partition)")
    return 0

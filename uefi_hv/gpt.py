"""gpt: read a disk image's GUID Partition Table and list its ESP's files.

The image step writes images, `uefi-hv run` boots them and `uefi-hv flash`
puts them on USB sticks; all three ask the same question first: is this a
disk the firmware will boot?  This module answers it by reading the GPT as
the UEFI specification lays it out (section 5.2.3 the protective MBR,
section 5.3 the header and the partition entry array, both CRC-checked),
finding the EFI System Partition, and listing its FAT file system with
mtools (no mounting, no root).

    info = inspect_image("build/hv.img")   # GPT + ESP, or ImageError
    info = check_bootable("build/hv.img")  # ... and EFI/BOOT/BOOTX64.EFI on it

Only the primary header is read: a backup-only disk is rare among images we
make, and refusing it with a clear message beats guessing.
"""

from __future__ import annotations

import struct
import subprocess
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from uefi_hv.errors import UsageError, UserError, require_program

#: The EFI System Partition's type GUID (UEFI spec 5.3.3, table "Defined GPT
#: Partition Entry - Partition Type GUIDs").
ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
#: Where removable media boot from on x64 (UEFI spec 3.5.1.1, "Removable
#: Media Boot Behavior").
DEFAULT_LOADER = "EFI/BOOT/BOOTX64.EFI"

_MAKE_ONE = "make one with 'uefi-hv image'"
_GPT_SIGNATURE = b"EFI PART"
_MBR_TYPE_PROTECTIVE = 0xEE
# UEFI spec table "GPT Header": signature, revision, header size, header
# CRC32, reserved, MyLBA, AlternateLBA, FirstUsableLBA, LastUsableLBA,
# DiskGUID, PartitionEntryLBA, NumberOfPartitionEntries,
# SizeOfPartitionEntry, PartitionEntryArrayCRC32: 92 bytes.
_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
# Table "GPT Partition Entry": type GUID, unique GUID, StartingLBA,
# EndingLBA (inclusive), Attributes, PartitionName (36 UTF-16LE units).
_ENTRY = struct.Struct("<16s16sQQQ72s")
_ZERO_GUID = bytes(16)


class ImageError(UserError):
    """The file is not a disk image the firmware can boot; says why."""


class ImageNotFound(ImageError, UsageError):
    """No such image file (a misused command: exit status 2)."""


@dataclass(frozen=True)
class Partition:
    index: int          # 1-based, as in /dev/sdb1 and the partition entry array
    type_guid: str      # upper-case canonical text, e.g. ESP_TYPE_GUID
    unique_guid: str
    first_lba: int
    last_lba: int       # inclusive, as in the GPT
    name: str

    @property
    def sectors(self) -> int:
        return self.last_lba - self.first_lba + 1


@dataclass
class ImageInfo:
    path: Path
    size: int                       # bytes
    disk_guid: str
    partitions: list[Partition]
    esp: Partition
    esp_files: list[str] = field(default_factory=list)   # "EFI/BOOT/BOOTX64.EFI", ...
    sector_size: int = 512

    @property
    def esp_offset(self) -> int:
        """Byte offset of the ESP's file system (for mtools' IMAGE@@OFFSET)."""
        return self.esp.first_lba * self.sector_size

    def find_file(self, path: str) -> str | None:
        """The ESP's spelling of `path`, compared as FAT does: ignoring case."""
        wanted = path.strip("/").casefold()
        return next((f for f in self.esp_files if f.casefold() == wanted), None)

    def has_file(self, path: str) -> bool:
        return self.find_file(path) is not None


def inspect_image(path: str | Path) -> ImageInfo:
    """Parse `path` as a GPT disk with an EFI System Partition and list the
    ESP's files; raise ImageError naming what is wrong otherwise."""
    path = Path(path)
    if not path.exists():
        raise ImageNotFound(f"error: {path}: no such image; {_MAKE_ONE}")
    if not path.is_file():
        raise ImageError(f"error: {path}: not a regular file; give a disk image, {_MAKE_ONE}")
    size = path.stat().st_size
    with path.open("rb") as f:
        mbr = f.read(512)
        _check_protective_mbr(path, mbr)
        sector_size, header = _find_header(path, f)
        disk_guid, partitions = _read_partition_table(path, f, size, sector_size, header)

    esp = next((p for p in partitions if p.type_guid == ESP_TYPE_GUID), None)
    if esp is None:
        found = ", ".join(f"{p.index}: {p.type_guid}" for p in partitions) or "none"
        raise ImageError(
            f"error: {path}: no EFI System Partition (type {ESP_TYPE_GUID}) in the GPT "
            f"(partitions: {found}); the firmware boots only from an ESP: {_MAKE_ONE}")
    info = ImageInfo(path=path, size=size, disk_guid=disk_guid, partitions=partitions,
                     esp=esp, sector_size=sector_size)
    info.esp_files = list_fat_files(path, info.esp_offset, what=f"partition {esp.index} (the ESP)")
    return info


def check_bootable(path: str | Path, loader: str = DEFAULT_LOADER) -> ImageInfo:
    """inspect_image(), and require `loader` on the ESP: the file UEFI
    firmware starts from a removable disk."""
    info = inspect_image(path)
    if not info.has_file(loader):
        held = ", ".join(info.esp_files[:8]) or "no files"
        if len(info.esp_files) > 8:
            held += f", ... ({len(info.esp_files)} files)"
        raise ImageError(
            f"error: {info.path}: the EFI System Partition has no {loader} (it holds: {held}); "
            f"firmware boots a USB stick only from that path: {_MAKE_ONE}")
    return info


def list_fat_files(image: Path, offset: int, what: str = "the partition") -> list[str]:
    """Every file (not directory) of the FAT file system at byte `offset`
    of `image`, as paths relative to its root, sorted."""
    require_program("mdir", "mtools")      # reads the ESP's FAT file system
    # -/ recursive, -b bare ("::/EFI/BOOT/BOOTX64.EFI", directories end in
    # "/"), -a hidden files too.  IMAGE@@OFFSET is mtools' byte offset.
    proc = subprocess.run(["mdir", "-/", "-b", "-a", "-i", f"{image}@@{offset}", "::/"],
                          capture_output=True, text=True, errors="replace", timeout=60)
    if proc.returncode != 0:
        # An empty FAT file system lists nothing and fails with
        # 'File "::/" not found'; a partition that is not FAT fails with
        # "Cannot initialize '::'".
        if 'File "::/" not found' in proc.stderr and not proc.stdout.strip():
            return []
        detail = proc.stderr.strip().replace("\n", "; ") or f"mdir exit status {proc.returncode}"
        raise ImageError(
            f"error: {image}: {what} does not hold a readable FAT file system at byte "
            f"{offset} (mdir: {detail}); an ESP must be FAT: {_MAKE_ONE}")
    files = [line[len("::/"):] for line in proc.stdout.splitlines()
             if line.startswith("::/") and not line.endswith("/")]
    return sorted(files)


def _check_protective_mbr(path: Path, mbr: bytes) -> None:
    # UEFI spec 5.2.3: LBA 0 holds a protective MBR, one record of OS type
    # 0xEE covering the disk, so that MBR-only tools see the disk as in use.
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        raise ImageError(
            f"error: {path}: not a disk image (no MBR boot signature 0x55AA at byte 510); {_MAKE_ONE}")
    os_types = [mbr[446 + 16 * i + 4] for i in range(4)]
    if _MBR_TYPE_PROTECTIVE not in os_types:
        listed = ", ".join(f"0x{t:02X}" for t in os_types if t) or "none"
        raise ImageError(
            f"error: {path}: not a GPT disk (its MBR has no protective partition of type 0xEE, "
            f"only: {listed}); the firmware boots a USB stick from a GPT disk: {_MAKE_ONE}")


def _find_header(path: Path, f) -> tuple[int, tuple]:
    """The GPT header at LBA 1.  Images are made with 512-byte sectors (what
    USB sticks present); a 4Kn image would be refused here, by its header."""
    sector_size = 512
    f.seek(sector_size)
    raw = f.read(sector_size)
    if raw[:8] != _GPT_SIGNATURE:
        raise ImageError(f"error: {path}: not a GPT disk (no 'EFI PART' header at LBA 1); {_MAKE_ONE}")
    return sector_size, _check_header(path, raw, sector_size)


def _check_header(path: Path, raw: bytes, sector_size: int) -> tuple:
    if len(raw) < _HEADER.size:
        raise ImageError(f"error: {path}: the GPT header at LBA 1 is cut short; the image is truncated")
    header = _HEADER.unpack_from(raw)
    _sig, _rev, header_size, header_crc, _res, my_lba = header[:6]
    if not _HEADER.size <= header_size <= sector_size:
        raise ImageError(
            f"error: {path}: the GPT header size {header_size} is outside "
            f"{_HEADER.size}..{sector_size}; the GPT is corrupt: {_MAKE_ONE}")
    # UEFI spec 5.3.2: the CRC32 covers HeaderSize bytes with its own field zeroed.
    zeroed = raw[:16] + bytes(4) + raw[20:header_size]
    if zlib.crc32(zeroed) != header_crc:
        raise ImageError(
            f"error: {path}: the GPT header's CRC32 does not match (stored 0x{header_crc:08X}, "
            f"computed 0x{zlib.crc32(zeroed):08X}); the GPT is corrupt: {_MAKE_ONE}")
    if my_lba != 1:
        raise ImageError(f"error: {path}: the GPT header at LBA 1 says it is at LBA {my_lba}; "
                         f"the GPT is corrupt: {_MAKE_ONE}")
    return header


def _read_partition_table(path: Path, f, size: int, sector_size: int,
                          header: tuple) -> tuple[str, list[Partition]]:
    (_sig, _rev, _hsize, _hcrc, _res, _my, _alt, first_usable, last_usable,
     disk_guid, entry_lba, n_entries, entry_size, array_crc) = header
    # 5.3.2: SizeOfPartitionEntry is 128 x 2^n.
    if entry_size < _ENTRY.size or entry_size & (entry_size - 1):
        raise ImageError(f"error: {path}: GPT partition entry size {entry_size} is not 128 x 2^n; "
                         f"the GPT is corrupt: {_MAKE_ONE}")
    array_len = n_entries * entry_size
    f.seek(entry_lba * sector_size)
    array = f.read(array_len)
    if len(array) != array_len:
        raise ImageError(
            f"error: {path}: the GPT partition entry array (LBA {entry_lba}, {n_entries} entries) "
            f"runs past the end of the file ({size} bytes); the image is truncated: {_MAKE_ONE}")
    if zlib.crc32(array) != array_crc:
        raise ImageError(
            f"error: {path}: the GPT partition entry array's CRC32 does not match (stored "
            f"0x{array_crc:08X}, computed 0x{zlib.crc32(array):08X}); the GPT is corrupt: {_MAKE_ONE}")

    sectors = size // sector_size
    partitions = []
    for i in range(n_entries):
        type_raw, unique_raw, first, last, _attrs, name_raw = _ENTRY.unpack_from(array, i * entry_size)
        if type_raw == _ZERO_GUID:      # an unused entry
            continue
        index = i + 1
        if not first_usable <= first <= last <= last_usable:
            raise ImageError(
                f"error: {path}: GPT partition {index} (LBA {first}..{last}) lies outside the "
                f"usable LBAs {first_usable}..{last_usable}; the GPT is corrupt: {_MAKE_ONE}")
        if last >= sectors:
            raise ImageError(
                f"error: {path}: GPT partition {index} ends at LBA {last}, past the end of the "
                f"image ({sectors} sectors of {sector_size} bytes); the image is truncated: {_MAKE_ONE}")
        partitions.append(Partition(
            index=index,
            type_guid=_guid(type_raw),
            unique_guid=_guid(unique_raw),
            first_lba=first,
            last_lba=last,
            name=name_raw.decode("utf-16-le", errors="replace").split("\x00", 1)[0],
        ))
    return _guid(disk_guid), partitions


def _guid(raw: bytes) -> str:
    # EFI_GUID is stored mixed-endian: the first three fields little-endian,
    # the last eight bytes as they are: exactly uuid's bytes_le.
    return str(uuid.UUID(bytes_le=raw)).upper()

"""image: the disk image is checked by reading it back, not by trusting sfdisk
and mtools: the GPT with Python's struct, the FAT with mdir and mtype."""

from __future__ import annotations

import struct
import subprocess
import uuid
import zlib

import pytest

from uefi_hv.errors import UsageError
from uefi_hv.image import make_image

SECTOR = 512
ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")


def read_gpt(path) -> list[dict]:
    """The partitions of a GPT disk (UEFI spec 5.2.3 and 5.3), CRCs checked."""
    data = path.read_bytes()
    assert data[510:512] == b"\x55\xAA", "no MBR boot signature"
    assert data[446 + 4] == 0xEE, "the MBR's first partition is not a protective one"
    header = data[SECTOR:SECTOR + 92]
    (signature, _rev, size, crc, _, my_lba, alt_lba, first, last, _guid,
     entries_lba, count, entry_size, entries_crc) = struct.unpack("<8sIIIIQQQQ16sQIII", header)
    assert signature == b"EFI PART"
    assert my_lba == 1 and alt_lba == len(data) // SECTOR - 1
    assert zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:size]) == crc
    table = data[entries_lba * SECTOR:entries_lba * SECTOR + count * entry_size]
    assert zlib.crc32(table) == entries_crc
    parts = []
    for i in range(count):
        entry = table[i * entry_size:(i + 1) * entry_size]
        if entry[:16] == bytes(16):
            continue
        start, end = struct.unpack_from("<QQ", entry, 32)
        assert first <= start <= end <= last
        parts.append({"type": uuid.UUID(bytes_le=entry[:16]), "start": start, "end": end,
                      "name": entry[56:128].decode("utf-16-le").rstrip("\0")})
    return parts


def esp_offset(image) -> int:
    (esp,) = [p for p in read_gpt(image) if p["type"] == ESP_TYPE]
    return esp["start"] * SECTOR


def mtype(image, path: str) -> bytes:
    return subprocess.run(["mtype", "-i", f"{image}@@{esp_offset(image)}", f"::/{path}"],
                          check=True, capture_output=True).stdout


def mfiles(image) -> set[str]:
    out = subprocess.run(["mdir", "-i", f"{image}@@{esp_offset(image)}", "-/", "-b", "::/"],
                         check=True, capture_output=True, text=True).stdout
    return {line.strip()[3:] for line in out.splitlines() if not line.endswith("/")}


def test_the_image_is_a_gpt_disk_with_one_efi_system_partition(banner_image):
    (esp,) = read_gpt(banner_image)
    assert esp["type"] == ESP_TYPE
    assert esp["start"] * SECTOR % (1 << 20) == 0, "the ESP is not 1 MiB aligned"
    boot_sector = banner_image.read_bytes()[esp["start"] * SECTOR:][:SECTOR]
    assert boot_sector[0x52:0x5A] == b"FAT32   "


def test_the_esp_holds_the_application_at_the_removable_media_path(banner_image, banner_efi):
    assert mfiles(banner_image) == {"EFI/BOOT/BOOTX64.EFI"}
    assert mtype(banner_image, "EFI/BOOT/BOOTX64.EFI") == banner_efi.read_bytes()


def test_extra_files_and_a_chained_linux_kernel_land_where_the_hypervisor_looks(
        tmp_path, banner_efi):
    kernel, initrd, note = tmp_path / "vmlinuz", tmp_path / "initrd.img", tmp_path / "note.txt"
    kernel.write_bytes(b"MZ pretend kernel")
    initrd.write_bytes(b"\x1f\x8b pretend initrd")
    note.write_text("hello\n")
    image = make_image(banner_efi, tmp_path / "chain.img",
                       add=[(note, "docs/"), (banner_efi, "EFI/tools/hvcheck.efi")],
                       chain=kernel, cmdline="console=ttyS0 quiet", initrd=initrd)

    assert mfiles(image) == {"EFI/BOOT/BOOTX64.EFI", "EFI/UEFI-HV/NEXT.EFI",
                             "EFI/UEFI-HV/INITRD", "EFI/UEFI-HV/CHAIN.TXT",
                             "docs/note.txt", "EFI/tools/hvcheck.efi"}
    assert mtype(image, "EFI/UEFI-HV/NEXT.EFI") == kernel.read_bytes()
    assert mtype(image, "EFI/UEFI-HV/INITRD") == initrd.read_bytes()
    assert mtype(image, "EFI/UEFI-HV/CHAIN.TXT").decode().splitlines() == [
        "\\EFI\\UEFI-HV\\NEXT.EFI",
        "console=ttyS0 quiet initrd=\\EFI\\UEFI-HV\\INITRD",
    ]


def test_a_chained_image_without_options_has_an_empty_second_line(tmp_path, banner_efi):
    image = make_image(banner_efi, tmp_path / "chain.img", chain=banner_efi)
    assert mtype(image, "EFI/UEFI-HV/CHAIN.TXT") == b"\\EFI\\UEFI-HV\\NEXT.EFI\n\n"


def test_the_image_grows_to_fit_its_files(tmp_path, banner_efi):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(80 << 20))
    image = make_image(banner_efi, tmp_path / "big.img", add=[(big, "big.bin")])
    assert image.stat().st_size > 80 << 20
    assert "big.bin" in mfiles(image)


@pytest.mark.parametrize("kwargs, message", [
    ({"cmdline": "quiet"}, "give --chain"),
    ({"add": [("missing.bin", "x.bin")]}, "does not exist"),
    ({"add": [("SELF", "../escape.efi")]}, "bad destination"),
    ({"add": [("SELF", "efi/boot/bootx64.efi")]}, "two files"),
    ({"size_mib": 8}, "too small"),
    ({"chain": "SELF", "cmdline": "root=/dev/sd\u00e9"}, "ASCII"),
])
def test_bad_requests_are_refused_before_anything_is_written(tmp_path, banner_efi, kwargs, message):
    if kwargs.get("chain") == "SELF":
        kwargs["chain"] = banner_efi
    if "add" in kwargs:
        kwargs["add"] = [(banner_efi if src == "SELF" else tmp_path / src, dest)
                         for src, dest in kwargs["add"]]
    with pytest.raises(UsageError, match=message):
        make_image(banner_efi, tmp_path / "bad.img", **kwargs)
    assert not (tmp_path / "bad.img").exists()

"""gpt.inspect_image / check_bootable against images made with the real tools
(sfdisk for the GPT, mformat/mmd/mcopy for the ESP), and against those
images with the damage a user's disk can have."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uefi_hv.gpt import ESP_TYPE_GUID, ImageError, ImageNotFound, check_bootable, inspect_image

LINUX_TYPE_GUID = "0FC63DAF-8483-4772-8E47-7D69C6A6E3F3"
LOADER = {"EFI/BOOT/BOOTX64.EFI": b"MZ not really a PE image"}

pytestmark = pytest.mark.skipif(
    not (shutil.which("sfdisk") and shutil.which("mformat")),
    reason="needs sfdisk (fdisk) and mtools")


def make_gpt_image(path: Path, files: dict[str, bytes] | None = None, *, size_mib: int = 4,
                   esp_type: str = ESP_TYPE_GUID, format_esp: bool = True,
                   linux_first: bool = False) -> Path:
    """A GPT disk like 'uefi-hv image' makes: an ESP (1 MiB in, 2 MiB long)
    holding `files`; with linux_first, a Linux partition comes before it."""
    path.write_bytes(b"")
    subprocess.run(["truncate", "-s", f"{size_mib}M", path], check=True)
    esp = f'start=2048, size=4096, type={esp_type}, name="EFI system partition"'
    table = ["label: gpt"]
    if linux_first:
        table.append(f"start=6144, size=1024, type={LINUX_TYPE_GUID}, name=\"root\"")
    table.append(esp)
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(path)],
                   input="\n".join(table) + "\n", text=True, check=True)
    if format_esp:
        at = f"{path}@@{2048 * 512}"
        subprocess.run(["mformat", "-i", at, "-v", "ESP", "::"], check=True)
        for name, data in (LOADER if files is None else files).items():
            parent = ""
            for d in name.split("/")[:-1]:
                parent += "/" + d
                subprocess.run(["mmd", "-D", "s", "-i", at, "::" + parent],
                               capture_output=True)   # exists already: fine
            src = path.with_name(path.name + ".src")
            src.write_bytes(data)
            subprocess.run(["mcopy", "-i", at, str(src), "::/" + name], check=True)
            src.unlink()
    return path


def poke(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def flip(path: Path, offset: int) -> None:
    """Invert every bit of one byte: a change whatever the byte was (a random
    GUID's byte may already hold any value one would write)."""
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def test_the_partition_table_reads_as_sfdisk_reads_it(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img", linux_first=True)
    info = inspect_image(image)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert info.disk_guid == table["id"]
    assert info.size == 4 << 20 and info.sector_size == 512
    # sfdisk lists partitions in table order, we by entry index: both 1, 2.
    assert [(p.first_lba, p.sectors, p.type_guid, p.unique_guid, p.name) for p in info.partitions] \
        == [(p["start"], p["size"], p["type"], p["uuid"], p["name"]) for p in table["partitions"]]


def test_the_esp_is_found_by_its_type_not_its_place(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img", linux_first=True,
                           files={**LOADER, "startup.nsh": b"fs0:\n", "EFI/uefi-hv/hvcheck.efi": b"x"})
    info = check_bootable(image)
    assert info.esp.type_guid == ESP_TYPE_GUID
    assert info.esp.name == "EFI system partition"
    assert info.esp_offset == 2048 * 512
    assert info.esp_files == sorted(["EFI/BOOT/BOOTX64.EFI", "EFI/uefi-hv/hvcheck.efi", "startup.nsh"])


def test_esp_paths_compare_as_fat_does_ignoring_case(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img", files={"efi/boot/bootx64.efi": b"MZ"})
    info = check_bootable(image)
    assert info.find_file("EFI/BOOT/BOOTX64.EFI").casefold() == "efi/boot/bootx64.efi"
    assert info.has_file("/Efi/Boot/BootX64.efi")
    assert not info.has_file("EFI/BOOT/BOOTIA32.EFI")


def test_an_esp_without_the_removable_media_loader_is_not_bootable(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img", files={"EFI/uefi-hv/hv.efi": b"MZ"})
    assert inspect_image(image).esp_files == ["EFI/uefi-hv/hv.efi"]
    with pytest.raises(ImageError, match=r"has no EFI/BOOT/BOOTX64\.EFI \(it holds: EFI/uefi-hv/hv\.efi\)"
                                         r".*uefi-hv image"):
        check_bootable(image)


def test_an_empty_esp_holds_no_files(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img", files={})
    assert inspect_image(image).esp_files == []
    with pytest.raises(ImageError, match=r"it holds: no files"):
        check_bootable(image)


def test_a_missing_image_is_a_usage_error(tmp_path):
    with pytest.raises(ImageNotFound, match=r"no such image; make one with 'uefi-hv image'") as e:
        inspect_image(tmp_path / "nothing.img")
    assert e.value.exit_status == 2


def test_a_file_of_zeros_is_not_a_disk(tmp_path):
    image = tmp_path / "zeros.img"
    image.write_bytes(bytes(1 << 20))
    with pytest.raises(ImageError, match=r"not a disk image \(no MBR boot signature 0x55AA"):
        inspect_image(image)


def test_an_mbr_disk_is_not_a_gpt_disk(tmp_path):
    image = tmp_path / "mbr.img"
    subprocess.run(["truncate", "-s", "4M", image], check=True)
    subprocess.run(["sfdisk", "-q", str(image)], input="label: dos\nstart=2048, type=ef\n",
                   text=True, check=True)
    with pytest.raises(ImageError, match=r"not a GPT disk \(its MBR has no protective partition "
                                         r"of type 0xEE, only: 0xEF\)"):
        inspect_image(image)


def test_a_protective_mbr_without_a_gpt_header(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img")
    poke(image, 512, bytes(512))
    with pytest.raises(ImageError, match=r"not a GPT disk \(no 'EFI PART' header at LBA 1\); "
                                         r"make one with 'uefi-hv image'"):
        inspect_image(image)


def test_a_damaged_header_fails_its_crc(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img")
    flip(image, 512 + 56)                   # the disk GUID's first byte
    with pytest.raises(ImageError, match=r"GPT header's CRC32 does not match \(stored 0x[0-9A-F]{8}, "
                                         r"computed 0x[0-9A-F]{8}\); the GPT is corrupt"):
        inspect_image(image)


def test_a_damaged_partition_entry_fails_the_array_crc(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img")
    flip(image, 2 * 512 + 32)               # entry 1's StartingLBA
    with pytest.raises(ImageError, match=r"partition entry array's CRC32 does not match"):
        inspect_image(image)


def test_a_truncated_image_is_named_truncated(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img")
    with image.open("r+b") as f:
        f.truncate(2 << 20)                   # the ESP runs to 3 MiB
    with pytest.raises(ImageError, match=r"GPT partition 1 ends at LBA 6143, past the end of the "
                                         r"image \(4096 sectors of 512 bytes\); the image is truncated"):
        inspect_image(image)


def test_a_disk_without_an_esp(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img", esp_type=LINUX_TYPE_GUID, format_esp=False)
    with pytest.raises(ImageError, match=rf"no EFI System Partition \(type {ESP_TYPE_GUID}\) in the "
                                         rf"GPT \(partitions: 1: {LINUX_TYPE_GUID}\)"):
        inspect_image(image)


def test_an_esp_that_is_not_fat(tmp_path):
    image = make_gpt_image(tmp_path / "hv.img", format_esp=False)
    with pytest.raises(ImageError, match=r"partition 1 \(the ESP\) does not hold a readable FAT file "
                                         r"system at byte 1048576 \(mdir: .+\); an ESP must be FAT"):
        inspect_image(image)


@pytest.fixture(scope="module")
def pristine_image(tmp_path_factory):
    return make_gpt_image(tmp_path_factory.mktemp("gpt") / "pristine.img").read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 34 * 512 - 1), value=st.integers(0, 255))
def test_any_damaged_byte_of_the_gpt_gives_an_image_or_a_clear_error(tmp_path, pristine_image, offset, value):
    """The MBR, the header and the entry array, one byte changed: either a
    byte nobody reads (the MBR's boot code, a reserved field) or ImageError,
    never another exception."""
    image = tmp_path / "damaged.img"
    data = bytearray(pristine_image)
    data[offset] = value
    image.write_bytes(data)
    try:
        info = inspect_image(image)
    except ImageError as e:
        assert str(e).startswith(f"error: {image}: ")
    else:
        assert info.has_file("EFI/BOOT/BOOTX64.EFI")

"""build: gcc + gnu-efi turn C and assembly into a PE32+ EFI application."""

from __future__ import annotations

import struct

import pytest

from uefi_hv.build import _zero_timestamp, build_efi, pe_checksum
from uefi_hv.errors import MissingTool, UserError
from uefi_hv.generate import generate_banner

IMAGE_FILE_MACHINE_AMD64 = 0x8664
PE32PLUS_MAGIC = 0x20B
EFI_APPLICATION = 10


def read_pe_header(data: bytes) -> dict:
    """The PE/COFF header fields, read straight from the bytes (PE/COFF spec:
    e_lfanew at 0x3C; COFF header; optional header with Subsystem at +68)."""
    assert data[:2] == b"MZ"
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    assert data[pe:pe + 4] == b"PE\0\0"
    machine, _sections, timestamp = struct.unpack_from("<HHI", data, pe + 4)
    opt = pe + 24
    return {"machine": machine, "timestamp": timestamp,
            "magic": struct.unpack_from("<H", data, opt)[0],
            "subsystem": struct.unpack_from("<H", data, opt + 68)[0]}


def test_banner_is_a_pe32plus_efi_application(banner_efi):
    header = read_pe_header(banner_efi.read_bytes())
    assert header["machine"] == IMAGE_FILE_MACHINE_AMD64
    assert header["magic"] == PE32PLUS_MAGIC
    assert header["subsystem"] == EFI_APPLICATION
    assert header["timestamp"] == 0


def test_same_sources_give_the_same_bytes_wherever_they_are(tmp_path):
    # Two copies of the sources in different directories: no path may leak.
    first = build_efi(generate_banner(tmp_path / "one" / "src"), tmp_path / "one" / "a.efi")
    second = build_efi(generate_banner(tmp_path / "elsewhere" / "deeper" / "src"),
                       tmp_path / "two" / "b.efi")
    assert first.read_bytes() == second.read_bytes()
    assert str(tmp_path).encode() not in first.read_bytes()


def test_assembly_sources_are_preprocessed_and_linked(tmp_path):
    (tmp_path / "answer.h").write_text("#define ANSWER 42\n")
    (tmp_path / "answer.S").write_text(
        '#include "answer.h"\n'
        "    .text\n    .globl answer\nanswer:\n    mov $ANSWER, %eax\n    ret\n"
        '    .section .note.GNU-stack,"",@progbits\n')
    (tmp_path / "main.c").write_text(
        "#include <efi.h>\n#include <efilib.h>\n"
        "int answer(void);\n"
        "EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)\n"
        "{\n    InitializeLib(image, systab);\n    Print(L\"%d\\n\", answer());\n"
        "    return EFI_SUCCESS;\n}\n")
    out = build_efi([tmp_path / "main.c", tmp_path / "answer.S"], tmp_path / "out" / "app.efi",
                    include_dirs=[tmp_path])
    assert read_pe_header(out.read_bytes())["subsystem"] == EFI_APPLICATION


def test_a_warning_fails_the_build_with_gccs_message(tmp_path):
    src = tmp_path / "warn.c"
    src.write_text("#include <efi.h>\n"
                   "EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)\n"
                   "{\n    int unused;\n    (void)image; (void)systab;\n    return 0;\n}\n")
    with pytest.raises(UserError, match=r"unused variable .unused."):
        build_efi([src], tmp_path / "warn.efi")
    assert not (tmp_path / "warn.efi").exists()


def test_missing_gcc_names_the_debian_package(tmp_path, monkeypatch, banner_efi):
    monkeypatch.setenv("PATH", str(tmp_path))       # a PATH without gcc
    src = banner_efi.parent / "src" / "banner.c"
    with pytest.raises(MissingTool, match="gcc") as caught:
        build_efi([src], tmp_path / "x.efi")
    assert caught.value.package == "gcc"
    assert "apt-get install gcc" in str(caught.value)


def test_a_stamped_timestamp_is_zeroed_and_the_checksum_fixed(banner_efi):
    original = banner_efi.read_bytes()
    pe = struct.unpack_from("<I", original, 0x3C)[0]
    checksum_at = pe + 24 + 64
    assert struct.unpack_from("<I", original, checksum_at)[0] == pe_checksum(original, checksum_at)

    # What an objcopy that ignores SOURCE_DATE_EPOCH would write.
    stamped = bytearray(original)
    struct.pack_into("<I", stamped, pe + 8, 0x65432100)
    struct.pack_into("<I", stamped, checksum_at, pe_checksum(stamped, checksum_at))
    assert bytes(stamped) != original
    _zero_timestamp(stamped)
    assert bytes(stamped) == original


def test_missing_gnu_efi_names_the_debian_package(tmp_path, monkeypatch, banner_efi):
    import uefi_hv.build as build

    monkeypatch.setattr(build, "GNU_EFI_CRT0", tmp_path / "crt0-efi-x86_64.o")
    with pytest.raises(MissingTool, match="crt0-efi-x86_64.o") as caught:
        build_efi([banner_efi.parent / "src" / "banner.c"], tmp_path / "x.efi")
    assert caught.value.package == "gnu-efi"

"""Shared fixtures: the banner application and its disk image, small EFI test
applications, and a run directory that a failing test names.

Session-scoped fixtures are built once per pytest-xdist worker, each in the
worker's own tmp_path_factory directory, so parallel workers share nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from uefi_hv.build import build_efi
from uefi_hv.generate import generate_banner
from uefi_hv.image import make_image

#: What the banner prints (templates/banner/banner.c.j2).
BANNER_RE = r"uefi-hv banner: vmx=(?P<vmx>[01]) vendor=(?P<vendor>\S+)"

#: Small EFI applications the emulator tests need: one that never ends and
#: one that triple-faults.  gnu-efi's crt0 calls efi_main with the System V ABI.
TEST_APPS = {
    "hang": r"""
#include <efi.h>
#include <efilib.h>

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)
{
    InitializeLib(image, systab);
    Print(L"uefi-hv test: hanging forever\n");
    for (;;)
        uefi_call_wrapper(BS->Stall, 1, 100000);
    return EFI_SUCCESS;
}
""",
    "triple_fault": r"""
#include <efi.h>
#include <efilib.h>

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)
{
    /* An empty IDT: INT3 faults (#GP), the #GP cannot be delivered (#DF),
     * and neither can the #DF: a triple fault (SDM 7.15 "Exception and Interrupt Reference", #DF). */
    struct { UINT16 limit; UINT64 base; } __attribute__((packed)) idtr = { 0, 0 };

    InitializeLib(image, systab);
    Print(L"uefi-hv test: triple fault next\n");
    __asm__ volatile("cli; lidt %0; int3" : : "m"(idtr));
    for (;;)
        ;
    return EFI_SUCCESS;
}
""",
}


@pytest.fixture(scope="session")
def banner_efi(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("banner")
    return build_efi(generate_banner(out / "src"), out / "BOOTX64.EFI")


@pytest.fixture(scope="session")
def banner_image(banner_efi, tmp_path_factory) -> Path:
    return make_image(banner_efi, tmp_path_factory.mktemp("banner-image") / "banner.img")


def _app_image(tmp_path_factory, name: str) -> Path:
    out = tmp_path_factory.mktemp(name)
    src = out / f"{name}.c"
    src.write_text(TEST_APPS[name])
    return make_image(build_efi([src], out / "BOOTX64.EFI"), out / f"{name}.img")


@pytest.fixture(scope="session")
def hang_image(tmp_path_factory) -> Path:
    """Boots an application that prints one line and then waits forever."""
    return _app_image(tmp_path_factory, "hang")


@pytest.fixture(scope="session")
def triple_fault_image(tmp_path_factory) -> Path:
    return _app_image(tmp_path_factory, "triple_fault")


@pytest.fixture(scope="session")
def no_esp_image(tmp_path_factory) -> Path:
    """A GPT disk whose only partition is a Linux file system, not an ESP."""
    image = tmp_path_factory.mktemp("no-esp") / "linux.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(image)],
                   input="label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
                   text=True, check=True)
    return image


@pytest.fixture
def run_dir(request, tmp_path) -> Path:
    """A directory for one emulator run; a failing test prints its path."""
    path = tmp_path / "run"
    request.node._uefi_hv_run_dirs = getattr(request.node, "_uefi_hv_run_dirs", []) + [path]
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    dirs = getattr(item, "_uefi_hv_run_dirs", [])
    if report.failed and dirs:
        report.sections.append(("uefi-hv run files", "\n".join(
            f"{d} (serial.txt, the emulator's log, screen.png)" for d in dirs)))


def process_gone(pid: int) -> bool:
    """True when no process `pid` exists (our runs reap what they start, so
    a zombie would count as left over too)."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture
def assert_no_leftovers():
    """Call with a BootResult (or PIDs): every process the run started is gone."""
    def check(result_or_pids):
        pids = getattr(result_or_pids, "pids", result_or_pids)
        assert pids, "the run recorded no processes"
        left = [pid for pid in pids if not process_gone(pid)]
        assert not left, f"emulator processes left running: {left}"
    return check

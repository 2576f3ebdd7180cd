"""Building what the OS tests boot: the hypervisor through the pipeline's API,
the images through the CLI, the way a user makes them.

    build_hypervisor_dir(outdir, spec) -> Path  uefi_hv.build.build_hypervisor
    build_nullchain(outdir) -> Path             the same chain, no hypervisor
                                                (nullchain.c): the baseline
    chained_image(hv_dir, next_image, output, cmdline="", initrd=None) -> Path
                                                `uefi-hv image DIR --chain ...`
    init_tsc(serial) -> int | None              /init's TSC (Bochs: proportional
                                                to its tick counter) for benchmarks
    assert_run_ok(result)                       fails with the reason and the
                                                console's last lines
    require_chain(serial)                       fails, naming what is missing,
                                                when the hypervisor did not
                                                start the chained image

Tests that need the hypervisor's chain support call require_chain(): a
hypervisor that cannot chain makes them fail with that reason, not skip.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

from uefi_hv import ROOT
from uefi_hv.build import build_hypervisor

from oskit.initramfs import DEFAULT_SPEC, OSKIT

#: What the hypervisor prints as it starts the chained image (runtime/hv/chain.c).
CHAIN_STARTED = "uefi-hv: starting \\EFI\\UEFI-HV\\NEXT.EFI"
#: What the null hypervisor prints as it does the same (nullchain.c).
NULLCHAIN_STARTED = "nullchain: no hypervisor; starting \\EFI\\UEFI-HV\\NEXT.EFI"


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "uefi_hv", *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"uefi-hv {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def build_hypervisor_dir(outdir: Path, spec: Path = DEFAULT_SPEC) -> Path:
    """The hypervisor of `spec`, built into `outdir` (BOOTX64.EFI in it)."""
    build_hypervisor(spec, outdir)
    return Path(outdir)


def build_nullchain(outdir: Path) -> Path:
    """A directory with BOOTX64.EFI = nullchain.c: an image built from it
    with chained_image() boots the chained image without any hypervisor."""
    from uefi_hv.build import build_efi

    build_efi([OSKIT / "nullchain.c"], Path(outdir) / "BOOTX64.EFI")
    return Path(outdir)


#: Where acpi_chained_image() puts the kernel on the ESP (acpitables.c starts it).
ACPI_KERNEL_ESP_PATH = "\\EFI\\UEFI-HV\\LINUX.EFI"


#: What acpitables.efi starts when the boot manager starts it (no path in
#: its load options): put the hypervisor there to boot acpitables first.
ACPITABLES_STARTS = "EFI/UEFI-HV/HV.EFI"


def build_acpitables(output: Path, fadt: bool = False, slp_typ: int = 0) -> Path:
    """acpitables.c -> an EFI program that installs an RSDP, XSDT and MADT
    (every CPU, the I/O APIC) and starts the image its load options name
    (with none, ACPITABLES_STARTS). `fadt`: the XSDT also lists a FADT
    (PM1a = Bochs's PIIX4 PM block) and a DSDT whose \\_S5 is
    {slp_typ, slp_typ, 0, 0}: boot it before the hypervisor, which reads
    them at start-up."""
    from uefi_hv.build import build_efi

    cflags = ["-DACPITABLES_FADT", f"-DACPITABLES_SLP_TYP={slp_typ}"] if fadt else []
    return build_efi([OSKIT / "acpitables.c"], Path(output), include_dirs=[OSKIT], extra_cflags=cflags)


def acpi_chained_image(hv_dir: Path, kernel: Path, output: Path, cmdline: str,
                       initrd: Optional[Path] = None) -> Path:
    """chained_image(), with acpitables.efi between the hypervisor and the
    kernel, so that the kernel finds ACPI tables listing every CPU."""
    acpitables = build_acpitables(Path(output).with_name("acpitables.efi"))
    args = ["image", str(hv_dir), "-o", str(output), "--chain", str(acpitables),
            "--cmdline", f"{ACPI_KERNEL_ESP_PATH} {cmdline}",
            "--add", f"{kernel}:{ACPI_KERNEL_ESP_PATH.replace(chr(92), '/')}"]
    if initrd is not None:
        args += ["--initrd", str(initrd)]
    _cli(*args)
    return Path(output)


def chained_image(hv_dir: Path, next_image: Path, output: Path, cmdline: str = "",
                  initrd: Optional[Path] = None) -> Path:
    """A USB image whose BOOTX64.EFI is the hypervisor in `hv_dir`, which
    then starts `next_image` with `cmdline` (and `initrd`); `hv_dir` may
    also be build_nullchain()'s, for the same boot without a hypervisor."""
    args = ["image", str(hv_dir), "-o", str(output), "--chain", str(next_image)]
    if cmdline:
        args += ["--cmdline", cmdline]
    if initrd is not None:
        args += ["--initrd", str(initrd)]
    _cli(*args)
    return Path(output)


def _last_lines(serial: str, n: int = 12) -> str:
    return "\n".join(serial.strip().splitlines()[-n:])


def assert_run_ok(result) -> None:
    """A BootResult that is not ok fails the test with its one-line reason
    and the console's last lines (not the whole log)."""
    if not result.ok:
        raise AssertionError(f"{result}\nlast console lines:\n{_last_lines(result.serial)}")


def require_chain(serial: str) -> None:
    """Fail with the reason when the hypervisor did not start the chained image."""
    if CHAIN_STARTED not in serial:
        tail = _last_lines(serial)
        raise AssertionError(
            "the hypervisor did not start the chained image (no line "
            f"'{CHAIN_STARTED}'): these tests need its chain support "
            "(CHAIN.TXT, runtime/hv/chain.c). Last console lines:\n" + tail)


_INIT_TSC = re.compile(r"^OSCHECK: TSC at /init: (\d+)$", re.M)


def init_tsc(serial: str) -> Optional[int]:
    """The TSC /init read as it started, from a run's console; None if absent.
    Under Bochs (clock: sync=none) time, and so the TSC, follows the
    instruction count: with and without the hypervisor, the ratio of two of
    these is the boot cost it adds."""
    found = _INIT_TSC.search(serial)
    return int(found.group(1)) if found else None

"""pytest fixtures of the OS tests; a test module imports the ones it uses.

Built once per pytest-xdist worker, in the worker's own temporary directory;
the Debian kernel is shared through .cache/linux/ (downloaded once, locked).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from oskit.harness import build_hypervisor_dir, build_nullchain
from oskit.initramfs import oscheck_initramfs
from oskit.kernel import debian_kernel
from oskit.osmodel import build_osmodel


@pytest.fixture(scope="session")
def hypervisor_dir(tmp_path_factory) -> Path:
    """The default spec's hypervisor: a directory with BOOTX64.EFI."""
    return build_hypervisor_dir(tmp_path_factory.mktemp("hv"))


@pytest.fixture(scope="session")
def nullchain_dir(tmp_path_factory) -> Path:
    """The chain without a hypervisor: a directory with BOOTX64.EFI."""
    return build_nullchain(tmp_path_factory.mktemp("nullchain"))


@pytest.fixture(scope="session")
def linux_kernel() -> Path:
    return debian_kernel()


@pytest.fixture(scope="session")
def initramfs(tmp_path_factory) -> Path:
    """/init = oscheck, built for the default spec's signature."""
    return oscheck_initramfs(tmp_path_factory.mktemp("initramfs"))


@pytest.fixture(scope="session")
def osmodel_efi(tmp_path_factory) -> Path:
    return build_osmodel(tmp_path_factory.mktemp("osmodel") / "osmodel.efi")


@pytest.fixture(scope="session")
def osmodel_x2apic_efi(tmp_path_factory) -> Path:
    """The OS model that starts the APs in x2APIC mode (ICR = MSR 0x830)."""
    return build_osmodel(tmp_path_factory.mktemp("osmodel-x2apic") / "osmodel.efi", x2apic=True)

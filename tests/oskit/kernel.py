"""The Debian kernel the OS tests boot, from the Debian package, cached.

    debian_kernel() -> Path to .cache/linux/<version>/vmlinuz

`linux-image-amd64` is a metapackage: it depends on the real, versioned
package (linux-image-6.1.0-NN-amd64) that holds /boot/vmlinuz-*. That one is
fetched with `apt-get download` (no installation, no root needed beyond
apt's cache) and only the kernel is taken out of it. Nothing is committed:
.cache/ is git-ignored, and a second run finds the kernel there.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from uefi_hv import ROOT
from uefi_hv.errors import MissingTool, UserError

CACHE = ROOT / ".cache" / "linux"
METAPACKAGE = "linux-image-amd64"


class KernelUnavailable(UserError):
    """The Debian kernel package could not be found or fetched: the
    environment lacks something (exit status 3, as MissingTool)."""

    exit_status = 3


def _apt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True,
                          env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def kernel_package() -> str:
    """The versioned package `linux-image-amd64` depends on, e.g.
    linux-image-6.1.0-57-amd64; runs `apt-get update` once if apt knows none."""
    for tool, package in (("apt-cache", "apt"), ("apt-get", "apt"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            raise MissingTool(f"the program '{tool}'", package)
    for attempt in range(2):
        proc = _apt("apt-cache", "depends", METAPACKAGE)
        found = re.search(r"Depends:\s*(linux-image-\S+-amd64)\b", proc.stdout)
        if found:
            return found.group(1)
        if attempt == 0:
            update = _apt("apt-get", "update")
            if update.returncode != 0:
                raise KernelUnavailable(
                    f"error: apt knows no {METAPACKAGE} and 'apt-get update' failed:\n"
                    f"{update.stderr.strip()}\n"
                    "       the OS tests need Debian's kernel package: check the network "
                    "and /etc/apt/sources.list, or run 'apt-get update' as root")
    raise KernelUnavailable(f"error: apt has no package {METAPACKAGE} (is this Debian with "
                            "the main archive in its sources?)")


def debian_kernel(cache: Path = CACHE) -> Path:
    """The kernel image (an EFI-stub bzImage) of Debian's current amd64
    kernel, downloaded and unpacked into `cache` on first use."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    # Parallel test workers may all ask at once: one downloads, the others wait.
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        package = kernel_package()
        target = cache / package / "vmlinuz"
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(prefix="uefi-hv-kernel-", dir=cache) as tmp:
            work = Path(tmp)
            proc = _apt("apt-get", "download", package, cwd=work)
            debs = list(work.glob(f"{package}_*.deb"))
            if proc.returncode != 0 or not debs:
                raise KernelUnavailable(
                    f"error: 'apt-get download {package}' failed:\n{proc.stderr.strip()}\n"
                    "       the OS tests need Debian's kernel package: check the network "
                    "and apt's sources")
            # Only /boot/vmlinuz-* is wanted: reading the data tar through
            # dpkg-deb and extracting one member skips the ~400 MB of modules
            # that `dpkg-deb -x` would write.
            tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])],
                                   stdout=subprocess.PIPE)
            untar = subprocess.run(["tar", "-x", "-C", str(work), "--wildcards",
                                    "./boot/vmlinuz-*"], stdin=tar.stdout,
                                   capture_output=True, text=True)
            tar.stdout.close()
            if tar.wait() != 0 or untar.returncode != 0:
                raise KernelUnavailable(f"error: cannot unpack /boot/vmlinuz-* from "
                                        f"{debs[0].name}: {untar.stderr.strip()}")
            kernels = list((work / "boot").glob("vmlinuz-*"))
            if len(kernels) != 1:
                raise KernelUnavailable(f"error: {debs[0].name} holds {len(kernels)} "
                                        "/boot/vmlinuz-* files, expected one")
            target.parent.mkdir(parents=True, exist_ok=True)
            (target.parent / "version").write_text(kernels[0].name[len("vmlinuz-"):] + "\n")
            kernels[0].replace(target)
        return target


def main() -> int:
    """`python -m oskit.kernel` (from tests/): fetch the kernel, print its path."""
    import sys

    try:
        print(debian_kernel())
    except UserError as e:
        print(e, file=sys.stderr)
        return e.exit_status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

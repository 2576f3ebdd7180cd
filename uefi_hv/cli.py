"""The `uefi-hv` command: a thin shell over the steps of the data flow.

Each subcommand's work lives in its step's module (`cmd_<name>(args) -> int`);
this file only declares the arguments and turns `UserError`s into one clear
message and an exit status (see errors.py), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from uefi_hv import DSL_DIR, __version__
from uefi_hv.errors import UserError

DEFAULT_SPEC = str(DSL_DIR / "default.hv")

# subcommand -> module that implements cmd_<subcommand>
HANDLERS = {
    "check": "uefi_hv.check",
    "fields": "uefi_hv.check",
    "explain": "uefi_hv.check",
    "generate": "uefi_hv.generate",
    "build": "uefi_hv.build",
    "image": "uefi_hv.image",
    "run": "uefi_hv.emulate",
    "flash": "uefi_hv.flash",
    "devices": "uefi_hv.flash",
    "bench": "uefi_hv.bench",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but misuse exits with status 2 and a hint, as errors.py says."""

    def error(self, message):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="uefi-hv", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"uefi-hv {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("check", help="parse and check a spec against the SDM's rules")
    s.add_argument("spec", nargs="?", default=DEFAULT_SPEC, help="spec file (default: dsl/default.hv)")

    s = sub.add_parser("fields", help="list the VMCS field catalogue")
    s.add_argument("--json", action="store_true", help="print the catalogue as JSON")

    s = sub.add_parser("explain", help="explain a check by its id")
    s.add_argument("check_id", metavar="CHECK-ID")

    s = sub.add_parser("generate", help="generate the hypervisor's C and assembly from a spec")
    s.add_argument("spec", nargs="?", default=DEFAULT_SPEC)
    s.add_argument("-o", "--output", required=True, help="output directory")
    s.add_argument("--no-check", action="store_true", help="skip the static checks (tests only)")

    s = sub.add_parser("build", help="generate and compile a spec to BOOTX64.EFI and hvcheck.efi")
    s.add_argument("spec", nargs="?", default=DEFAULT_SPEC)
    s.add_argument("-o", "--output", required=True, help="output directory")
    s.add_argument("--no-check", action="store_true", help="skip the static checks (tests only)")
    s.add_argument("--banner", action="store_true",
                   help="build the pipeline's banner application instead of a hypervisor")

    s = sub.add_parser("image", help="make a bootable GPT disk image (USB stick)")
    s.add_argument("source", help="an .efi file, a build directory holding BOOTX64.EFI, or a spec (.hv) to build")
    s.add_argument("-o", "--output", required=True, help="image file to write")
    s.add_argument("--add", action="append", default=[], metavar="SRC:DEST",
                   help="put SRC on the ESP at DEST (repeatable)")
    s.add_argument("--chain", metavar="PATH", help="an EFI image (or Linux kernel) the hypervisor starts next")
    s.add_argument("--cmdline", default="", help="load options for the chained image (Linux command line)")
    s.add_argument("--initrd", metavar="FILE", help="initrd for a chained Linux kernel")
    s.add_argument("--size-mib", type=int, default=0, help="image size (default: fits the files)")

    s = sub.add_parser("run", help="boot an image in an emulator and stream its console")
    s.add_argument("image")
    s.add_argument("--emulator", choices=["auto", "qemu", "bochs"], default="auto")
    s.add_argument("--cpus", type=int, default=1)
    s.add_argument("--timeout", type=float, default=120.0, help="seconds before the run is stopped")
    s.add_argument("--cpu-model", default=None,
                   help="CPU model: for Bochs any it knows (default tigerlake), for QEMU a -cpu "
                        "value (default EPYC under TCG, host with KVM)")
    s.add_argument("--bochs", default=None, metavar="project|system|PATH",
                   help="which Bochs: the project's 3.0 build (default), Debian's "
                        "package, or a binary (also $UEFI_HV_BOCHS)")
    s.add_argument("--expect", default=None, help="console line that marks success")
    s.add_argument("--run-dir", default=None, help="where the run's logs go (default runs/<time>)")

    s = sub.add_parser("flash", help="write an image to a USB stick, safely")
    s.add_argument("image")
    s.add_argument("--device", required=True, help="whole-disk block device, e.g. /dev/sdb")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.add_argument("--dry-run", action="store_true", help="do every check, write nothing")
    s.add_argument("--allow-large", action="store_true", help="allow a device larger than 256 GiB")
    s.add_argument("--to-file", action="store_true", help="the target is a regular file (for images)")

    sub.add_parser("devices", help="list removable USB block devices")

    s = sub.add_parser("bench", help="measure the tools, the hypervisor in Bochs and a Linux boot; "
                                     "write BENCHMARKS.md, benchmarks.json and charts")
    s.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="where the report goes (default: the repository's bench/)")
    s.add_argument("--quick", action="store_true",
                   help="the tools and hvcheck on one CPU only (seconds; the test suite's)")
    s.add_argument("--cpus", type=int, default=None, metavar="N",
                   help="CPUs of the hvcheck and interrupt-path boots (default 2, with --quick 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        module = importlib.import_module(HANDLERS[args.command])
        return int(getattr(module, "cmd_" + args.command)(args) or 0)
    except UserError as e:
        print(str(e), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("uefi-hv: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # A file the step could not read or write (an output directory under
        # a file, a full disk, no permission): the path and the reason, not a
        # traceback.
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

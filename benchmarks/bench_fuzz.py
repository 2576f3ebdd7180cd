#!/usr/bin/env python3
"""The exit-surface fuzzer at length (a benchmark, not a test): hvcheck with
`fuzz=N seed=S` under the default spec's hypervisor in Bochs 3, 2 CPUs, N
operations (VMCALL, CPUID, RDMSR/WRMSR, XSETBV, CR0/CR4 from ring 0; see
runtime/hvcheck/fuzz.c), then hvcheck's checks, which must pass.

Prints the outcome counts hvcheck reports and operations per second: in the
guest's time (its TSC; Bochs's follows the instruction count, so this is
the hypervisor's cost in emulated cycles) and in wall time (what Bochs
itself takes). The test suite runs 20000 with one seed
(tests/test_hypervisor_bochs.py); rerun a seed to reproduce a run.

Run: .venv/bin/python benchmarks/bench_fuzz.py [--operations N] [--seed S]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uefi_hv import DSL_DIR  # noqa: E402
from uefi_hv.build import build_hypervisor  # noqa: E402
from uefi_hv.emulate import boot  # noqa: E402
from uefi_hv.image import make_image  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=200000)
    parser.add_argument("--seed", default="0x5eed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        tmp = Path(tmp)
        efi = build_hypervisor(DSL_DIR / "default.hv", tmp / "hv")
        image = make_image(efi["BOOTX64.EFI"], tmp / "fuzz.img", chain=efi["hvcheck.efi"],
                           cmdline=f"fuzz={args.operations} seed={args.seed}")
        result = boot(image, emulator="bochs", cpus=2, timeout=1800, fail=["HVCHECK: FAIL"],
                      run_dir=tmp / "run")
        serial = result.serial
        if not (result.ok and "HVCHECK: PASS" in serial):
            print(f"bench_fuzz: the run failed: {result}", file=sys.stderr)
            return 1
    khz = re.search(r"\(TSC (\d+) kHz\)", serial)
    head = re.search(r"^hvcheck: fuzz: seed (\S+), (\d+) operations, (\d+) VM exits, (\d+) TSC ticks$",
                     serial, re.M)
    if not (khz and head):
        print("bench_fuzz: no fuzz report in the serial log", file=sys.stderr)
        return 1
    operations, exits, ticks = int(head.group(2)), int(head.group(3)), int(head.group(4))
    guest_seconds = ticks / (int(khz.group(1)) * 1000)
    print(f"fuzz: seed {head.group(1)}, {operations} operations, {exits} VM exits, Bochs 3, 2 CPUs")
    for line in re.findall(r"^hvcheck: fuzz: (ring \d: .*)$", serial, re.M):
        print(f"  {line}")
    print(f"  {operations / guest_seconds:,.0f} operations per second of guest time "
          f"({guest_seconds:.3f} s at {int(khz.group(1)) / 1000:.0f} MHz TSC)")
    print(f"  {operations / result.elapsed:,.0f} operations per second of wall time "
          f"(the whole boot: {result.elapsed:.1f} s)")
    print("  hvcheck after the fuzz: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())

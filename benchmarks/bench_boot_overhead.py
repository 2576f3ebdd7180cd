#!/usr/bin/env python3
"""The boot cost of the hypervisor (a benchmark, not a test): stage e of
`uefi-hv bench` alone (uefi_hv/bench.py measures, this prints its table).

Debian's kernel booted from the USB image to /init in Bochs, once chained by
uefi-hv and once by the same chain without a hypervisor
(tests/oskit/nullchain.c); with 2 CPUs the test kit's ACPI tables come
before the kernel, so that Linux starts its AP itself.

Bochs runs with `clock: sync=none`, so its time, and the TSC the guest reads,
follow the instruction count: the figures are emulated instructions from
power-on, repeatable, not real latency. Two figures per run:
  - the TSC that /init reads as it starts (tests/oskit/oscheck.c);
  - the Bochs log's tick counter on the last line it wrote (the tick is the
    instruction counter of Bochs; the run ends on /init's verdict).
Target (issue 14): the hypervisor adds under 0.5 %.

Run: .venv/bin/python benchmarks/bench_boot_overhead.py [--cpus 1|2]
(about 3 minutes for 1 CPU, the two boots one after the other)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uefi_hv.bench import LINUX_CPUS, Bench, missing_figures
from uefi_hv.bench_report import linux_section
from uefi_hv.build import build_hypervisor
from uefi_hv.emulate import new_run_dir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, choices=LINUX_CPUS, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="uefi-hv-bench-") as tmp:
        bench = Bench(new_run_dir("bench-boot-overhead"), Path(tmp))
        bench.efi = build_hypervisor(bench.spec, Path(tmp) / "hv")
        bench.linux_prepare()
        for hypervisor in (False, True):
            bench.linux_boot(args.cpus, hypervisor)
    print(linux_section(bench.results["linux"]))
    missing = missing_figures(bench.results)
    for line in missing:
        print(f"bench_boot_overhead: {line} (in {bench.outdir})", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

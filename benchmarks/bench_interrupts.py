#!/usr/bin/env python3
"""Figures for the seed's interrupt path (a benchmark, not a test): stage d
of `uefi-hv bench` alone (uefi_hv/bench.py measures, this prints its table).

dsl/examples/interrupts.hv is built twice: the dispatch takes the host IDT
base from the global host_idt_base (the default), or VMREADs HOST_IDTR_BASE
(generate_hypervisor(idt_base_from_vmcs=True), never the default), to show
what the global saves. hvcheck.efi sends itself IPIs (local APIC ICR, fixed
vector 0xF0, shorthand self) with interrupts on and reads the TSC from the
ICR write to its handler's first instruction; in between: the ICR store's
EPT-violation exit (the APIC page is read-only, the store is emulated), the
external-interrupt exit (acknowledged on exit), the call of the host IDT
handler, the injection at the next VM entry. A CPUID exit round trip comes
with it, for comparison.

In Bochs with `clock: sync=none` (templates/bochs/bochsrc.bxrc.j2) time, and
so the TSC, follows the instruction count: the figures are repeatable, and
they count emulated work, not the speed of a real CPU.

Run: .venv/bin/python benchmarks/bench_interrupts.py [--cpus N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uefi_hv.bench import INTERRUPT_VARIANTS, Bench, missing_figures
from uefi_hv.bench_report import interrupts_section
from uefi_hv.emulate import new_run_dir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-irq-") as tmp:
        bench = Bench(new_run_dir("bench-interrupts"), Path(tmp), cpus=args.cpus)
        for variant in INTERRUPT_VARIANTS:
            bench.interrupts(variant)
    print(interrupts_section(bench.results["interrupts"]))
    missing = missing_figures(bench.results)
    for line in missing:
        print(f"bench_interrupts: {line} (in {bench.outdir})", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Figures for the seed's interrupt path (a benchmark, not a test):

  - the guest-visible cost of one external-interrupt round trip: hvcheck.efi
    sends itself an IPI (local APIC ICR, fixed vector 0xF0, shorthand self)
    with interrupts on and reads the TSC from the ICR write to its handler's
    first instruction; in between: the ICR store's EPT-violation exit (the
    APIC page is read-only, the store is emulated), the external-interrupt
    exit (acknowledged on exit), the call of the host IDT handler, the
    injection at the next VM entry;
  - a CPUID exit round trip, for comparison;
  - both again with the build variant whose dispatch VMREADs HOST_IDTR_BASE
    instead of reading the global (generate_hypervisor(idt_base_from_vmcs=True),
    never the default), to show what the global saves.

In Bochs with `clock: sync=none` (templates/bochs/bochsrc.bxrc.j2) time, and
so the TSC, follows the instruction count: the figures are repeatable, and
they count emulated work, not the speed of a real CPU.

Run: .venv/bin/python benchmarks/bench_interrupts.py [--cpus N]
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
from uefi_hv.build import build_efi  # noqa: E402
from uefi_hv.emulate import boot  # noqa: E402
from uefi_hv.generate import generate_hypervisor  # noqa: E402
from uefi_hv.image import make_image  # noqa: E402

SPEC = DSL_DIR / "examples" / "interrupts.hv"
BENCH = re.compile(r"hvcheck: bench: cpu (\d+): self-IPI to handler (\d+) TSC \(min (\d+)\), "
                   r"CPUID exit (\d+) TSC \(min (\d+)\), over (\d+) each")


def measure(workdir: Path, cpus: int, idt_base_from_vmcs: bool) -> list[dict]:
    built = generate_hypervisor(str(SPEC), workdir / "src", idt_base_from_vmcs=idt_base_from_vmcs)
    efi = {name: build_efi([p for p in files if p.suffix in (".c", ".S")], workdir / name,
                           include_dirs=sorted({p.parent for p in files}))
           for name, files in built.items()}
    image = make_image(efi["BOOTX64.EFI"], workdir / "hv.img", chain=efi["hvcheck.efi"])
    result = boot(image, emulator="bochs", cpus=cpus, timeout=120, fail=["HVCHECK: FAIL"],
                  run_dir=workdir / "run")
    if "HVCHECK: PASS" not in result.serial:
        raise SystemExit(f"bench_interrupts: hvcheck did not pass: {result}")
    rows = [{"cpu": int(m[1]), "ipi": int(m[2]), "ipi_min": int(m[3]), "cpuid": int(m[4]),
             "cpuid_min": int(m[5]), "n": int(m[6])} for m in BENCH.finditer(result.serial)]
    if not rows:
        raise SystemExit(f"bench_interrupts: no figures in the console: {result}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-irq-") as tmp:
        figures = {variant: measure(Path(tmp) / variant, args.cpus, variant == "vmread")
                   for variant in ("global", "vmread")}
    print(f"Interrupt round trips from {SPEC.relative_to(ROOT)} in Bochs, {args.cpus} CPU(s).")
    print("TSC deltas with `clock: sync=none`: instruction-driven and repeatable; they count")
    print("emulated instructions, not a real CPU's cycles. Mean (min) over N per CPU.")
    print()
    print(f"{'IDT base from':<34} {'cpu':>3} {'N':>3} {'self-IPI -> handler':>22} {'CPUID exit':>16}")
    for variant, label in (("global", "the global host_idt_base (default)"),
                           ("vmread", "VMREAD HOST_IDTR_BASE (variant)")):
        for r in figures[variant]:
            print(f"{label:<34} {r['cpu']:>3} {r['n']:>3} {r['ipi']:>14} ({r['ipi_min']:>5}) "
                  f"{r['cpuid']:>8} ({r['cpuid_min']:>4})")
    g, v = figures["global"][0], figures["vmread"][0]
    print()
    print(f"cpu 0: the global saves {v['ipi'] - g['ipi']} TSC per interrupt round trip "
          f"({v['ipi']} -> {g['ipi']}); a CPUID exit round trip costs {g['cpuid']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

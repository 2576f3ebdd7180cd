#!/usr/bin/env python3
"""Figures for the generated hypervisor (a benchmark, not a test):

  - generate time: spec -> C and assembly, into a clean directory;
  - build time: generate + compile + link both programs from a clean directory;
  - size of BOOTX64.EFI (target: under 96 KiB) and hvcheck.efi;
  - resident memory: per CPU, shared, and the resident code copy; with
    --boot, also the figure the hypervisor itself prints in Bochs.

Targets (from the issue): BOOTX64.EFI < 96 KiB, generate < 0.5 s,
full build < 10 s on 2 cores. Run: .venv/bin/python benchmarks/bench_build.py [SPEC] [--boot]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uefi_hv import DSL_DIR  # noqa: E402
from uefi_hv.build import build_hypervisor  # noqa: E402
from uefi_hv.generate import generate_hypervisor  # noqa: E402

PAGE = 4096


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def resident_per_cpu(hv_h: str) -> int:
    """Pages each CPU allocates (host_env.c): struct hv_cpu, GDT+TSS page,
    host stack, VMXON region, VMCS."""
    stack = int(re.search(r"#define HV_HOST_STACK_SIZE (0x[0-9A-Fa-f]+|\d+)", hv_h).group(1), 0)
    return (1 + 1 + stack // PAGE + 1 + 1) * PAGE


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", default=str(DSL_DIR / "default.hv"))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--boot", action="store_true", help="also boot in Bochs and read the printed figure")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="uefi-hv-bench-") as tmp:
        tmp = Path(tmp)
        counter = iter(range(10**6))
        gen_s, _ = timed(lambda: generate_hypervisor(args.spec, tmp / f"gen{next(counter)}", check=True),
                         args.repeat)
        build_s, efi = timed(lambda: build_hypervisor(args.spec, tmp / f"build{next(counter)}"),
                             max(1, args.repeat // 2))
        hv_size = efi["BOOTX64.EFI"].stat().st_size
        check_size = efi["hvcheck.efi"].stat().st_size
        hv_h = (efi["BOOTX64.EFI"].parent / "src" / "hv" / "hv.h").read_text()
        per_cpu = resident_per_cpu(hv_h)
        import subprocess
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "uefi_hv", "generate", args.spec, "-o", str(tmp / "cold")],
                       check=True, capture_output=True, cwd=ROOT)
        cold_s = time.perf_counter() - start
        print(f"spec:                      {args.spec}")
        print(f"uefi-hv generate (a fresh process, clean dir): {cold_s * 1000:.0f} ms")
        print(f"generate (clean dir, warm): {gen_s * 1000:7.1f} ms   (target < 500 ms)")
        print(f"generate + build (clean):  {build_s:8.2f} s    (target < 10 s on 2 cores)")
        print(f"BOOTX64.EFI:               {hv_size / 1024:8.1f} KiB  (target < 96 KiB)")
        print(f"hvcheck.efi:               {check_size / 1024:8.1f} KiB")
        stack_kib = int(re.search(r'HV_HOST_STACK_SIZE (0x[0-9A-Fa-f]+)', hv_h).group(1), 16) // 1024
        print(f"resident per CPU:          {per_cpu // 1024:8d} KiB  (hv_cpu, GDT+TSS, "
              f"{stack_kib} KiB stack, VMXON, VMCS)")
        print(f"resident code copy:        {hv_size / 1024:8.1f} KiB  (the image, once; shared tables printed at boot)")
        if args.boot:
            from uefi_hv.emulate import boot
            from uefi_hv.image import make_image
            image = make_image(efi["BOOTX64.EFI"], tmp / "hv.img", chain=efi["hvcheck.efi"])
            result = boot(image, emulator="bochs", cpus=2, timeout=90, run_dir=tmp / "run")
            m = re.search(r"resident memory .*", result.serial)
            print(f"printed in Bochs (2 CPUs): {m.group(0) if m else '(not seen: ' + str(result) + ')'}")
            print(f"Bochs wall time:           {result.elapsed:8.1f} s (instruction counts, not latency)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

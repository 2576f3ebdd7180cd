#!/usr/bin/env python3
"""Bochs 2.7 against the project's Bochs 3.0 (a benchmark, not a test):

  - the wall time of `make run`'s boot: the default spec's hypervisor with
    hvcheck.efi chained, 2 CPUs, to HVCHECK: PASS and the power-off;
  - with --suite, the wall time of the Bochs part of `make test`
    (`pytest -m bochs -n 2`), the tests both versions can run (the models
    Bochs 2.7 lacks, sapphire_rapids and arrow_lake, left out of both).

"2.7" is Debian 12's package (`--bochs system`); on Debian 13 the system's
Bochs is 3.0 too, and the figures say so. Bochs's times are wall time of an
emulator that runs one instruction stream per CPU in one thread: they say how
long a developer and CI wait, not how fast the hypervisor is.

Run: .venv/bin/python benchmarks/bench_bochs.py [--repeat N] [--suite]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uefi_hv import DSL_DIR  # noqa: E402
from uefi_hv.bench import hvcheck_image  # noqa: E402
from uefi_hv.build import build_hypervisor  # noqa: E402
from uefi_hv.emulate import boot, find_bochs  # noqa: E402
from uefi_hv.errors import UserError  # noqa: E402

#: The tests both Bochs versions can run: not the models 2.7 lacks, not Linux
#: on tigerlake (it needs the MSR file only the project's build takes).
COMMON_TESTS = ("not sapphire and not arrow_lake and not the_projects_bochs "
                "and not (linux and tigerlake)")


def make_run_image(tmp: Path) -> Path:
    """What `make run` boots: the default spec's hypervisor, hvcheck chained."""
    return hvcheck_image(build_hypervisor(DSL_DIR / "default.hv", tmp / "hv"), tmp / "hv.img")


def boot_times(image: Path, bochs: str, repeat: int, tmp: Path) -> list[float]:
    times = []
    for n in range(repeat):
        result = boot(image, emulator="bochs", bochs=bochs, cpus=2, timeout=180,
                      fail=["HVCHECK: FAIL"], run_dir=tmp / f"run-{bochs}-{n}")
        if not (result.ok and "HVCHECK: PASS" in result.serial):
            raise SystemExit(f"bench_bochs: {bochs}: {result}")
        times.append(result.elapsed)
    return times


def suite_time(bochs: str) -> tuple[float, str]:
    start = time.monotonic()
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-m", "bochs",
                          "-k", COMMON_TESTS, "-n", "2", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=dict(os.environ, UEFI_HV_BOCHS=bochs),
                         capture_output=True, text=True)
    elapsed = time.monotonic() - start
    summary = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
    return elapsed, summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="boots per Bochs (median reported)")
    p.add_argument("--suite", action="store_true",
                   help="also time the Bochs part of the test suite on each (minutes)")
    args = p.parse_args()

    try:
        versions = {choice: find_bochs(choice) for choice in ("system", "project")}
    except UserError as e:
        print(e, file=sys.stderr)
        return 3
    for choice, bochs in versions.items():
        print(f"{choice:8}: {bochs}")

    with tempfile.TemporaryDirectory(prefix="uefi-hv-bench-bochs-") as tmp:
        image = make_run_image(Path(tmp))
        print(f"\n`make run`'s boot (2 CPUs, to HVCHECK: PASS), median of {args.repeat}:")
        for choice, bochs in versions.items():
            times = boot_times(image, choice, args.repeat, Path(tmp))
            print(f"  Bochs {bochs.version:4} ({choice}): {statistics.median(times):6.1f} s "
                  f"(runs: {', '.join(f'{t:.1f}' for t in times)})", flush=True)

    if args.suite:
        print("\nthe Bochs part of `make test` (pytest -m bochs -n 2, the tests both can run):")
        for choice, bochs in versions.items():
            elapsed, summary = suite_time(choice)
            print(f"  Bochs {bochs.version:4} ({choice}): {elapsed:6.1f} s  [{summary}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

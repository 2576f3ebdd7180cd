"""How long parsing and checking a spec takes. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_check.py [SPEC]

Targets (issue 3): parse + check of dsl/default.hv with the whole catalogue
under 100 ms in a warm process (median of 20), and the first `uefi-hv check`
of a cold process under 400 ms.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def warm(spec: str, runs: int = 20) -> list[float]:
    from uefi_hv.check import check_spec
    from uefi_hv.parse import load_spec

    check_spec(load_spec(spec))              # grammar and imports loaded once per process
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        check_spec(load_spec(spec))
        times.append(time.perf_counter() - t)
    return times


def cold(spec: str, env: dict, runs: int = 5) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "uefi_hv", "check", spec], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            sys.exit(f"uefi-hv check failed:\n{r.stderr}")
    return times


def ms(xs: list[float]) -> str:
    return (f"median {statistics.median(xs) * 1000:6.1f} ms   min {min(xs) * 1000:6.1f}   "
            f"max {max(xs) * 1000:6.1f}   (n={len(xs)})")


def main() -> None:
    spec = sys.argv[1] if len(sys.argv) > 1 else "dsl/default.hv"
    spec = str((ROOT / spec) if not os.path.isabs(spec) else spec)
    print(f"spec: {os.path.relpath(spec, ROOT)}")
    print(f"warm process, parse + check:            {ms(warm(spec))}   target < 100 ms")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, XDG_CACHE_HOME=cache)
        first = cold(spec, env, runs=1)
        print(f"cold process, empty grammar cache:      {ms(first)}")
        print(f"cold process, grammar cache filled:     {ms(cold(spec, env))}   target < 400 ms")
    # Nowhere to write (a read-only home): XDG_CACHE_HOME below a non-directory.
    env_ro = dict(os.environ, XDG_CACHE_HOME="/dev/null/cache")
    print(f"cold process, no writable cache:        {ms(cold(spec, env_ro, runs=3))}")


if __name__ == "__main__":
    main()

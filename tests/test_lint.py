"""The Python reads clean: ruff, with the rules in pyproject.toml, finds
nothing in the package, the tests or the benchmarks."""

from __future__ import annotations

import subprocess
import sys

from uefi_hv import ROOT


def test_ruff_finds_nothing():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                          "uefi_hv", "tests", "benchmarks"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

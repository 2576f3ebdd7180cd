"""The sources read clean: ruff, with the rules in pyproject.toml, finds
nothing in the Python, mypy (configured there too) finds no type error in
uefi_hv, and the runtime's C is as .clang-format lays it out
(clang-format pinned in pyproject.toml, so Debian 12 and 13 agree)."""

from __future__ import annotations

import subprocess
import sys

from pathlib import Path

from uefi_hv import RUNTIME_DIR, ROOT


def test_ruff_finds_nothing():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                          "uefi_hv", "tests", "benchmarks"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_finds_no_type_error():
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_runtime_c_is_clang_formatted():
    clang_format = Path(sys.executable).parent / "clang-format"
    sources = sorted(p for p in RUNTIME_DIR.rglob("*") if p.suffix in (".c", ".h") and p.name != "asm.h")
    assert len(sources) > 10
    run = subprocess.run([str(clang_format), "--dry-run", "--Werror", *map(str, sources)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:] + \
        "\nformat them: .venv/bin/clang-format -i runtime/*/*.[ch] (asm.h is assembly)"

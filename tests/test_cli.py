"""The `uefi-hv` command as a person uses it: build, image, run; one clear
line and a non-zero status for bad input, never a traceback, and no emulator
left running whatever happens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uefi_hv import DSL_DIR
from uefi_hv.gpt import inspect_image
from uefi_hv.emulate import kvm_vmx_usable


def uefi_hv(*args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uefi_hv", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that name `text` (a run's directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and proc.name != str(os.getpid()):
            found.append(f"{proc.name}: {cmdline}")
    return found


def assert_clean_error(result, status: int, *words: str) -> None:
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


@pytest.mark.bochs
def test_build_image_run_the_banner_in_bochs(tmp_path, run_dir):
    built = uefi_hv("build", "--banner", "-o", tmp_path / "banner")
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "banner" / "BOOTX64.EFI").is_file()

    imaged = uefi_hv("image", tmp_path / "banner", "-o", tmp_path / "banner.img")
    assert imaged.returncode == 0, imaged.stderr

    # A relative --run-dir is relative to where the command runs.
    run = uefi_hv("run", tmp_path / "banner.img", "--emulator", "bochs", "--timeout", 60,
                  "--run-dir", run_dir.relative_to(tmp_path), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "uefi-hv banner: vmx=1 vendor=GenuineIntel" in run.stdout     # streamed console
    assert "clean power-off" in run.stdout
    assert (run_dir / "serial.txt").is_file()
    assert processes_mentioning(str(run_dir)) == []


@pytest.mark.qemu
def test_run_with_expect_exits_zero_when_the_line_appears(banner_image, run_dir):
    run = uefi_hv("run", banner_image, "--emulator", "qemu", "--expect", r"vmx=[01]",
                  "--run-dir", run_dir)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "marker 'vmx=[01]' seen" in run.stdout


@pytest.mark.bochs
@pytest.mark.qemu
def test_auto_is_qemu_only_when_kvm_runs_vmx(banner_image, run_dir):
    run = uefi_hv("run", banner_image, "--timeout", 120, "--run-dir", run_dir)
    assert run.returncode == 0, run.stdout + run.stderr
    chosen = "qemu" if kvm_vmx_usable() else "bochs"
    assert f"uefi-hv: {chosen} run ok" in run.stdout


@pytest.mark.qemu
def test_a_timeout_exits_one_and_leaves_no_emulator(hang_image, run_dir):
    run = uefi_hv("run", hang_image, "--emulator", "qemu", "--expect", "NEVER PRINTED",
                  "--timeout", 8, "--run-dir", run_dir)
    assert run.returncode == 1
    assert "timeout after 8 s without 'NEVER PRINTED'" in run.stdout
    assert processes_mentioning(str(run_dir)) == []


@pytest.mark.bochs
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 130),
                                         (signal.SIGKILL, -signal.SIGKILL)])
def test_stopping_the_command_stops_its_emulator(hang_image, run_dir, sig, status):
    # SIGKILL leaves no chance to clean up: the emulator dies with its parent.
    cli = subprocess.Popen([sys.executable, "-m", "uefi_hv", "run", str(hang_image),
                            "--emulator", "bochs", "--timeout", "120", "--run-dir", str(run_dir)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "hanging forever" not in _read(run_dir / "serial.txt"):
            assert time.monotonic() < deadline and cli.poll() is None, "the run never got going"
            time.sleep(0.2)
        assert processes_mentioning(str(run_dir))          # Bochs is running
        cli.send_signal(sig)
        _, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == status
    if sig != signal.SIGKILL:
        assert "interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + 10       # the kernel's SIGKILL is not instant
    while processes_mentioning(str(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(run_dir)) == []


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def test_a_missing_image_is_a_usage_error(tmp_path):
    assert_clean_error(uefi_hv("run", tmp_path / "nope.img"), 2, "no such image")


def test_an_image_without_an_esp_is_refused(no_esp_image):
    assert_clean_error(uefi_hv("run", no_esp_image, "--emulator", "qemu"), 1,
                       "no EFI System Partition")


def test_a_bochs_cpu_model_given_to_qemu_is_named(banner_image):
    assert_clean_error(uefi_hv("run", banner_image, "--emulator", "qemu", "--cpu-model",
                               "tigerlake"), 2, "QEMU has no CPU model 'tigerlake'", "EPYC")


def test_missing_gcc_is_one_line_naming_the_package(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    result = uefi_hv("build", "--banner", "-o", tmp_path / "out", env=env)
    assert_clean_error(result, 3, "gcc", "apt-get install gcc")
    assert len(result.stderr.strip().splitlines()) == 1


def test_image_needs_a_boot_file(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(uefi_hv("image", tmp_path / "empty", "-o", tmp_path / "x.img"), 2,
                       "BOOTX64.EFI")
    assert_clean_error(uefi_hv("image", tmp_path / "nothing.efi", "-o", tmp_path / "x.img"), 2,
                       "does not exist")


def test_image_add_wants_src_and_dest(tmp_path, banner_efi):
    assert_clean_error(uefi_hv("image", banner_efi, "-o", tmp_path / "x.img", "--add", "nodest"),
                       2, "SRC:DEST")


def test_an_output_directory_that_cannot_be_made_is_one_clear_line(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    result = uefi_hv("build", "-o", tmp_path / "a-file" / "hv")
    assert_clean_error(result, 1, "a-file", "Not a directory")
    assert len(result.stderr.strip().splitlines()) == 1


def test_image_builds_a_spec_first(tmp_path):
    made = uefi_hv("image", DSL_DIR / "default.hv", "-o", tmp_path / "hv.img")
    assert made.returncode == 0, made.stderr
    assert inspect_image(tmp_path / "hv.img").esp_files == ["EFI/BOOT/BOOTX64.EFI"]

"""Bochs: real VMX in software under OVMF; a run is judged by its serial
output and the Bochs log, and Bochs is stopped as soon as the run is decided."""

from __future__ import annotations

import re

import pytest

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

from uefi_hv import ROOT
from uefi_hv.emulate import (BOCHS_KNOWN_PANICS, PROJECT_BOCHS, boot, bochs_rom_address,
                             find_bochs, judge_bochs_log_line)
from uefi_hv.errors import MissingEnvironment, MissingTool, UsageError, UserError

from conftest import BANNER_RE

pytestmark = pytest.mark.bochs


def test_banner_sees_vmx_on_a_tigerlake_cpu(banner_image, run_dir, assert_no_leftovers,
                                            monkeypatch):
    monkeypatch.delenv("UEFI_HV_BOCHS", raising=False)
    r = boot(banner_image, emulator="bochs", timeout=60, run_dir=run_dir)
    assert r.ok, r
    assert r.reason == "clean power-off"
    banner = re.search(BANNER_RE, r.serial)
    assert banner and banner.group("vmx") == "1" and banner.group("vendor") == "GenuineIntel"
    bxrc = (run_dir / "bochsrc.bxrc").read_text()
    assert "model=tigerlake" in bxrc
    # The project's headless Bochs 3.0 by default: no VNC, no debugger prompt.
    assert (run_dir / "emulator.txt").read_text() == f"Bochs 3.0 (the project's build: {PROJECT_BOCHS})\n"
    assert "display_library: nogui" in bxrc and "panic: action=report" in bxrc
    command = (run_dir / "command.txt").read_text().split()
    assert command[0] == str(PROJECT_BOCHS) and "-rc" not in command and "unshare" not in command[0]
    assert "ACPI control: soft power off" in r.log
    assert (run_dir / "serial.txt").exists()
    assert_no_leftovers(r)


def test_two_cpus_and_another_model_boot_too(banner_image, run_dir, assert_no_leftovers):
    r = boot(banner_image, emulator="bochs", cpus=2, cpu_model="corei7_haswell_4770",
             timeout=60, run_dir=run_dir)
    assert r.ok, r
    assert "vmx=1" in r.serial
    bxrc = (run_dir / "bochsrc.bxrc").read_text()
    assert "count=2" in bxrc and "model=corei7_haswell_4770" in bxrc
    assert_no_leftovers(r)


def test_bochs_stops_at_the_expected_marker(hang_image, run_dir, assert_no_leftovers):
    r = boot(hang_image, emulator="bochs", timeout=60, expect=[r"hanging \w+"], run_dir=run_dir)
    assert r.ok, r
    assert r.reason == "marker 'hanging \\w+' seen"
    assert r.elapsed < 60          # it did not wait for the timeout
    assert_no_leftovers(r)


def test_a_failure_marker_fails_the_run_at_once(hang_image, run_dir, assert_no_leftovers):
    r = boot(hang_image, emulator="bochs", timeout=60, expect=["NEVER PRINTED"],
             fail=["hanging forever"], run_dir=run_dir)
    assert not r.ok
    assert r.reason.startswith("failure marker 'hanging forever' seen")
    assert_no_leftovers(r)


def test_a_failure_line_printed_just_before_power_off_still_fails_the_run(
        banner_image, run_dir, assert_no_leftovers):
    # The banner's last line comes right before ResetSystem: the console's last
    # lines are read before the power-off in the log is accepted as success.
    r = boot(banner_image, emulator="bochs", fail=[r"banner: vmx=\d"], timeout=60,
             run_dir=run_dir)
    assert not r.ok, r
    assert r.reason.startswith("failure marker"), r.reason
    assert_no_leftovers(r)


def test_a_triple_fault_is_named_from_the_bochs_log(triple_fault_image, run_dir,
                                                    assert_no_leftovers):
    r = boot(triple_fault_image, emulator="bochs", timeout=60, run_dir=run_dir)
    assert not r.ok
    assert r.reason.startswith("Bochs: triple fault:"), r.reason
    assert "triple fault next" in r.serial
    assert_no_leftovers(r)


def test_a_marker_that_never_comes_times_out_and_bochs_is_stopped(hang_image, run_dir,
                                                                   assert_no_leftovers):
    r = boot(hang_image, emulator="bochs", timeout=20, expect=["NEVER PRINTED"], run_dir=run_dir)
    assert not r.ok
    assert r.reason == "timeout after 20 s without 'NEVER PRINTED'"
    assert_no_leftovers(r)


def test_bad_images_are_refused_before_bochs_starts(tmp_path, no_esp_image):
    with pytest.raises(UsageError, match="no such image"):
        boot(tmp_path / "nope.img", emulator="bochs")
    with pytest.raises(UserError, match="no EFI System Partition"):
        boot(no_esp_image, emulator="bochs", run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("line, verdict", [
    ("00710877674p[ACPI  ] >>PANIC<< ACPI control: soft power off", ("power-off", False)),
    ("01234567890e[VMX   ] VMFAIL: VMCS invalid host TR selector",
     ("Bochs: VMFAIL: VMCS invalid host TR selector", True)),
    ("01234567890e[CPU1  ] VMENTER FAIL: VMCS SMI blocked when not in SMM mode",
     ("Bochs: VMENTER FAIL: VMCS SMI blocked when not in SMM mode", True)),
    ("00123456789p[CPU0  ] >>PANIC<< exception(): 3rd (13) exception with no resolution",
     ("Bochs: triple fault: >>PANIC<< exception(): 3rd (13) exception with no resolution", True)),
    ("00123456789p[MEM0  ] >>PANIC<< allocate_block: out of memory",
     ("Bochs: PANIC: >>PANIC<< allocate_block: out of memory", True)),
    ("00450922360e[CPU0  ] RDMSR: Unknown register 0x17", None),
])
def test_bochs_log_lines_are_judged(line, verdict):
    assert judge_bochs_log_line(line) == verdict


def test_missing_firmware_names_its_debian_package(monkeypatch, tmp_path, banner_image):
    import uefi_hv.emulate as emulate

    table = {"bochs": {"rom": {"path": str(tmp_path / "OVMF.fd"), "package": "ovmf"},
                       "vgarom": {"path": str(tmp_path / "VGABIOS"), "package": "vgabios"}}}
    monkeypatch.setattr(emulate, "_firmware_table", lambda: table)
    with pytest.raises(MissingTool, match="apt-get install ovmf") as caught:
        boot(banner_image, emulator="bochs", run_dir=tmp_path / "run")
    assert caught.value.package == "ovmf"
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(shutil.which("bochs") is None, reason="Debian's bochs package is not installed")
def test_a_system_bochs_still_runs_with_its_quirks(banner_image, run_dir, assert_no_leftovers):
    """Debian's package (2.7 on Debian 12, 3.0 on Debian 13): VNC display in a
    network namespace of its own, the debugger told to continue."""
    r = boot(banner_image, emulator="bochs", bochs="system", timeout=60, run_dir=run_dir)
    assert r.ok, r
    assert re.search(BANNER_RE, r.serial).group("vmx") == "1"
    version = find_bochs("system").version
    assert (run_dir / "emulator.txt").read_text().startswith(
        f"Bochs {version} (a system Bochs: {Path(shutil.which('bochs')).resolve()})")
    command = (run_dir / "command.txt").read_text().split()
    assert "unshare" in command[0] and "-rc" in command
    assert 'display_library: rfb, options="timeout=0"' in (run_dir / "bochsrc.bxrc").read_text()
    assert_no_leftovers(r)


def test_the_projects_bochs_knows_todays_cpu_models():
    bochs = find_bochs("project")
    assert bochs.version == "3.0" and bochs.project_build and not bochs.debugger
    for model in ("tigerlake", "sapphire_rapids", "arrow_lake", "corei7_haswell_4770", "ryzen"):
        assert model in bochs.models


def test_an_unknown_cpu_model_is_refused_with_the_list(banner_image, tmp_path, monkeypatch):
    monkeypatch.delenv("UEFI_HV_BOCHS", raising=False)
    with pytest.raises(UsageError) as caught:
        boot(banner_image, emulator="bochs", cpu_model="alder_lake", run_dir=tmp_path / "run")
    message = str(caught.value)
    assert message.startswith("error: Bochs 3.0 (the project's build: ")
    assert "has no CPU model 'alder_lake'; it has: " in message and "sapphire_rapids" in message
    assert not (tmp_path / "run").exists()


def test_without_the_projects_build_the_error_says_how_to_get_it(monkeypatch, tmp_path,
                                                                banner_image):
    import uefi_hv.emulate as emulate

    monkeypatch.setattr(emulate, "PROJECT_BOCHS", tmp_path / "bochs-3.0" / "bin" / "bochs")
    monkeypatch.delenv("UEFI_HV_BOCHS", raising=False)
    with pytest.raises(MissingEnvironment) as caught:
        boot(banner_image, emulator="bochs", run_dir=tmp_path / "run")
    assert caught.value.exit_status == 3
    assert "run 'make setup' (or tools/build-bochs.sh)" in str(caught.value)
    assert "--bochs system" in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_the_environment_chooses_the_bochs_and_a_bad_one_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("UEFI_HV_BOCHS", str(tmp_path / "no-such-bochs"))
    with pytest.raises(UsageError, match=r"UEFI_HV_BOCHS=.*no-such-bochs: not an executable file"):
        find_bochs()
    with pytest.raises(UsageError, match=r"--bochs /nonexistent: not an executable file"):
        find_bochs("/nonexistent")
    monkeypatch.setenv("UEFI_HV_BOCHS", str(PROJECT_BOCHS))
    assert find_bochs().project_build
    fake = tmp_path / "bochs"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    with pytest.raises(UserError, match="does not say it is Bochs"):
        find_bochs(str(fake))


@pytest.mark.parametrize("size_mib, address", [(2, 0xffe00000), (4, 0xffc00000)])
def test_ovmf_is_mapped_to_end_at_four_gib(tmp_path, size_mib, address):
    """Debian 12's OVMF.fd is 2 MiB, Debian 13's 4 MiB: the ROM address follows."""
    rom = tmp_path / "OVMF.fd"
    with open(rom, "wb") as f:
        f.truncate(size_mib << 20)
    assert bochs_rom_address(rom) == address


@pytest.mark.parametrize("text", sorted(BOCHS_KNOWN_PANICS))
def test_the_known_harmless_panics_do_not_fail_a_run(text):
    assert judge_bochs_log_line(f"00685612857p[CPU0  ] >>PANIC<< {text} !") is None
    # ... but only as panics of that text: another panic still fails the run.
    assert judge_bochs_log_line("00685612857p[CPU0  ] >>PANIC<< VMEXIT CR0 is broken !") == (
        "Bochs: PANIC: >>PANIC<< VMEXIT CR0 is broken !", True)


def _script_env(tmp_path: Path, without: str) -> dict:
    """PATH with the programs the build script uses, less `without`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("bash", "realpath", "nproc", "dirname", "apt-get", "g++", "make", "xz", "tar",
                    "patch", "rm", "mkdir", "grep", "awk", "head", "cat"):
        if program != without and (found := shutil.which(program)):
            (bin_dir / program).symlink_to(found)
    return dict(os.environ, PATH=str(bin_dir))


def test_the_bochs_build_names_a_missing_debian_package(tmp_path):
    dest = tmp_path / "bochs-3.0"
    run = subprocess.run([shutil.which("bash"), str(ROOT / "tools" / "build-bochs.sh"), str(dest)],
                         env=_script_env(tmp_path, without="g++"), capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr == ("error: building Bochs 3.0: 'g++' is missing "
                          "(as root: apt-get install g++)\n")
    assert not dest.exists()


def test_the_project_bochs_carries_every_patch_of_the_recipe():
    """Each tools/bochs-patches/*.patch is applied, and BUILD-INFO says so
    with the patch's first line (what it fixes)."""
    info = (PROJECT_BOCHS.parent.parent / "BUILD-INFO").read_text()
    patches = sorted((ROOT / "tools" / "bochs-patches").glob("*.patch"))
    assert patches
    for patch in patches:
        first = patch.read_text().splitlines()[0]
        assert f"patch: {patch.name}: {first}" in info, info


def test_a_second_setup_does_not_rebuild_bochs():
    """The project's Bochs is newer than its recipe: make has nothing to do,
    and the script itself leaves a finished build alone."""
    question = subprocess.run(["make", "-q", "-C", str(ROOT), ".cache/bochs-3.0/bin/bochs"],
                              capture_output=True, text=True)
    assert question.returncode == 0, question.stdout + question.stderr
    again = subprocess.run([str(ROOT / "tools" / "build-bochs.sh"), str(PROJECT_BOCHS.parent.parent)],
                           capture_output=True, text=True, timeout=10)
    assert again.returncode == 0
    assert again.stdout == f"Bochs 3.0: {PROJECT_BOCHS} is there\n"


def _stop_bochs_of(run_dir: Path) -> Optional[int]:
    """SIGSTOP the Bochs this test started for `run_dir` (found by its
    configuration's path on the command line); its PID, or None."""
    config = str(run_dir / "bochsrc.bxrc").encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and config in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGSTOP)
                return int(proc.name)
        except OSError:
            continue
    return None


def test_a_stalled_bochs_is_named_and_run_again(banner_image, run_dir, monkeypatch,
                                                 assert_no_leftovers):
    """A Bochs that stops using CPU (here: SIGSTOP, once) is named as stalled,
    its /proc state kept, and the run is made again in a fresh Bochs."""
    import uefi_hv.emulate as emulate

    monkeypatch.setattr(emulate, "BOCHS_STALL_S", 3.0)
    stopped = []

    def stop_the_first_bochs():     # once its log shows the firmware running
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            log = run_dir / "bochs.log"
            if log.exists() and log.stat().st_size > 20000:
                stopped.append(_stop_bochs_of(run_dir))
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_the_first_bochs)
    watcher.start()
    r = boot(banner_image, emulator="bochs", timeout=60, run_dir=run_dir)
    watcher.join()
    assert stopped and stopped[0], "the first Bochs was not found to stop"
    assert r.ok, r
    assert r.reason == ("clean power-off (run again: the first bochs stalled: its process used no "
                        "CPU time for 3 s (the emulator stopped, not the guest; /proc state in "
                        "stall.txt))"), r.reason
    assert "State:\tT (stopped)" in (run_dir / "stalled-1" / "stall.txt").read_text()
    assert (run_dir / "stalled-1" / "bochsrc.bxrc").exists() and (run_dir / "serial.txt").exists()
    assert re.search(BANNER_RE, r.serial)
    assert len(r.pids) == 2
    assert_no_leftovers(r)

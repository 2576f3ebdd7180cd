"""QEMU: the image boots as a USB stick under OVMF (TCG here: no VMX), driven
over QMP; the console, the screen and the QMP events are what we check."""

from __future__ import annotations

import re

import pytest

from uefi_hv.emulate import BootResult, QemuMachine, boot, kvm_vmx_usable
from uefi_hv.errors import UsageError, UserError

from conftest import BANNER_RE, process_gone

pytestmark = pytest.mark.qemu

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# TCG has no VMX; a host whose KVM really runs nested VMX would show vmx=1.
EXPECTED_VMX = "1" if kvm_vmx_usable() else "0"


def test_banner_boots_from_a_usb_stick_and_powers_off(banner_image, run_dir):
    with QemuMachine(banner_image, run_dir=run_dir) as m:
        line = m.wait_for_line(BANNER_RE, timeout=120)
        assert re.search(BANNER_RE, line).group("vmx") == EXPECTED_VMX
        screen = m.screendump(run_dir / "banner.png")
        shutdown = m.wait_event("SHUTDOWN", timeout=60)
        assert shutdown["data"]["reason"] == "guest-shutdown"
        assert m.query_status()["status"] == "shutdown"
        assert "RIP=" in m.hmp("info registers")
        pid = m.pid
    data = screen.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > len(PNG_SIGNATURE)
    assert "uefi-hv banner: version" in m.serial
    assert process_gone(pid)


def test_boot_judges_a_clean_power_off_and_keeps_the_run_files(banner_image, run_dir,
                                                               assert_no_leftovers):
    seen = []
    r = boot(banner_image, emulator="qemu", timeout=120, run_dir=run_dir, stream=seen.append)
    assert isinstance(r, BootResult)
    assert r.ok, r
    assert r.reason == "clean power-off"
    assert r.emulator == "qemu" and r.run_dir == run_dir
    assert f"vmx={EXPECTED_VMX}" in r.serial
    assert any(re.search(BANNER_RE, line) for line in seen)      # streamed live
    assert [e["data"]["reason"] for e in r.events if e["event"] == "SHUTDOWN"] == ["guest-shutdown"]
    assert r.screenshot == run_dir / "screen.png"
    assert r.screenshot.read_bytes().startswith(PNG_SIGNATURE)
    assert "banner" in (run_dir / "serial.txt").read_text()
    assert_no_leftovers(r)


def test_a_triple_fault_is_a_failed_run(triple_fault_image, run_dir, assert_no_leftovers):
    r = boot(triple_fault_image, emulator="qemu", timeout=120, run_dir=run_dir)
    assert not r.ok
    assert "reset" in r.reason
    assert "triple fault next" in r.serial
    assert [e["data"]["reason"] for e in r.events if e["event"] == "SHUTDOWN"] == ["guest-reset"]
    assert_no_leftovers(r)


def test_a_marker_that_never_comes_times_out_and_qemu_is_stopped(hang_image, run_dir,
                                                                  assert_no_leftovers):
    r = boot(hang_image, emulator="qemu", timeout=10, expect=["NEVER PRINTED"], run_dir=run_dir)
    assert not r.ok
    assert r.reason == "timeout after 10 s without 'NEVER PRINTED'"
    assert_no_leftovers(r)


def test_a_missing_image_is_refused_before_qemu_starts(tmp_path):
    with pytest.raises(UsageError, match="no such image"):
        boot(tmp_path / "nope.img", emulator="qemu")
    with pytest.raises(UsageError, match="no such image"):
        QemuMachine(tmp_path / "nope.img", run_dir=tmp_path / "run")


def test_an_image_without_an_esp_is_refused_before_qemu_starts(no_esp_image, tmp_path):
    with pytest.raises(UserError, match="no EFI System Partition"):
        boot(no_esp_image, emulator="qemu", run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()

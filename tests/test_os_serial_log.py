"""The hypervisor's serial log is rate-limited: a guest that makes it log on
every VM exit gets the burst, then the sustained rate, and a count of what
was dropped; the guest itself runs on undisturbed (issue 7)."""

from __future__ import annotations

import math
import re

import pytest

from uefi_hv import model
from uefi_hv.build import build_efi
from uefi_hv.emulate import boot

from oskit.fixtures import hypervisor_dir  # noqa: F401 (fixture)
from oskit.harness import assert_run_ok, chained_image, require_chain
from oskit.initramfs import OSKIT

WRITES = 3000                     # chatty.c: CHATTY_WRITES
GP_LINE = "uefi-hv: cpu 0: inject #GP: WRMSR 0x480 from the guest"
SUPPRESSED = re.compile(r"^uefi-hv: (\d+) messages suppressed$", re.M)


@pytest.mark.bochs
def test_a_chatty_guest_cannot_flood_the_serial_log(hypervisor_dir, tmp_path, run_dir,
                                                    assert_no_leftovers):
    chatty = build_efi([OSKIT / "chatty.c"], tmp_path / "chatty.efi")
    image = chained_image(hypervisor_dir, chatty, tmp_path / "chatty.img")
    r = boot(image, emulator="bochs", cpus=1, timeout=60, expect=["CHATTY: DONE"],
             run_dir=run_dir)
    require_chain(r.serial)
    assert_run_ok(r)
    burst, rate = model.SETTING_DEFAULTS["log_burst"], model.SETTING_DEFAULTS["log_rate"]
    assert f"uefi-hv: log from VMX root: {burst} lines at once, then {rate} a second" in r.serial

    # The guest saw every #GP: dropping log lines changes nothing for it.
    loop = re.search(r"^CHATTY: (\d+) of (\d+) WRMSR 0x480 raised #GP in (\d+) us$", r.serial, re.M)
    assert loop, r.serial[-2000:]
    assert int(loop.group(1)) == int(loop.group(2)) == WRITES
    assert "CHATTY: one more after a pause of 500 ms: #GP" in r.serial

    # The burst, then no more than the rate allowed while the loop ran, and
    # the one after the pause; every other line counted as suppressed.
    lines = r.serial.count(GP_LINE)
    allowed = burst + math.ceil(rate * int(loop.group(3)) / 1e6) + 1
    assert burst < lines <= allowed, f"{lines} lines of '{GP_LINE}', allowed {burst}..{allowed}"
    dropped = [int(n) for n in SUPPRESSED.findall(r.serial)]
    assert dropped, "no 'messages suppressed' line"
    assert lines + sum(dropped) == WRITES + 1

    # The count comes before the line after the pause, and the verdict after both.
    last_count = r.serial.rindex(f"uefi-hv: {dropped[-1]} messages suppressed")
    assert r.serial.index(GP_LINE, last_count) < r.serial.index("CHATTY: DONE")
    assert_no_leftovers(r)

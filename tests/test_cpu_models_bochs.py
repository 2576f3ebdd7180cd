"""The CPU models people boot on, in the project's Bochs 3 (docs/emulators.md):
`sapphire_rapids` (WAITPKG, 5-level paging, AVX-512) for hvcheck and the OS
model on 1, 2 and 4 CPUs, and `arrow_lake`. Linux on sapphire_rapids is in
test_os_linux.py."""

from __future__ import annotations

import pytest

from uefi_hv.emulate import boot

from oskit.fixtures import hypervisor_dir, osmodel_efi  # noqa: F401 (fixtures)
from oskit.harness import assert_run_ok, chained_image, require_chain
from oskit.osmodel import FAIL, PASS, assert_aps_started_twice, verdicts
from test_hypervisor_bochs import default_image  # noqa: F401 (fixture)

pytestmark = pytest.mark.bochs

MODEL = "sapphire_rapids"


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_hvcheck_passes_on_sapphire_rapids(default_image, run_dir, cpus, assert_no_leftovers):
    r = boot(default_image, emulator="bochs", cpus=cpus, cpu_model=MODEL,
             timeout=60 + 30 * cpus, fail=["HVCHECK: FAIL"], run_dir=run_dir)
    assert f"model={MODEL}" in (run_dir / "bochsrc.bxrc").read_text()
    assert f"uefi-hv: {cpus} of {cpus} CPU(s) virtualised" in r.serial, r
    assert f"hvcheck: summary: {cpus} of {cpus} CPU(s) virtualised" in r.serial, r
    for cpu in range(cpus):
        assert f"hvcheck: cpu {cpu}: VMCALL ping: ok" in r.serial
        # The model has WAITPKG: TPAUSE must not #UD in the guest
        # (proc2.enable_user_wait_and_pause, preferred by the default spec).
        assert f"hvcheck: cpu {cpu}: TPAUSE works where CPUID shows WAITPKG: ok" in r.serial
        assert f"hvcheck: cpu {cpu}: DEVIRTUALIZE: VMX off, hypervisor gone: ok" in r.serial
    assert "HVCHECK: PASS" in r.serial, r
    assert r.ok, r
    assert_no_leftovers(r)


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_the_os_model_takes_over_under_the_hypervisor_on_sapphire_rapids(
        hypervisor_dir, osmodel_efi, tmp_path, run_dir, cpus, assert_no_leftovers):
    image = chained_image(hypervisor_dir, osmodel_efi, tmp_path / "chained.img")
    r = boot(image, emulator="bochs", cpus=cpus, cpu_model=MODEL, timeout=60 + 30 * cpus,
             fail=[FAIL], run_dir=run_dir)
    require_chain(r.serial)
    assert f"uefi-hv: {cpus} of {cpus} CPU(s) virtualised" in r.serial, r
    found = verdicts(r.serial)
    assert found == [PASS], f"{r}; verdicts {found}"
    assert "OSMODEL: BSP: VMCALL ping answered, hypervisor CPU 0" in r.serial
    assert_aps_started_twice(r.serial, cpus, hypervisor=True)
    assert_run_ok(r)
    assert_no_leftovers(r)


def test_hvcheck_passes_on_arrow_lake(default_image, run_dir, assert_no_leftovers):
    """The newest client model Bochs 3 has (docs/emulators.md: it boots with
    the project's build)."""
    r = boot(default_image, emulator="bochs", cpus=2, cpu_model="arrow_lake", timeout=90,
             fail=["HVCHECK: FAIL"], run_dir=run_dir)
    assert "hvcheck: summary: 2 of 2 CPU(s) virtualised" in r.serial, r
    assert "HVCHECK: PASS" in r.serial, r
    assert r.ok, r
    assert_no_leftovers(r)

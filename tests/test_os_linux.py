"""Linux boots under (or past) uefi-hv from the USB image: Debian's kernel,
chained by the hypervisor through its EFI stub, with an initramfs whose /init
(tests/oskit/oscheck.c) reports what user space sees of the hypervisor."""

from __future__ import annotations

import re

import pytest

from uefi_hv.emulate import QemuMachine, boot, kvm_vmx_usable

from oskit.fixtures import (hypervisor_dir, initramfs, linux_kernel,  # noqa: F401 (fixtures)
                            nullchain_dir)
from oskit.harness import (CHAIN_STARTED, NULLCHAIN_STARTED, acpi_chained_image,
                           assert_run_ok, chained_image, require_chain)

#: panic=-1: a kernel panic resets at once, which QEMU (-no-reboot) reports
#: as a guest-reset and Bochs as the end of the run; no waiting for a timeout.
CMDLINE = "console=ttyS0 panic=-1"
NOT_OURS = re.compile(r"^OSCHECK: no uefi-hv hypervisor; (\d+) CPUs online$", re.M)
#: Linux runs in Bochs on corei7_haswell_4770, tigerlake and sapphire_rapids
#: (docs/emulators.md; the newer two need IA32_MISC_ENABLE's fast strings,
#: which the harness gives Bochs as firmware would). One CPU: OVMF under Bochs has no ACPI, so Linux sees
#: only the boot CPU (the OS model proves the AP path). No ACPI, no power-off
#: either: a run ends on /init's verdict.
BOCHS_LINUX = dict(emulator="bochs", cpus=1, cpu_model="corei7_haswell_4770", timeout=300)
LINUX_FAILURES = ["OSCHECK: FAIL", "OSCHECK: no uefi-hv hypervisor", "Kernel panic"]
CHECKS = ("OSCHECK: ok: hypervisor present, CPUID.1:ECX[31] set",
          "OSCHECK: ok: signature at CPUID 0x40000000",
          "OSCHECK: ok: VMX hidden, CPUID.1:ECX[5] clear",
          "OSCHECK: ok: vmcall from ring 3: #UD as specified")


@pytest.fixture(scope="module")
def linux_image(hypervisor_dir, linux_kernel, initramfs, tmp_path_factory):
    """The hypervisor as BOOTX64.EFI, chaining the kernel with the initramfs."""
    return chained_image(hypervisor_dir, linux_kernel,
                         tmp_path_factory.mktemp("linux") / "linux.img",
                         cmdline=CMDLINE, initrd=initramfs)


@pytest.fixture(scope="module")
def baseline_image(nullchain_dir, linux_kernel, initramfs, tmp_path_factory):
    """The same chain, kernel and initramfs, without the hypervisor."""
    return chained_image(nullchain_dir, linux_kernel,
                         tmp_path_factory.mktemp("baseline") / "baseline.img",
                         cmdline=CMDLINE, initrd=initramfs)


def test_the_kernel_is_debians_unpacked_into_the_cache(linux_kernel):
    data = linux_kernel.read_bytes()
    assert linux_kernel.parent.parent.name == "linux" and ".cache" in linux_kernel.parts
    assert data[:2] == b"MZ"                    # the EFI stub's PE header
    assert data[0x202:0x206] == b"HdrS"         # and the x86 boot protocol's
    assert (linux_kernel.parent / "version").read_text().strip().endswith("-amd64")


@pytest.mark.qemu
def test_the_kernel_and_initramfs_boot_to_init_in_qemu(linux_kernel, initramfs, run_dir):
    """The guest side alone, without any hypervisor: QEMU starts the kernel."""
    args = ["-kernel", str(linux_kernel), "-initrd", str(initramfs), "-append", CMDLINE]
    with QemuMachine(None, cpus=2, accel="tcg", run_dir=run_dir, extra_args=args) as m:
        line = m.wait_for_line(NOT_OURS.pattern, timeout=120)
        assert NOT_OURS.match(line).group(1) == "2"
        assert m.wait_event("SHUTDOWN", timeout=30)["data"]["reason"] == "guest-shutdown"
    assert "leaf 0x40000000: max 0x40000001 'TCGTCGTCGTCG'" in m.serial


@pytest.mark.qemu
@pytest.mark.parametrize("cpus", [2, 4])
def test_linux_boots_under_the_svm_hypervisor_in_qemu(linux_image, run_dir, cpus):
    """QEMU's TCG on an EPYC: the SVM backend (docs/emulators.md), ACPI from
    QEMU, and Linux starts its APs itself with INIT-SIPI-SIPI, which the
    hypervisor emulates for CPUs that are guests (runtime/hv/svm.c); /init
    reads the signature on every CPU."""
    with QemuMachine(linux_image, cpus=cpus, accel="tcg", cpu_model="EPYC", run_dir=run_dir) as m:
        try:
            m.wait_for_line(re.escape(CHAIN_STARTED), timeout=120)
        except Exception:
            require_chain(m.serial)
            raise
        verdict = m.wait_for_line(r"OSCHECK: (PASS|FAIL)|OSCHECK: no uefi-hv|Kernel panic", timeout=300)
        registers = m.hmp("info registers -a")
        event = m.wait_event("SHUTDOWN", timeout=60)
        serial = m.serial
    assert "uefi-hv: backend SVM (AMD-V)" in serial
    assert f"uefi-hv: {cpus} of {cpus} CPU(s) virtualised" in serial
    assert verdict == "OSCHECK: PASS", serial[-3000:]
    assert f"smp: Brought up 1 node, {cpus} CPUs" in serial
    assert f"OSCHECK: /init running, {cpus} CPUs online" in serial
    assert f"OSCHECK: signature seen on {cpus} of {cpus} CPUs" in serial
    for check in CHECKS:
        assert check in serial
    # Every CPU still runs under VMRUN as Linux powers off: EFER.SVME (the guest reads it clear).
    efers = [int(v, 16) for v in re.findall(r"\bEFER=([0-9a-f]+)", registers)]
    assert len(efers) == cpus and all(e & 1 << 12 for e in efers), registers
    assert event["data"]["reason"] == "guest-shutdown"


#: The Bochs models Linux runs on, bare and under the hypervisor
#: (sapphire_rapids with 5-level paging).
MODELS = ["corei7_haswell_4770", "tigerlake", "sapphire_rapids"]


@pytest.mark.bochs
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_without_the_hypervisor_linux_boots_to_init_in_bochs(baseline_image, run_dir, model,
                                                             assert_no_leftovers):
    r = boot(baseline_image, **dict(BOCHS_LINUX, cpu_model=model), expect=[NOT_OURS.pattern],
             fail=["OSCHECK: FAIL", "OSCHECK: PASS", "Kernel panic"], run_dir=run_dir)
    assert_run_ok(r)
    assert NULLCHAIN_STARTED in r.serial
    assert NOT_OURS.search(r.serial).group(1) == "1"
    assert "CPUID.1:ECX hypervisor=0 vmx=1" in r.serial
    assert_no_leftovers(r)


@pytest.mark.bochs
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_linux_boots_under_the_hypervisor_in_bochs(linux_image, run_dir, model,
                                                   assert_no_leftovers):
    r = boot(linux_image, **dict(BOCHS_LINUX, cpu_model=model), expect=["OSCHECK: PASS"],
             fail=LINUX_FAILURES, run_dir=run_dir)
    require_chain(r.serial)
    assert_run_ok(r)
    for check in CHECKS:
        assert check in r.serial
    assert_no_leftovers(r)


@pytest.mark.qemu
def test_linux_runs_under_the_hypervisor_with_nested_kvm_on_four_cpus(linux_image, run_dir):
    if not kvm_vmx_usable():
        pytest.skip("no usable nested VMX here: uefi_hv.emulate.kvm_vmx_usable() found no "
                    "/dev/kvm that runs OVMF with a CPU offering VMX")
    with QemuMachine(linux_image, cpus=4, accel="kvm", run_dir=run_dir) as m:
        m.wait_for_line(r"OSCHECK: (PASS|FAIL)|OSCHECK: no uefi-hv", timeout=180)
        serial = m.serial
    require_chain(serial)
    for check in CHECKS:
        assert check in serial
    assert "OSCHECK: PASS" in serial
    assert "OSCHECK: /init running, 4 CPUs online" in serial


@pytest.fixture(scope="module")
def linux_smp_image(hypervisor_dir, linux_kernel, initramfs, tmp_path_factory):
    """linux_image with acpitables.efi before the kernel: OVMF under Bochs
    has no ACPI tables, so without them Linux sees only the boot CPU."""
    return acpi_chained_image(hypervisor_dir, linux_kernel, tmp_path_factory.mktemp("smp") / "linux.img",
                              cmdline=CMDLINE, initrd=initramfs)


@pytest.mark.bochs
@pytest.mark.slow
@pytest.mark.parametrize("cpus", [2])
def test_linux_starts_its_aps_itself_under_the_hypervisor(linux_smp_image, run_dir, cpus,
                                                          assert_no_leftovers):
    """Linux reads the MADT, starts every AP with its own INIT-SIPI-SIPI
    (INIT and SIPI VM exits under the hypervisor), and /init counts them.
    Two CPUs: each more slows Bochs down about as much again (4 CPUs do not
    reach /init in 400 s here)."""
    r = boot(linux_smp_image, **dict(BOCHS_LINUX, cpus=cpus, timeout=400), expect=["OSCHECK: PASS"],
             fail=LINUX_FAILURES, run_dir=run_dir)
    require_chain(r.serial)
    assert_run_ok(r)
    assert f"uefi-hv: {cpus} of {cpus} CPU(s) virtualised" in r.serial
    assert "acpitables: RSDP at 0x" in r.serial and f"MADT with {cpus} CPU(s)" in r.serial
    assert f"smp: Brought up 1 node, {cpus} CPUs" in r.serial, r.serial[-3000:]
    assert f"OSCHECK: /init running, {cpus} CPUs online" in r.serial, r.serial[-3000:]
    for check in CHECKS:
        assert check in r.serial
    assert_no_leftovers(r)

"""The seed's interrupt path on real (emulated) VMX: Bochs boots OVMF, the
hypervisor generated from examples/interrupts.hv takes every external
interrupt as a VM exit (acknowledged on exit), calls the handler its host IDT
holds for the vector, and delivers the interrupt to the firmware; hvcheck.efi,
chained, checks from inside the guest that the firmware's timer keeps its
rate, that the exits are counted on the timer's vector, that self-IPIs
arrive exactly once on every CPU, and that a vector the hypervisor raises
(VMCALL RAISE_VECTOR) with the guest's interrupts off waits for STI and comes
through the interrupt-window exit, once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uefi_hv import DSL_DIR
from uefi_hv.build import build_hypervisor
from uefi_hv.emulate import boot
from uefi_hv.image import make_image

pytestmark = pytest.mark.bochs

SPEC = DSL_DIR / "examples" / "interrupts.hv"


def build_image(workdir: Path, spec: Path = SPEC) -> Path:
    """A spec (interrupts.hv) -> BOOTX64.EFI + hvcheck.efi -> a GPT image chaining hvcheck."""
    efi = build_hypervisor(spec, workdir)
    return make_image(efi["BOOTX64.EFI"], workdir / "hv.img", chain=efi["hvcheck.efi"])


@pytest.fixture(scope="session")
def interrupts_image(tmp_path_factory) -> Path:
    return build_image(tmp_path_factory.mktemp("hv-interrupts"))


def check_line(serial: str, cpu: int, name: str) -> str:
    """hvcheck's line for one check on one CPU; it must say ok."""
    lines = [line for line in serial.splitlines() if line.startswith(f"hvcheck: cpu {cpu}: {name}")]
    assert lines, f"no line for cpu {cpu}: {name}"
    assert ": ok" in lines[0], lines[0]
    return lines[0]


def check_raised_vector(serial: str, cpu: int, owned: bool = False) -> None:
    """VMCALL RAISE_VECTOR on one CPU: with IF clear the vector is queued and
    held (nothing handled, no interrupt-window exit) until STI; NOP, then
    delivered once by exactly one interrupt-window exit; with IF set it is
    injected at the VMCALL's own exit, without a window, unless the TPR is as
    high as its priority class; bad vectors refused."""
    line = check_line(serial, cpu, "raised vector 0xEF waits for STI, arrives once through the interrupt window")
    assert ("handled 0 and interrupt-window exits 0 before STI; handled 1 right after STI; NOP, 1 in all; "
            "interrupt-window exits 1)") in line, line
    line = check_line(serial, cpu, "raised vector 0xEF with interrupts on arrives as the VMCALL returns, "
                                   "no interrupt window")
    assert "handled 1 when it returned, 1 in all; interrupt-window exits 0)" in line, line
    # Not above the TPR's priority class: held until MOV to CR8 lowers it.
    line = check_line(serial, cpu, "raised vector 0xEF waits while the TPR is at its priority class, arrives "
                                   "as MOV to CR8 lowers it")
    assert "(handled 0 before, 1 right after the TPR dropped)" in line, line
    check_line(serial, cpu, "RAISE_VECTOR refuses exceptions, vectors past 255"
                            + (" and the hypervisor's own" if owned else "") + " (bad argument)")
    # The raised vector is not an external-interrupt exit: the counters do not show it.
    summary = re.search(rf"hvcheck: cpu {cpu} external-interrupt exits by vector:(.*)", serial).group(1)
    assert "0xEF=" not in summary, summary


def test_one_cpu_timer_rate_counters_and_hvcheck_pass(interrupts_image, run_dir):
    result = boot(interrupts_image, emulator="bochs", cpus=1, timeout=60, fail=["HVCHECK: FAIL"],
                  run_dir=run_dir)
    serial = result.serial
    assert "HVCHECK: PASS" in serial, result
    rate = check_line(serial, 0, "timer event rate (10 ms period over a 200 ms timer, 10..40)")
    assert 10 <= int(re.search(r"fired (\d+) times", rate).group(1)) <= 40
    exits = check_line(serial, 0, "external-interrupt exits on the timer's vector")
    vector = re.search(r"vector (0x[0-9A-F]+): (\d+) exits", exits, re.I).group(1)
    check_line(serial, 0, "console after the timer check")
    assert "hvcheck: the console still works" in serial
    check_line(serial, 0, "self-IPIs delivered exactly once")
    check_raised_vector(serial, 0)
    # The summary: the counters, through VMCALL GET_IRQ_COUNT, on the timer's vector.
    summary = re.search(r"hvcheck: cpu 0 external-interrupt exits by vector:(.*)", serial).group(1)
    counts = dict(re.findall(r"(0x[0-9A-F]+)=(\d+)", summary, re.I))
    assert int(counts[vector]) >= 10 and int(counts["0xF0"]) == 33, summary
    assert re.search(r"^hvcheck: cpu 0 exits by reason: (exception_or_nmi=\d+ )?external_interrupt=", serial,
                     re.M), serial
    assert result.ok, result


def test_two_cpus_each_take_interrupts_through_the_path(interrupts_image, run_dir):
    """The AP gets no timer interrupts in UEFI: on it, the self-IPIs (and
    hvcheck's per-CPU checks) show the path works there too."""
    result = boot(interrupts_image, emulator="bochs", cpus=2, timeout=60, fail=["HVCHECK: FAIL"],
                  run_dir=run_dir)
    serial = result.serial
    assert "uefi-hv: 2 of 2 CPU(s) virtualised" in serial, result
    assert "HVCHECK: PASS" in serial, result
    check_line(serial, 0, "timer event rate")
    check_line(serial, 0, "external-interrupt exits on the timer's vector")
    for cpu in (0, 1):
        line = check_line(serial, cpu, "self-IPIs delivered exactly once")
        assert "sent 32, handled 32, exits on 0xF0 32" in line, line
        line = check_line(serial, cpu, "an IPI with interrupts off waits for STI, then arrives once")
        assert "waited yes, handled 1 after STI" in line, line
        # 32 + the one sent with interrupts off.
        assert re.search(rf"hvcheck: cpu {cpu} external-interrupt exits by vector:.* 0xF0=33", serial)
        check_raised_vector(serial, cpu)
        check_line(serial, cpu, "VMCALL ping")
    assert result.ok, result


def test_a_vector_the_spec_owns_stays_in_the_hypervisor_on_each_cpu(tmp_path, run_dir):
    """`own = 0xF8`: self-IPIs on 0xF8 exit and are counted, never reach the
    guest, and are EOIed by the hypervisor (the guest's 0xF0 IPIs after them,
    same priority class, would be blocked otherwise)."""
    text = SPEC.read_text()
    line = "exit external_interrupt -> dispatch_idt { idt_base = host_idt_base }"
    assert line in text
    spec = tmp_path / "own.hv"
    spec.write_text(text.replace(line, line.replace(" }", "; own = 0xF8 }")))
    image = build_image(tmp_path / "build", spec=spec)
    result = boot(image, emulator="bochs", cpus=2, timeout=60, fail=["HVCHECK: FAIL"], run_dir=run_dir)
    serial = result.serial
    assert "HVCHECK: PASS" in serial, result
    for cpu in (0, 1):
        line = check_line(serial, cpu, "self-IPIs on the hypervisor's vector stay in the hypervisor")
        assert "sent 8, handled 0, exits on 0xF8 8" in line, line
        line = check_line(serial, cpu, "self-IPIs delivered exactly once")
        assert "sent 32, handled 32, exits on 0xF0 32" in line, line
        assert re.search(rf"hvcheck: cpu {cpu} external-interrupt exits by vector:.* 0xF0=33 0xF8=8", serial)
        check_raised_vector(serial, cpu, owned=True)
    assert result.ok, result


def test_the_haswell_model_takes_interrupts_the_same_way(interrupts_image, run_dir):
    """The other capability set Bochs has (VMX-FACTS.md): same checks pass."""
    result = boot(interrupts_image, emulator="bochs", cpus=1, timeout=60, fail=["HVCHECK: FAIL"],
                  cpu_model="corei7_haswell_4770", run_dir=run_dir)
    serial = result.serial
    assert "HVCHECK: PASS" in serial, result
    check_line(serial, 0, "timer event rate")
    check_line(serial, 0, "external-interrupt exits on the timer's vector")
    check_line(serial, 0, "self-IPIs delivered exactly once")
    check_raised_vector(serial, 0)
    assert result.ok, result


def test_without_ack_on_exit_the_host_takes_the_interrupt_itself(tmp_path, run_dir):
    """External-interrupt exiting without "acknowledge interrupt on exit": the
    interrupt still waits in the controller at the exit; the hypervisor opens
    a one-instruction window and the CPU delivers it through the host IDT to
    the same handlers. Everything hvcheck checks holds, counters included."""
    spec = tmp_path / "noack.hv"
    spec.write_text('import "default.hv"\n'
                    "controls { require pin.external_interrupt_exiting }\n"
                    "exit external_interrupt -> dispatch_idt { idt_base = host_idt_base }\n"
                    "exit interrupt_window   -> inject_pending\n")
    image = build_image(tmp_path / "build", spec=spec)
    result = boot(image, emulator="bochs", cpus=1, timeout=60, fail=["HVCHECK: FAIL"], run_dir=run_dir)
    serial = result.serial
    assert "HVCHECK: PASS" in serial, result
    check_line(serial, 0, "timer event rate")
    check_line(serial, 0, "external-interrupt exits on the timer's vector")
    line = check_line(serial, 0, "self-IPIs delivered exactly once")
    assert "sent 32, handled 32, exits on 0xF0 32" in line, line
    check_raised_vector(serial, 0)
    assert result.ok, result

"""VMRUN's consistency checks as the hypervisor runs them (svm_checks.c on
svm_rules.c), on this machine: a harness calls hv_svm_run_time_checks on a
VMCB and a CPUID given to it, so each check is seen to pass on the state the
firmware gives and to fail, by its id, on a VMCB that VMRUN would refuse."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

import pytest

from uefi_hv import DSL_DIR, RUNTIME_DIR
from uefi_hv.build import INCLUDE_DIRS
from uefi_hv.check import APM_VMRUN_CHECKS
from uefi_hv.generate import generate_hypervisor
from uefi_hv.parse import load_spec

# svm_checks.c compiled with this header first: cpu.h's CPUID instruction is
# replaced by the harness's CPU, so the CPUID-dependent checks are decided
# the same on any machine.
CPU_STUB = """\
#include <efi.h>
#define UEFI_HV_CPU_H
void cpuid(UINT32 leaf, UINT32 subleaf, UINT32 out[4]);
"""

# argv: OFFSET:SIZE=VALUE writes a VMCB field; cpuid:LEAF:REG=VALUE (REG 0-3:
# EAX-EDX) changes the CPU. Prints "ok" or the CPU's error.
HARNESS = r"""
#include <stdarg.h>
#include "hv.h"
int vsnprintf(char *, unsigned long, const char *, va_list);
int printf(const char *, ...);
unsigned long long strtoull(const char *, char **, int);
int strncmp(const char *, const char *, unsigned long);

int hv_snprintf(char *buf, UINTN size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

/* An EPYC as QEMU's TCG gives it: XSAVE; FSGSBASE, SMEP, SMAP; SVM; NX,
 * FFXSR, LM; MAXPHYADDR 40. */
static struct { UINT32 leaf, r[4]; } cpu_model[] = {
    { 0x0, { 0xD, 0, 0, 0 } },
    { 0x1, { 0, 0, 1U << 26, 0 } },
    { 0x7, { 0, 1U << 0 | 1U << 7 | 1U << 20, 0, 0 } },
    { 0x80000000U, { 0x8000001FU, 0, 0, 0 } },
    { 0x80000001U, { 0, 0, 1U << 2, 1U << 20 | 1U << 25 | 1U << 29 } },
    { 0x80000008U, { 0x3028, 0, 0, 0 } },
};

void cpuid(UINT32 leaf, UINT32 subleaf, UINT32 out[4])
{
    (void)subleaf;
    out[0] = out[1] = out[2] = out[3] = 0;
    for (unsigned i = 0; i < sizeof cpu_model / sizeof cpu_model[0]; i++)
        if (cpu_model[i].leaf == leaf)
            for (int r = 0; r < 4; r++)
                out[r] = cpu_model[i].r[r];
}

static UINT8 vmcb[4096];
static struct hv_cpu cpu;

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        char *at = argv[i];
        BOOLEAN is_cpuid = strncmp(at, "cpuid:", 6) == 0;
        unsigned long long where = strtoull(at + (is_cpuid ? 6 : 0), &at, 16);
        unsigned long long which = strtoull(at + 1, &at, 16);
        unsigned long long value = strtoull(at + 1, 0, 16);
        if (is_cpuid) {
            for (unsigned j = 0; j < sizeof cpu_model / sizeof cpu_model[0]; j++)
                if (cpu_model[j].leaf == where)
                    cpu_model[j].r[which] = (UINT32)value;
        } else {
            for (unsigned b = 0; b < which; b++)
                vmcb[where + b] = (UINT8)(value >> (8 * b));
        }
    }
    cpu.vmcb = vmcb;
    printf("%s\n", hv_svm_run_time_checks(&cpu) ? "ok" : cpu.error);
    return 0;
}
"""

SPEC = load_spec(DSL_DIR / "default.hv")

#: A VMCB as svm.c fills it from OVMF on QEMU's EPYC (the real one is checked
#: in QEMU: tests/test_hypervisor_qemu.py): long mode with SVME, PAE, OSXSAVE,
#: a 64-bit CS, ASID 1, the VMRUN intercept, the permission maps below 4 GiB.
FIRMWARE = {
    "EFER": 0x1D01, "CR0": 0x80010033, "CR4": 0x40668, "CR3": 0x7F801000, "CS_ATTRIB": 0xA9B,
    "DR6": 0xFFFF0FF0, "DR7": 0x400, "GUEST_ASID": 1, "INTERCEPT_MISC2": 1,
    "MSRPM_BASE_PA": 0x7E000000, "IOPM_BASE_PA": 0x7E002000, "EVENTINJ": 0,
}

# (id that must fail, VMCB fields changed, CPUID changed: {(leaf, reg): value})
BROKEN = [
    ("VMRUN-EFER-SVME", {"EFER": 0xD01}, {}),
    ("VMRUN-CR0-CD-NW", {"CR0": 0xA0010033}, {}),
    ("VMRUN-CR0-HIGH", {"CR0": 0x1_80010033}, {}),
    ("VMRUN-CR3-MBZ", {"CR3": 0x10_0000_0000_1000}, {}),                     # bit 52
    ("VMRUN-CR3-MBZ", {"CR3": 0x100_0000_1000}, {}),                         # 2^40: beyond MAXPHYADDR
    ("VMRUN-CR4-MBZ", {"CR4": 0x48668}, {}),                                 # bit 15, reserved on every CPU
    ("VMRUN-CR4-MBZ", {"CR4": 0x440668}, {}),                                # PKE, and no PKU
    ("VMRUN-CR4-MBZ", {}, {(0x1, 2): 0}),                                    # OSXSAVE, and no XSAVE
    ("VMRUN-DR6-HIGH", {"DR6": 0x1_FFFF0FF0}, {}),
    ("VMRUN-DR7-HIGH", {"DR7": 0x1_00000400}, {}),
    ("VMRUN-EFER-MBZ", {"EFER": 0x1D03}, {}),                                # bit 1
    ("VMRUN-EFER-MBZ", {}, {(0x80000001, 3): 1 << 25 | 1 << 29}),            # NXE, and no NX
    ("VMRUN-EFER-MBZ", {"EFER": 0x3D01}, {(0x80000008, 1): 1 << 20}),        # LMSLE where EferLmsleUnsupported
    ("VMRUN-EFER-LONG-MODE", {}, {(0x80000001, 3): 1 << 20 | 1 << 25}),
    ("VMRUN-LME-PG-PAE", {"CR4": 0x40648}, {}),
    ("VMRUN-LME-PG-PE", {"CR0": 0x80010032}, {}),
    ("VMRUN-CS-L-D", {"CS_ATTRIB": 0xE9B}, {}),
    ("VMRUN-INTERCEPT", {"INTERCEPT_MISC2": 0x2}, {}),
    ("VMRUN-MSRPM", {"MSRPM_BASE_PA": 0xF_FFFF_F000}, {(0x80000008, 0): 0x3024}),  # ends past 2^36
    ("VMRUN-IOPM", {"IOPM_BASE_PA": 0x100_0000_0000}, {}),
    ("VMRUN-EVENTINJ", {"EVENTINJ": 0x80000302}, {}),                        # exception, vector 2 (NMI)
    ("VMRUN-EVENTINJ", {"EVENTINJ": 0x80000314}, {}),                        # exception, vector 20 (reserved)
    ("VMRUN-EVENTINJ", {"EVENTINJ": 0x80000500}, {}),                        # type 5: reserved
    ("VMRUN-ASID", {"GUEST_ASID": 0}, {}),
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("svm-checks")
    generate_hypervisor(str(DSL_DIR / "default.hv"), work / "src", check=True)
    (work / "cpu_stub.h").write_text(CPU_STUB)
    (work / "harness.c").write_text(HARNESS)
    hv = work / "src" / "hv"
    flags = ["-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-fshort-wchar", "-DGNU_EFI_USE_MS_ABI",
             f"-I{hv}", f"-I{RUNTIME_DIR / 'hv'}", *(f"-I{d}" for d in INCLUDE_DIRS)]
    objects = []
    for source, extra in ((work / "harness.c", []), (hv / "svm_rules.c", []),
                          (RUNTIME_DIR / "hv" / "svm_checks.c", ["-include", str(work / "cpu_stub.h")])):
        obj = work / (source.stem + ".o")
        run = subprocess.run(["gcc", *flags, *extra, "-c", str(source), "-o", str(obj)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        objects.append(str(obj))
    run = subprocess.run(["gcc", *objects, "-o", str(work / "harness")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return work / "harness"


def decide(harness: Path, vmcb: dict, cpu: Optional[dict] = None) -> str:
    args = [f"{SPEC.vmcb_fields[name].offset:x}:{SPEC.vmcb_fields[name].size:x}={value:x}"
            for name, value in vmcb.items()]
    args += [f"cpuid:{leaf:x}:{reg:x}={value:x}" for (leaf, reg), value in (cpu or {}).items()]
    return subprocess.run([str(harness), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_the_firmwares_vmcb_passes_every_check(harness):
    assert decide(harness, FIRMWARE) == "ok"
    # an NMI (type 2: its vector is ignored) and a #GP are legal injections
    assert decide(harness, {**FIRMWARE, "EVENTINJ": 0x80000202}) == "ok"
    assert decide(harness, {**FIRMWARE, "EVENTINJ": 0x00000B0D_80000B0D}) == "ok"


def test_every_check_of_the_apm_has_a_vmcb_that_fails_it():
    assert {check_id for check_id, _, _ in BROKEN} == set(APM_VMRUN_CHECKS)


@pytest.mark.parametrize("check_id, vmcb, cpu", BROKEN)
def test_a_vmcb_vmrun_would_refuse_fails_the_check_by_id(harness, check_id, vmcb, cpu):
    error = decide(harness, {**FIRMWARE, **vmcb}, cpu)
    rule = next(c for c in SPEC.vmrun_checks.values() if c.id == check_id)
    section = ", ".join(rule.sections)
    assert error.startswith(f"run-time check {check_id} (APM {section}) failed: {rule.title}: "), error


def test_a_failure_names_the_values_it_saw(harness):
    error = decide(harness, {**FIRMWARE, "CR4": 0x40648})
    assert error.endswith(": EFER = 0x1d01, CR0 = 0x80010033, CR4 = 0x40648"), error
    error = decide(harness, {**FIRMWARE, "MSRPM_BASE_PA": 0xF_FFFF_F000}, {(0x80000008, 0): 0x3024})
    assert error.endswith(": MSRPM_BASE_PA = 0xffffff000, 0x2000 bytes, MAXPHYADDR 36"), error
    error = decide(harness, {**FIRMWARE, "EVENTINJ": 0x80000302})
    assert error.endswith(": EVENTINJ = 0x80000302: vector 2 is not an exception's"), error


def test_the_checks_run_in_catalogue_order_and_the_first_failure_is_named(harness):
    # SVME clear and ASID 0: EFER-SVME comes first in dsl/vmcb.hv
    assert "VMRUN-EFER-SVME" in decide(harness, {**FIRMWARE, "EFER": 0xD01, "GUEST_ASID": 0})

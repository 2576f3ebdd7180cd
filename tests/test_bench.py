"""`uefi-hv bench`: the console lines it reads, the targets it judges, the
report it writes; and in Bochs, the quick run a user starts with
`uefi-hv bench --quick -o DIR`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from uefi_hv import ROOT
from uefi_hv.bench import (TARGETS, Bench, evaluate_targets, missing_figures, parse_hvcheck_exits,
                           parse_interrupts, parse_oscheck_exits, parse_resident, parse_round_trips, tsc_khz)
from uefi_hv.bench_report import write_report
from uefi_hv.emulate import BootResult

#: What hvcheck prints on two CPUs (the formats of runtime/hvcheck), with the
#: hypervisor's start-up lines before them.
SERIAL = """\
uefi-hv: log from VMX root: 32 lines at once, then 20 a second (TSC 50013 kHz)
uefi-hv: 2 of 2 CPU(s) virtualised; resident memory 44 KiB per CPU + 300 KiB shared + 120 KiB code
hvcheck: bench: cpu 0: round trips in TSC ticks, mean (min) over 64, under uefi-hv: CPUID 190 (186), \
VMCALL 201 (198), RDMSR 250 (240), XSETBV 222 (220)
hvcheck: bench: cpu 0: round trips in TSC ticks, mean (min) over 64, bare: CPUID 30 (30), RDMSR 40 (40), \
XSETBV 35 (35)
hvcheck: bench: cpu 1: round trips in TSC ticks, mean (min) over 64, under uefi-hv: CPUID 60 (58), \
VMCALL 201 (198)
hvcheck: bench: cpu 1: round trips in TSC ticks, mean (min) over 64, bare: CPUID 30 (30)
hvcheck: bench: cpu 0: exits of the firmware boot: cpuid=4000 rdmsr=31 io_instruction=2 (total 4033)
hvcheck: bench: cpu 1: exits of the firmware boot: cpuid=12 rdmsr=3 ept_violation=2 (total 17)
hvcheck: bench: cpu 1: exits while idle for 200 ms: none (total 0)
hvcheck: bench: cpu 0: exits while idle for 200 ms: cpuid=1 (total 1)
HVCHECK: PASS
"""


def hvcheck_results(serial: str, tmp_path: Path, ok: bool = True) -> dict:
    """The figures `uefi-hv bench` takes from a 2-CPU hvcheck boot with this console."""
    bench = Bench(tmp_path / "out", tmp_path / "work", cpus=2)
    boot = BootResult(ok, "clean power-off" if ok else "timeout after 120 s", "bochs", tmp_path, serial=serial)
    results = dict(bench.results, hvcheck=bench.hvcheck_figures(boot, "hvcheck-bochs"),
                   tools={"parse_check_ms": {"best": 6.5, "median": 7.0, "runs": 20},
                          "generate_ms": {"best": 420.0, "median": 450.0, "runs": 5},
                          "build_s": {"best": 11.2, "median": 11.5, "runs": 3},
                          "sizes": {"BOOTX64.EFI": 100 * 1024, "hvcheck.efi": 80 * 1024}})
    results["resident"] = dict(parse_resident(serial) or {}, status="measured", cpus=2)
    results["linux"]["runs"] = {"1": {"without": {"status": "measured", "init_tsc": 1_000_000},
                                      "with": {"status": "measured", "init_tsc": 1_001_600, "exits": []},
                                      "overhead_percent": 0.16}}
    results["targets"] = evaluate_targets(results)
    results["missing"] = missing_figures(results)
    return results


# --- the console lines ------------------------------------------------------------------------

def test_round_trips_are_read_per_cpu_and_mode_with_mean_and_min():
    trips = parse_round_trips(SERIAL)
    assert [(t["cpu"], t["mode"], t["n"]) for t in trips] == [
        (0, "under uefi-hv", 64), (0, "bare", 64), (1, "under uefi-hv", 64), (1, "bare", 64)]
    assert trips[0]["reasons"] == {"CPUID": {"mean": 190, "min": 186}, "VMCALL": {"mean": 201, "min": 198},
                                   "RDMSR": {"mean": 250, "min": 240}, "XSETBV": {"mean": 222, "min": 220}}
    assert "VMCALL" not in trips[1]["reasons"]           # bare, there is no VMCALL to time


def test_exit_counts_are_read_per_workload_and_cpu_and_none_is_no_exit():
    assert parse_hvcheck_exits(SERIAL) == [
        {"workload": "firmware boot", "cpu": 0, "counts": {"cpuid": 4000, "rdmsr": 31, "io_instruction": 2},
         "total": 4033},
        {"workload": "firmware boot", "cpu": 1, "counts": {"cpuid": 12, "rdmsr": 3, "ept_violation": 2},
         "total": 17},
        {"workload": "idle for 200 ms", "cpu": 1, "counts": {}, "total": 0},
        {"workload": "idle for 200 ms", "cpu": 0, "counts": {"cpuid": 1}, "total": 1}]


def test_linux_exit_counts_are_a_workload_of_their_own():
    serial = "OSCHECK: exits on cpu 1: cpuid=40 msr_read=3 (total 43)\nOSCHECK: exits on cpu 0: none (total 0)\n"
    assert parse_oscheck_exits(serial, "Linux to /init (2 CPUs)") == [
        {"workload": "Linux to /init (2 CPUs)", "cpu": 1, "counts": {"cpuid": 40, "msr_read": 3}, "total": 43},
        {"workload": "Linux to /init (2 CPUs)", "cpu": 0, "counts": {}, "total": 0}]


def test_resident_memory_tsc_and_interrupt_lines():
    assert parse_resident(SERIAL) == {"per_cpu_kib": 44, "shared_kib": 300, "code_kib": 120}
    assert tsc_khz(SERIAL) == 50013
    line = ("hvcheck: bench: cpu 0: self-IPI to handler 991 TSC (min 991), CPUID exit 150 TSC (min 150), "
            "over 32 each\n")
    assert parse_interrupts(line) == [{"cpu": 0, "ipi": 991, "ipi_min": 991, "cpuid": 150, "cpuid_min": 150,
                                       "n": 32}]


def test_a_garbled_line_gives_no_figure():
    garbled = ("hvcheck: bench: cpu 0: round trips in TSC ticks, mean (min) over 64, bare: CPUID 30\n"
               "hvcheck: bench: cpu 0: exits while idle for 200 ms: cpuid=one (total 1)\n"
               "hvcheck: bench: cpu 0: exits of the firmware boot: cpuid=3\n")
    assert parse_round_trips(garbled) == []
    assert parse_hvcheck_exits(garbled) == []
    assert parse_resident("uefi-hv: 1 of 1 CPU(s) virtualised") is None


# --- the targets and what is missing ------------------------------------------------------------

def test_each_target_is_met_or_not_by_its_figure(tmp_path):
    targets = {t["id"]: t for t in hvcheck_results(SERIAL, tmp_path)["targets"]}
    assert [t["id"] for t in targets.values()] == [t[0] for t in TARGETS]
    assert targets["cpuid_round_trip"]["value"] == 160 and targets["cpuid_round_trip"]["met"] is False
    assert targets["idle_ap_exits"]["value"] == 0 and targets["idle_ap_exits"]["met"] is True
    assert targets["linux_overhead"]["met"] is True
    assert targets["parse_check"]["met"] is True and targets["generate"]["met"] is True
    assert targets["build"]["met"] is False                            # 11.2 s
    assert targets["bootx64_size"]["value"] == 100 and targets["bootx64_size"]["met"] is True


def test_an_idle_ap_with_exits_misses_the_target_and_one_cpu_has_no_ap(tmp_path):
    busy = SERIAL.replace("cpu 1: exits while idle for 200 ms: none (total 0)",
                          "cpu 1: exits while idle for 200 ms: preemption_timer=2 (total 2)")
    idle = {t["id"]: t for t in hvcheck_results(busy, tmp_path)["targets"]}["idle_ap_exits"]
    assert (idle["value"], idle["met"]) == (10, False)                # 2 exits in 200 ms
    alone = "\n".join(line for line in SERIAL.splitlines() if "cpu 1" not in line)
    results = hvcheck_results(alone, tmp_path)
    results["hvcheck"]["cpus"] = 1
    idle = {t["id"]: t for t in evaluate_targets(results)}["idle_ap_exits"]
    assert idle["met"] is None and "no AP" in idle["note"]


def test_lines_hvcheck_did_not_print_are_missing_not_zero(tmp_path):
    assert hvcheck_results(SERIAL, tmp_path)["missing"] == []
    old = "\n".join(line for line in SERIAL.splitlines() if "bench:" not in line)
    results = hvcheck_results(old, tmp_path)
    assert len(results["missing"]) == 4
    assert any("round trips bare" in m for m in results["missing"])
    assert {t["id"]: t for t in results["targets"]}["cpuid_round_trip"]["met"] is None
    failed = hvcheck_results(SERIAL, tmp_path, ok=False)
    assert failed["missing"] == ["hvcheck: failed: timeout after 120 s (console: logs/hvcheck-bochs.txt)"]


def test_the_full_run_has_the_stages_of_the_issue_and_quick_only_the_first_four(tmp_path):
    full = [label for label, _ in Bench(tmp_path, tmp_path).stages()]
    assert len(full) == 12
    assert full[3] == "hvcheck in Bochs 3, 2 CPUs"
    assert [label for label in full if label.startswith("Linux to /init")] == [
        "Linux to /init, 1 CPU, without a hypervisor", "Linux to /init, 1 CPU, with uefi-hv",
        "Linux to /init, 2 CPUs, 3 runs, without a hypervisor", "Linux to /init, 2 CPUs, 3 runs, with uefi-hv"]
    assert sum("interrupts.hv" in label for label in full) == 2 and "QEMU/KVM" in full[-1]
    quick = Bench(tmp_path, tmp_path, quick=True)
    assert [label for label, _ in quick.stages()] == full[:3] + ["hvcheck in Bochs 3, 1 CPU"]
    assert {quick.results[k]["status"] for k in ("interrupts", "linux", "kvm")} == {"skipped (--quick)"}


# --- the report ------------------------------------------------------------------------------------

def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert 5_000 < len(data) < 80_000, f"{path}: {len(data)} bytes"


def test_the_report_has_the_figures_the_targets_and_the_charts(tmp_path):
    results = hvcheck_results(SERIAL, tmp_path)
    paths = write_report(results, tmp_path / "out")
    assert [p.name for p in paths] == ["BENCHMARKS.md", "benchmarks.json", "exits-by-reason.png",
                                       "round-trips.png"]
    report = (tmp_path / "out" / "BENCHMARKS.md").read_text()
    for _, what, _, _ in TARGETS:
        assert what in report
    assert "| CPUID round trip over bare, Bochs 3 | at most +40 instructions | +160 instructions | **not met** |" \
        in report
    assert "| 0 | CPUID | 190 (186) | 30 (30) | +160 |" in report
    assert "| 0 | VMCALL | 201 (198) | - | - |" in report
    assert "One TSC tick is one emulated instruction" in report and "VMREAD" in report
    assert "![exits by reason per workload](exits-by-reason.png)" in report
    assert json.loads((tmp_path / "out" / "benchmarks.json").read_text()) == results
    assert_png(tmp_path / "out" / "exits-by-reason.png")
    assert_png(tmp_path / "out" / "round-trips.png")


def test_a_report_without_round_trips_says_they_are_missing(tmp_path):
    old = "\n".join(line for line in SERIAL.splitlines() if "bench:" not in line)
    write_report(hvcheck_results(old, tmp_path), tmp_path / "out")
    report = (tmp_path / "out" / "BENCHMARKS.md").read_text()
    assert "Round trips: **missing**" in report and "Exits by reason: **missing**" in report
    assert "- **missing**: round trips under uefi-hv" in report


# --- the command -------------------------------------------------------------------------------------

def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uefi_hv", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_bench_refuses_no_cpus_and_a_file_for_a_directory(tmp_path):
    run = bench("--cpus", "0", "-o", str(tmp_path))
    assert run.returncode == 2 and "--cpus must be at least 1" in run.stderr
    (tmp_path / "file").write_text("")
    run = bench("-o", str(tmp_path / "file"))
    assert run.returncode == 2 and "is not a directory" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.bochs
def test_bench_quick_writes_the_report_with_round_trips_and_sizes(tmp_path):
    out = tmp_path / "bench"
    run = bench("--quick", "-o", str(out), timeout=300)
    assert "bench: [1/4] parse + check" in run.stderr and "bench: [4/4] hvcheck in Bochs 3, 1 CPU" in run.stderr
    for name in ("BENCHMARKS.md", "benchmarks.json", "exits-by-reason.png", "round-trips.png", "logs"):
        assert (out / name).exists(), f"{name} missing; stderr:\n{run.stderr}"
    figures = json.loads((out / "benchmarks.json").read_text())
    assert figures["quick"] is True and figures["git_commit"] and figures["bochs"]["version"]
    assert figures["tools"]["sizes"]["BOOTX64.EFI"] > 10_000 and figures["tools"]["sizes"]["hvcheck.efi"] > 10_000
    assert figures["resident"]["per_cpu_kib"] > 0
    assert figures["hvcheck"]["status"] == "measured", figures["hvcheck"]
    modes = {(r["mode"], r["cpu"]): r["reasons"] for r in figures["hvcheck"]["round_trips"]}
    assert modes.get(("under uefi-hv", 0), {}).get("CPUID", {}).get("mean"), \
        f"no CPUID round trip under uefi-hv:\n{run.stderr}"
    assert modes.get(("bare", 0), {}).get("CPUID", {}).get("mean"), f"no bare CPUID round trip:\n{run.stderr}"
    assert {r["workload"] for r in figures["hvcheck"]["exits"]} >= {"firmware boot"}
    report = (out / "BENCHMARKS.md").read_text()
    for _, what, _, _ in TARGETS:
        assert what in report
    assert "skipped (--quick)" in report
    assert_png(out / "exits-by-reason.png")
    assert_png(out / "round-trips.png")
    assert run.returncode == 0, run.stderr

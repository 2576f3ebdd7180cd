"""bench_report: `uefi-hv bench`'s figures written up for people and programs.

    write_report(results, outdir) -> [paths]

BENCHMARKS.md (the figures in tables, the targets met or not, how each was
taken, what was not measured and why), benchmarks.json (`results` as they
are) and two charts drawn with matplotlib: exits-by-reason.png and
round-trips.png. bench.py says what `results` holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from uefi_hv.bench import KVM_LABEL, cpus_text, idle_ms
from uefi_hv.errors import MissingEnvironment

REPORT = "BENCHMARKS.md"
JSON = "benchmarks.json"
EXITS_CHART = "exits-by-reason.png"
ROUND_TRIPS_CHART = "round-trips.png"
#: 8 x 4.5 in at 100 dpi: readable on a page, a few tens of KiB.
FIGSIZE, DPI = (8, 4.5), 100
HV, BARE = "under uefi-hv", "bare"


def write_report(results: dict, outdir: Path) -> list[Path]:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [outdir / REPORT, outdir / JSON, outdir / EXITS_CHART, outdir / ROUND_TRIPS_CHART]
    paths[1].write_text(json.dumps(results, indent=2) + "\n")
    exits_chart(exit_records(results), paths[2])
    round_trips_chart(results, paths[3])
    paths[0].write_text(markdown(results))
    return paths


# --- reading the results --------------------------------------------------------------------

def exit_records(results: dict) -> list[dict]:
    """{"workload", "cpu", "counts", "total"} per workload and CPU: hvcheck's
    firmware boot and idle stretch, then Linux to /init where measured."""
    records = list(results.get("hvcheck", {}).get("exits", []))
    for n, entry in sorted(results.get("linux", {}).get("runs", {}).items()):
        records += entry.get("with", {}).get("exits", [])
    # Workloads in the order they ran, CPUs in order within each.
    order = {workload: i for i, workload in reversed(list(enumerate(r["workload"] for r in records)))}
    return sorted(records, key=lambda r: (order[r["workload"]], r["cpu"]))


def _round_trips_by_mode(section: dict) -> dict[tuple[int, str], dict[str, dict]]:
    """{(cpu, mode): {reason: {"mean", "min"}}}."""
    return {(r["cpu"], r["mode"]): r["reasons"] for r in section.get("round_trips", [])}


def _round_trip_rows(section: dict) -> list[tuple[int, str, Optional[dict], Optional[dict]]]:
    """(cpu, reason, under uefi-hv, bare) for every reason either mode timed."""
    by_mode = _round_trips_by_mode(section)
    rows = []
    for cpu in sorted({cpu for cpu, _ in by_mode}):
        hv, bare = by_mode.get((cpu, HV), {}), by_mode.get((cpu, BARE), {})
        rows += [(cpu, reason, hv.get(reason), bare.get(reason)) for reason in {**hv, **bare}]
    return rows


def _status_line(section: dict) -> str:
    status = section.get("status", "not measured")
    return "" if status == "measured" else f"*{status}*\n\n"


# --- the charts ---------------------------------------------------------------------------------

def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingEnvironment("error: matplotlib is not installed (the bench charts need it); run "
                                 "'make setup', or .venv/bin/pip install -e '.[bench]'") from None
    matplotlib.use("Agg")           # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    # No software version or date in the file: the same figures, the same bytes.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    _pyplot().close(fig)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _grouped_bars(ax: Any, categories: list[str], series: list[tuple[str, list[float]]],
                  colours: Optional[list[Any]] = None) -> None:
    """One group of bars per category, one bar per series; zeros drawn as no bar."""
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(categories))]
        ax.bar(xs, [v if v else float("nan") for v in values], width, label=label,
               color=colours[i] if colours else None)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, rotation=30, ha="right", fontsize=8)


def exits_chart(records: list[dict], path: Path) -> None:
    """Exits by reason per workload and CPU, grouped by reason, log scale
    (a firmware boot's thousands next to an idle stretch's few)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.set_title("VM exits by reason per workload (Bochs 3)")
    totals: dict[str, int] = {}
    for record in records:
        for reason, n in record["counts"].items():
            totals[reason] = totals.get(reason, 0) + n
    if not totals:
        _no_data(ax, "no exit counts: missing (see BENCHMARKS.md)" if not records
                 else "no exits in any workload")
    else:
        reasons = sorted(totals, key=lambda r: (-totals[r], r))
        _grouped_bars(ax, reasons, [(f"{r['workload']}, cpu {r['cpu']} ({r['total']})",
                                     [r["counts"].get(reason, 0) for reason in reasons]) for r in records])
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)          # from below 1, so that a single exit shows as a bar
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_ylabel("exits (log scale)")
        # Beside the axes: over them it would hide the tall bars.
        ax.legend(fontsize=7, title="workload, cpu (total)", title_fontsize=7, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def round_trips_chart(results: dict, path: Path) -> None:
    """Round trips by reason, under the hypervisor against bare, per CPU: in
    Bochs instructions, and in real cycles beside them where KVM measured."""
    plt = _pyplot()
    panels = [("Bochs 3: TSC ticks = emulated instructions", results.get("hvcheck", {}))]
    if results.get("kvm", {}).get("round_trips"):
        panels.append((f"{KVM_LABEL}: TSC ticks", results["kvm"]))
    fig, axes = plt.subplots(1, len(panels), figsize=FIGSIZE, squeeze=False)
    fig.suptitle("VM-exit round trips, mean over the loop (hvcheck)", fontsize=10)
    for ax, (title, section) in zip(axes[0], panels):
        ax.set_title(title, fontsize=9)
        rows = _round_trip_rows(section)
        if not rows:
            _no_data(ax, f"no round trips: {section.get('status', 'not measured')}"
                     if section.get("status") != "measured" else "no round trips: missing (see BENCHMARKS.md)")
            continue
        reasons = list(dict.fromkeys(reason for _, reason, _, _ in rows))
        by_mode = _round_trips_by_mode(section)
        series, colours = [], []
        # tab20 comes in pairs, dark and light: one pair per CPU, dark under uefi-hv.
        pairs = plt.get_cmap("tab20")
        for cpu in sorted({cpu for cpu, *_ in rows}):
            for shade, mode in enumerate((HV, BARE)):
                figures = by_mode.get((cpu, mode), {})
                series.append((f"cpu {cpu}, {mode}",
                               [figures[reason]["mean"] if reason in figures else 0 for reason in reasons]))
                colours.append(pairs((2 * cpu + shade) % 20))
        _grouped_bars(ax, reasons, series, colours)
        for bars in ax.containers:
            ax.bar_label(bars, fontsize=6, fmt="%.0f")
        ax.set_ylabel("TSC ticks")
        ax.legend(fontsize=7)
    _save(fig, path)


# --- BENCHMARKS.md --------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


#: Decimals a figure is shown with, by unit.
DIGITS = {"instructions": 0, "exits/s": 1, "%": 3, "ms": 1, "s": 2, "KiB": 1}


def _target_rows(targets: list[dict]) -> list[list[str]]:
    rows = []
    for t in targets:
        sign = "+" if t["id"] in ("cpuid_round_trip", "linux_overhead") else ""
        limit = f"{'under' if t['strict'] else 'at most'} {sign}{t['limit']:g} {t['unit']}"
        if t["value"] is None:
            rows.append([t["what"], limit, "-", f"not measured: {t['note']}"])
            continue
        value = f"{sign if t['value'] >= 0 else ''}{t['value']:,.{DIGITS[t['unit']]}f} {t['unit']}"
        rows.append([t["what"], limit, value, "met" if t["met"] else "**not met**"])
    return rows


def _how(results: dict) -> str:
    hvcheck = results.get("hvcheck", {})
    ips, khz = hvcheck.get("bochs_ips"), hvcheck.get("tsc_khz")
    clock = (f"`ips={ips}`" if ips else "its configured ips") + (
        f"; the hypervisor measured the TSC at {khz} kHz" if khz else "")
    tools = results.get("tools", {})
    runs = {k: tools.get(k, {}).get("runs", "-") for k in ("parse_check_ms", "generate_ms", "build_s")}
    return f"""\
- **Tools** (a): in this process, after one parse and check to load the grammar
  and the imports: parse + check of `{results.get('spec', 'dsl/default.hv')}` (best of {runs['parse_check_ms']}),
  generate into a fresh directory (best of {runs['generate_ms']}), and the full build, generate +
  compile + link of BOOTX64.EFI and hvcheck.efi into a fresh directory (best of {runs['build_s']}; gcc
  compiles one file at a time, on a host of {results.get('host_cores', '?')} cores). The medians are in the table too.
  `uefi-hv check` in a fresh process is timed once with an empty grammar cache, then with it filled.
- **Bochs figures** (b to e): Bochs 3 runs with `clock: sync=none` and {clock}:
  emulated time, and so the TSC the guest reads, follows the instruction count.
  **One TSC tick is one emulated instruction**: the figures are repeatable counts of
  emulated work, not a real CPU's cycles. Bochs charges every instruction alike,
  one tick each: a VMREAD counts as one instruction in Bochs, while on hardware it
  costs tens of cycles; nor does Bochs weigh the VM exit and entry themselves, which
  take hundreds of cycles on hardware.
- **Round trips** (c): hvcheck reads the TSC around each exiting instruction, in a
  loop with interrupts off, under uefi-hv and again bare, after DEVIRTUALIZE (no
  VMCALL there); the mean and the least of the loop, per CPU (runtime/hvcheck/bench.c).
- **Exits by reason** (c): the hypervisor's per-CPU exit counters, as hvcheck
  reports them for the firmware boot (from VMLAUNCH until hvcheck starts) and for
  an idle stretch of the firmware's timer. CPU 0 is the boot CPU, the others are
  APs; an idle AP's exits per second are its idle count over the stretch.
- **Interrupt path** (d): `dsl/examples/interrupts.hv` built twice, the dispatch
  taking the host IDT base from the global `host_idt_base` (the default) and from a
  VMREAD of HOST_IDTR_BASE (the variant); hvcheck sends itself IPIs and times the
  ICR write to its handler's first instruction.
- **Linux** (e): Debian's kernel with the test kit's `/init` (tests/oskit), chained by
  uefi-hv and by the same chain without a hypervisor (nullchain); the figure is the
  TSC `/init` reads as it starts. Two CPUs boot with the test kit's ACPI tables
  (OVMF under Bochs has none), so that Linux starts its AP itself.
- The consoles every Bochs figure comes from are in `logs/`.
"""


def _tools_section(tools: dict) -> str:
    def row(name: str, figure: Optional[dict], unit: str) -> list[str]:
        if not figure:
            return [name, "-", "-", "not measured"]
        return [name, f"{figure['best']:.{DIGITS[unit]}f} {unit}", f"{figure['median']:.{DIGITS[unit]}f} {unit}",
                str(figure["runs"])]

    cold = tools.get("cold_check_ms", {})
    rows = [row("parse + check, dsl/default.hv", tools.get("parse_check_ms"), "ms"),
            row("`uefi-hv check`, a fresh process, grammar cache filled", cold.get("filled_cache"), "ms"),
            ["`uefi-hv check`, a fresh process, empty grammar cache",
             f"{cold['empty_cache']:.1f} ms" if "empty_cache" in cold else "-", "-", "1"],
            row("generate (clean directory)", tools.get("generate_ms"), "ms"),
            row("generate + compile + link both programs (clean directory)", tools.get("build_s"), "s")]
    sizes = [[name, f"{size / 1024:.1f} KiB", f"{size:,}"] for name, size in tools.get("sizes", {}).items()]
    return (_table(["figure", "best", "median", "runs"], rows) + "\n"
            + _table(["program", "size", "bytes"], sizes or [["-", "not measured", "-"]]))


def _resident_section(resident: dict) -> str:
    if resident.get("status") != "measured":
        return _status_line(resident)
    cpus = resident["cpus"]
    total = resident["per_cpu_kib"] * cpus + resident["shared_kib"] + resident["code_kib"]
    return ("As the hypervisor prints it at start-up (`resident memory ... KiB per CPU + ... KiB shared + "
            "... KiB code`).\n\n"
            + _table(["per CPU", "shared", "code", f"in all, {cpus_text(cpus)}"],
                     [[f"{resident[k]} KiB" for k in ("per_cpu_kib", "shared_kib", "code_kib")] + [f"{total} KiB"]]))


def _mean_min(figure: Optional[dict]) -> str:
    return f"{figure['mean']} ({figure['min']})" if figure else "-"


def _round_trips_section(section: dict, unit: str) -> str:
    rows = []
    for cpu, reason, hv, bare in _round_trip_rows(section):
        added = f"{hv['mean'] - bare['mean']:+}" if hv and bare else "-"
        rows.append([cpu, reason, _mean_min(hv), _mean_min(bare), added])
    loops = {r["n"] for r in section.get("round_trips", [])}
    if not rows:
        return _status_line(section) + "Round trips: **missing** (hvcheck printed no round-trip line).\n"
    return (_status_line(section) + f"{unit}, mean (min) over {', '.join(map(str, sorted(loops)))}.\n\n"
            + _table(["cpu", "exit", HV, BARE, "added"], rows))


def _exits_section(results: dict) -> str:
    rows = [[r["workload"], r["cpu"], r["total"],
             " ".join(f"{k}={v}" for k, v in sorted(r["counts"].items(), key=lambda kv: -kv[1])) or "none"]
            for r in exit_records(results)]
    text = _table(["workload", "cpu", "total", "by reason"], rows) if rows else \
        "Exits by reason: **missing** (hvcheck printed no exit-count line).\n"
    idle = sorted((r["cpu"], r["total"] * 1000 / ms)
                  for r in results.get("hvcheck", {}).get("exits", []) if (ms := idle_ms(r["workload"])))
    if idle:
        text += ("\nExits per second while idle: " + ", ".join(f"cpu {cpu} {rate:.1f}" for cpu, rate in idle)
                 + " (cpu 0 is the boot CPU; the target is about the APs).\n")
    linux = results.get("linux", {})
    if linux.get("status") == "measured" and not any(
            entry.get("with", {}).get("exits") for entry in linux.get("runs", {}).values()):
        text += ("\nLinux to /init: **missing** (/init printed no `OSCHECK: exits on cpu C: ...` line: "
                 "the hypervisor was built without `option cpuid_exit_counts`?).")
    return text + "\n"


def interrupts_section(section: dict) -> str:
    if "variants" not in section:
        return _status_line(section)
    rows, lines = [], []
    for variant in section["variants"].values():
        lines.append(_status_line(variant))
        rows += [[variant["label"], r["cpu"], r["n"], f"{r['ipi']} ({r['ipi_min']})",
                  f"{r['cpuid']} ({r['cpuid_min']})"] for r in variant["rows"]]
    text = "".join(lines) + "TSC ticks = Bochs instructions, mean (min) over N per CPU.\n\n"
    text += _table(["IDT base from", "cpu", "N", "self-IPI to handler", "CPUID exit"], rows or [["-"] * 5])
    g, v = (section["variants"].get(k, {}).get("rows") for k in ("global", "vmread"))
    if g and v:
        text += (f"\ncpu 0: the global saves {v[0]['ipi'] - g[0]['ipi']} ticks per interrupt round trip "
                 f"({v[0]['ipi']} -> {g[0]['ipi']}): the one VMREAD, one instruction to Bochs, tens of cycles "
                 f"on hardware on every interrupt, which is why KVM keeps the global.\n")
    return text


def linux_section(linux: dict) -> str:
    if "runs" not in linux:
        return _status_line(linux)
    rows = []
    for n, entry in sorted(linux["runs"].items()):
        bare, hv = entry.get("without", {}), entry.get("with", {})

        def tsc(run: dict) -> str:
            return f"{run['init_tsc']:,}" if run.get("init_tsc") else run.get("status", "-")

        def tick(run: dict) -> str:
            return f"{run['last_log_tick']:,}" if run.get("last_log_tick") else "-"

        overhead = entry.get("overhead_percent")
        rows.append([n, tsc(bare), tsc(hv), "-" if overhead is None else f"{overhead:+.3f} %",
                     tick(bare), tick(hv), f"{bare.get('wall_s', '-')} / {hv.get('wall_s', '-')}"])
    spreads = []
    for n, entry in sorted(linux["runs"].items()):
        for side in ("without", "with"):
            tscs = entry.get(side, {}).get("init_tscs", [])
            if len(tscs) > 1:
                spreads.append(f"{n} CPUs {side}: {', '.join(f'{v:,}' for v in tscs)} "
                               f"(spread {(max(tscs) - min(tscs)) / min(tscs) * 100:.2f} %)")
    note = ("\nWhere a row took several boots, its TSC is their median: identical boots on two CPUs reach /init "
            "a little apart, as Bochs interleaves the CPUs and where the AP's start-up falls in that varies. The "
            "boots: " + "; ".join(spreads) + ".\n") if spreads else ""
    if len(linux["runs"]) > 1:
        note += ("\nTwo CPUs run with Bochs's `cpu: quantum=1`. Its SMP loop runs one trace of each CPU in turn and "
                 "advances time by the mean of what they ran, a halted CPU counting as `quantum` instructions (16 "
                 "by default): with 16 the TSC of a two-CPU boot depends on the length of the BSP's traces while "
                 "the AP halts, and read +1.2 to +1.6 % with the hypervisor; with 1 it follows the instructions "
                 "closely enough that the two-CPU overhead is within the spread of identical boots.\n")
    return (f"Bochs 3, model `{linux.get('cpu_model')}`. Instructions from power-on (TSC at /init; the Bochs "
            "log's last tick, when the run ended on /init's verdict, beside it).\n\n"
            + _table(["CPUs", "TSC at /init, without", "with uefi-hv", "overhead", "last tick, without",
                      "with uefi-hv", "wall s (without / with)"], rows) + note)


def _not_measured(results: dict) -> list[str]:
    items = []
    sections = [("d. interrupt path", results.get("interrupts", {})),
                ("e. Linux boot overhead", results.get("linux", {})), (f"f. {KVM_LABEL}", results.get("kvm", {}))]
    for name, section in sections:
        status = section.get("status", "not measured")
        if status != "measured":
            items.append(f"{name}: {status}")
    # A target's note that repeats its section's status (skipped, not measured) says nothing new.
    items += [f"{t['what']}: {t['note']}" for t in results.get("targets", [])
              if t["value"] is None and not any(item.endswith(f": {t['note']}") for item in items)]
    items += [f"**missing**: {m}" for m in results.get("missing", [])]
    return items


def markdown(results: dict) -> str:
    commit = results.get("git_commit", "unknown")
    dirty = " (with uncommitted changes)" if results.get("git_dirty") else ""
    bochs = results.get("bochs", {}).get("description", "Bochs: unknown")
    cpus = cpus_text(results.get("cpus", 1))
    mode = (f"`--quick`: the tools, resident memory and hvcheck on {cpus}; the interrupt path, Linux and "
            "QEMU/KVM skipped" if results.get("quick") else
            f"the full run, hvcheck and the interrupt path on {cpus}")
    hvcheck, kvm = results.get("hvcheck", {}), results.get("kvm", {})
    parts = [
        "# uefi-hv benchmarks\n",
        f"Measured by `uefi-hv bench` (`make bench`) on {results.get('date', '?')} at commit `{commit[:12]}`{dirty}; "
        f"host CPU {results.get('host_cpu', '?')}, {results.get('host_cores', '?')} cores; {bochs}. "
        f"Mode: {mode}. The run took {results.get('elapsed_s', '?')} s. Every figure is in "
        f"[{JSON}]({JSON}).\n",
        "## Targets\n",
        _table(["target", "limit", "figure", "met"], _target_rows(results.get("targets", []))),
        "## How the figures were taken\n",
        _how(results),
        "## a. Tools and sizes\n",
        _tools_section(results.get("tools", {})),
        "## b. Resident memory\n",
        _resident_section(results.get("resident", {})),
        "## c. VM-exit round trips (hvcheck, Bochs 3, 1 CPU)\n",
        "On one CPU, where Bochs's TSC advances once per instruction of that CPU (with more, it "
        "advances for every CPU's instructions in turn and a round trip reads about that many times "
        "longer). A VMREAD counts as one instruction here; on hardware it costs tens of cycles.\n",
        _round_trips_section(hvcheck, "TSC ticks = Bochs instructions"),
        f"![round trips by reason, under uefi-hv against bare]({ROUND_TRIPS_CHART})\n",
        "## c. Exits by reason\n",
        _exits_section(results),
        f"![exits by reason per workload]({EXITS_CHART})\n",
        "## d. The seed's interrupt path (dsl/examples/interrupts.hv)\n",
        interrupts_section(results.get("interrupts", {})),
        "## e. Linux boot overhead (Debian's kernel to /init)\n",
        linux_section(results.get("linux", {})),
        f"## f. {KVM_LABEL[0].upper()}{KVM_LABEL[1:]}\n",
        _round_trips_section(kvm, "TSC ticks of the host CPU") if kvm.get("status") == "measured"
        else _status_line(kvm),
        "## Not measured\n",
        "".join(f"- {item}\n" for item in _not_measured(results)) or "Everything was measured.\n",
    ]
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


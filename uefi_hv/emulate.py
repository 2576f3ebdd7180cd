"""emulate: boot a disk image in QEMU (driven over QMP) or Bochs, and judge the run.

One interface, two backends (docs/emulators.md says what each can do here):
    boot(image, emulator="bochs"|"qemu"|"auto", ...) -> BootResult
QEMU boots the image as a USB stick under OVMF and is driven through the
official QMP client (qemu.qmp); Bochs (the project's own 3.0 build by
default) runs real VMX under OVMF and is judged by its serial output and its
log.  `QemuMachine` and `BochsMachine` are for tests that drive a machine
themselves.

Every run leaves its files in its own directory (serial.txt, the emulator's
log, for QEMU screen.png).  Every emulator process is started in a process
group of its own and that group is killed when the run ends, however it ends:
no emulator outlives its run.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import functools
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

from qemu.qmp import EventListener, QMPClient

from uefi_hv import OVMF_DIR, ROOT
from uefi_hv.errors import (MissingEnvironment, MissingTool, UsageError, UserError,
                             require_program)
from uefi_hv.gpt import check_bootable

EMULATORS = ("auto", "qemu", "bochs")
DEFAULT_BOCHS_CPU = "tigerlake"
#: QEMU's CPU under TCG: an AMD EPYC, whose SVM with nested paging TCG
#: emulates (docs/emulators.md), so the hypervisor's SVM backend runs there.
DEFAULT_QEMU_TCG_CPU = "EPYC"
#: Bochs's `panic` for ResetSystem(EfiResetShutdown): the clean way out.
BOCHS_POWER_OFF = "ACPI control: soft power off"
MEMORY_MIB = 512
#: Console lines that end any run: OVMF's report of a CPU exception it could
#: not handle (it then hangs, so waiting for the timeout would teach nothing).
FIRMWARE_FAULTS = (r"^!!!! X64 Exception Type",)
POLL_S = 0.05

Stream = Optional[Callable[[str], None]]


class EmulatorError(UserError):
    """An emulator could not be started or driven."""


class EmulatorTimeout(UserError, TimeoutError):
    """A wait on a running machine ran out of time."""


# --- firmware and tools ----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _firmware_table() -> dict:
    return json.loads((OVMF_DIR / "firmware.json").read_text())


def firmware(emulator: str, role: str) -> Path:
    """The firmware file `role` ("code", "vars", "rom", "vgarom") of an
    emulator, from ovmf/firmware.json; MissingTool names its package."""
    entry = _firmware_table()[emulator][role]
    path = Path(entry["path"])
    if not path.is_file():
        raise MissingTool(f"firmware {path}", entry["package"])
    return path


# --- process groups: nothing outlives its run ------------------------------------

_live_groups: set[int] = set()


_PR_SET_PDEATHSIG = 1      # linux/prctl.h


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when the Python
    process that started it dies, even by SIGKILL, when no `finally` runs."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _spawn(cmd: Sequence[str], cwd: Path, log: Path, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """Start `cmd` as the leader of a new process group, output to `log`."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdin=stdin, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
    _live_groups.add(proc.pid)
    return proc


def _reap(proc: subprocess.Popen, grace_s: float = 2.0) -> None:
    """End `proc` and everything in its process group, and wait for it."""
    try:
        if proc.poll() is None:
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    finally:
        _live_groups.discard(proc.pid)


@atexit.register
def _kill_leftovers() -> None:
    for pgid in list(_live_groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- serial console ------------------------------------------------------------------

# OVMF's console speaks VT100: colours, cursor moves, clear screen.
_ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>c]")


def clean_console(text: str) -> str:
    """Console bytes as a person reads them: no escape sequences, no CRs."""
    return _ANSI.sub("", text).replace("\r", "")


class SerialTail:
    """Follows a growing serial log file line by line."""

    def __init__(self, path: Path, stream: Stream = None):
        self.path = Path(path)
        self.stream = stream
        self._offset = 0
        self._partial = b""          # raw bytes after the last newline
        self.lines: list[str] = []

    def poll(self, final: bool = False) -> list[str]:
        """New complete lines (all text when `final`), streamed as they come.
        Lines are split before they are cleaned: an escape sequence or a UTF-8
        character cut by a read is whole again by then."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        if final and self._partial:
            complete.append(self._partial)
            self._partial = b""
        new = [line for raw in complete
               if (line := clean_console(raw.decode("utf-8", errors="replace")).rstrip())]
        for line in new:
            if self.stream:
                self.stream(line)
        self.lines.extend(new)
        return new

    @property
    def text(self) -> str:
        """Everything seen so far, cleaned; a last line without its newline too."""
        partial = clean_console(self._partial.decode("utf-8", errors="replace"))
        return "".join(line + "\n" for line in self.lines) + partial


def _matcher(pattern: str) -> Callable[[str], bool]:
    """A marker is a regular expression or a plain string: either match counts."""
    try:
        regex = re.compile(pattern)
    except re.error:
        regex = None
    return lambda line: pattern in line or bool(regex and regex.search(line))


def _matchers(patterns: Iterable[str]) -> list[tuple[str, Callable[[str], bool]]]:
    return [(p, _matcher(p)) for p in patterns]


def _first_match(matchers, line: str) -> Optional[str]:
    return next((p for p, match in matchers if match(line)), None)


_FIRMWARE_FAULTS = _matchers(FIRMWARE_FAULTS)


# --- results --------------------------------------------------------------------------

@dataclass
class BootResult:
    ok: bool
    reason: str                       # one line: why the run counts as it does
    emulator: str
    run_dir: Path
    serial: str = ""                  # the console, escape sequences removed
    log: str = ""                     # the emulator's log
    events: list = field(default_factory=list)    # QMP events (QEMU)
    screenshot: Optional[Path] = None
    elapsed: float = 0.0
    pids: list = field(default_factory=list)      # the processes this run started

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return f"{self.emulator} run {verdict}: {self.reason} (files in {self.run_dir})"


_run_counter = itertools.count()


def new_run_dir(emulator: str, run_dir=None) -> Path:
    """`run_dir` made ready, or a fresh runs/<time>-<emulator>-<pid>-<n>/."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = ROOT / "runs" / f"{stamp}-{emulator}-{os.getpid()}-{next(_run_counter)}"
    run_dir = Path(run_dir).resolve()       # the emulators run inside it
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


# --- machines ---------------------------------------------------------------------------

M = TypeVar("M", bound="Machine")


class Machine:
    """What every emulated machine offers, after QEMU's own QEMUMachine: a
    context manager that starts it (start) and ends it with its whole process
    group (close), its console followed in `tail`, and its state."""

    proc: Optional[subprocess.Popen] = None
    tail: SerialTail

    def start(self) -> "Machine":
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: M) -> M:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    @property
    def process(self) -> subprocess.Popen:
        """The emulator's process, between start and close."""
        if self.proc is None:
            raise EmulatorError(f"error: {type(self).__name__} is not started")
        return self.proc

    @property
    def serial(self) -> str:
        """The console so far, escape sequences removed."""
        return self.tail.text

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# --- QEMU -------------------------------------------------------------------------------

class QemuMachine(Machine):
    """A QEMU q35 machine with OVMF, the image as a USB stick, QMP on a unix
    socket and COM1 in `run_dir/serial.txt`.

        with QemuMachine(image, cpus=2, run_dir=d) as m:
            m.wait_for_line(r"uefi-hv banner: vmx=0")
            m.screendump(d / "screen.png")
            m.wait_event("SHUTDOWN")

    The machine runs with -no-reboot (a reset, e.g. a triple fault, becomes a
    SHUTDOWN event with reason guest-reset) and -no-shutdown (after a power-off
    QEMU stays, so the last screen can still be read); leaving the `with`
    quits QEMU and kills its process group.  `image=None` boots no disk (use
    extra_args for -kernel and friends).
    """

    def __init__(self, image=None, cpus: int = 1, run_dir=None,
                 extra_args: Sequence[str] = (), accel: str = "auto",
                 memory_mib: int = MEMORY_MIB, stream: Stream = None,
                 check_image: bool = True, cpu_model: Optional[str] = None):
        if image is not None and check_image:
            check_bootable(image)
        self.image = Path(image).resolve() if image is not None else None
        self.cpus = cpus
        self.run_dir = new_run_dir("qemu", run_dir)
        self.extra_args = list(extra_args)
        self.accel = accel
        self.cpu_model = cpu_model
        self.memory_mib = memory_mib
        self.serial_path = self.run_dir / "serial.txt"
        self.log_path = self.run_dir / "qemu.log"
        self.tail = SerialTail(self.serial_path, stream)
        self.events: list[dict] = []
        self.proc: Optional[subprocess.Popen] = None
        self._loop = asyncio.new_event_loop()
        self._qmp: Optional[QMPClient] = None
        self._listener: Optional[EventListener] = None
        self._sock_dir: Optional[tempfile.TemporaryDirectory] = None

    # -- life cycle

    def command(self, qmp_socket: Path) -> list[str]:
        qemu = require_program("qemu-system-x86_64", "qemu-system-x86")
        code = firmware("qemu", "code")
        vars_copy = self.run_dir / "OVMF_VARS.fd"      # fresh variables every run
        shutil.copyfile(firmware("qemu", "vars"), vars_copy)
        accel = self.accel
        if accel == "auto":
            accel = "kvm" if kvm_vmx_usable() else "tcg"
        cmd = [qemu, "-machine", "q35", "-m", str(self.memory_mib), "-smp", str(self.cpus),
               "-display", "none", "-no-reboot", "-no-shutdown", "-nic", "none",
               "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
               "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
               "-chardev", f"file,id=com1,path={self.serial_path}", "-serial", "chardev:com1",
               "-qmp", f"unix:{qmp_socket},server=on,wait=off"]
        if accel == "kvm":
            cmd += ["-accel", "kvm", "-cpu", self.cpu_model or "host"]
        else:
            cmd += ["-accel", "tcg", "-cpu", self.cpu_model or DEFAULT_QEMU_TCG_CPU]
        if self.image is not None:
            # A USB stick on an xHCI controller, as on real hardware; snapshot=on
            # keeps the image as it was (and lets parallel runs share it).
            cmd += ["-device", "qemu-xhci,id=xhci",
                    "-drive", f"if=none,id=stick,format=raw,snapshot=on,file={self.image}",
                    "-device", "usb-storage,bus=xhci.0,drive=stick"]
        return cmd + self.extra_args

    def start(self) -> "QemuMachine":
        try:
            # A unix socket path must stay under 108 bytes: keep it short, in /tmp.
            self._sock_dir = tempfile.TemporaryDirectory(prefix="uefi-hv-qmp-")
            sock = Path(self._sock_dir.name) / "qmp.sock"
            cmd = self.command(sock)
            (self.run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
            self.serial_path.unlink(missing_ok=True)
            self.proc = _spawn(cmd, self.run_dir, self.log_path)
            self._run(self._connect(sock), timeout=30)
        except BaseException:
            self.close()
            raise
        return self

    async def _connect(self, sock: Path) -> None:
        self._qmp = QMPClient("uefi-hv")
        self._listener = listener = EventListener()       # every event, from the start
        self._qmp.register_listener(listener)
        while True:
            if self.process.poll() is not None:
                raise EmulatorError(f"error: QEMU exited at start ({self.process.returncode}): "
                                    f"{self._log_tail()}")
            try:
                await self._qmp.connect(str(sock))
                return
            except Exception:   # the socket is not there yet
                await asyncio.sleep(POLL_S)

    def close(self) -> None:
        """Quit QEMU (QMP `quit`), then kill its process group; idempotent."""
        if self.proc is not None:
            if self._qmp is not None and self.proc.poll() is None:
                try:
                    self._run(self._qmp.execute("quit"), timeout=5)
                except Exception:
                    pass        # it may already be going; the kill below is certain
            _reap(self.proc)
        if self._qmp is not None:
            try:
                self._run(self._qmp.disconnect(), timeout=5)
            except Exception:
                pass
            self._qmp = None
        if not self._loop.is_closed():
            self._loop.close()
        if self._sock_dir is not None:
            self._sock_dir.cleanup()
            self._sock_dir = None
        self.tail.poll(final=True)

    # -- helpers

    def _run(self, coro, timeout: float):
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except asyncio.TimeoutError:
            raise EmulatorTimeout(f"error: QEMU's QMP did not answer within {timeout:g} s "
                                  f"(run files: {self.run_dir})") from None

    def _log_tail(self) -> str:
        try:
            return " ".join(self.log_path.read_text(errors="replace").split())[-400:]
        except FileNotFoundError:
            return ""

    def _drain_events(self) -> list[dict]:
        new: list[dict] = [dict(e) for e in self._listener.clear()] if self._listener else []
        self.events.extend(new)
        return new

    async def _pump(self, seconds: float) -> tuple[list[str], list[dict]]:
        """Let QMP run for `seconds`; return new serial lines and events."""
        await asyncio.sleep(seconds)
        return self.tail.poll(), self._drain_events()

    def poll(self, seconds: float = POLL_S) -> tuple[list[str], list[dict]]:
        """Wait `seconds` (QMP keeps running) and return what is new:
        (serial lines, QMP events)."""
        return self._loop.run_until_complete(self._pump(seconds))

    # -- the API tests use

    def wait_for_line(self, pattern: str, timeout: float = 30) -> str:
        """Wait for a console line matching `pattern` (regex or plain text),
        including lines already seen; return it."""
        match = _matcher(pattern)
        seen = next((line for line in self.tail.lines if match(line)), None)
        deadline = time.monotonic() + timeout
        while seen is None:
            if time.monotonic() > deadline:
                raise EmulatorTimeout(f"error: no console line matching '{pattern}' "
                                      f"within {timeout:g} s (serial log: {self.serial_path})")
            if not self.running():
                self.tail.poll(final=True)
                seen = next((line for line in self.tail.lines if match(line)), None)
                if seen is None:
                    raise EmulatorError(f"error: QEMU exited before a line matching "
                                        f"'{pattern}' (serial log: {self.serial_path})")
                break
            lines, _ = self.poll()
            seen = next((line for line in lines if match(line)), None)
        return seen

    def wait_event(self, name: str, timeout: float = 30) -> dict:
        """Wait for the QMP event `name` (e.g. "SHUTDOWN"), including events
        already received; return it ({"event", "data", "timestamp"})."""
        self._drain_events()
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for event in self.events[checked:]:
                if event.get("event") == name:
                    return event
            checked = len(self.events)
            if time.monotonic() > deadline:
                raise EmulatorTimeout(f"error: no QMP event {name} within {timeout:g} s "
                                      f"(run files: {self.run_dir})")
            if not self.running():
                raise EmulatorError(f"error: QEMU exited before the QMP event {name}")
            self.poll()

    def qmp(self, command: str, timeout: float = 30, **arguments: Any):
        """Execute a QMP command; returns its "return" value."""
        if self._qmp is None:
            raise EmulatorError("error: QEMU's QMP is not connected")
        return self._run(self._qmp.execute(command, arguments or None), timeout)

    def query_status(self) -> dict:
        """QMP query-status: {"running": bool, "status": "running"|"shutdown"|...}."""
        return self.qmp("query-status")

    def screendump(self, path) -> Path:
        """Save the screen as a PNG at `path`."""
        path = Path(path).resolve()
        self.qmp("screendump", filename=str(path), format="png")
        return path

    def hmp(self, command: str) -> str:
        """A human monitor command through QMP, e.g. "info registers"."""
        arguments: dict[str, Any] = {"command-line": command}
        return self.qmp("human-monitor-command", **arguments)


def _qemu_accepts_kvm(timeout: float = 30) -> bool:
    """Does KVM here really run OVMF? Boot it with no disk: a usable KVM shows
    the firmware's console on COM1; a broken one stops the VM with
    "KVM internal error" (status internal-error) or QEMU fails."""
    with tempfile.TemporaryDirectory(prefix="uefi-hv-kvm-probe-") as tmp:
        try:
            with QemuMachine(None, run_dir=tmp, accel="kvm") as m:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and m.running():
                    m.poll(0.2)
                    if m.query_status().get("status") != "running":
                        return False
                    if m.tail.lines:
                        return True
        except Exception:       # no QEMU, no firmware, KVM refused: not usable
            return False
    return False


@functools.lru_cache(maxsize=None)
def kvm_vmx_usable() -> bool:
    """True when QEMU can run a VMX hypervisor under KVM here: /dev/kvm is
    usable, the CPU offers VMX to its guests (`-cpu host`), and a probe boot
    shows that KVM really runs OVMF (/dev/kvm alone proves nothing: a
    paravirtual KVM can fail with "KVM internal error"). Cached per process."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if not re.search(r"^flags\s*:.*\bvmx\b", cpuinfo, re.M):
        return False
    nested = Path("/sys/module/kvm_intel/parameters/nested")
    if nested.exists() and nested.read_text().strip() not in ("Y", "1"):
        return False            # kvm_intel would hide VMX from its guests
    return _qemu_accepts_kvm()


def _boot_qemu(image: Path, cpus: int, timeout: float, expect, fail, expect_shutdown,
               run_dir, stream, cpu_model=None) -> BootResult:
    start = time.monotonic()
    machine = QemuMachine(image, cpus=cpus, run_dir=run_dir, stream=stream, check_image=False,
                          cpu_model=cpu_model)
    result = BootResult(False, "", "qemu", machine.run_dir)
    try:
        machine.start()
        result.pids.append(machine.pid)
        result.ok, result.reason = _watch(
            poll=lambda: machine.poll(0.1), running=machine.running,
            expect=expect, fail=fail, expect_shutdown=expect_shutdown,
            timeout=timeout, exited=lambda: f"QEMU exited ({machine.process.returncode})",
            on_event=_judge_qemu_event, drain=lambda: machine.poll(0.2)[0])
        try:
            result.screenshot = machine.screendump(machine.run_dir / "screen.png")
        except Exception:
            result.screenshot = None      # QEMU is gone: no screen to read
    finally:
        machine.close()
        result.elapsed = time.monotonic() - start
    result.serial = machine.serial
    result.events = machine.events
    result.log = machine.log_path.read_text(errors="replace") if machine.log_path.exists() else ""
    return result


def _judge_qemu_event(event: dict) -> Optional[tuple[str, bool]]:
    """("power-off" | failure reason, is_failure) for an event that ends a run."""
    if event.get("event") != "SHUTDOWN":
        return None
    reason = event.get("data", {}).get("reason", "")
    if reason == "guest-shutdown":
        return "power-off", False
    if reason == "guest-reset":
        return ("the guest reset the machine: a triple fault, or ResetSystem(EfiResetCold "
                "or EfiResetWarm) (QEMU runs with -no-reboot)"), True
    return f"QEMU shut down ({reason})", True


# --- Bochs --------------------------------------------------------------------------------

#: The project's Bochs 3.0, headless and without the built-in debugger, built
#: by `make setup` (tools/build-bochs.sh; docs/emulators.md says why).
PROJECT_BOCHS = ROOT / ".cache" / "bochs-3.0" / "bin" / "bochs"
#: Which Bochs runs: "project" (the default), "system" (the `bochs` on PATH,
#: Debian's package: 2.7 on Debian 12, 3.0 on Debian 13) or a path to a bochs
#: binary. `uefi-hv run --bochs` and boot(bochs=...) override it.
BOCHS_ENV = "UEFI_HV_BOCHS"

#: Panics Bochs reports and then carries on from, that do the run no harm: the
#: log line's text, and why. Bochs runs with `panic: action=report`, so any
#: other panic is named as the run's failure (judge_bochs_log_line).
BOCHS_KNOWN_PANICS = {
    "PAE: asked to set dirty on paging leaf entry with R/W bit clear":
        "Bochs 3 with CET models, once per boot of Debian 12's OVMF: a sanity check "
        "of Bochs's own (cpu/paging.cc) when the firmware writes a read-only page with "
        "CR0.WP=0; the write and the dirty bit happen as on hardware",
    "VMEXIT CR4 is broken": "Bochs 3 refuses a CR4.LA57 change while EFER.LMA=1 even "
        "when a VM exit loads the host's CR4 (cpu/vmx.cc), then loads it anyway; "
        "on hardware a VM exit may change CR4.LA57 (SDM 29.5.1 'Loading Host Control Registers, "
        "Debug Registers, MSRs')",
    "VMENTER CR4 is broken": "the same check on VM entry into a guest with 5-level "
        "paging (SDM 28.3.2.1 'Loading Guest Control Registers, Debug Registers, and MSRs' "
        "lets VM entry change CR4.LA57)",
}

#: MSRs the firmware of an Intel PC sets and Bochs does not model
#: (IA32_MISC_ENABLE's fast-string bit): given to the project's Bochs for Intel
#: models. The AMD models of `bochs --help cpu` have no such MSR.
BOCHS_MSRS = OVMF_DIR / "bochs-msrs.def"
BOCHS_AMD_MODELS = frozenset({"amd_k6_2_chomper", "athlon_xp", "athlon64_clawhammer",
                              "athlon64_venice", "turion64_tyler", "phenom_8650_toliman",
                              "zambezi", "trinity_apu", "ryzen"})

#: A Bochs whose process uses no CPU time for this long has stopped (it burns
#: CPU whenever it emulates, even a halted machine), and so has its run. Seen
#: once in many hundreds of runs, on a loaded 2-core machine: the log ends in
#: the middle of a multi-line report and the process sleeps. The run is named
#: as stalled, the process's state kept in stall.txt, and boot() runs it
#: again once (BOCHS_STALL_RETRIES) in a fresh Bochs.
BOCHS_STALL_S = 30.0
BOCHS_STALL_RETRIES = 1
BOCHS_STALLED = "Bochs stalled"

_BOCHS_LOG_LINE = re.compile(r"^\d+([a-z])\[[^\]]*\]\s*(.*)$")
_TRIPLE_FAULT = re.compile(r"3rd \(\d+\) exception with no resolution|triple fault", re.I)
_BOCHS_VERSION = re.compile(r"Bochs x86 Emulator (\S+)")
_FOUR_GIB = 1 << 32


def judge_bochs_log_line(line: str, tolerate: Sequence[str] = ()) -> Optional[tuple[str, bool]]:
    """What a Bochs log line means for the run: ("power-off", False), a failure
    (reason, True), or None. Bochs prefixes each line with the instruction
    count, a level letter (i, e, p for panic) and the device. A line holding
    one of `tolerate` is no failure (a test that causes it on purpose)."""
    if any(t in line for t in tolerate):
        return None
    m = _BOCHS_LOG_LINE.match(line.strip())
    level, text = (m.group(1), m.group(2)) if m else ("", line.strip())
    if BOCHS_POWER_OFF in text:
        return "power-off", False
    if "VMFAIL" in text or "VMENTER FAIL" in text:
        return f"Bochs: {text[text.find('VM'):]}", True
    if _TRIPLE_FAULT.search(text):
        return f"Bochs: triple fault: {text}", True
    if level == "p" and not any(known in text for known in BOCHS_KNOWN_PANICS):
        return f"Bochs: PANIC: {text}", True
    return None


@dataclass(frozen=True)
class Bochs:
    """One Bochs binary and what it can do, as it says itself (`--help cpu`)."""

    path: Path
    version: str                  # "3.0", "2.7", ...
    models: tuple                 # the CPU models it knows
    project_build: bool           # tools/build-bochs.sh's: nogui, no debugger
    debugger: bool                # compiled in: it stops at a prompt unless -rc says "c"

    def __str__(self) -> str:
        kind = "the project's build" if self.project_build else "a system Bochs"
        return f"Bochs {self.version} ({kind}: {self.path})"

    def command(self, bxrc: Path, run_dir: Path) -> list[str]:
        """The command line that runs `bxrc`."""
        cmd = [str(self.path), "-q", "-f", str(bxrc)]
        if self.debugger:
            rc = run_dir / "debugger.rc"
            rc.write_text("c\n")           # continue at the debugger's first prompt
            cmd += ["-rc", str(rc)]
        if self.project_build:
            return cmd
        # Debian's packages have no nogui display: rfb binds VNC port 5900, so
        # each run gets a private network namespace and runs can go in parallel
        # (as a user, inside a user namespace).
        unshare = [require_program("unshare", "util-linux"), "-n"]
        if os.geteuid() != 0:
            unshare.insert(1, "-r")
        return unshare + cmd


def _probe_bochs(path: Path, project_build: bool) -> Bochs:
    def ask(*args: str) -> str:         # Bochs prints its help on both streams
        return subprocess.run([str(path), *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", timeout=30).stdout

    try:
        out, usage = ask("--help", "cpu"), ask("--help")
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EmulatorError(f"error: {path} does not run as Bochs: {e}") from None
    version = _BOCHS_VERSION.search(out)
    if version is None:
        raise EmulatorError(f"error: {path} does not say it is Bochs ('--help cpu' printed "
                            f"no 'Bochs x86 Emulator' banner)")
    listing = out.split("Supported CPU models:", 1)[-1].split("=====", 1)[0]
    models = tuple(line.strip() for line in listing.splitlines()
                   if re.fullmatch(r"[a-z0-9_]+", line.strip()))
    return Bochs(path=path, version=version.group(1), models=models,
                 project_build=project_build, debugger=" -rc " in usage)


@functools.lru_cache(maxsize=None)
def _cached_probe(path: Path, mtime: float, project_build: bool) -> Bochs:
    return _probe_bochs(path, project_build)


def find_bochs(choice: Optional[str] = None) -> Bochs:
    """The Bochs a run uses: `choice`, else $UEFI_HV_BOCHS, else the project's
    build ("project", "system" or a path; see BOCHS_ENV)."""
    where = f"--bochs {choice}" if choice else f"{BOCHS_ENV}={os.environ.get(BOCHS_ENV, '')}"
    choice = choice or os.environ.get(BOCHS_ENV) or "project"
    if choice == "project":
        if not os.access(PROJECT_BOCHS, os.X_OK):
            raise MissingEnvironment(
                f"error: the project's Bochs 3.0 is not built ({PROJECT_BOCHS} is missing); "
                f"run 'make setup' (or tools/build-bochs.sh), or use Debian's package "
                f"with --bochs system ({BOCHS_ENV}=system)")
        path, project_build = PROJECT_BOCHS, True
    elif choice == "system":
        path, project_build = Path(require_program("bochs", "bochs")), False
    else:
        path = Path(choice)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(f"error: {where}: not an executable file "
                             f"(use 'project', 'system' or the path of a bochs binary)")
        project_build = path.resolve() == PROJECT_BOCHS.resolve()
    path = path.resolve()
    return _cached_probe(path, path.stat().st_mtime, project_build)


def bochs_rom_address(rom: Path) -> int:
    """Where OVMF.fd goes: its last byte at 4 GiB, where the reset vector is.
    Debian 12's OVMF.fd is 2 MiB (0xffe00000), Debian 13's 4 MiB (0xffc00000)."""
    return _FOUR_GIB - rom.stat().st_size


class BochsMachine(Machine):
    """A Bochs PC with OVMF as its ROM, the image as its first ATA disk, COM1
    in `run_dir/serial.txt` and the Bochs log in `run_dir/bochs.log`.

        with BochsMachine(image, cpus=2, cpu_model="sapphire_rapids") as m:
            while m.running():
                lines, log_events = m.poll()

    The configuration is rendered per run from templates/bochs/bochsrc.bxrc.j2
    with what the chosen Bochs needs (find_bochs); `emulator.txt` in the run
    directory says which Bochs ran. Bochs writes to its disk and locks it, so
    each run boots its own sparse copy, removed at close. Leaving the `with`
    kills Bochs's process group.
    """

    def __init__(self, image, cpus: int = 1, cpu_model: Optional[str] = None, run_dir=None,
                 bochs: Optional[str] = None, memory_mib: int = MEMORY_MIB,
                 stream: Stream = None, check_image: bool = True, tolerate: Sequence[str] = (),
                 smp_quantum: Optional[int] = None):
        if check_image:
            check_bootable(image)
        self.tolerate = tuple(tolerate)
        self.image = Path(image).resolve()
        self.cpus = cpus
        self.bochs = find_bochs(bochs)
        self.cpu_model = cpu_model or DEFAULT_BOCHS_CPU
        self.smp_quantum = smp_quantum
        if self.bochs.models and self.cpu_model not in self.bochs.models:
            raise UsageError(f"error: {self.bochs} has no CPU model '{self.cpu_model}'; "
                             f"it has: {', '.join(self.bochs.models)}")
        self.rom, self.vgarom = firmware("bochs", "rom"), firmware("bochs", "vgarom")
        self.memory_mib = memory_mib
        self.run_dir = new_run_dir("bochs", run_dir)
        self.serial_path = self.run_dir / "serial.txt"
        self.log_path = self.run_dir / "bochs.log"
        self.disk = self.run_dir / "disk.img"
        self.tail = SerialTail(self.serial_path, stream)
        self.log = SerialTail(self.log_path)      # followed like the console
        self.proc: Optional[subprocess.Popen] = None
        self._busy = (0.0, time.monotonic())     # (CPU seconds, when it last grew)

    def configuration(self) -> Path:
        from uefi_hv.generate import render

        return render("bochs/bochsrc.bxrc.j2", self.run_dir / "bochsrc.bxrc", [],
                      bochs=self.bochs, rom=self.rom, vgarom=self.vgarom,
                      rom_address=f"{bochs_rom_address(self.rom):#x}",
                      memory_mib=self.memory_mib, cpus=self.cpus, cpu_model=self.cpu_model,
                      smp_quantum=self.smp_quantum, msrs=self.msrs, image=self.disk, serial=self.serial_path,
                      log=self.log_path)

    @property
    def msrs(self) -> Optional[Path]:
        """The MSR file for this run (BOCHS_MSRS), or None: the project's build
        takes it (configurable MSRs are compiled in), for Intel models."""
        if self.bochs.project_build and self.cpu_model not in BOCHS_AMD_MODELS:
            return BOCHS_MSRS
        return None

    def start(self) -> "BochsMachine":
        try:
            for stale in (self.serial_path, self.log_path):
                stale.unlink(missing_ok=True)
            subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(self.image),
                            str(self.disk)], check=True)
            cmd = self.bochs.command(self.configuration(), self.run_dir)
            (self.run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
            (self.run_dir / "emulator.txt").write_text(f"{self.bochs}\n")
            self.proc = _spawn(cmd, self.run_dir, self.run_dir / "bochs.out")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill Bochs's process group and remove the disk copy; idempotent."""
        if self.proc is not None:
            _reap(self.proc, grace_s=0)
        for leftover in (self.disk, self.disk.with_name(self.disk.name + ".lock")):
            leftover.unlink(missing_ok=True)
        self.tail.poll(final=True)
        self.log.poll(final=True)

    def poll(self, seconds: float = 0.1) -> tuple[list[str], list[tuple[str, bool]]]:
        """Wait `seconds`; return the new console lines and the judged log
        lines (judge_bochs_log_line) that end a run."""
        time.sleep(seconds)
        judged = [verdict for line in self.log.poll()
                  if (verdict := judge_bochs_log_line(line, self.tolerate))]
        if (stall := self.stalled()) is not None:
            judged.append((stall, True))
        return self.tail.poll(), judged

    def _cpu_seconds(self) -> Optional[float]:
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime

    def stalled(self, window: Optional[float] = None) -> Optional[str]:
        """Why the run has stopped when Bochs, alive, has used no CPU time for
        `window` seconds (BOCHS_STALL_S; its state goes to stall.txt); else None."""
        window = BOCHS_STALL_S if window is None else window
        cpu, now = self._cpu_seconds(), time.monotonic()
        if cpu is None or not self.running():
            return None
        if cpu - self._busy[0] >= 0.2:
            self._busy = (cpu, now)
            return None
        if now - self._busy[1] < window:
            return None
        state = []
        for name in ("status", "wchan", "stack", "syscall"):
            try:
                state.append(f"--- /proc/{self.process.pid}/{name}\n"
                             + Path(f"/proc/{self.process.pid}/{name}").read_text(errors="replace"))
            except OSError:
                pass
        (self.run_dir / "stall.txt").write_text("\n".join(state) + "\n")
        return (f"{BOCHS_STALLED}: its process used no CPU time for {window:g} s "
                f"(the emulator stopped, not the guest; /proc state in stall.txt)")

    def drain(self) -> list[str]:
        """The console's last lines once Bochs has stopped (it flushes its
        serial file when it exits)."""
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        return self.tail.poll(final=True)


def _boot_bochs(image: Path, cpus: int, timeout: float, expect, fail, expect_shutdown,
                cpu_model, bochs, run_dir, stream, tolerate=(), smp_quantum=None) -> BootResult:
    """One Bochs run; a run whose Bochs stalled (BOCHS_STALLED) is run again,
    at most BOCHS_STALL_RETRIES times, its files kept in run_dir/stalled-N."""
    result = _boot_bochs_once(image, cpus, timeout, expect, fail, expect_shutdown,
                              cpu_model, bochs, run_dir, stream, tolerate, smp_quantum)
    for attempt in range(1, BOCHS_STALL_RETRIES + 1):
        if result.ok or not result.reason.startswith(BOCHS_STALLED):
            break
        kept = result.run_dir / f"stalled-{attempt}"
        kept.mkdir(exist_ok=True)
        for path in list(result.run_dir.iterdir()):
            if path.is_file():
                path.rename(kept / path.name)
        retried = _boot_bochs_once(image, cpus, timeout, expect, fail, expect_shutdown,
                                   cpu_model, bochs, result.run_dir, stream, tolerate, smp_quantum)
        retried.reason += f" (run again: the first {result.reason[0].lower()}{result.reason[1:]})"
        retried.pids = result.pids + retried.pids
        result = retried
    return result


def _boot_bochs_once(image: Path, cpus: int, timeout: float, expect, fail, expect_shutdown,
                     cpu_model, bochs, run_dir, stream, tolerate=(), smp_quantum=None) -> BootResult:
    start = time.monotonic()
    machine = BochsMachine(image, cpus=cpus, cpu_model=cpu_model, run_dir=run_dir,
                           bochs=bochs, stream=stream, check_image=False, tolerate=tolerate,
                           smp_quantum=smp_quantum)
    result = BootResult(False, "", "bochs", machine.run_dir)
    try:
        machine.start()
        result.pids.append(machine.pid)
        result.ok, result.reason = _watch(
            poll=machine.poll, running=machine.running,
            expect=expect, fail=fail, expect_shutdown=expect_shutdown, timeout=timeout,
            exited=lambda: f"Bochs exited ({machine.process.returncode}) without powering off; "
                           f"see {machine.run_dir / 'bochs.out'}",
            on_event=lambda judged: judged, drain=machine.drain)
    finally:
        machine.close()
        result.elapsed = time.monotonic() - start
    result.serial = machine.serial
    result.log = machine.log.text
    return result


# --- judging a run ---------------------------------------------------------------------

def _watch(poll, running, expect, fail, expect_shutdown, timeout, exited, on_event, drain):
    """Follow a run until it is decided; return (ok, reason).

    poll() -> (new console lines, new events); on_event(event) ->
    ("power-off", False) | (failure reason, True) | None; drain() -> the
    console lines still unread once the machine has stopped.
    """
    deadline = time.monotonic() + timeout
    expecting, failing = _matchers(expect), _matchers(fail)

    def judge_lines(lines):
        for line in lines:
            if (marker := _first_match(failing, line)) is not None:
                return False, f"failure marker '{marker}' seen: {line.strip()}"
            if (marker := _first_match(expecting, line)) is not None:
                return True, f"marker '{marker}' seen"
            if _first_match(_FIRMWARE_FAULTS, line) is not None:
                return False, f"firmware exception: {line.strip()}"
        return None

    while True:
        alive = running()
        lines, events = poll()
        if (verdict := judge_lines(lines)) is not None:
            return verdict
        for event in events:
            judged = on_event(event)
            if judged is None:
                continue
            # The console's last lines (a FAIL printed just before ResetSystem)
            # can reach the serial file after the log or QMP reports the
            # power-off: they decide the run before the power-off does.
            if (verdict := judge_lines(drain())) is not None:
                return verdict
            what, failed = judged
            if failed:
                return False, what
            if expect:
                return False, f"the machine powered off before {_describe(expect)} appeared"
            return True, "clean power-off"
        if not alive:
            return False, exited()
        if time.monotonic() > deadline:
            if not expect and not expect_shutdown:
                return True, f"ran {timeout:g} s without a failure"
            return False, f"timeout after {timeout:g} s without {_describe(expect)}"


def _describe(expect: Sequence[str]) -> str:
    if not expect:
        return "a clean power-off"
    return " or ".join(f"'{e}'" for e in expect)


def boot(image, emulator: str = "auto", cpus: int = 1, timeout: float = 60.0,
         expect: Sequence[str] = (), fail: Sequence[str] = (),
         expect_shutdown: bool = True, cpu_model: Optional[str] = None,
         bochs: Optional[str] = None, run_dir=None, stream: Stream = None,
         tolerate: Sequence[str] = (), smp_quantum: Optional[int] = None) -> BootResult:
    """Boot the GPT image `image` and judge the run.

    expect/fail: console markers (regexes or plain strings, matched per line);
    the run stops at the first one seen. With no `expect`, a clean power-off
    is the success (when `expect_shutdown`). Bochs runs also fail on a VMFAIL,
    VMENTER FAIL, triple fault or panic in its log (but the known, harmless
    ones of BOCHS_KNOWN_PANICS, and log lines holding one of `tolerate`, for a
    test that causes them). `bochs` chooses the Bochs (find_bochs). `smp_quantum`
    sets Bochs's `cpu: quantum` (what a halted CPU counts for in each round
    of the SMP loop; the benchmark's Linux boots use 1). `auto` is QEMU with KVM
    when kvm_vmx_usable(), else Bochs. Bad input (no image, no ESP) raises a
    UserError before anything starts.
    """
    if emulator not in EMULATORS:
        raise UsageError(f"error: unknown emulator '{emulator}' (one of {', '.join(EMULATORS)})")
    if cpus < 1:
        raise UsageError("error: --cpus must be at least 1")
    image = Path(image)
    check_bootable(image)       # a missing image, no GPT, no ESP: say so before booting
    if isinstance(expect, str):
        expect = [expect]
    if isinstance(fail, str):
        fail = [fail]
    if emulator == "auto":
        emulator = "qemu" if kvm_vmx_usable() else "bochs"
    if emulator == "qemu":
        return _boot_qemu(image, cpus, timeout, list(expect), list(fail), expect_shutdown,
                          run_dir, stream, cpu_model)
    return _boot_bochs(image, cpus, timeout, list(expect), list(fail), expect_shutdown,
                       cpu_model, bochs, run_dir, stream, tolerate, smp_quantum)


# --- CLI --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def qemu_cpu_models() -> frozenset[str]:
    """The -cpu values this QEMU knows (`-cpu help`), besides host and max."""
    qemu = require_program("qemu-system-x86_64", "qemu-system-x86")
    listing = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True).stdout
    return frozenset(m.group(1) for m in re.finditer(r"^x86\s+(\S+)", listing, re.M)) | {"host", "max"}


def cmd_run(args) -> int:
    if args.cpu_model and args.emulator == "qemu":
        model = args.cpu_model.split(",")[0]
        if model not in qemu_cpu_models():
            raise UsageError(f"error: QEMU has no CPU model '{model}' (a Bochs model?); "
                             "`qemu-system-x86_64 -cpu help` lists QEMU's, e.g. EPYC")
    if args.bochs and args.emulator == "qemu":
        raise UsageError("error: --bochs chooses the Bochs binary; this run is QEMU's")
    # A polite kill (SIGTERM) ends the run like Ctrl-C: the emulator goes too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = boot(args.image, emulator=args.emulator, cpus=args.cpus, timeout=args.timeout,
                  expect=[args.expect] if args.expect else [], cpu_model=args.cpu_model,
                  bochs=args.bochs, run_dir=args.run_dir, stream=lambda line: print(line, flush=True))
    print(f"uefi-hv: {result}")
    return 0 if result.ok else 1

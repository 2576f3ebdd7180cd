"""flash: write a disk image to a USB stick, and never to the wrong disk.

`uefi-hv flash IMAGE --device /dev/sdX` refuses, with the reason and the fix,
anything that is not plainly a USB stick holding nothing in use: the kernel's
own view of the device (sysfs: `removable`, the bus path, partitions,
holders) and of the mounts (/proc/self/mounts) decides, not the name.  Then
it asks, writes with a progress bar, syncs, drops the cached pages, reads the
written range back from the device and compares SHA-256 digests.

`uefi-hv devices` lists the disks that pass the device checks.

Everything that touches the host takes its root as a parameter (`sysfs_root`,
`proc_mounts`, `is_block`, `stdin`) so that the tests run the same code
against a sysfs tree and "devices" (regular files) they make themselves.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from uefi_hv.errors import UsageError, UserError
from uefi_hv.gpt import check_bootable

MiB = 1 << 20
GiB = 1 << 30
#: Sticks are smaller than this; the external disk with someone's backups is
#: usually larger.  --allow-large lifts the limit.
LARGE_DEVICE = 256 * GiB
#: Big enough that a USB stick writes at full speed, small enough that the
#: progress bar moves and Ctrl-C is answered within a second or so.
CHUNK = 4 * MiB
SYSFS_ROOT = Path("/sys")
PROC_MOUNTS = Path("/proc/self/mounts")
# /proc/mounts writes blanks, tabs and backslashes in paths as octal (\040).
_OCTAL = re.compile(r"\\([0-7]{3})")

#: progress(phase, done, total): phase is "write" or "verify".
ProgressFn = Callable[[str, int, int], None]


class FlashError(UserError):
    """A refusal: the target is not one we write to; nothing was written."""


class NotADevice(FlashError, UsageError):
    """The --device path does not exist or is not a block device (exit 2)."""


class FlashInterrupted(UserError):
    """The write or the read-back stopped part way (Ctrl-C: 130, I/O error: 1)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class BlockDevice:
    """A whole disk as sysfs describes it (/sys/class/block/NAME)."""

    name: str                   # kernel name: "sdb"
    sysfs_path: Path            # resolved: .../usb2/2-1/.../block/sdb
    size: int                   # bytes (sysfs `size` counts 512-byte sectors)
    removable: bool
    read_only: bool
    vendor: str
    model: str
    partitions: list[tuple[str, int]] = field(default_factory=list)  # (name, bytes)
    holders: list[str] = field(default_factory=list)  # dm-0, md0: stacked on this disk

    @property
    def node(self) -> str:
        return f"/dev/{self.name}"

    @property
    def usb(self) -> bool:
        # A USB mass-storage disk sits below its host controller's usbN bus
        # and port directories in the device tree: .../usb2/2-1/2-1:1.0/host6/...
        return any(part.startswith("usb") for part in self.sysfs_path.parts)

    @property
    def bus(self) -> str:
        if self.usb:
            return "USB"
        parts = self.sysfs_path.parts
        # /sys/devices/<bus root>/...: pci0000:00, platform, virtual, ...
        return parts[parts.index("devices") + 1] if "devices" in parts[:-1] else "unknown bus"

    @property
    def label(self) -> str:
        return " ".join(w for w in (self.vendor, self.model) if w) or "unknown model"

    def not_a_stick(self) -> str:
        """Why this is not a removable USB disk ("" when it is one)."""
        why = ([] if self.removable else ["not removable"]) + \
              ([] if self.usb else [f"attached over {self.bus}, not USB"])
        return ", ".join(why)

    def describe(self) -> str:
        return f"{self.node} ({self.label}, {human_size(self.size)})"


def human_size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def is_block_device(path: str | Path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return default


def read_block_device(name: str, sysfs_root: Path = SYSFS_ROOT) -> BlockDevice:
    """The whole disk `name` from sysfs_root/class/block/NAME."""
    link = Path(sysfs_root) / "class" / "block" / name
    real = link.resolve()

    def size_of(d: Path) -> int:
        return int(_read(d / "size", "0") or 0) * 512   # always 512-byte units

    return BlockDevice(
        name=name,
        sysfs_path=real,
        size=size_of(real),
        removable=_read(real / "removable") == "1",
        read_only=_read(real / "ro") == "1",
        vendor=_read(real / "device" / "vendor"),
        model=_read(real / "device" / "model"),
        partitions=sorted((p.name, size_of(p)) for p in real.iterdir()
                          if (p / "partition").is_file()),
        holders=sorted(h.name for h in (real / "holders").glob("*")),
    )


def list_devices(sysfs_root: Path = SYSFS_ROOT) -> list[BlockDevice]:
    """Every whole disk the kernel knows, but the virtual ones (loop, ram,
    zram, dm, md: they live under /sys/devices/virtual)."""
    devices = []
    block = Path(sysfs_root) / "class" / "block"
    for link in sorted(block.glob("*")) if block.is_dir() else []:
        real = link.resolve()
        if (real / "partition").exists() or "virtual" in real.parts:
            continue
        devices.append(read_block_device(link.name, sysfs_root))
    return devices


def mounts_on(device: BlockDevice, proc_mounts: Path = PROC_MOUNTS) -> list[tuple[str, str]]:
    """(source, mount point) of everything mounted from the disk or its
    partitions; a stick formatted without a partition table is mounted whole."""
    names = {device.name} | {p for p, _ in device.partitions}
    found = []
    for line in _read(Path(proc_mounts)).splitlines():
        fields = line.split()
        if len(fields) < 2 or not fields[0].startswith("/"):
            continue
        source, where = (_OCTAL.sub(lambda m: chr(int(m[1], 8)), f) for f in fields[:2])
        if os.path.basename(os.path.realpath(source)) in names:   # /dev/disk/by-uuid/... too
            found.append((source, where))
    return found


def resolve_device(device: str | Path, sysfs_root: Path = SYSFS_ROOT,
                   is_block: Callable[[Path], bool] = is_block_device) -> str:
    """The kernel name (sdb) of the block device at `device`."""
    path = Path(device)
    if not path.exists():
        raise NotADevice(f"error: {device}: no such device; list the USB sticks with 'uefi-hv devices'")
    if not is_block(path):
        kind = "a directory" if path.is_dir() else "a regular file" if path.is_file() else "not a disk"
        raise NotADevice(
            f"error: {device} is not a block device (it is {kind}); give a whole USB disk "
            f"such as /dev/sdb (list them with 'uefi-hv devices'), or add --to-file to write "
            f"the image to a file")
    # The device number names the disk whatever the path (/dev/disk/by-id/usb-...).
    rdev = os.stat(path).st_rdev
    by_number = Path(sysfs_root) / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"
    if rdev and by_number.exists():
        return by_number.resolve().name
    return Path(os.path.realpath(path)).name


def check_device(device: str | Path, image_size: int, *, allow_large: bool = False,
                 sysfs_root: Path = SYSFS_ROOT, proc_mounts: Path = PROC_MOUNTS,
                 is_block: Callable[[Path], bool] = is_block_device) -> BlockDevice:
    """Every refusal of the issue, in the order a person would fix them."""
    name = resolve_device(device, sysfs_root, is_block)
    sys_dir = Path(sysfs_root) / "class" / "block" / name
    if not sys_dir.exists():
        raise FlashError(
            f"error: {device} ({name}) is not in {sysfs_root}/class/block, so its bus and "
            f"removability are unknown; give a whole USB disk such as /dev/sdb (see 'uefi-hv devices')")
    if (sys_dir / "partition").is_file():
        whole = sys_dir.resolve().parent.name
        number = _read(sys_dir / "partition")
        raise FlashError(
            f"error: {device} is a partition (number {number} of /dev/{whole}), not a whole disk; "
            f"the image brings its own partition table: flash the whole disk, --device /dev/{whole}")

    disk = read_block_device(name, sysfs_root)
    if disk.not_a_stick():
        raise FlashError(
            f"error: {disk.describe()} is not a removable USB disk ({disk.not_a_stick()}); uefi-hv flashes "
            f"only USB sticks, so that an internal or system disk is never overwritten: "
            f"check the name with 'uefi-hv devices'")
    if disk.read_only:
        raise FlashError(
            f"error: {disk.describe()} is read-only; slide the stick's write-protect switch "
            f"off, plug it in again and flash again")
    mounted = mounts_on(disk, proc_mounts)
    if mounted:
        listed = ", ".join(f"{src} on {where}" for src, where in mounted)
        umount = " ".join(f"'{where}'" for _, where in mounted)
        raise FlashError(
            f"error: {disk.describe()} is in use, mounted: {listed}; unmount it first "
            f"(umount {umount}), then flash again")
    if disk.holders:
        raise FlashError(
            f"error: {disk.describe()} is in use by {', '.join(disk.holders)} (device mapper, "
            f"RAID or LVM stacked on it); stop that first, then flash again")
    if disk.size == 0:
        raise FlashError(f"error: {disk.node} ({disk.label}) has no medium (size 0); "
                         f"insert the card or stick, then flash again")
    if disk.size < image_size:
        raise FlashError(
            f"error: {disk.describe()} is smaller than the image ({human_size(image_size)}); "
            f"use a stick of at least {human_size(image_size)}")
    if disk.size > LARGE_DEVICE and not allow_large:
        raise FlashError(
            f"error: {disk.describe()} is larger than {human_size(LARGE_DEVICE)}: USB sticks "
            f"rarely are, external disks full of someone's files often are; if you mean this "
            f"disk, add --allow-large")
    return disk


def check_file_target(target: str | Path, image: Path,
                      is_block: Callable[[Path], bool] = is_block_device) -> Path:
    """--to-file: a regular file (or a new one), never a device, never the image."""
    path = Path(target)
    if path.exists():
        if is_block(path):
            raise UsageError(f"error: --to-file writes to files, and {target} is a block device; "
                             f"drop --to-file so that the device checks run")
        if not path.is_file():
            raise UsageError(f"error: {target} is not a regular file; give a file name to write the image to")
        if path.samefile(image):
            raise UsageError(f"error: {target} is the image itself; give another file name")
    elif not path.parent.is_dir():
        raise UsageError(f"error: {path.parent} is not a directory; cannot create {target}")
    return path


class ProgressBar:
    """Bytes done of total and the rate, on stderr.

    Thirty lines of our own instead of a library: tqdm and rich are not
    dependencies of this project and one line of output does not justify
    one.  On a terminal the line is redrawn in place (at most 10 times a
    second); in a log (stderr not a TTY) a line is printed every 10 %, so a
    CI log of a flash stays short."""

    def __init__(self, stream: TextIO = sys.stderr, clock: Callable[[], float] = time.monotonic):
        self.stream, self.clock = stream, clock
        self.tty = stream.isatty()
        self.phase = ""
        self.open_line = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.clock()
        if phase != self.phase:
            self.end()
            # The phase starts with a call for 0 bytes: that is when the clock starts.
            self.phase, self.start, self.last_draw, self.last_tenth = phase, now, 0.0, 0
        tenth = done * 10 // total if total else 10
        if self.tty:
            if now - self.last_draw < 0.1 and done < total:
                return
            lead, end = "\r", ""
        else:
            if tenth == self.last_tenth or done == 0:
                return
            lead, end = "", "\n"
        self.last_draw, self.last_tenth = now, tenth
        rate = done / MiB / max(now - self.start, 1e-6)
        filled = 30 * done // total if total else 30
        self.stream.write(f"{lead}{phase:<6} [{'#' * filled}{'.' * (30 - filled)}] "
                          f"{done / MiB:8.1f} / {total / MiB:.1f} MiB {rate:7.1f} MiB/s{end}")
        self.stream.flush()
        self.open_line = self.tty

    def end(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


def write_image(image: Path, target: Path, *, device: bool, progress: ProgressFn) -> str:
    """Copy `image` to the start of `target`; return the image's SHA-256.

    On a device every chunk is synced before the next (fdatasync), so the
    bar shows what the stick holds rather than what the page cache took in
    (which would race to 100 % and then sit in a minutes-long fsync)."""
    total = image.stat().st_size
    if device:
        # O_EXCL on a block device (Linux): EBUSY if anything holds it,
        # a last guard against a mount made after our checks.
        flags = os.O_WRONLY | os.O_EXCL
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(target, flags | os.O_CLOEXEC, 0o644)
    except OSError as e:
        hint = "; something mounted or opened it since the checks: unmount it" if e.errno == errno.EBUSY else ""
        raise FlashError(f"error: cannot open {target} for writing: {e.strerror}{hint}; nothing was written")

    digest = hashlib.sha256()
    done = 0
    buf = bytearray(CHUNK)
    try:
        progress("write", 0, total)
        with image.open("rb", buffering=0) as src:
            while n := src.readinto(buf):
                chunk = memoryview(buf)[:n]
                digest.update(chunk)
                while chunk:                    # os.write may write less than asked
                    written = os.write(fd, chunk)
                    done += written
                    chunk = chunk[written:]
                if device:
                    os.fdatasync(fd)
                progress("write", done, total)
        os.fsync(fd)
    except (KeyboardInterrupt, OSError) as e:
        what = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else f"{e.strerror or e}"
        medium = "the stick" if device else target
        raise FlashInterrupted(
            f"error: writing {target} stopped ({what}): interrupted after {done} of {total} bytes "
            f"({100 * done // total if total else 100}%); {medium} is incomplete: flash it again",
            130 if isinstance(e, KeyboardInterrupt) else 1) from None
    finally:
        os.close(fd)
    return digest.hexdigest()


def read_back(target: Path, length: int, *, progress: ProgressFn) -> str:
    """SHA-256 of the first `length` bytes of `target`, as the medium holds them."""
    digest = hashlib.sha256()
    done = 0
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # Drop the (now clean) cached pages so that the reads below come
            # from the stick, not from the copy we just wrote into memory.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            progress("verify", 0, length)
            while done < length:
                data = os.read(fd, min(CHUNK, length - done))
                if not data:
                    break   # the target ended early: the digest will not match
                digest.update(data)
                done += len(data)
                progress("verify", done, length)
        finally:
            os.close(fd)
    except (KeyboardInterrupt, OSError) as e:
        what = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else f"{e.strerror or e}"
        raise FlashInterrupted(
            f"error: reading {target} back stopped ({what}) after {done} of {length} bytes; the "
            f"image was written but not verified: flash it again",
            130 if isinstance(e, KeyboardInterrupt) else 1) from None
    return digest.hexdigest()


def confirm(disk: BlockDevice, image: Path, image_size: int, stdin: TextIO, out: TextIO) -> bool:
    parts = ", ".join(f"{p} ({human_size(s)})" for p, s in disk.partitions) or "none"
    out.write(f"About to write {image} ({human_size(image_size)}) to {disk.node}:\n"
              f"  model:      {disk.label}\n"
              f"  size:       {human_size(disk.size)} ({disk.size} bytes), {disk.bus}, removable\n"
              f"  partitions: {parts}\n"
              f"Everything on {disk.node} will be lost. Type 'yes' to go on: ")
    out.flush()
    answer = stdin.readline()     # "" at end of input: no
    if not answer.endswith("\n"):
        out.write("\n")
    return answer.strip().lower() in ("y", "yes")


def flash(image: str | Path, device: str | Path, *, yes: bool = False, dry_run: bool = False,
          allow_large: bool = False, to_file: bool = False,
          sysfs_root: Path = SYSFS_ROOT, proc_mounts: Path = PROC_MOUNTS,
          is_block: Callable[[Path], bool] = is_block_device,
          progress: ProgressFn | None = None,
          stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """The whole of `uefi-hv flash`; returns the exit status (0 written and
    verified, 1 declined) and raises UserError for every refusal."""
    out = out or sys.stdout
    stdin = stdin or sys.stdin
    image = Path(image)
    # Before anything else: an image that cannot boot is refused, so the
    # stick is never wiped for nothing.
    info = check_bootable(image)
    where = f"{info.esp.index} ({human_size(info.esp.sectors * info.sector_size)})"
    out.write(f"image {image}: {human_size(info.size)}, GPT with the ESP as partition {where}, "
              f"holding EFI/BOOT/BOOTX64.EFI\n")

    if to_file:
        target = check_file_target(device, image, is_block)
        disk = None
        out.write(f"target {target}: a file\n")
    else:
        disk = check_device(device, info.size, allow_large=allow_large, sysfs_root=sysfs_root,
                            proc_mounts=proc_mounts, is_block=is_block)
        target = Path(device)
        parts = ", ".join(p for p, _ in disk.partitions) or "no partitions"
        out.write(f"target {disk.describe()}: removable, USB, {parts}\n")

    if dry_run:
        out.write(f"dry run: every check passed; nothing written (without --dry-run this "
                  f"writes {info.size} bytes to {target})\n")
        return 0
    if disk is not None and not yes and not confirm(disk, image, info.size, stdin, out):
        out.write(f"not confirmed; nothing written to {disk.node}\n")
        return 1

    progress = progress or ProgressBar()
    started = time.monotonic()
    try:
        written = write_image(image, target, device=disk is not None, progress=progress)
        seconds = time.monotonic() - started
        verified = read_back(target, info.size, progress=progress)
    finally:
        getattr(progress, "end", lambda: None)()
    if verified != written:
        raise UserError(
            f"error: {target} reads back differently from the image (SHA-256 {verified} "
            f"instead of {written}); the stick may be faulty or fake-sized: flash it again "
            f"or use another stick")
    out.write(f"wrote {info.size} bytes to {target} in {seconds:.1f} s "
              f"({info.size / MiB / max(seconds, 1e-6):.1f} MiB/s), read back and verified: "
              f"SHA-256 {written}\n")
    return 0


def cmd_flash(args, **host) -> int:
    """`host` (sysfs_root, proc_mounts, is_block, progress, stdin, out) is for tests."""
    return flash(args.image, args.device, yes=args.yes, dry_run=args.dry_run,
                 allow_large=args.allow_large, to_file=args.to_file, **host)


def cmd_devices(args, *, sysfs_root: Path = SYSFS_ROOT, proc_mounts: Path = PROC_MOUNTS,
                out: TextIO | None = None) -> int:
    out = out or sys.stdout
    disks = list_devices(sysfs_root)
    candidates = [d for d in disks if not d.not_a_stick()]
    others = [d for d in disks if d not in candidates]
    if candidates:
        out.write("Removable USB disks (for 'uefi-hv flash IMAGE --device DEVICE'):\n")
        for d in candidates:
            size = human_size(d.size) if d.size else "no medium"
            parts = ", ".join(p for p, _ in d.partitions) or "no partitions"
            mounted = mounts_on(d, proc_mounts)
            note = f"; mounted: {', '.join(w for _, w in mounted)}" if mounted else ""
            note += "; read-only" if d.read_only else ""
            out.write(f"  {d.node:<12} {size:>10}  {d.label}  ({parts}{note})\n")
    else:
        out.write(f"No removable USB disks found (looked in {sysfs_root}/class/block); "
                  f"plug in a USB stick and run 'uefi-hv devices' again.\n")
    if others:
        why = [f"{d.node} ({d.not_a_stick()})" for d in others]
        out.write(f"Not offered (not removable USB disks): {', '.join(why)}\n")
    return 0

"""`uefi-hv flash` and `uefi-hv devices`.

The device checks run against a sysfs tree built here, laid out as the
kernel lays out a USB stick, a SATA disk and an SD card reader; the
"devices" are regular files in the test's directory that the test declares
to be block devices (flash takes the sysfs root, the mount table and the
block-device check as parameters).  Every refusal leaves the stand-in device
byte for byte as it was.  Writes to files go through the real CLI.
"""

from __future__ import annotations

import hashlib
import io
import os
import resource
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from uefi_hv.errors import UsageError
from uefi_hv.flash import (GiB, MiB, FlashError, FlashInterrupted, NotADevice, ProgressBar,
                           cmd_devices, cmd_flash)
from uefi_hv.gpt import ImageError

from test_gpt import make_gpt_image

PRECIOUS = b"PRECIOUS: somebody's holiday photos\n" * 100
STICK_BYTES = 16013942784          # a "16 GB" SanDisk Cruzer Blade: 14.9 GiB
USB_PATH = "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0"
SATA_PATH = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0"
SD_READER_PATH = "devices/pci0000:00/0000:00:1c.0/0000:02:00.0/mmc_host/mmc0/mmc0:aaaa"


class FakeHost:
    """A sysfs tree, a mount table and a /dev of stand-in files."""

    def __init__(self, root: Path):
        self.sysfs = root / "sys"
        self.dev = root / "dev"
        self.mounts = root / "mounts"
        (self.sysfs / "class" / "block").mkdir(parents=True)
        self.dev.mkdir()
        self.mounts.write_text("proc /proc proc rw 0 0\n/dev/vda1 / ext4 rw 0 0\n")

    def add_disk(self, name: str, *, size: int = STICK_BYTES, bus_path: str = USB_PATH,
                 removable: bool = True, read_only: bool = False, vendor: str = "SanDisk",
                 model: str = "Cruzer Blade", partitions: tuple[int, ...] = (),
                 holders: tuple[str, ...] = ()) -> Path:
        """The disk's sysfs directory as the kernel makes it; returns its /dev node."""
        hw = self.sysfs / bus_path
        disk = hw / "block" / name
        disk.mkdir(parents=True)
        (hw / "vendor").write_text(f"{vendor:<8}\n")     # SCSI INQUIRY pads with blanks
        (hw / "model").write_text(f"{model:<16}\n")
        (disk / "device").symlink_to(os.path.relpath(hw, disk))
        (disk / "size").write_text(f"{size // 512}\n")
        (disk / "removable").write_text("1\n" if removable else "0\n")
        (disk / "ro").write_text("1\n" if read_only else "0\n")
        (disk / "holders").mkdir()
        for h in holders:
            (disk / "holders" / h).symlink_to(f"../../../../virtual/block/{h}")
        self._link(name, disk)
        for number in partitions:
            part = disk / f"{name}{number}"
            part.mkdir()
            (part / "partition").write_text(f"{number}\n")
            (part / "size").write_text(f"{(size // 512 - 2048) // len(partitions)}\n")
            self._link(part.name, part)
            (self.dev / part.name).write_bytes(PRECIOUS)
        node = self.dev / name
        node.write_bytes(PRECIOUS)
        return node

    def add_virtual(self, name: str) -> None:
        d = self.sysfs / "devices" / "virtual" / "block" / name
        d.mkdir(parents=True)
        (d / "size").write_text("0\n")
        (d / "removable").write_text("0\n")
        self._link(name, d)

    def mount(self, source: str, where: str) -> None:
        with self.mounts.open("a") as f:
            f.write(f"{source} {where} vfat rw,nosuid,nodev 0 0\n")

    def _link(self, name: str, target: Path) -> None:
        link = self.sysfs / "class" / "block" / name
        link.symlink_to(os.path.relpath(target, link.parent))

    def is_block(self, path) -> bool:
        return Path(path).parent == self.dev

    def flash(self, image: Path, device: Path, *, answer: str = "", **options):
        """cmd_flash as the CLI calls it, on this host; returns (status, output)."""
        args = Namespace(image=str(image), device=str(device), yes=False, dry_run=False,
                         allow_large=False, to_file=False)
        for k, v in options.items():
            setattr(args, k, v)
        out = io.StringIO()
        status = cmd_flash(args, sysfs_root=self.sysfs, proc_mounts=self.mounts,
                           is_block=self.is_block, stdin=io.StringIO(answer), out=out,
                           progress=lambda *_: None)
        return status, out.getvalue()

    def devices(self) -> str:
        out = io.StringIO()
        assert cmd_devices(Namespace(), sysfs_root=self.sysfs, proc_mounts=self.mounts, out=out) == 0
        return out.getvalue()


@pytest.fixture
def host(tmp_path):
    return FakeHost(tmp_path / "host")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A bootable 4 MiB GPT image (its loader need not run for these tests)."""
    return make_gpt_image(tmp_path_factory.mktemp("flash") / "hv.img")


def uefi_hv(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uefi_hv", *map(str, args)],
                          capture_output=True, text=True, timeout=120, **kw)


# -- uefi-hv devices -------------------------------------------------------

def test_devices_lists_usb_sticks_with_model_and_size(host):
    host.add_disk("sdb", partitions=(1,))
    host.mount("/dev/sdb1", "/media/me/MY\\040STICK")
    host.add_disk("sda", bus_path=SATA_PATH, removable=False, vendor="ATA", model="Samsung SSD 870")
    host.add_virtual("loop0")
    text = host.devices()
    assert "/dev/sdb" in text and "14.9 GiB" in text and "SanDisk Cruzer Blade" in text
    assert "(sdb1; mounted: /media/me/MY STICK)" in text
    assert "Not offered (not removable USB disks): /dev/sda (not removable, attached over " \
           "pci0000:00, not USB)" in text
    assert "loop0" not in text


def test_devices_says_so_when_there_is_no_stick(host):
    host.add_disk("sda", bus_path=SATA_PATH, removable=False)
    assert host.devices().startswith("No removable USB disks found (looked in ")


def test_devices_on_this_machine_exits_0():
    # This machine has no USB disks as a rule; whatever it has, listing is harmless.
    run = uefi_hv("devices")
    assert run.returncode == 0, run.stderr
    assert "Removable USB disks" in run.stdout or "No removable USB disks found" in run.stdout


# -- refusals: nothing is written ------------------------------------------

REFUSALS = {
    "not removable": (dict(removable=False), "sdb", {},
                      r"/dev/sdb \(SanDisk Cruzer Blade, 14.9 GiB\) is not a removable USB disk "
                      r"\(not removable\); uefi-hv flashes only USB sticks"),
    "not attached over USB": (dict(bus_path=SD_READER_PATH, model="SD card"), "sdb", {},
                              r"is not a removable USB disk \(attached over pci0000:00, not USB\)"),
    "an internal disk": (dict(bus_path=SATA_PATH, removable=False), "sdb", {},
                         r"\(not removable, attached over pci0000:00, not USB\)"),
    "a partition": (dict(partitions=(1, 2)), "sdb2", {},
                    r"/sdb2 is a partition \(number 2 of /dev/sdb\), not a whole disk; .*"
                    r"flash the whole disk, --device /dev/sdb"),
    "read-only": (dict(read_only=True), "sdb", {}, r"is read-only; slide the stick's write-protect switch"),
    "held by device mapper": (dict(holders=("dm-0",)), "sdb", {}, r"is in use by dm-0"),
    "no medium": (dict(size=0), "sdb", {}, r"/dev/sdb \(SanDisk Cruzer Blade\) has no medium"),
    "smaller than the image": (dict(size=2 * MiB), "sdb", {},
                               r"\(SanDisk Cruzer Blade, 2.0 MiB\) is smaller than the image "
                               r"\(4.0 MiB\); use a stick of at least 4.0 MiB"),
    "larger than 256 GiB": (dict(size=500 * GiB), "sdb", {},
                            r"\(SanDisk Cruzer Blade, 500.0 GiB\) is larger than 256.0 GiB: .*"
                            r"add --allow-large"),
    "larger, even with --yes": (dict(size=300 * GiB), "sdb", dict(yes=True), r"add --allow-large"),
}


@pytest.mark.parametrize("disk, name, options, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_flash_refuses(host, image, disk, name, options, message):
    host.add_disk("sdb", **disk)
    with pytest.raises(FlashError, match=message) as e:
        host.flash(image, host.dev / name, answer="yes\n", **options)
    assert e.value.exit_status == 1
    assert all(node.read_bytes() == PRECIOUS for node in host.dev.iterdir())


@pytest.mark.parametrize("mounted", ["/dev/sdb1", "/dev/sdb"], ids=["a partition", "the whole disk"])
def test_flash_refuses_a_stick_with_anything_mounted(host, image, mounted):
    host.add_disk("sdb", partitions=(1,))
    host.mount(mounted, "/media/me/MY\\040STICK")
    with pytest.raises(FlashError, match=rf"is in use, mounted: {mounted} on /media/me/MY STICK; "
                                         rf"unmount it first \(umount '/media/me/MY STICK'\)"):
        host.flash(image, host.dev / "sdb", yes=True)
    assert (host.dev / "sdb").read_bytes() == PRECIOUS


def test_flash_refuses_a_device_unknown_to_sysfs(host, image):
    (host.dev / "sdz").write_bytes(PRECIOUS)
    with pytest.raises(FlashError, match=r"\(sdz\) is not in .*/class/block, so its bus and "
                                         r"removability are unknown"):
        host.flash(image, host.dev / "sdz", yes=True)


def test_flash_refuses_a_path_that_does_not_exist(host, image):
    with pytest.raises(NotADevice, match=r"/sdq: no such device; list the USB sticks with "
                                         r"'uefi-hv devices'") as e:
        host.flash(image, host.dev / "sdq", yes=True)
    assert e.value.exit_status == 2


def test_the_cli_refuses_a_regular_file_as_device(tmp_path, image):
    target = tmp_path / "sdb"
    target.write_bytes(PRECIOUS)
    run = uefi_hv("flash", image, "--device", target, "--yes")
    assert run.returncode == 2
    assert f"error: {target} is not a block device (it is a regular file); give a whole USB disk " \
           f"such as /dev/sdb (list them with 'uefi-hv devices'), or add --to-file" in run.stderr
    assert "Traceback" not in run.stderr
    assert target.read_bytes() == PRECIOUS


def test_to_file_refuses_a_block_device(host, image):
    device = host.add_disk("sdb")
    with pytest.raises(UsageError, match=r"--to-file writes to files, and .*/sdb is a block device; "
                                         r"drop --to-file so that the device checks run"):
        host.flash(image, device, to_file=True, yes=True)
    assert device.read_bytes() == PRECIOUS


def test_to_file_refuses_to_overwrite_the_image_itself(tmp_path, image):
    run = uefi_hv("flash", image, "--device", image, "--to-file")
    assert run.returncode == 2 and "is the image itself; give another file name" in run.stderr


def test_an_image_that_cannot_boot_is_refused_before_anything_is_written(tmp_path, host):
    no_loader = make_gpt_image(tmp_path / "no-loader.img", files={"EFI/uefi-hv/hv.efi": b"MZ"})
    device = host.add_disk("sdb")
    with pytest.raises(ImageError, match=r"has no EFI/BOOT/BOOTX64\.EFI"):
        host.flash(no_loader, device, yes=True)
    assert device.read_bytes() == PRECIOUS

    target = tmp_path / "out.img"
    target.write_bytes(PRECIOUS)
    for bad in (no_loader, tmp_path / "missing.img"):
        run = uefi_hv("flash", bad, "--device", target, "--to-file", "--yes")
        assert run.returncode in (1, 2) and run.stderr.startswith(f"error: {bad}: ")
        assert "Traceback" not in run.stderr
    assert target.read_bytes() == PRECIOUS


# -- asking, dry runs, writing ---------------------------------------------

def test_dry_run_does_every_check_and_writes_nothing(host, image):
    device = host.add_disk("sdb", partitions=(1,))
    status, text = host.flash(image, device, dry_run=True)
    assert status == 0
    assert "target /dev/sdb (SanDisk Cruzer Blade, 14.9 GiB): removable, USB, sdb1" in text
    assert f"dry run: every check passed; nothing written (without --dry-run this writes " \
           f"{image.stat().st_size} bytes to {device})" in text
    assert device.read_bytes() == PRECIOUS


def test_allow_large_lets_a_large_usb_disk_through(host, image):
    device = host.add_disk("sdb", size=1000 * GiB, vendor="WD", model="Elements 25A2")
    status, text = host.flash(image, device, dry_run=True, allow_large=True)
    assert status == 0 and "(WD Elements 25A2, 1000.0 GiB)" in text


def test_a_symlink_such_as_dev_disk_by_id_names_the_disk_it_points_to(host, image):
    host.add_disk("sdb")
    by_id = host.dev / "usb-SanDisk_Cruzer_Blade_4C53000-0:0"
    by_id.symlink_to("sdb")
    status, text = host.flash(image, by_id, dry_run=True)
    assert status == 0 and "target /dev/sdb (SanDisk Cruzer Blade, 14.9 GiB)" in text


@pytest.mark.parametrize("answer", ["no\n", "\n", ""], ids=["no", "just enter", "end of input"])
def test_anything_but_yes_writes_nothing(host, image, answer):
    device = host.add_disk("sdb", partitions=(1, 2))
    status, text = host.flash(image, device, answer=answer)
    assert status == 1
    assert "  model:      SanDisk Cruzer Blade\n" in text
    assert f"  size:       14.9 GiB ({STICK_BYTES} bytes), USB, removable\n" in text
    assert "  partitions: sdb1 (7.5 GiB), sdb2 (7.5 GiB)\n" in text
    assert "Everything on /dev/sdb will be lost. Type 'yes' to go on: " in text
    assert text.endswith("not confirmed; nothing written to /dev/sdb\n")
    assert device.read_bytes() == PRECIOUS


@pytest.mark.parametrize("how", [dict(answer="yes\n"), dict(yes=True)], ids=["answered yes", "--yes"])
def test_flash_writes_the_image_and_verifies_it(host, image, how):
    device = host.add_disk("sdb", partitions=(1,))
    status, text = host.flash(image, device, **how)
    assert status == 0
    data = image.read_bytes()
    assert device.read_bytes()[:len(data)] == data
    assert f"read back and verified: SHA-256 {hashlib.sha256(data).hexdigest()}\n" in text


def test_to_file_writes_the_same_bytes(tmp_path, image):
    target = tmp_path / "copy.img"
    target.write_bytes(PRECIOUS * 20000)         # longer than the image: truncated
    run = uefi_hv("flash", image, "--device", target, "--to-file")
    assert run.returncode == 0, run.stderr
    assert target.read_bytes() == image.read_bytes()
    assert "read back and verified: SHA-256" in run.stdout
    # stderr is not a terminal: the progress bar prints a line per 10 %.
    assert "write  [##############################]      4.0 / 4.0 MiB" in run.stderr


# -- interrupted writes ----------------------------------------------------

def test_an_io_error_mid_write_says_how_far_it_got(tmp_path, image):
    """A real failing write: the file size limit (RLIMIT_FSIZE) makes the
    kernel refuse bytes past 1 MiB with EFBIG (Python ignores SIGXFSZ)."""
    target = tmp_path / "out.img"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 * MiB, 1 * MiB))

    run = uefi_hv("flash", image, "--device", target, "--to-file", preexec_fn=limit_file_size)
    assert run.returncode == 1
    assert f"error: writing {target} stopped (File too large): interrupted after 1048576 of " \
           f"4194304 bytes (25%); {target} is incomplete: flash it again" in run.stderr
    assert "Traceback" not in run.stderr


def test_ctrl_c_mid_write_says_how_far_it_got_and_exits_130(host, tmp_path):
    big = make_gpt_image(tmp_path / "big.img", size_mib=12)
    device = host.add_disk("sdb")

    def ctrl_c_after_a_chunk(phase, done, total):
        if done >= 4 * MiB:
            raise KeyboardInterrupt

    args = Namespace(image=str(big), device=str(device), yes=True, dry_run=False,
                     allow_large=False, to_file=False)
    with pytest.raises(FlashInterrupted) as e:
        cmd_flash(args, sysfs_root=host.sysfs, proc_mounts=host.mounts, is_block=host.is_block,
                  out=io.StringIO(), progress=ctrl_c_after_a_chunk)
    assert e.value.exit_status == 130
    assert str(e.value) == (f"error: writing {device} stopped (Ctrl-C): interrupted after "
                            f"4194304 of 12582912 bytes (33%); the stick is incomplete: flash it again")


# -- the progress bar ------------------------------------------------------

class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_in_a_log_is_a_line_per_tenth_with_the_rate():
    log, clock = io.StringIO(), _Clock()
    bar = ProgressBar(log, clock)
    bar("write", 0, 40 * MiB)
    for done in range(1, 41):
        clock.now += 0.25                        # 4 MiB/s
        bar("write", done * MiB, 40 * MiB)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == "write  [###...........................]      4.0 / 40.0 MiB     4.0 MiB/s"
    assert lines[-1] == "write  [##############################]     40.0 / 40.0 MiB     4.0 MiB/s"


def test_progress_on_a_terminal_redraws_one_line():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, clock = Tty(), _Clock()
    bar = ProgressBar(tty, clock)
    bar("verify", 0, 8 * MiB)
    clock.now += 1
    bar("verify", 8 * MiB, 8 * MiB)
    bar.end()
    assert tty.getvalue() == ("\rverify [..............................]      0.0 / 8.0 MiB     0.0 MiB/s"
                              "\rverify [##############################]      8.0 / 8.0 MiB     8.0 MiB/s\n")


# -- the written copy boots ------------------------------------------------

@pytest.mark.qemu
def test_a_copy_written_with_to_file_boots_in_qemu_as_a_usb_stick(banner_image, tmp_path, run_dir,
                                                                    assert_no_leftovers):
    from uefi_hv.emulate import boot

    stick = tmp_path / "stick.img"
    run = uefi_hv("flash", banner_image, "--device", stick, "--to-file")
    assert run.returncode == 0, run.stderr
    assert stick.read_bytes() == banner_image.read_bytes()

    # emulate's QEMU machine attaches the image as usb-storage on qemu-xhci.
    result = boot(stick, emulator="qemu", timeout=120, expect=[r"uefi-hv banner: vmx=[01]"],
                  run_dir=run_dir)
    assert result.ok, result
    assert "QEMU USB HARDDRIVE" in result.serial      # OVMF's boot option for the stick
    assert "uefi-hv banner: vmx=0" in result.serial   # TCG has no VMX (docs/emulators.md)
    assert_no_leftovers(result)

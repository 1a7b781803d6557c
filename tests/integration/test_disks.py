"""Virtual hard disks through hvctl and a real host (issue 6, the parts before storvsp): new-vhd,
get-vhd, add-/get-/remove-vmharddiskdrive, validation of hostile files, one VM per disk, the
start-time lock check, and drive configurations that survive a kill -9 of vmms. qemu-img is the
outside referee for the files."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal

import pytest

from tests.conftest import wait_until
from tests.helpers.host_views import hvctl_in, refused
from tests.helpers.vhdx_files import patch_bytes, qemu_img, qemu_info, set_bat
from hypervisor.runtime.errors import HvError
from parent.storage.disk_backend import open_disk

pytestmark = pytest.mark.integration


@pytest.fixture
def host(vm_host):
    """These tests need only a running host: they share the module's (tests/conftest.py)."""
    return vm_host


needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img (Debian qemu-utils) is not installed")

MIB = 1 << 20
GET_VHD_KEYS = {"Path", "VhdFormat", "VhdType", "Size", "FileSize", "BlockSize",
                "LogicalSectorSize", "PhysicalSectorSize", "ParentPath", "Attached", "VMName"}
DRIVE_KEYS = {"VMName", "VMId", "ControllerType", "ControllerNumber", "ControllerLocation",
              "Path", "Name"}






def digest(path) -> tuple[str, int]:
    return hashlib.sha256(open(path, "rb").read()).hexdigest(), os.stat(path).st_mtime_ns


@needs_qemu
@pytest.mark.parametrize("kind,extra,block", [
    ("Dynamic", [], 8 * MIB),
    ("Dynamic", ["--block-size-bytes", "1MB"], MIB),
    ("Fixed", ["--fixed", "--block-size-bytes", "2MB"], 2 * MIB),
])
def test_new_vhd_then_get_vhd_and_qemu_agree(host, tmp_path, kind, extra, block):
    rc, made, _ = hvctl_in(host, tmp_path, "new-vhd", "d.vhdx", "--size-bytes", "40MB", *extra)
    assert rc == 0, made
    path = str(tmp_path / "d.vhdx")                  # the relative path became absolute
    rc, info, _ = host.hvctl("get-vhd", path)
    assert set(info) == GET_VHD_KEYS and info == made
    assert info == {"Path": path, "VhdFormat": "VHDX", "VhdType": kind, "Size": 40 * MIB,
                    "FileSize": os.path.getsize(path), "BlockSize": block,
                    "LogicalSectorSize": 512, "PhysicalSectorSize": 4096, "ParentPath": None,
                    "Attached": False, "VMName": None}
    check = qemu_img("check", "-f", "vhdx", path)
    assert check.returncode == 0, check.stdout + check.stderr
    q = qemu_info(path)
    assert (q["format"], q["virtual-size"], q["cluster-size"]) == ("vhdx", 40 * MIB, block)
    if kind == "Fixed":
        assert info["FileSize"] >= 40 * MIB
    # people's view: one property per line
    rc, text, _ = hvctl_in(host, tmp_path, "get-vhd", "d.vhdx", as_json=False)
    assert rc == 0 and f"VhdType            : {kind}" in text and f"Path               : {path}" in text


@needs_qemu
@pytest.mark.parametrize("options,kind", [("", "Dynamic"), ("subformat=fixed", "Fixed"),
                                          ("block_size=1M,log_size=2M", "Dynamic")])
def test_qemu_created_disks_are_accepted_and_attach(host, tmp_path, options, kind):
    path = tmp_path / "q.vhdx"
    done = qemu_img("create", "-q", "-f", "vhdx", *(["-o", options] if options else []),
                    str(path), "24M")
    assert done.returncode == 0, done.stderr
    before = digest(path)
    rc, info, _ = host.hvctl("get-vhd", str(path))
    assert info["VhdType"] == kind and info["Size"] == 24 * MIB
    assert info["BlockSize"] == qemu_info(path)["cluster-size"]
    host.new_vm("q")
    rc, drive, _ = host.hvctl("add-vmharddiskdrive", "q", "--path", str(path))
    assert set(drive) == DRIVE_KEYS and drive["Path"] == str(path)
    assert (drive["ControllerType"], drive["ControllerNumber"], drive["ControllerLocation"]) == \
        ("SCSI", 0, 0)
    assert digest(path) == before  # looking at a disk and attaching it write nothing


DAMAGE = {  # name -> (damage, words the refusal must contain)
    "signature": (lambda p: patch_bytes(p, 0, b"vhdXfile"), "not a VHDX file"),
    "header CRCs": (lambda p: (patch_bytes(p, 64 * 1024 + 200, b"\1"), patch_bytes(p, 128 * 1024 + 200, b"\1")),
                    "no valid VHDX header"),
    "region table CRC": (lambda p: patch_bytes(p, 192 * 1024 + 30, b"\x07"),
                         "region table 1 has a bad checksum"),
    "BAT past EOF": (lambda p: set_bat(p, 2, 7 * MIB | 6), "past the end of the file"),
    "truncated": (lambda p: os.truncate(p, 3 * MIB // 2), "truncated"),
    "empty": (lambda p: os.truncate(p, 0), "not a VHDX file"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_corrupt_files_are_refused_with_a_clear_message_and_left_alone(host, tmp_path, damage):
    path = str(tmp_path / "bad.vhdx")
    host.hvctl("new-vhd", path, "--size-bytes", "8MB", "--block-size-bytes", "1MB")
    spoil, problem = DAMAGE[damage]
    spoil(path)
    before = digest(path)
    host.new_vm("c")
    for args in (("get-vhd", path), ("add-vmharddiskdrive", "c", "--path", path)):
        message = refused(host, *args, code="BadRequest")
        assert message.startswith(f"{path}: ") and problem in message, message
    assert digest(path) == before
    rc, drives, _ = host.hvctl("get-vmharddiskdrive", "c")
    assert drives == []


def test_files_that_are_not_disks_are_refused(host, tmp_path):
    host.new_vm("n")
    junk = tmp_path / "junk.vhdx"
    junk.write_bytes(os.urandom(3 * MIB))
    os.mkfifo(tmp_path / "fifo.vhdx")   # opening it must not hang vmms
    (tmp_path / "dir.vhdx").mkdir()
    (tmp_path / "disk.img").write_bytes(b"")
    cases = [(str(junk), "BadRequest", "not a VHDX file"),
             (str(tmp_path / "fifo.vhdx"), "BadRequest", "not a regular file"),
             (str(tmp_path / "dir.vhdx"), "BadRequest", "not a regular file"),
             (str(tmp_path / "disk.img"), "BadRequest", "unsupported disk format '.img'"),
             (str(tmp_path / "missing.vhdx"), "NotFound", "no such file")]
    for path, code, words in cases:
        for args in (("get-vhd", path), ("add-vmharddiskdrive", "n", "--path", path)):
            assert words in refused(host, *args, code=code)
    # the control op takes only absolute paths (hvctl makes relative ones absolute)
    with pytest.raises(HvError) as info:
        host.call("get-vhd", path="relative.vhdx")
    assert info.value.code == "BadRequest" and "absolute" in info.value.message
    assert host.vm("n")["State"] == "Off"


def test_new_vhd_refusals(host, tmp_path):
    path = str(tmp_path / "x.vhdx")
    host.hvctl("new-vhd", path, "--size-bytes", "16MB")
    assert "already exists" in refused(host, "new-vhd", path, "--size-bytes", "16MB",
                                       code="AlreadyExists")
    other = str(tmp_path / "y.vhdx")
    assert "block size" in refused(host, "new-vhd", other, "--size-bytes", "16MB",
                                   "--block-size-bytes", "3MB", code="BadRequest")
    assert "multiple of the logical sector size" in refused(
        host, "new-vhd", other, "--size-bytes", "1000", code="BadRequest")
    assert "64 TiB" in refused(host, "new-vhd", other, "--size-bytes", "65TB", code="BadRequest")
    assert "no such directory" in refused(host, "new-vhd", str(tmp_path / "no" / "z.vhdx"),
                                          "--size-bytes", "16MB", code="NotFound")
    assert not os.path.exists(other)
    with pytest.raises(HvError, match="choose exactly one"):
        host.call("new-vhd", path=other, size_bytes=16 * MIB, fixed=True, dynamic=True)
    rc, info, _ = host.hvctl("new-vhd", other, "--size-bytes", "16MB",
                             "--logical-sector-size-bytes", "4096",
                             "--physical-sector-size-bytes", "512")
    assert (info["LogicalSectorSize"], info["PhysicalSectorSize"]) == (4096, 512)


def test_a_disk_belongs_to_one_vm_and_drives_change_only_while_off(host, tmp_path):
    disk, second = str(tmp_path / "a.vhdx"), str(tmp_path / "b.vhdx")
    for p in (disk, second):
        host.hvctl("new-vhd", p, "--size-bytes", "16MB")
    os.symlink(disk, tmp_path / "alias.vhdx")
    host.new_vm("one")
    host.new_vm("two")
    rc, drive, _ = host.hvctl("add-vmharddiskdrive", "one", "--path", disk)
    assert drive["ControllerLocation"] == 0 and drive["VMName"] == "one"
    for path in (disk, str(tmp_path / "alias.vhdx")):  # the same file under another name too
        message = refused(host, "add-vmharddiskdrive", "two", "--path", path, code="InvalidState")
        assert "VM 'one'" in message and "SCSI 0:0" in message
    assert "VM 'one'" in refused(host, "add-vmharddiskdrive", "one", "--path", disk,
                                 code="AlreadyExists")
    assert "already has" in refused(host, "add-vmharddiskdrive", "one", "--path", second,
                                    "--controller-location", "0", code="AlreadyExists")
    rc, drive, _ = host.hvctl("add-vmharddiskdrive", "one", "--path", second,
                              "--controller-location", "7")
    rc, drives, _ = host.hvctl("get-vmharddiskdrive", "one")
    assert [(d["ControllerLocation"], d["Path"]) for d in drives] == [(0, disk), (7, second)]
    assert drives[1]["Name"] == "Hard Drive on SCSI controller number 0 at location 7"
    # while the VM runs, drives stay as they are (hot-add needs the storage driver)
    host.start("one")
    third = str(tmp_path / "c.vhdx")
    host.hvctl("new-vhd", third, "--size-bytes", "16MB")
    assert "hot-add" in refused(host, "add-vmharddiskdrive", "one", "--path", third,
                                code="InvalidState")
    assert "hot-remove" in refused(host, "remove-vmharddiskdrive", "one",
                                   "--controller-location", "0", code="InvalidState")
    host.hvctl("stop-vm", "one", "--turn-off")
    rc, gone, _ = host.hvctl("remove-vmharddiskdrive", "one", "--controller-location", "0")
    assert gone["Path"] == disk and gone["ControllerLocation"] == 0
    assert "no drive at SCSI 0:0" in refused(host, "remove-vmharddiskdrive", "one",
                                             "--controller-location", "0", code="NotFound")
    rc, drive, _ = host.hvctl("add-vmharddiskdrive", "two", "--path", disk)  # free again
    assert drive["VMName"] == "two"
    rc, text, _ = hvctl_in(host, tmp_path, "remove-vmharddiskdrive", "two",
                           "--controller-location", "0", as_json=False)
    assert text.strip() == f"removed {disk} from VM 'two' (SCSI 0:0)"
    assert os.path.exists(disk)  # detaching never deletes the file
    rc, text, _ = hvctl_in(host, tmp_path, "get-vmharddiskdrive", "one", as_json=False)
    assert "ControllerLocation" in text and second in text


def test_start_refuses_a_disk_that_is_corrupt_or_in_use(host, tmp_path):
    path = str(tmp_path / "s.vhdx")
    host.hvctl("new-vhd", path, "--size-bytes", "8MB", "--block-size-bytes", "1MB")
    host.new_vm("s")
    host.hvctl("add-vmharddiskdrive", "s", "--path", path)
    holder = open_disk(path, writable=True)   # this test process holds the disk's lock
    try:
        message = refused(host, "start-vm", "s", code="Busy")
        assert "VM 's' cannot start" in message and f"process {os.getpid()}" in message
        assert host.vm("s")["State"] == "Off"
        assert f"process {os.getpid()}" in refused(host, "get-vhd", path, code="Busy")
    finally:
        holder.close()
    host.start("s")
    assert host.vm("s")["State"] == "Running"
    host.hvctl("stop-vm", "s", "--turn-off")
    set_bat(path, 2, 7 * MIB | 6)  # damaged while the VM was off
    before = digest(path)
    message = refused(host, "start-vm", "s", code="BadRequest")
    assert "VM 's' cannot start" in message and "past the end of the file" in message
    assert host.vm("s")["State"] == "Off" and digest(path) == before
    os.unlink(path)
    assert "no such file" in refused(host, "start-vm", "s", code="NotFound")


def test_drive_configurations_survive_a_vmms_kill(own_host, tmp_path):
    host = own_host
    paths = [str(tmp_path / f"p{i}.vhdx") for i in range(3)]
    for p in paths:
        host.hvctl("new-vhd", p, "--size-bytes", "8MB")
    host.new_vm("keep")
    host.new_vm("other")
    for i, p in enumerate(paths[:2]):
        host.hvctl("add-vmharddiskdrive", "keep", "--path", p, "--controller-location", str(i * 3))
    host.hvctl("add-vmharddiskdrive", "other", "--path", paths[2])
    rc, before, _ = host.hvctl("get-vmharddiskdrive", "keep")
    host.close()
    os.kill(host.pid_of("vmms"), signal.SIGKILL)
    wait_until(lambda: host.pid_of("vmms") is None, 5, what="vmms gone")
    rc, out, _ = host.hvctl("host", "up")
    assert out["Started"] == ["vmms"]
    rc, after, _ = host.hvctl("get-vmharddiskdrive", "keep")
    assert after == before and [d["ControllerLocation"] for d in after] == [0, 3]
    # the rule "one VM per disk" still holds after the restart
    assert "VM 'keep'" in refused(host, "add-vmharddiskdrive", "other", "--path", paths[0],
                                  code="InvalidState")
    # removing a VM keeps its disk files
    host.hvctl("remove-vm", "keep")
    assert all(os.path.exists(p) for p in paths)
    rc, drive, _ = host.hvctl("add-vmharddiskdrive", "other", "--path", paths[0])
    assert drive["ControllerLocation"] == 1

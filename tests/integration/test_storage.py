"""Storage end to end (issue 6): VHDX disks served by the `storvsp` driver host over VMBus to the
guest's block client, interoperable with qemu-img / qemu-io, surviving a kill -9 of the driver
host in the middle of a write, and metered by measure-vm."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess

import pytest

from parent.control.disk_ops import lock_holders
from tests.conftest import DRIVER_MODELS, host_in_model, wait_until
from tests.helpers.host_views import driver, kvp, released, result
from worker.guest import disk_pattern

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-utils")]

# every test here runs on a host of each driver model (tests/conftest.py host_in_model)
host = pytest.fixture(params=DRIVER_MODELS, name="host")(host_in_model)

MIB = 1 << 20


def run(*cmd) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}{proc.stdout}"
    return proc.stdout








def disk_vm(host, name, path, guest):
    host.new_vm(name, guest=guest)
    host.call("add-vmharddiskdrive", vm=name, path=path)
    host.start(name)


def rerun(host, name, path, guest):
    """Stop the VM, let the driver release its disk, run another guest program."""
    host.call("stop-vm", vm=name)
    released(path)
    host.call("set-vm", vm=name, guest=guest)
    host.start(name)


def test_qemu_img_disk_written_by_the_guest_reads_back_in_qemu(host, tmp_path):
    path = str(tmp_path / "q.vhdx")
    run("qemu-img", "create", "-q", "-f", "vhdx", path, "64M")
    disk_vm(host, "w1", path, "disk-write:8MB:seed-a")
    assert result(host, "w1", "disk-write") == "ok"
    drv = wait_until(lambda: (d := driver(host, "storvsp"))["Channels"] == 1 and d, 5, what="one channel")
    assert drv["State"] == "Running"
    assert lock_holders(path) == [drv["ProcessId"]]       # the driver host holds the disk
    host.call("stop-vm", vm="w1")
    released(path)
    assert "No errors were found" in run("qemu-img", "check", path)
    raw = str(tmp_path / "q.raw")
    run("qemu-img", "convert", "-O", "raw", path, raw)
    with open(raw, "rb") as f:
        data = f.read()
    assert len(data) == 64 * MIB
    assert data[:8 * MIB] == disk_pattern.generate("seed-a", 0, 8 * MIB)
    assert data[8 * MIB:] == bytes(56 * MIB)
    rerun(host, "w1", path, "disk-verify:8MB:seed-a")
    assert result(host, "w1", "disk-verify") == "ok"
    rerun(host, "w1", path, "disk-verify:8MB:other-seed")
    assert result(host, "w1", "disk-verify") == "mismatch at 0"


def test_hvctl_new_vhd_written_by_qemu_io_hashes_the_same_in_the_guest(host, tmp_path):
    path = str(tmp_path / "n.vhdx")
    rc, out, err = host.hvctl("new-vhd", path, "--size-bytes", "32MB")
    assert rc == 0, err
    info = run("qemu-img", "info", path)
    assert "file format: vhdx" in info and "virtual size: 32 MiB" in info
    assert "No errors were found" in run("qemu-img", "check", path)
    run("qemu-io", "-f", "vhdx", "-c", "write -P 0xab 0 1M", path)
    disk_vm(host, "h1", path, "disk-sha256:1MB")
    assert result(host, "h1", "disk-sha256") == hashlib.sha256(b"\xab" * MIB).hexdigest()
    rerun(host, "h1", path, "disk-sha256:2MB")
    assert result(host, "h1", "disk-sha256") == hashlib.sha256(b"\xab" * MIB + bytes(MIB)).hexdigest()


def test_guest_disk_errors_are_reported_not_hung(host, tmp_path):
    path = str(tmp_path / "s.vhdx")
    run("qemu-img", "create", "-q", "-f", "vhdx", path, "4M")
    disk_vm(host, "e1", path, "disk-write:8MB:x")
    assert result(host, "e1", "disk-write").startswith("error: SIZE 8388608 is beyond")


@pytest.mark.microkernel_only
def test_kill_9_of_the_storage_driver_host_mid_write_loses_nothing(host, tmp_path):
    path = str(tmp_path / "k.vhdx")
    size = 256 * MIB
    host.hvctl("new-vhd", path, "--size-bytes", "512MB")
    disk_vm(host, "k1", path, f"disk-write:{size}:seed-k")
    old = wait_until(lambda: (d := driver(host, "storvsp"))["State"] == "Running" and d["ProcessId"], 10,
                     what="storvsp running")
    wait_until(lambda: int(kvp(host, "k1").get("disk-write-progress", "0")) >= 16 * MIB, 20,
               interval=0.005, what="the write to be under way")
    assert "disk-write" not in kvp(host, "k1"), "the write finished before the kill: make it larger"
    os.kill(old, signal.SIGKILL)
    assert result(host, "k1", "disk-write", timeout=60) == "ok"
    drv = wait_until(lambda: (d := driver(host, "storvsp"))["State"] == "Running" and d, 10, what="restarted")
    assert drv["Restarts"] == 1 and drv["ProcessId"] != old
    assert host.vm("k1")["State"] == "Running"
    rerun(host, "k1", path, f"disk-verify:{size}:seed-k")
    assert result(host, "k1", "disk-verify", timeout=60) == "ok"
    host.call("stop-vm", vm="k1")
    released(path)
    assert "No errors were found" in run("qemu-img", "check", path)


def test_measure_vm_counts_disk_bytes(host, tmp_path):
    path = str(tmp_path / "m.vhdx")
    run("qemu-img", "create", "-q", "-f", "vhdx", path, "16M")
    disk_vm(host, "m1", path, "disk-write:4MB:m")
    assert result(host, "m1", "disk-write") == "ok"
    m = wait_until(lambda: (r := host.call("measure-vm", vm="m1"))["TotalDiskWrite"] >= 4 * MIB and r,
                   5, what="write bytes metered")
    assert m["TotalDiskWrite"] == 4 * MIB and m["TotalDiskRead"] == 0
    rerun(host, "m1", path, "disk-sha256:2MB")
    result(host, "m1", "disk-sha256")
    m = wait_until(lambda: (r := host.call("measure-vm", vm="m1"))["TotalDiskRead"] >= 2 * MIB and r,
                   5, what="read bytes metered")
    assert m["TotalDiskRead"] == 2 * MIB and m["TotalDiskWrite"] == 0   # since this start

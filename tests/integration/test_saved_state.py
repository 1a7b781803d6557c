"""Saved state end to end (issue 13, part 2): a `counter` VM saved and started again continues
its count (same RAM bytes, heartbeat and KVP back), memory returns to the pool while Saved,
disk-write and device-stream resume without a request lost or done twice, a Dynamic Memory VM
comes back with what it had, and the refusals: a `command:` guest, a VM that is not running, a
corrupt or missing .vmrs (the VM stays Saved), changes a Saved VM cannot take, a worker killed
while saving (Off, a LastExitReason that says so)."""
from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import wait_until
from tests.helpers.host_views import counter, kvp, refused, released, summary
from worker.saved_state_file import read_meta

pytestmark = pytest.mark.integration

MIB = 1 << 20






def vmrs(host, rec) -> str:
    return str(host.home / "vms" / rec["Id"] / "Saved" / "state.vmrs")


def free_memory(host) -> int:
    return host.call("get-vmhost")["MemoryAvailable"]


def test_counter_continues_after_save_and_start(host):
    idle = free_memory(host)
    host.new_vm("c1", guest="counter", memory_startup_bytes=256 * MIB)
    host.start("c1")
    wait_until(lambda: counter(host, "c1") >= 10, 10, what="counter 10")
    rc, out, err = host.hvctl("stop-vm", "c1", "--save")
    assert rc == 0, err
    vm = host.vm("c1")
    assert (vm["State"], vm["WorkerProcessId"], vm["GuestProcessId"]) == ("Saved", None, None)
    assert vm["LastExitReason"] == "saved"
    path = vmrs(host, vm)
    assert os.path.getsize(path) < 16 * MIB          # only the pages that hold data
    wait_until(lambda: free_memory(host) == idle, 5, what="memory back in the pool")
    meta = read_meta(path)
    assert meta["vm_id"] == vm["Id"] and meta["memory_size"] == 256 * MIB
    import struct
    with open(path, "rb") as f:                      # the counter as it is in the saved RAM
        f.seek(meta["_data_offset"] + 24)
        saved = struct.unpack("<Q", f.read(8))[0]
    assert saved >= 10
    host.start("c1")
    first = wait_until(lambda: max(counter(host, "c1"), 0), 10, what="counter after restore")
    assert saved <= first < saved + 10, (saved, first)   # continues, no restart from 0
    wait_until(lambda: counter(host, "c1") >= saved + 5, 10, what="counter moving again")
    wait_until(lambda: host.vm("c1")["Heartbeat"] == "OkApplicationsUnknown", 5,
               what="heartbeat back")
    assert not os.path.exists(path)                   # the saved state is spent
    host.call("stop-vm", vm="c1", turn_off=True)


def test_refusals_and_saved_vm_rules(host):
    host.new_vm("cmd", guest="command:sleep 60")
    host.start("cmd")
    message = refused(host, "save-vm", "cmd", code="InvalidState")
    assert "command:" in message and host.vm("cmd")["State"] == "Running"
    host.new_vm("off")
    refused(host, "save-vm", "off", code="InvalidState")
    refused(host, "remove-vmsavedstate", "off", code="InvalidState")

    host.new_vm("s1", guest="counter", memory_startup_bytes=128 * MIB)
    host.start("s1")
    wait_until(lambda: counter(host, "s1") >= 3, 10, what="counter")
    host.hvctl("save-vm", "s1")
    refused(host, "set-vmprocessor", "s1", "--count", "2", code="InvalidState")
    refused(host, "set-vmmemory", "s1", "--startup-bytes", "256MB", code="InvalidState")
    refused(host, "set-vm", "s1", "--guest", "idle", code="InvalidState")
    path = vmrs(host, host.vm("s1"))
    with open(path, "r+b") as f:                      # corrupt the saved RAM
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 64)
    refused(host, "start-vm", "s1", code="SavedStateInvalid")
    assert host.vm("s1")["State"] == "Saved"
    os.truncate(path, os.path.getsize(path) - 100)   # truncated: refused before a worker starts
    message = refused(host, "start-vm", "s1", code="SavedStateInvalid")
    assert "truncated" in message and host.vm("s1")["State"] == "Saved"
    _rc, out, _ = host.hvctl("remove-vmsavedstate", "s1")
    assert out[0]["State"] == "Off" and not os.path.exists(path)
    host.start("s1")                                  # a fresh boot: the counter from 0
    assert counter(host, "s1") < 5


def test_disk_write_and_device_stream_resume(host, tmp_path):
    disk = str(tmp_path / "d.vhdx")
    host.hvctl("new-vhd", disk, "--size-bytes", "256MB")
    host.new_vm("w1", guest="disk-write:192MB:seed-s")
    host.call("add-vmharddiskdrive", vm="w1", path=disk)
    host.start("w1")
    wait_until(lambda: int(kvp(host, "w1").get("disk-write-progress", "0")) > 0, 20,
               what="writing")
    host.call("save-vm", vm="w1", timeout=60)
    assert host.vm("w1")["State"] == "Saved"
    host.start("w1")
    assert wait_until(lambda: kvp(host, "w1").get("disk-write"), 60, what="disk-write") == "ok"
    host.call("stop-vm", vm="w1", turn_off=True)
    released(disk)
    host.call("set-vm", vm="w1", guest="disk-verify:192MB:seed-s")
    host.start("w1")
    assert wait_until(lambda: kvp(host, "w1").get("disk-verify"), 60, what="verify") == "ok"

    host.new_vm("e1", guest="device-stream:echo:400:5")
    host.call("add-vmdevice", vm="e1", driver="echo")
    host.start("e1")
    wait_until(lambda: int(kvp(host, "e1").get("device-stream-progress", "0")) >= 20, 20,
               what="stream going")
    host.call("save-vm", vm="e1")
    host.start("e1")
    result = wait_until(lambda: summary(host, "e1"), 60, what="stream done")
    assert (result["completed"], result["duplicates"], result["errors"]) == (400, 0, 0), result


def test_dynamic_memory_vm_comes_back_with_what_it_had(host):
    host.new_vm("dm", guest="memory-demand:300MB", memory_startup_bytes=128 * MIB)
    host.hvctl("set-vmmemory", "dm", "--dynamic-memory-enabled", "true", "--minimum-bytes",
               "64MB", "--maximum-bytes", "1GB")
    host.start("dm")
    assigned = wait_until(lambda: (a := host.vm("dm")["MemoryAssigned"]) >= 300 * MIB and a,
                          20, what="memory grown")
    host.call("save-vm", vm="dm")
    host.start("dm")
    vm = host.vm("dm")
    assert vm["MemoryAssigned"] >= min(assigned, 300 * MIB), (vm["MemoryAssigned"], assigned)


def test_worker_killed_while_saving_leaves_the_vm_off_with_a_reason(host):
    import subprocess
    from tests.conftest import HVCTL, ROOT
    host.new_vm("k1", guest="memory-demand:400MB", memory_startup_bytes=512 * MIB)
    host.start("k1")
    wait_until(lambda: host.vm("k1")["MemoryDemand"] >= 400 * MIB, 30, what="RAM touched")
    pid = host.vm("k1")["WorkerProcessId"]
    saver = subprocess.Popen([*HVCTL, "--home", str(host.home), "save-vm", "k1"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: host.vm("k1")["State"] == "Saving", 10, interval=0.002,
                   what="Saving")
        os.kill(pid, signal.SIGKILL)
        vm = wait_until(lambda: (v := host.vm("k1"))["State"] == "Off" and v, 10, what="Off")
    finally:
        saver.wait(timeout=30)
    assert "while saving" in vm["LastExitReason"], vm["LastExitReason"]
    assert not os.path.exists(vmrs(host, vm))
    host.start("k1")                                  # and it starts afresh

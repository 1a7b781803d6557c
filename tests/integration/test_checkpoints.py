"""Checkpoints end to end (issue 13, part 3): a Standard checkpoint of a running `counter` VM
restored brings back both the count and the disk bytes as they were; the tree in
get-vmsnapshot; remove merges the differencing disk into its parent — also when vmms is killed
in the middle of the merge and the remove is repeated (disk-verify in a guest checks the
parent holds exactly the child's data); and the refusals, each changing nothing."""
from __future__ import annotations

import datetime
import os
import signal
import struct
import subprocess

import pytest

from parent.storage.vhdx import open as open_vhdx
from tests.conftest import HVCTL, ROOT, wait_until
from tests.helpers.host_views import counter, kvp, refused, released
from worker.guest import disk_pattern
from worker.saved_state_file import read_meta

pytestmark = pytest.mark.integration

MIB = 1 << 20






def drive_path(host, name) -> str:
    return host.call("get-vmharddiskdrive", vm=name)[0]["Path"]


def test_standard_checkpoint_brings_back_count_and_disk(host, tmp_path):
    base = str(tmp_path / "base.vhdx")
    host.hvctl("new-vhd", base, "--size-bytes", "32MB")
    host.new_vm("t1", guest="counter", memory_startup_bytes=128 * MIB)
    host.call("add-vmharddiskdrive", vm="t1", path=base)
    host.start("t1")
    wait_until(lambda: counter(host, "t1") >= 5, 10, what="counter")
    _rc, snap, _ = host.hvctl("checkpoint-vm", "t1", "--snapshot-name", "cp")
    assert (snap["Name"], snap["SnapshotType"], snap["ParentSnapshotName"]) == \
        ("cp", "Standard", None)
    datetime.datetime.fromisoformat(snap["CreationTime"])
    assert host.vm("t1")["State"] == "Running"        # it keeps running ...
    running_on = drive_path(host, "t1")
    assert running_on.endswith(".avhdx")              # ... on a new differencing disk
    assert host.hvctl("get-vhd", running_on)[1]["ParentPath"] == base
    memory = str(host.home / "vms" / snap["VMId"] / "Snapshots" / f"{snap['Id']}.vmrs")
    meta = read_meta(memory)
    with open(memory, "rb") as f:
        f.seek(meta["_data_offset"] + 24)
        at_checkpoint = struct.unpack("<Q", f.read(8))[0]
    assert at_checkpoint >= 5

    host.call("stop-vm", vm="t1", turn_off=True)
    released(running_on)
    host.call("set-vm", vm="t1", guest="disk-write:8MB:seed-after")
    host.start("t1")
    assert wait_until(lambda: kvp(host, "t1").get("disk-write"), 30, what="write") == "ok"
    host.call("stop-vm", vm="t1", turn_off=True)
    released(running_on)
    _rc, second, _ = host.hvctl("checkpoint-vm", "t1", "--snapshot-name", "after")
    assert second["ParentSnapshotName"] == "cp" and second["HasMemory"] is False
    names = [(s["Name"], s["ParentSnapshotName"]) for s in host.call("get-vmsnapshot", vm="t1")]
    assert names == [("cp", None), ("after", "cp")]

    refused(host, "restore-vmsnapshot", "t1", "--name", "nope", code="NotFound")
    _rc, vm, _ = host.hvctl("restore-vmsnapshot", "t1", "--name", "cp")
    assert vm["State"] == "Saved" and vm["Guest"] == "counter"
    host.start("t1")
    # the restored guest publishes its KVP pool over the integration service soon after Running
    first = wait_until(lambda: max(counter(host, "t1"), 0), 10, what="counter after restore")
    assert at_checkpoint <= first < at_checkpoint + 10, (at_checkpoint, first)
    host.call("stop-vm", vm="t1", turn_off=True)
    now_disk = drive_path(host, "t1")
    released(now_disk)
    with open_vhdx(now_disk) as disk:                 # the bytes written after cp are gone
        assert disk.read(0, 8 * MIB) == bytes(8 * MIB)

    _rc, vm, _ = host.hvctl("restore-vmsnapshot", "t1", "--name", "after")
    assert vm["State"] == "Off" and not os.path.exists(now_disk)
    with open_vhdx(drive_path(host, "t1")) as disk:
        assert disk.read(0, 8 * MIB) == disk_pattern.generate("seed-after", 0, 8 * MIB)
    _rc, out, _ = host.hvctl("remove-vmsnapshot", "t1", "--name", "cp",
                             "--include-all-child-snapshots")
    assert sorted(out["removed"]) == ["after", "cp"] and host.call("get-vmsnapshot", vm="t1") == []
    assert drive_path(host, "t1") == base              # everything merged into the base
    assert [p for p in os.listdir(tmp_path) if p.endswith(".avhdx")] == []
    with open_vhdx(base) as disk:
        assert disk.read(0, 8 * MIB) == disk_pattern.generate("seed-after", 0, 8 * MIB)


def test_checkpoint_refusals(host):
    host.new_vm("r1")
    host.new_vm("r2")
    for i in range(50):
        host.call("checkpoint-vm", vm="r1", snapshot_name=f"s{i}")
    before = host.call("get-vmsnapshot", vm="r1")
    message = refused(host, "checkpoint-vm", "r1", "--snapshot-name", "s50", code="InvalidState")
    assert "50" in message and host.call("get-vmsnapshot", vm="r1") == before
    refused(host, "checkpoint-vm", "r1", "--snapshot-name", "s3", code="AlreadyExists")
    refused(host, "restore-vmsnapshot", "r2", "--name", "s1", code="NotFound")  # r1's
    host.call("checkpoint-vm", vm="r2", snapshot_name="x")
    host.call("set-vm", vm="r2", guest="counter")
    host.start("r2")
    refused(host, "restore-vmsnapshot", "r2", "--name", "x", code="InvalidState")
    refused(host, "remove-vmsnapshot", "r2", "--name", "x", code="InvalidState")
    wait_until(lambda: counter(host, "r2") >= 1, 10, what="counter")
    snap = host.call("checkpoint-vm", vm="r2", snapshot_name="mem")
    host.call("stop-vm", vm="r2", turn_off=True)
    memory = host.home / "vms" / snap["VMId"] / "Snapshots" / f"{snap['Id']}.vmrs"
    os.truncate(memory, 100)
    refused(host, "restore-vmsnapshot", "r2", "--name", "mem", code="SavedStateInvalid")
    assert host.vm("r2")["State"] == "Off" and host.vm("r2")["Guest"] == "counter"
    host.call("remove-vmsnapshot", vm="r2", name="mem")
    host.call("remove-vm", vm="r2")


def test_merge_killed_halfway_then_repeated(host, tmp_path):
    base = str(tmp_path / "k.vhdx")
    host.hvctl("new-vhd", base, "--size-bytes", "160MB", "--block-size-bytes", "1MB")
    host.new_vm("m1", guest="disk-write:128MB:seed-k")
    host.call("add-vmharddiskdrive", vm="m1", path=base)
    host.call("checkpoint-vm", vm="m1", snapshot_name="cp")
    host.start("m1")
    assert wait_until(lambda: kvp(host, "m1").get("disk-write"), 60, what="write") == "ok"
    host.call("stop-vm", vm="m1", turn_off=True)
    child = drive_path(host, "m1")
    released(child)
    stream = host.client.events(host.vm("m1")["Id"], timeout=10)
    remover = subprocess.Popen([*HVCTL, "--home", str(host.home), "remove-vmsnapshot", "m1",
                                "--name", "cp"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=None)
    killed = False
    for _topic, event in stream:      # vmms killed in the middle of the merge
        if event.get("Event") == "merge-progress" and 0 < event["Done"] < event["Total"]:
            os.kill(host.pid_of("vmms"), signal.SIGKILL)
            killed = True
            break
    stream.close()
    assert killed, "the merge ended before it could be interrupted"
    remover.wait(timeout=30)
    host.close()
    host.hvctl("host", "up")
    with open_vhdx(child if os.path.exists(child) else base) as disk:   # reads the same
        assert disk.read(0, 128 * MIB) == disk_pattern.generate("seed-k", 0, 128 * MIB)
    if host.call("get-vmsnapshot", vm="m1"):
        rc, _out, err = host.hvctl("remove-vmsnapshot", "m1", "--name", "cp")
        assert rc == 0, err
    assert drive_path(host, "m1") == base and not os.path.exists(child)
    host.call("set-vm", vm="m1", guest="disk-verify:128MB:seed-k")
    host.start("m1")
    assert wait_until(lambda: kvp(host, "m1").get("disk-verify"), 60, what="verify") == "ok"

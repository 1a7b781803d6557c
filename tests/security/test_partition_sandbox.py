"""The sandboxes as the host sees them (DESIGN.md §9): each `vmmem` tree under its VM's uid with
no_new_privs in namespaces of its own, killing `vmmem` ends the whole partition, each driver
host under its own uid in its own namespaces, VHDX files 0600. Needs root (Full isolation)."""
from __future__ import annotations

import os
import signal

import psutil
import pytest

from tests.conftest import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="Full isolation (a uid and namespaces "
                                 "per partition and driver) needs root; CI runs as root")]


def ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def status_field(pid: int, field: str) -> str:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def test_a_partition_runs_under_its_own_uid_in_its_own_namespaces_and_dies_whole(host):
    assert host.call("get-vmhost")["IsolationMode"] == "Full"
    host.new_vm("s1", guest="command:setsid sleep 300 & sleep 300")
    host.new_vm("s2", guest="idle")
    host.start("s1", "s2")
    vm1, vm2 = host.vm("s1"), host.vm("s2")
    uid1, guest = vm1["SandboxUid"], vm1["GuestProcessId"]
    assert uid1 and vm2["SandboxUid"] and uid1 != vm2["SandboxUid"]
    wait_until(lambda: len([p for p in psutil.process_iter(["uids"])
                            if p.info["uids"] and p.info["uids"].real == uid1]) >= 4, 5,
               what="vmmem, sh and both sleeps")
    assert psutil.Process(guest).uids().real == uid1
    assert status_field(guest, "NoNewPrivs") == "1"
    for kind in ("user", "pid", "mnt", "ipc", "uts", "net"):
        assert ns(guest, kind) != ns(os.getpid(), kind), kind
        assert ns(guest, kind) != ns(vm2["GuestProcessId"], kind), kind
    # one id mapped each way (uid/gid 0 inside = the VM's uid/gid), written by a privileged
    # helper so setgroups stays allowed; inside, no other id exists to be gained
    gid1 = psutil.Process(guest).gids().real
    assert open(f"/proc/{guest}/uid_map").read().split() == ["0", str(uid1), "1"]
    assert open(f"/proc/{guest}/gid_map").read().split() == ["0", str(gid1), "1"]
    assert open(f"/proc/{guest}/setgroups").read().strip() == "allow"
    assert status_field(guest, "Groups") == ""
    # every mount it sees is private: none propagates to or from the host's
    with open(f"/proc/{guest}/mountinfo") as f:
        mounts = f.read().splitlines()
    assert mounts and not [m for m in mounts if " shared:" in m or " master:" in m]
    assert any(" /proc proc " in m or " /proc " in m for m in mounts)
    worker = vm1["WorkerProcessId"]
    assert ns(worker, "pid") == ns(os.getpid(), "pid")    # the worker stays in the host's
    assert psutil.Process(guest).cmdline()[0].startswith("vmmem s1 ")
    os.kill(guest, signal.SIGKILL)                          # pulls the whole partition
    wait_until(lambda: not [p for p in psutil.process_iter(["uids", "status"])
                            if p.info["uids"] and p.info["uids"].real == uid1
                            and p.info["status"] != psutil.STATUS_ZOMBIE], 5,
               what="every process of the partition gone (setsid included)")
    wait_until(lambda: host.vm("s1")["State"] == "Off", 5, what="s1 off")
    assert host.vm("s2")["State"] == "Running"


def test_a_driver_host_runs_under_its_own_uid_and_disks_are_0600(host, tmp_path):
    path = host.home / "d.vhdx"
    host.hvctl("new-vhd", str(path), "--size-bytes", "32MB")
    assert path.stat().st_mode & 0o777 == 0o600
    host.new_vm("d1", guest="disk-write:1MB:x")
    host.call("add-vmharddiskdrive", vm="d1", path=str(path))
    host.start("d1")
    wait_until(lambda: host.call("get-vmkvp", vm="d1").get("disk-write"), 30, what="disk-write")
    assert host.call("get-vmkvp", vm="d1")["disk-write"].startswith("ok")
    drv = next(d for d in host.call("get-vmhostdriver") if d["Name"] == "storvsp")
    pid = drv["ProcessId"]
    uid = psutil.Process(pid).uids().real
    assert uid not in (0, host.vm("d1")["SandboxUid"]) and uid >= host.call("get-vmhost")["SandboxUidBase"]
    assert status_field(pid, "NoNewPrivs") == "1"
    for kind in ("pid", "mnt", "ipc"):
        assert ns(pid, kind) != ns(os.getpid(), kind), kind
    # it holds the disk only as the descriptor the worker handed it
    assert any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    assert " ".join(psutil.Process(pid).cmdline()).split() == ["drvhost", "storvsp"]

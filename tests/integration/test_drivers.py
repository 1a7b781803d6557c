"""Parent-hosted drivers in their own `drvhost` processes (issue 5): a device served in a running
VM, no hypervisor credential in a driver host, crash containment with re-offer and re-issue,
Failed after repeated crashes, restart in place."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from hypervisor.runtime.paths import Home
from tests.conftest import DRIVER_MODELS, alive, host_in_model, wait_until
from tests.helpers.host_views import driver, hv_partitions, kvp, progress, summary
from worker.vmbus.driver_client import DriverConnection

pytestmark = pytest.mark.integration

# every test here runs on a host of each driver model (tests/conftest.py host_in_model)
host = pytest.fixture(params=DRIVER_MODELS, name="host")(host_in_model)


def vm_with_device(host, name, driver_name, guest):
    host.new_vm(name, guest=guest)
    dev = host.call("add-vmdevice", vm=name, driver=driver_name)
    host.start(name)
    return dev


def partitions(host) -> dict:
    return {p["vm_id"]: p["memory"]["assigned"] for p in hv_partitions(host)}


@pytest.mark.microkernel_only
def test_echo_driver_serves_a_device_from_its_own_driver_host(host):
    echo = driver(host, "echo")
    assert echo["State"] == "Stopped" and echo["Package"] == "hvemu" and echo["ProcessId"] is None
    dev = vm_with_device(host, "e1", "echo", "device-stream:echo:300")
    done = wait_until(lambda: summary(host, "e1"), 15, what="the stream to finish")
    assert done == {"completed": 300, "duplicates": 0, "errors": 0, "reissued": 0,
                    "max_gap_ms": done["max_gap_ms"]}
    assert kvp(host, "e1")["device-stream-last"] == "hello 299"
    echo = driver(host, "echo")
    assert echo["State"] == "Running" and echo["Version"] == "1.0" and echo["Restarts"] == 0
    assert echo["ClassId"] == "echo"
    wait_until(lambda: driver(host, "echo")["Channels"] == 1, 3, what="one open channel")
    title = " ".join(" ".join(psutil.Process(echo["ProcessId"]).cmdline()).split())
    assert title == "drvhost echo"
    [view] = host.call("get-vmdevice", vm="e1")
    assert view["ChannelState"] == "Open" and view["InstanceId"] == dev["InstanceId"]
    rc, out, _ = host.hvctl("get-vmhostdriver")
    assert any(d["Name"] == "echo" and d["State"] == "Running" for d in out)


@pytest.mark.microkernel_only
def test_driver_host_holds_no_credential_and_maps_no_guest_memory(host):
    vm_with_device(host, "c1", "echo", "device-stream:echo:20")
    wait_until(lambda: summary(host, "c1"), 15, what="the stream to finish")
    pid = driver(host, "echo")["ProcessId"]
    cred = (host.home / "run" / "root.cred").read_text().strip()
    assert cred.encode() not in open(f"/proc/{pid}/cmdline", "rb").read()
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert not any("root.cred" in f for f in fds)
    maps = open(f"/proc/{pid}/maps").read()
    assert "memfd:vmbus-" in maps                                     # its channels' rings
    assert Home.resolve(host.home).shm_prefix not in maps             # never guest RAM
    # any code in the driver host that calls the hypervisor is refused
    conn = DriverConnection(str(host.home / "run" / "d" / "echo.sock"))
    try:
        answer = conn.open_channel().request("hypercall", {"op": "get-host-info"})
    finally:
        conn.close()
    assert answer["ok"] is False
    # nothing else was given (Python itself adds LC_CTYPE when it coerces the C locale)
    assert set(answer["environment"]) <= {"PYTHONPATH", "LC_CTYPE"}
    if host.call("get-vmhost")["IsolationMode"] == "Full":
        # sandboxed (its own uid and mount namespace): the socket is out of its reach
        assert answer["code"] == "Unavailable" and "cannot be reached" in answer["message"]
    else:
        assert answer["code"] == "Unauthorized"
        log = (host.home / "logs" / "hypervisor.log").read_text()
        assert "Unauthorized" in log and "get-host-info" in log


@pytest.mark.microkernel_only
def test_kill_9_of_a_driver_host_loses_no_request(host):
    vm_with_device(host, "s1", "echo", "device-stream:echo:1500:2:4")
    vm_with_device(host, "s2", "echo", "idle")
    before = {n: host.vm(n) for n in ("s1", "s2")}
    wait_until(lambda: progress(host, "s1") >= 100, 15, what="the stream to be under way")
    [s2_before] = host.call("get-vmdevice", vm="s2")
    ledger = partitions(host)
    old = driver(host, "echo")["ProcessId"]
    os.kill(old, signal.SIGKILL)
    done = wait_until(lambda: summary(host, "s1"), 30, what="the stream to finish")
    assert done["completed"] == 1500 and done["duplicates"] == 0 and done["errors"] == 0
    echo = wait_until(lambda: (d := driver(host, "echo"))["State"] == "Running" and d, 5,
                      what="the driver back")
    assert echo["Restarts"] == 1 and echo["ProcessId"] != old and alive(echo["ProcessId"])
    for n, vm in before.items():
        now = host.vm(n)
        assert now["State"] == "Running"
        assert (now["WorkerProcessId"], now["GuestProcessId"]) == (vm["WorkerProcessId"], vm["GuestProcessId"])
    assert partitions(host) == ledger          # the hypervisor never noticed
    wait_until(lambda: driver(host, "echo")["Channels"] == 1, 5, what="s1's channel reopened")
    # s2 runs no client for its device: it stays offered — re-offered under a new channel id
    [s2_dev] = host.call("get-vmdevice", vm="s2")
    assert s2_dev["ChannelState"] == "Offered" and s2_dev["ChannelId"] != s2_before["ChannelId"]


@pytest.mark.microkernel_only
def test_repeated_crashes_mark_the_driver_failed_and_devices_error_instead_of_hanging(host):
    vm_with_device(host, "f1", "echo", "device-stream:echo:1000000:20:1")
    wait_until(lambda: progress(host, "f1") >= 2, 15, what="the stream to be under way")
    pids = set()
    for _ in range(5):
        echo = wait_until(lambda: (d := driver(host, "echo"))["State"] == "Running"
                          and d["ProcessId"] not in pids and d, 10, what="a fresh driver host")
        pids.add(echo["ProcessId"])
        os.kill(echo["ProcessId"], signal.SIGKILL)
    echo = wait_until(lambda: (d := driver(host, "echo"))["State"] == "Failed" and d, 10, what="Failed")
    assert echo["ProcessId"] is None and "crashes" in echo["Error"]
    done = wait_until(lambda: summary(host, "f1"), 15, what="the stream to end with errors")
    assert done["errors"] >= 1 and done["duplicates"] == 0 and done["completed"] < 1000000
    assert kvp(host, "f1")["device-stream"].startswith("failed")
    assert "crashes" in kvp(host, "f1")["device-stream-error"]
    assert host.vm("f1")["State"] == "Running"
    [view] = host.call("get-vmdevice", vm="f1")
    assert view["ChannelState"] == "Failed"
    rc, out, _ = host.hvctl("restart-vmhostdriver", "echo")
    assert out["State"] == "Running" and out["Restarts"] == echo["Restarts"] + 1
    wait_until(lambda: [d["ChannelState"] for d in host.call("get-vmdevice", vm="f1")] == ["Open"], 5,
               what="the device back after the restart")


def test_restart_vmhostdriver_replaces_the_process_mid_stream(host):
    vm_with_device(host, "u1", "echo", "device-stream:echo:800:2:8")
    wait_until(lambda: progress(host, "u1") >= 50, 15, what="the stream to be under way")
    old = driver(host, "echo")["ProcessId"]
    t0 = time.monotonic()
    rc, out, _ = host.hvctl("restart-vmhostdriver", "echo")
    assert out["State"] == "Running" and out["Restarts"] == 1
    assert time.monotonic() - t0 < 10
    if host.driver_model == "microkernel":
        assert out["ProcessId"] != old
        wait_until(lambda: not alive(old), 3, what="the old driver host gone")
    else:   # unloaded and loaded again inside the hypervisor
        assert out["ProcessId"] == old == host.pid_of("hypervisor")
    done = wait_until(lambda: summary(host, "u1"), 30, what="the stream to finish")
    assert done["completed"] == 800 and done["duplicates"] == 0 and done["errors"] == 0
    assert host.vm("u1")["State"] == "Running"


def test_unknown_driver_and_bad_device_arguments_are_refused(host):
    host.new_vm("b1")
    rc, out, _ = host.hvctl("add-vmdevice", "b1", "no-such-driver", check=False)
    assert rc == 1 and out["error"]["code"] == "NotFound"
    rc, out, _ = host.hvctl("add-vmdevice", "b1", "Bad/Name", check=False)
    assert rc == 1 and out["error"]["code"] == "BadRequest"
    rc, out, _ = host.hvctl("restart-vmhostdriver", "no-such-driver", check=False)
    assert rc == 1 and out["error"]["code"] == "NotFound"
    rc, out, _ = host.hvctl("remove-vmdevice", "b1", "--instance-id", "nope", check=False)
    assert rc == 1 and out["error"]["code"] == "NotFound"
    dev = host.call("add-vmdevice", vm="b1", driver="echo", settings={"k": "v"})
    assert host.call("get-vmdevice", vm="b1")[0]["Settings"] == {"k": "v"}
    host.call("remove-vmdevice", vm="b1", instance_id=dev["InstanceId"])
    assert host.call("get-vmdevice", vm="b1") == []


@pytest.mark.microkernel_only
def test_killing_vmms_takes_its_driver_hosts_down_and_a_new_vmms_brings_them_back(host):
    vm_with_device(host, "v1", "echo", "device-stream:echo:2000:1:2")
    wait_until(lambda: progress(host, "v1") >= 100, 15, what="the stream to be under way")
    old = driver(host, "echo")["ProcessId"]
    vm = host.vm("v1")
    host.close()
    os.kill(host.pid_of("vmms"), signal.SIGKILL)
    wait_until(lambda: host.pid_of("vmms") is None, 3, what="vmms gone")
    wait_until(lambda: not alive(old), 3, what="its driver host follows it (no orphans)")
    assert alive(vm["WorkerProcessId"]) and alive(vm["GuestProcessId"])   # the VM runs on
    host.hvctl("host", "up")
    done = wait_until(lambda: summary(host, "v1"), 30, what="the stream to finish")
    assert done["completed"] == 2000 and done["duplicates"] == 0 and done["errors"] == 0
    assert driver(host, "echo")["State"] == "Running"
    assert host.vm("v1")["WorkerProcessId"] == vm["WorkerProcessId"]

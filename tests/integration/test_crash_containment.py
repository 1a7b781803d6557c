"""Breaking things on purpose: kills of a worker, a guest, vmms and the hypervisor (issue 2)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import alive, wait_until
from tests.helpers.host_views import hv_partitions

pytestmark = pytest.mark.integration


def running_pair(host, *names):
    for n in names:
        host.new_vm(n)
    host.start(*names)
    return {n: host.vm(n) for n in names}


def partitions(host) -> dict:
    return {p["vm_id"]: p for p in hv_partitions(host)}


def test_kill_worker_turns_only_that_vm_off(host):
    vms = running_pair(host, "k1", "k2")
    events = host.client.events(vms["k1"]["Id"], timeout=5)
    os.kill(vms["k1"]["WorkerProcessId"], signal.SIGKILL)
    t0 = time.monotonic()
    wait_until(lambda: host.vm("k1")["State"] == "Off", 2, what="k1 Off within 2 s")
    assert time.monotonic() - t0 < 2
    wait_until(lambda: not alive(vms["k1"]["GuestProcessId"]), 2, what="k1's vmmem gone")
    wait_until(lambda: vms["k1"]["Id"] not in partitions(host), 2, what="k1's partition freed")
    assert "unexpectedly" in host.vm("k1")["LastExitReason"]
    k2 = host.vm("k2")
    assert k2["State"] == "Running" and k2["WorkerProcessId"] == vms["k2"]["WorkerProcessId"]
    assert k2["GuestProcessId"] == vms["k2"]["GuestProcessId"]
    seen = []
    for topic, body in events:
        seen.append((topic, body["State"]))
        if body["State"] == "Off":
            break
    assert (f"vm.{vms['k1']['Id']}.state", "Off") in seen


def test_subscriber_sees_crash_event_for_killed_guest(host):
    vms = running_pair(host, "g1", "g2")
    got = []
    stream = host.client.events(vms["g1"]["Id"], timeout=5)
    import threading

    def listen():
        for topic, body in stream:
            got.append((topic, body))
            if topic.endswith(".crashed"):
                return
    t = threading.Thread(target=listen, daemon=True)
    t.start()
    os.kill(vms["g1"]["GuestProcessId"], signal.SIGKILL)
    wait_until(lambda: host.vm("g1")["State"] == "Off", 2, what="g1 Off")
    vm = host.vm("g1")
    assert "guest crashed" in vm["LastExitReason"] and "signal 9" in vm["LastExitReason"]
    assert vm["Status"].startswith("Stopped: guest crashed")
    wait_until(lambda: not alive(vms["g1"]["WorkerProcessId"]), 2, what="g1's worker exits")
    t.join(5)
    assert any(topic == f"vm.{vms['g1']['Id']}.crashed" for topic, _ in got)
    assert host.vm("g2")["State"] == "Running"
    assert host.vm("g2")["GuestProcessId"] == vms["g2"]["GuestProcessId"]
    # recorded durably
    import json
    cfg = json.loads((host.home / "vms" / vms["g1"]["Id"] / "config.json").read_text())
    assert "guest crashed" in cfg["last_exit_reason"]


def test_kill_vmms_keeps_vms_running_and_restart_reattaches(host):
    vms = running_pair(host, "r1", "r2")
    time.sleep(0.3)  # measuring: uptime must keep growing across the vmms restart
    before = {n: host.vm(n) for n in vms}
    host.close()
    os.kill(host.pid_of("vmms"), signal.SIGKILL)
    wait_until(lambda: host.pid_of("vmms") is None, 3, what="vmms gone")
    for vm in vms.values():
        assert alive(vm["WorkerProcessId"]) and alive(vm["GuestProcessId"])
    rc, out, _ = host.hvctl("host", "up")
    assert out["Started"] == ["vmms"]
    for n, vm in before.items():
        now = wait_until(lambda: host.vm(n)["State"] == "Running" and host.vm(n), 5, what="reattached")
        assert now["WorkerProcessId"] == vm["WorkerProcessId"]
        assert now["GuestProcessId"] == vm["GuestProcessId"]
        assert now["Uptime"] >= vm["Uptime"]
    wait_until(lambda: host.vm("r1")["Heartbeat"] == "OkApplicationsUnknown", 3, what="heartbeat")
    # still fully manageable after the reattach
    rc, out, _ = host.hvctl("stop-vm", "r1")
    assert out[0]["State"] == "Off"


def test_kill_hypervisor_stops_every_vm_and_host_up_recovers(host):
    vms = running_pair(host, "h1", "h2")
    configs = sorted(p.name for p in (host.home / "vms").iterdir())
    os.kill(host.pid_of("hypervisor"), signal.SIGKILL)
    for n, vm in vms.items():
        wait_until(lambda: host.vm(n)["State"] == "Off", 3, what=f"{n} Off after the host crash")
        wait_until(lambda: not alive(vm["GuestProcessId"]) and not alive(vm["WorkerProcessId"]), 3,
                   what="worker and guest gone")
        assert "hypervisor" in host.vm(n)["LastExitReason"]
    rc, out, _ = host.hvctl("host", "up")
    assert out["Started"] == ["hypervisor"]
    host.start("h1", "h2")
    assert {vm["Name"]: vm["State"] for vm in host.call("get-vm")} == {"h1": "Running", "h2": "Running"}
    assert sorted(p.name for p in (host.home / "vms").iterdir()) == configs

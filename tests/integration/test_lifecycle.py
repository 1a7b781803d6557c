"""Foundation behaviour: daemons, one vmwp + vmmem per running VM, lifecycle ops (issue 2)."""
from __future__ import annotations

import psutil
import pytest
import zmq

from hypervisor.runtime import wire
from hypervisor.runtime.paths import Home
from hypervisor.runtime.rpc_client import dealer_socket
from tests.conftest import alive, short_home, start_host, stop_host, wait_until

pytestmark = pytest.mark.integration


def titles(prefix: str) -> dict[int, str]:
    out = {}
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(" ".join(p.info["cmdline"] or []).split())
        if cmd.startswith(prefix + " ") and p.info["status"] != psutil.STATUS_ZOMBIE:
            out[p.pid] = cmd
    return out


def test_host_up_twice_starts_one_of_each_and_down_leaves_nothing(request):
    host = start_host(short_home())
    try:
        hv, vmms = host.pid_of("hypervisor"), host.pid_of("vmms")
        rc, out, _ = host.hvctl("host", "up")
        assert out["Started"] == [] and out["HypervisorProcessId"] == hv and out["VmmsProcessId"] == vmms
        daemons = [c for c in titles("hypervisor").values() if str(host.home) in c]
        assert daemons == [f"hypervisor {host.home}"]
        assert [c for c in titles("vmms").values() if str(host.home) in c] == [f"vmms {host.home}"]
        host.new_vm("a")
        host.start("a")
        seen = [p.pid for p in host.processes()]
        assert len(seen) >= 5  # hypervisor, vmms, fork-server, vmwp, vmmem
        rc, out, _ = host.hvctl("host", "down")
        assert set(out["Stopped"]) == {"vmms", "hypervisor"}
        wait_until(lambda: not any(alive(p) for p in seen), 5, what="every process of the home to exit")
        rc, out, err = host.hvctl("get-vm", check=False)
        assert rc == 3 and out["error"]["code"] == "Unavailable" and "not running" in err
    finally:
        stop_host(host, request)


def test_three_vms_have_one_worker_and_one_guest_each(host):
    for name in ("v1", "v2", "v3"):
        host.new_vm(name, guest="cpu-burn" if name == "v3" else "idle")
    host.start("v1", "v2", "v3")
    vms = {vm["Name"]: vm for vm in host.call("get-vm")}
    workers, guests = titles("vmwp"), titles("vmmem")
    for name, vm in vms.items():
        assert vm["State"] == "Running"
        assert workers[vm["WorkerProcessId"]] == f"vmwp {name} {vm['Id']}"
        assert guests[vm["GuestProcessId"]] == f"vmmem {name} {vm['Id']}"
        assert psutil.Process(vm["GuestProcessId"]).ppid() == vm["WorkerProcessId"]
        rc, out, _ = host.hvctl("get-vmworkerprocess", name)
        assert out["ProcessId"] == vm["WorkerProcessId"] and out["GuestProcessId"] == vm["GuestProcessId"]
    ours = {vm["Id"] for vm in vms.values()}
    assert sum(1 for c in workers.values() if c.split()[-1] in ours) == 3
    assert sum(1 for c in guests.values() if c.split()[-1] in ours) == 3
    # plain (non --json) output is the PowerShell-like pid
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "parent.cli", "--home", str(host.home),
                          "get-vmworkerprocess", "v1"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == str(vms["v1"]["WorkerProcessId"])
    wait_until(lambda: host.vm("v1")["Heartbeat"] == "OkApplicationsUnknown", 5, what="heartbeat")


def test_suspend_really_stops_the_partition_and_resume_continues_it(host):
    host.new_vm("p", guest="cpu-burn")
    host.start("p")
    vm = host.vm("p")
    tree = [psutil.Process(vm["GuestProcessId"])]
    wait_until(lambda: tree[0].children(), 5, what="the cpu-burn VP process")
    tree += tree[0].children(recursive=True)
    rc, out, _ = host.hvctl("suspend-vm", "p")
    assert out[0]["State"] == "Paused" and host.vm("p")["Heartbeat"] == "Paused"
    # stopped (SIGSTOP), and frozen too where the host has a cgroup freezer (shown as D)
    frozen = host.call("get-vmhost").get("Cgroup") is not None
    ok = (psutil.STATUS_STOPPED, psutil.STATUS_DISK_SLEEP) if frozen else (psutil.STATUS_STOPPED,)
    assert all(p.status() in ok for p in tree)
    before = sum(p.cpu_times().user for p in tree)
    up1 = host.vm("p")["Uptime"]
    import time
    time.sleep(0.3)  # measuring: a paused VM must not accrue CPU or uptime over a real interval
    assert sum(p.cpu_times().user for p in tree) == before
    assert host.vm("p")["Uptime"] == pytest.approx(up1, abs=0.05)
    rc, out, _ = host.hvctl("resume-vm", "p")
    assert out[0]["State"] == "Running"
    wait_until(lambda: any(p.status() == psutil.STATUS_RUNNING for p in tree[1:]), 5, what="VP running again")
    rc, out, err = host.hvctl("resume-vm", "p", check=False)
    assert rc == 1 and out["error"]["code"] == "InvalidState"
    # a Paused (frozen) VM can be turned off: the worker thaws it before the kill
    host.hvctl("suspend-vm", "p")
    rc, out, _ = host.hvctl("stop-vm", "p", "--turn-off")
    assert out[0]["State"] == "Off"
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)


def test_graceful_stop_turn_off_restart_and_remove(host):
    host.new_vm("g")
    host.start("g")
    rc, out, _ = host.hvctl("stop-vm", "g")
    assert out[0]["State"] == "Off" and out[0]["LastExitReason"] == "guest shut down"
    host.start("g")
    old_guest = host.vm("g")["GuestProcessId"]
    old_worker = host.vm("g")["WorkerProcessId"]
    rc, out, _ = host.hvctl("restart-vm", "g")
    vm = host.vm("g")
    assert vm["State"] == "Running" and vm["WorkerProcessId"] == old_worker
    assert vm["GuestProcessId"] != old_guest and not alive(old_guest)
    assert psutil.Process(vm["GuestProcessId"]).cmdline()[0].startswith("vmmem g ")
    rc, out, err = host.hvctl("remove-vm", "g", check=False)
    assert rc == 1 and out["error"]["code"] == "InvalidState" and "--force" in out["error"]["message"]
    rc, out, _ = host.hvctl("stop-vm", "g", "--turn-off")
    assert out[0]["State"] == "Off" and out[0]["LastExitReason"] == "turned off"
    wait_until(lambda: not alive(vm["GuestProcessId"]), 3, what="guest gone")
    host.start("g")
    pids = [host.vm("g")["WorkerProcessId"], host.vm("g")["GuestProcessId"]]
    host.hvctl("remove-vm", "g", "--force")
    wait_until(lambda: not any(alive(p) for p in pids), 5, what="worker and guest gone")
    assert not (host.home / "vms").joinpath(vm["Id"], "config.json").exists()
    rc, out, _ = host.hvctl("get-vm", "g", check=False)
    assert rc == 1 and out["error"]["code"] == "NotFound"


def test_command_guest_runs_in_the_partition_and_its_exit_is_a_shutdown(host):
    host.new_vm("c", guest="command:echo hello-from-guest; sleep 0.2")
    host.start("c")
    wait_until(lambda: host.vm("c")["State"] == "Off", 10, what="the command guest to halt")
    assert "program exited with status 0" in host.vm("c")["LastExitReason"]
    console = (host.home / "vms" / host.vm("c")["Id"] / "console.log").read_bytes()
    assert b"hello-from-guest" in console


def test_two_hosts_side_by_side_do_not_see_each_other(request):
    a, b = start_host(short_home()), start_host(short_home())
    try:
        a.new_vm("same")
        b.new_vm("same")
        a.start("same")
        assert a.vm("same")["State"] == "Running" and b.vm("same")["State"] == "Off"
        assert [v["Name"] for v in b.call("get-vm")] == ["same"]
        assert a.pid_of("hypervisor") != b.pid_of("hypervisor")
        assert a.call("get-vmhost")["Home"] == str(a.home)
    finally:
        stop_host(a, request)
        stop_host(b, request)


def test_frozen_guest_loses_heartbeat_and_recovers(host):
    import os
    import signal
    host.new_vm("hb")
    host.start("hb")
    guest = host.vm("hb")["GuestProcessId"]
    wait_until(lambda: host.vm("hb")["Heartbeat"] == "OkApplicationsUnknown", 3, what="first beat")
    os.kill(guest, signal.SIGSTOP)  # frozen behind the hypervisor's back: not a pause
    try:
        vm = wait_until(lambda: (v := host.vm("hb"))["Heartbeat"] == "LostCommunication" and v, 8,
                        what="LostCommunication after missed beats")
        assert vm["State"] == "Running" and "Lost communication" in vm["Status"]
    finally:
        os.kill(guest, signal.SIGCONT)
    wait_until(lambda: host.vm("hb")["Heartbeat"] == "OkApplicationsUnknown", 3, what="beats again")


def test_guest_that_ignores_shutdown_times_out_and_force_turns_it_off(host):
    import time
    host.new_vm("deaf", guest="no-shutdown")
    host.start("deaf")
    t0 = time.monotonic()
    rc, out, err = host.hvctl("stop-vm", "deaf", "--timeout", "1", check=False)
    assert rc == 1 and out["error"]["code"] == "Timeout" and "--force" in out["error"]["message"]
    assert time.monotonic() - t0 < 10
    assert host.vm("deaf")["State"] == "Running"
    rc, out, _ = host.hvctl("stop-vm", "deaf", "--timeout", "1", "--force")
    assert out[0]["State"] == "Off"


def test_restart_vm_reply_refreshes_the_status_even_when_notifications_go_astray(host):
    """Chaos finding (issue 9): get-vm showed the old Uptime after restart-vm. The worker sends its
    status notifications to the last peer that attached; here the test attaches itself, so vmms
    never hears them. The status in restart-vm's own reply must still reach get-vm."""
    host.new_vm("astray")
    host.start("astray")
    wait_until(lambda: (host.vm("astray")["Uptime"] or 0) >= 1.5, 10, what="uptime past 1.5 s")
    ctx = zmq.Context()
    sock = dealer_socket(ctx, Home(host.home).worker_endpoint(host.vm("astray")["Id"]))
    try:
        sock.send_multipart(wire.request_frames("t1", "attach", {}, 5000))
        assert sock.poll(5000), "the worker did not answer attach"
        reply = wire.unpack(sock.recv_multipart()[-1])
        assert reply["ok"] and reply["result"]["state"] == "Running"
        host.hvctl("restart-vm", "astray")
        vm = host.vm("astray")
        assert vm["State"] == "Running" and vm["Uptime"] < 1.5, vm["Uptime"]
    finally:
        sock.close(0)
        ctx.term()
        host.hvctl("stop-vm", "astray", "--turn-off")

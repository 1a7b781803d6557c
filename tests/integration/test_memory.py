"""The hypervisor's memory ledger with real guest RAM (issue 4)."""
from __future__ import annotations

import os
import signal

import psutil
import pytest

from tests.conftest import alive, short_home, start_host, stop_host, wait_until
from hypervisor.runtime.paths import Home

pytestmark = pytest.mark.integration
MB = 1 << 20


@pytest.fixture
def small_host(request):
    """A host whose pool is short: 1 GB with 256 MB for the root → 768 MB for partitions."""
    h = start_host(short_home(), "--host-memory", "1GB", "--root-reserve", "256MB")
    yield h
    stop_host(h, request)


def host_mem(host):
    info = host.call("get-vmhost")
    return info["MemoryCapacity"], info["RootMemoryReserve"], info["MemoryFree"]


def test_static_admission_failure_names_what_is_needed(small_host):
    small_host.new_vm("web1", memory_startup_bytes=1024 * MB)
    rc, out, err = small_host.hvctl("start-vm", "web1", check=False)
    assert rc == 1 and out["error"]["code"] == "InsufficientMemory"
    assert out["error"]["message"] == ("Not enough memory in the system to start the virtual machine "
                                       "'web1': it needs 1024 MB and 768 MB is available.")
    assert small_host.vm("web1")["State"] == "Off"


def test_static_vm_holds_startup_in_real_shared_memory(small_host):
    small_host.new_vm("s", memory_startup_bytes=256 * MB, guest="memory-demand:128MB")
    small_host.start("s")
    cap, reserve, avail = host_mem(small_host)
    assert avail == cap - reserve - 256 * MB
    vm = wait_until(lambda: (v := small_host.vm("s"))["MemoryDemand"] == 128 * MB and v, 5, what="demand")
    assert vm["MemoryAssigned"] == 256 * MB
    guest = psutil.Process(vm["GuestProcessId"])
    wait_until(lambda: guest.memory_info().rss > 128 * MB, 5, what="the guest's RSS to show its RAM")
    shm = [m for m in guest.memory_maps(grouped=True) if m.path.startswith("/dev/shm/hvemu-")]
    assert len(shm) == 1 and (os.stat(shm[0].path).st_mode & 0o777) == 0o600
    mem = small_host.call("measure-vm", vm="s")
    assert mem["MinRAM"] == mem["MaxRAM"] == 256 * MB


def test_dynamic_vm_converges_to_demand_plus_buffer_and_gives_memory_back(small_host):
    small_host.new_vm("d", memory_startup_bytes=256 * MB, guest="memory-demand:200MB")
    rc, out, _ = small_host.hvctl("set-vmmemory", "d", "--dynamic-memory-enabled", "true",
                                  "--minimum-bytes", "64MB", "--maximum-bytes", "700MB", "--buffer", "20")
    assert out["DynamicMemoryEnabled"] is True and out["Minimum"] == 64 * MB
    small_host.start("d")
    target = lambda demand: -(-int(demand * 1.2) // (2 * MB)) * 2 * MB  # noqa: E731
    wait_until(lambda: small_host.vm("d")["MemoryAssigned"] == target(200 * MB), 5, what="converge to 240 MB")
    small_host.hvctl("set-vm", "d", "--guest", "memory-demand:500MB")
    wait_until(lambda: small_host.vm("d")["MemoryAssigned"] == 600 * MB, 3, what="hot-add to 600 MB")
    guest = psutil.Process(small_host.vm("d")["GuestProcessId"])
    wait_until(lambda: guest.memory_info().rss > 480 * MB, 5, what="500 MB touched")
    small_host.hvctl("set-vm", "d", "--guest", "memory-demand:50MB")
    wait_until(lambda: small_host.vm("d")["MemoryAssigned"] == 64 * MB, 3, what="balloon down to the minimum")
    wait_until(lambda: guest.memory_info().rss < 200 * MB, 5, what="pages returned to the host")
    # running changes Hyper-V refuses
    rc, out, _ = small_host.hvctl("set-vmmemory", "d", "--minimum-bytes", "128MB", check=False)
    assert rc == 1 and out["error"]["code"] == "InvalidState" and "inimum" in out["error"]["message"]
    rc, out, _ = small_host.hvctl("set-vmmemory", "d", "--maximum-bytes", "600MB", check=False)
    assert rc == 1 and out["error"]["code"] == "InvalidState"
    small_host.hvctl("set-vmmemory", "d", "--maximum-bytes", "720MB", "--priority", "80")
    m = small_host.call("measure-vm", vm="d")
    assert m["MinRAM"] <= 64 * MB and m["MaxRAM"] == 600 * MB and m["MinRAM"] < m["AvgRAM"] < m["MaxRAM"]


def test_short_pool_divides_by_priority(small_host):
    for name, prio in (("hi", 90), ("lo", 10)):
        small_host.new_vm(name, memory_startup_bytes=128 * MB, guest="memory-demand:600MB")
        small_host.hvctl("set-vmmemory", name, "--dynamic-memory-enabled", "true", "--minimum-bytes",
                         "64MB", "--maximum-bytes", "1GB", "--priority", str(prio))
    small_host.start("hi", "lo")

    def split():
        vms = {v["Name"]: v for v in small_host.call("get-vm")}
        total = vms["hi"]["MemoryAssigned"] + vms["lo"]["MemoryAssigned"]
        return total >= 760 * MB and vms["hi"]["MemoryAssigned"] > vms["lo"]["MemoryAssigned"] and vms
    vms = wait_until(split, 5, what="the pool split by priority")
    assert vms["lo"]["MemoryAssigned"] >= 64 * MB
    cap, reserve, avail = host_mem(small_host)
    assert avail >= 0 and vms["hi"]["MemoryAssigned"] + vms["lo"]["MemoryAssigned"] + reserve + avail == cap


@pytest.mark.parametrize("victim", ["WorkerProcessId", "GuestProcessId"])
def test_kill_returns_memory_within_a_second(small_host, victim):
    small_host.new_vm("k", memory_startup_bytes=512 * MB)
    cap, reserve, free_before = host_mem(small_host)
    small_host.start("k")
    assert host_mem(small_host)[2] == free_before - 512 * MB
    vm = small_host.vm("k")
    os.kill(vm[victim], signal.SIGKILL)
    wait_until(lambda: host_mem(small_host)[2] == free_before, 1.0, what="memory back within 1 s")
    wait_until(lambda: not alive(vm["GuestProcessId"]), 2, what="guest gone")
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(_prefix(small_host))]


def _prefix(host):
    return Home.resolve(host.home).shm_prefix


def test_host_memory_sizes_must_be_2mb_multiples(home):
    from tests.conftest import Host
    h = Host(home)
    rc, out, _ = h.hvctl("host", "up", "--host-memory", "1000001", check=False)
    assert rc == 1 and out["error"]["code"] == "BadRequest" and "2 MiB" in out["error"]["message"]
    rc, out, _ = h.hvctl("host", "up", "--root-reserve", "3MB", check=False)
    assert rc == 1 and out["error"]["code"] == "BadRequest"

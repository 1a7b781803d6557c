"""The monitor model (parent/monitor_model.py) behind top, the web page and /metrics: CPU as a
share of the VM's VPs from the newest ledger sample, disk rates between polls, sparkline
series, incremental history reads and sorting."""
from __future__ import annotations

import pytest

from parent.monitor_model import Monitor, sort_rows

MIB = 1 << 20
HOST = {"LogicalProcessorCount": 2, "MemoryCapacity": 2048 * MIB, "MemoryAvailable": 1024 * MIB,
        "CpuReserveAvailable": 75.0, "Home": "/tmp/h"}


def vm(name, vid, state="Running", pid=100, assigned=512 * MIB):
    return {"Name": name, "Id": vid, "State": state, "Heartbeat": "OkApplicationsUnknown",
            "CPUUsage": 10, "MemoryAssigned": assigned if pid else 0, "MemoryDemand": 0,
            "MemoryStartup": 512 * MIB, "ProcessorCount": 2, "Uptime": 5.0,
            "WorkerProcessId": pid, "GuestProcessId": pid and pid + 1}


def hist(vid, times, consumed, read=0, write=0, maximum=50, count=2, memory=512 * MIB):
    n = len(times)
    return {"VMId": vid, "Count": count, "Reserve": 10, "Maximum": maximum, "CPUTime": 9.0,
            "ThrottledTime": 1.5, "TotalDiskRead": read, "TotalDiskWrite": write,
            "Samples": {"Time": times, "Interval": [1.0] * n, "CPUEntitled": [1.0] * n,
                        "CPUConsumed": consumed, "CPUThrottled": [0.5] * n,
                        "MemoryAssigned": [memory] * n, "MemoryDemand": [300 * MIB] * n}}


def test_cpu_share_of_vps_disk_rates_and_sparklines():
    m = Monitor(spark_points=3)
    assert m.history_args() == {"limit": 3}
    snap = m.update(100.0, HOST, [vm("a", "A")], [], [hist("A", [98.0, 99.0], [0.5, 1.0], 1000, 0)])
    (row,) = snap.vms
    assert row.cpu_percent == 50.0 and row.throttled_percent == 25.0   # 1.0 s of 2 VPs in 1 s
    assert (row.reserve, row.maximum, row.count) == (10, 50, 2)
    assert row.disk_read_rate == 0.0                                   # no earlier poll yet
    assert m.history_args() == {"since": 99.0}
    snap = m.update(102.0, HOST, [vm("a", "A")], [], [hist("A", [100.0, 101.0], [0.2, 0.4], 5000, 2000)])
    (row,) = snap.vms
    assert row.cpu_percent == 20.0
    assert row.disk_read_rate == pytest.approx(2000.0) and row.disk_write_rate == pytest.approx(1000.0)
    assert snap.sparks["A"]["cpu"] == [50.0, 10.0, 20.0]               # bounded to 3 points
    assert snap.host["MemoryAssigned"] == 512 * MIB and snap.host["Running"] == 1
    data = snap.to_json()
    assert data["vms"][0]["spark"]["memory"][-1] == 512 * MIB and data["error"] is None


def test_an_off_vm_shows_no_cpu_and_a_removed_vm_is_forgotten():
    m = Monitor()
    m.update(1.0, HOST, [vm("a", "A"), vm("b", "B", "Off", None)], [], [hist("A", [0.5], [2.0])])
    snap = m.update(2.0, HOST, [vm("b", "B", "Off", None)], [], [])
    (row,) = snap.vms
    assert row.cpu_percent == 0.0 and row.memory_assigned == 0 and "A" not in snap.sparks


def test_sort_keys():
    m = Monitor()
    history = [dict(hist("A", [0.5], [0.2], memory=1024 * MIB), VM=vm("a", "A")),
               dict(hist("B", [0.5], [1.8], memory=256 * MIB), VM=vm("b", "B")),
               {"VMId": "C", "VM": vm("c", "C", "Off", None)}]
    snap = m.update(1.0, HOST, None, [], history)      # the VMs from the history's views
    assert [r.memory_assigned for r in snap.vms] == [1024 * MIB, 256 * MIB, 0]
    names = lambda rows: [r.name for r in rows]  # noqa: E731
    assert names(sort_rows(snap.vms, "cpu")) == ["b", "a", "c"]
    assert names(sort_rows(snap.vms, "memory")) == ["a", "b", "c"]
    assert names(sort_rows(snap.vms, "name")) == ["a", "b", "c"]
    assert names(sort_rows(snap.vms, "name", reverse=True)) == ["c", "b", "a"]
    assert names(sort_rows(snap.vms, "state"))[0] == "c"

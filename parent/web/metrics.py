"""`/metrics`: the web manager's Prometheus text exposition (prometheus-client), rendered from
the feed's latest snapshot — a scrape never reaches vmms.

Per VM (labels `vm_name`, `vm_id`): `hvemu_vm_cpu_seconds_total`, `hvemu_vm_cpu_throttled_seconds_total`
(the hypervisor's CPU ledger), `hvemu_vm_memory_assigned_bytes`, `hvemu_vm_memory_demand_bytes`
(its memory ledger), `hvemu_vm_disk_read_bytes_total`, `hvemu_vm_disk_written_bytes_total` (the
storage driver's counts), `hvemu_vm_running`, `hvemu_vm_heartbeat` (1 for the VM's current
heartbeat state, label `state`), `hvemu_vm_virtual_processors`, `hvemu_vm_cpu_maximum_ratio`,
`hvemu_vm_cpu_reserve_ratio`. Per driver (label `driver`): `hvemu_driver_restarts_total`,
`hvemu_driver_up`. Host: `hvemu_host_*` pool figures and `hvemu_up` (vmms answered the last poll).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

HEARTBEATS = ("OkApplicationsUnknown", "NoContact", "LostCommunication", "Paused", "Disabled")
VM_LABELS = ["vm_name", "vm_id"]


class SnapshotCollector:
    def __init__(self, feed):
        self.feed = feed

    def collect(self):
        snap = self.feed.snapshot()
        up = GaugeMetricFamily("hvemu_up", "1 if vmms answered the web manager's last poll")
        up.add_metric([], 0.0 if snap.get("error") else 1.0)
        yield up
        host = snap.get("host") or {}
        for key, name, doc in (
                ("LogicalProcessorCount", "hvemu_host_logical_processors", "host logical processors"),
                ("MemoryCapacity", "hvemu_host_memory_capacity_bytes", "memory pool for partitions"),
                ("RootMemoryReserve", "hvemu_host_memory_root_reserve_bytes", "memory kept for the root partition"),
                ("MemoryAssigned", "hvemu_host_memory_assigned_bytes", "memory assigned to running VMs"),
                ("MemoryAvailable", "hvemu_host_memory_available_bytes", "memory free in the pool"),
                ("CpuReserveAvailable", "hvemu_host_cpu_reserve_available_percent", "CPU reserve still free, % of host")):
            if host.get(key) is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], float(host[key]))
                yield g
        cpu = CounterMetricFamily("hvemu_vm_cpu_seconds", "CPU seconds consumed since the VM started", labels=VM_LABELS)
        thr = CounterMetricFamily("hvemu_vm_cpu_throttled_seconds", "VP-seconds the hypervisor held the VM back", labels=VM_LABELS)
        assigned = GaugeMetricFamily("hvemu_vm_memory_assigned_bytes", "memory assigned by the hypervisor", labels=VM_LABELS)
        demand = GaugeMetricFamily("hvemu_vm_memory_demand_bytes", "memory demand the guest reports", labels=VM_LABELS)
        rd = CounterMetricFamily("hvemu_vm_disk_read_bytes", "bytes the storage driver read for the VM", labels=VM_LABELS)
        wr = CounterMetricFamily("hvemu_vm_disk_written_bytes", "bytes the storage driver wrote for the VM", labels=VM_LABELS)
        running = GaugeMetricFamily("hvemu_vm_running", "1 while the VM has a worker process", labels=VM_LABELS)
        vps = GaugeMetricFamily("hvemu_vm_virtual_processors", "the VM's virtual processors (Count)", labels=VM_LABELS)
        cap = GaugeMetricFamily("hvemu_vm_cpu_maximum_ratio", "CPU Maximum as a fraction of Count", labels=VM_LABELS)
        res = GaugeMetricFamily("hvemu_vm_cpu_reserve_ratio", "CPU Reserve as a fraction of Count", labels=VM_LABELS)
        hb = GaugeMetricFamily("hvemu_vm_heartbeat", "1 for the VM's heartbeat state", labels=VM_LABELS + ["state"])
        for vm in snap.get("vms") or []:
            labels = [vm["name"], vm["id"]]
            cpu.add_metric(labels, vm["cpu_time"])
            thr.add_metric(labels, vm["throttled_time"])
            assigned.add_metric(labels, vm["memory_assigned"])
            demand.add_metric(labels, vm["memory_demand"])
            rd.add_metric(labels, vm["disk_read_total"])
            wr.add_metric(labels, vm["disk_write_total"])
            live = vm["worker_pid"] is not None
            running.add_metric(labels, 1.0 if live else 0.0)
            vps.add_metric(labels, vm["count"])
            cap.add_metric(labels, vm["maximum"] / 100)
            res.add_metric(labels, vm["reserve"] / 100)
            state = vm["heartbeat"] if live else "NoContact"
            for s in HEARTBEATS if state in HEARTBEATS else (*HEARTBEATS, state):
                hb.add_metric(labels + [s], 1.0 if s == state else 0.0)
        yield from (cpu, thr, assigned, demand, rd, wr, running, vps, cap, res, hb)
        restarts = CounterMetricFamily("hvemu_driver_restarts", "times vmms restarted the driver host", labels=["driver"])
        dup = GaugeMetricFamily("hvemu_driver_up", "1 while the driver host is Running", labels=["driver"])
        for d in snap.get("drivers") or []:
            restarts.add_metric([d["Name"]], float(d.get("Restarts") or 0))
            dup.add_metric([d["Name"]], 1.0 if d.get("State") == "Running" else 0.0)
        yield restarts
        yield dup


def make_registry(feed) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(feed))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

"""What `hvctl top`, the web manager and `/metrics` show, computed from vmms's replies: pure,
no I/O, no clock of its own.

A *poll* is pipelined control ops — `get-vmhost`, `get-vmhostdriver` (every fifth poll) and
`get-vmhistory` with `view` (each VM's get-vm object without ledger figures, plus the new
ledger samples only, `since` the last poll): one cheap hypercall answers for every VM, so a
watcher costs the daemons little even at 100 VMs (no `list-partitions`). `Monitor.update()` folds one
poll into a `Snapshot`: the host line, one `VmRow` per VM, the driver hosts, and per VM a short
series (the last `spark_points` samples) for sparklines.

CPU figures are shares of the VM's own virtual processors (as `Set-VMProcessor`'s Reserve and
Maximum are), from the newest ledger sample: consumed CPU-seconds / interval / Count. Disk
rates are the difference of the storage driver's byte totals between two polls.

Key types: `Monitor` (the state kept between polls), `Snapshot`, `VmRow`, `SORT_KEYS`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from hypervisor.runtime.errors import HvError

SPARK_POINTS = 120
DRIVER_POLL_EVERY = 5


@dataclass
class VmRow:
    name: str
    id: str
    state: str
    heartbeat: str
    status: str
    cpu_percent: float          # % of its Count VPs, over the newest ledger sample
    cpu_host_percent: float     # % of the host (get-vm's CPUUsage)
    count: int
    reserve: int                # % of Count
    maximum: int                # % of Count
    throttled_percent: float    # VP-time held back in the newest sample, % of Count
    memory_assigned: int
    memory_demand: int
    memory_startup: int
    dynamic_memory: bool
    uptime: float
    disk_read_rate: float       # bytes/s
    disk_write_rate: float
    disk_read_total: int
    disk_write_total: int
    cpu_time: float             # s consumed since start
    throttled_time: float       # VP-s held back since start
    worker_pid: int | None
    guest_pid: int | None


@dataclass
class Snapshot:
    time: float
    host: dict
    vms: list[VmRow]
    drivers: list[dict]
    sparks: dict[str, dict[str, list]] = field(default_factory=dict)   # vm id -> series
    error: str | None = None

    def to_json(self) -> dict:
        return {"time": self.time, "host": self.host, "drivers": self.drivers,
                "error": self.error,
                "vms": [{**asdict(r), "spark": self.sparks.get(r.id, {})} for r in self.vms]}


# key -> what it sorts by (largest first for figures; ties by name)
SORT_KEYS = {
    "name": lambda r: r.name.lower(),
    "state": lambda r: (r.state, r.name.lower()),
    "cpu": lambda r: (-r.cpu_percent * r.count, r.name.lower()),
    "memory": lambda r: (-r.memory_assigned, r.name.lower()),
    "uptime": lambda r: (-r.uptime, r.name.lower()),
    "disk": lambda r: (-(r.disk_read_rate + r.disk_write_rate), r.name.lower()),
}


def sort_rows(rows: list[VmRow], key: str, reverse: bool = False) -> list[VmRow]:
    return sorted(rows, key=SORT_KEYS[key], reverse=reverse)


class Monitor:
    """Folds polls into snapshots, keeping what rates and sparklines need between them."""

    def __init__(self, spark_points: int = SPARK_POINTS):
        self.spark_points = spark_points
        self.since: float | None = None                 # newest ledger sample seen
        self._disk: dict[str, tuple[float, int, int]] = {}   # vm id -> (t, read, write)
        self._series: dict[str, dict[str, deque]] = {}
        self._last_sample: dict[str, dict] = {}         # vm id -> newest sample row
        self.polls = 0                                  # polls folded so far
        self.drivers: list[dict] = []                   # the last get-vmhostdriver answer

    def history_args(self) -> dict:
        """Arguments for this poll's get-vmhistory: only what is new."""
        if self.since is None:
            return {"limit": self.spark_points}
        return {"since": self.since}

    def update(self, now: float, host: dict, vms: list[dict] | None, drivers: list[dict],
               history: list[dict]) -> Snapshot:
        """`vms`: get-vm objects, or None to take them from the history's `VM` views."""
        self.polls += 1
        hist = {h["VMId"]: h for h in history}
        if vms is None:
            vms = [h["VM"] for h in history if "VM" in h]
        rows = []
        live = set()
        for vm in vms:
            vid = vm["Id"]
            live.add(vid)
            h = hist.get(vid, {})
            self._fold_samples(vid, h.get("Samples") or {}, h.get("Count") or vm.get("ProcessorCount") or 1)
            last = self._last_sample.get(vid) if vm.get("WorkerProcessId") else None
            count = h.get("Count") or vm.get("ProcessorCount") or 1
            cpu = thr = host_cpu = 0.0
            assigned, demand = int(vm.get("MemoryAssigned") or 0), int(vm.get("MemoryDemand") or 0)
            if last and last["Interval"] > 0:
                cpu = last["CPUConsumed"] / last["Interval"] / count * 100
                thr = last["CPUThrottled"] / last["Interval"] / count * 100
                host_cpu = last["CPUConsumed"] / last["Interval"] / max(1, host.get("LogicalProcessorCount") or 1) * 100
                assigned, demand = int(last["MemoryAssigned"]), int(last["MemoryDemand"])
            rd, wr = int(h.get("TotalDiskRead", 0)), int(h.get("TotalDiskWrite", 0))
            prev = self._disk.get(vid)
            rrate = wrate = 0.0
            if prev is not None and now > prev[0] and rd >= prev[1] and wr >= prev[2]:
                rrate, wrate = (rd - prev[1]) / (now - prev[0]), (wr - prev[2]) / (now - prev[0])
            self._disk[vid] = (now, rd, wr)
            rows.append(VmRow(
                name=vm["Name"], id=vid, state=vm["State"], heartbeat=vm.get("Heartbeat", ""),
                status=vm.get("Status", ""), cpu_percent=round(cpu, 1),
                cpu_host_percent=round(host_cpu, 1) if last else float(vm.get("CPUUsage") or 0),
                count=count,
                reserve=int(h.get("Reserve", 0)), maximum=int(h.get("Maximum", 100)),
                throttled_percent=round(thr, 1),
                memory_assigned=assigned if vm.get("WorkerProcessId") else 0,
                memory_demand=demand if vm.get("WorkerProcessId") else 0,
                memory_startup=int(vm.get("MemoryStartup") or 0),
                dynamic_memory=bool(vm.get("DynamicMemoryEnabled")),
                uptime=float(vm.get("Uptime") or 0.0),
                disk_read_rate=rrate, disk_write_rate=wrate, disk_read_total=rd,
                disk_write_total=wr, cpu_time=float(h.get("CPUTime", 0.0)),
                throttled_time=float(h.get("ThrottledTime", 0.0)),
                worker_pid=vm.get("WorkerProcessId"), guest_pid=vm.get("GuestProcessId")))
        for gone in set(self._series) - live:
            self._series.pop(gone, None)
            self._last_sample.pop(gone, None)
            self._disk.pop(gone, None)
        assigned = sum(r.memory_assigned for r in rows)
        host_line = {
            "LogicalProcessorCount": host.get("LogicalProcessorCount"),
            "CpuReserveAvailable": host.get("CpuReserveAvailable"),
            "MemoryCapacity": host.get("MemoryCapacity"),
            "RootMemoryReserve": host.get("RootMemoryReserve"),
            "MemoryAssigned": assigned,
            "MemoryAvailable": host.get("MemoryAvailable"),
            "HypervisorProcessId": host.get("HypervisorProcessId"),
            "VmmsProcessId": host.get("VmmsProcessId"),
            "Home": host.get("Home"),
            "Running": sum(1 for r in rows if r.worker_pid),
            "VMs": len(rows),
        }
        drivers_out = [{k: d.get(k) for k in ("Name", "ProcessId", "State", "Restarts", "Channels",
                                              "Version")} for d in drivers]
        sparks = {vid: {k: list(v) for k, v in s.items()} for vid, s in self._series.items()}
        return Snapshot(now, host_line, rows, drivers_out, sparks)

    def _fold_samples(self, vid: str, samples: dict, count: int) -> None:
        times = samples.get("Time") or []
        if not times:
            return
        series = self._series.get(vid)
        if series is None:
            series = self._series[vid] = {k: deque(maxlen=self.spark_points)
                                          for k in ("time", "cpu", "memory", "demand")}
        for i, t in enumerate(times):
            iv = samples["Interval"][i] or 1.0
            series["time"].append(t)
            series["cpu"].append(round(samples["CPUConsumed"][i] / iv / max(1, count) * 100, 1))
            series["memory"].append(samples["MemoryAssigned"][i])
            series["demand"].append(samples["MemoryDemand"][i])
        self._last_sample[vid] = {k: samples[k][-1] for k in samples}
        if self.since is None or times[-1] > self.since:
            self.since = times[-1]


def poll_calls(monitor: Monitor) -> list[tuple[str, dict]]:
    """The pipelined ops of one poll; driver hosts only every DRIVER_POLL_EVERY polls
    (vmms reads the installed drivers' entry points to answer: the dearest of the four)."""
    calls = [("get-vmhost", {}), ("get-vmhistory", {**monitor.history_args(), "view": True})]
    if monitor.polls % DRIVER_POLL_EVERY == 0:
        calls.append(("get-vmhostdriver", {}))
    return calls


def poll(client, monitor: Monitor, now: float) -> Snapshot:
    """One poll through `client` (parent.client.Client), folded into a snapshot; the one place
    here that talks to vmms. An unreachable host raises HvError (code Unavailable)."""
    host, history, *drivers = client.call_many(poll_calls(monitor), timeout=5.0)
    for res in (host, history):
        if isinstance(res, HvError):
            raise res
    if drivers and not isinstance(drivers[0], HvError):
        monitor.drivers = drivers[0]
    return monitor.update(now, host, None, monitor.drivers, history)

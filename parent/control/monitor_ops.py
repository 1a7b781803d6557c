"""Control op `get-vmhistory`: the hypervisor's ledger history per VM, for `hvctl top`, the web
manager and scripts. It registers into the one table (parent/control/op_table.py).

One hypercall (`get-ledger-history`) answers for every VM at once; vmms adds what only it knows
(names, the CPU settings a chart marks as cap and reserve, disk bytes from the storage driver).
Samples are columns (lists of equal length, oldest first): `Time` (wall clock, s), `Interval`
(s the sample covers), `CPUEntitled`, `CPUConsumed` (CPU-seconds in the interval),
`CPUThrottled` (VP-seconds held back), `MemoryAssigned`, `MemoryDemand` (bytes).
"""
from __future__ import annotations

from hypervisor.runtime.arg_checks import get_bool, get_float, get_int
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.rpc_server import DEFERRED
from hypervisor import hypercall_defs as hc
from parent.control.op_table import control_op

SAMPLE_KEYS = {"time": "Time", "interval": "Interval", "cpu_entitled": "CPUEntitled",
               "cpu_consumed": "CPUConsumed", "cpu_throttled": "CPUThrottled",
               "memory_assigned": "MemoryAssigned", "memory_demand": "MemoryDemand"}


def _empty_samples() -> dict:
    return {key: [] for key in SAMPLE_KEYS.values()}


def watch_view(vmms, rec) -> dict:
    """The part of a VM's get-vm object a watcher needs besides the ledger samples (which carry
    CPU and memory): vmms's own view, trimmed — the reply is sent every second per watcher."""
    view = vmms.vm_view(rec, {})
    return {k: view[k] for k in WATCH_KEYS}


WATCH_KEYS = ("Name", "Id", "State", "Status", "Heartbeat", "Uptime", "WorkerProcessId",
              "GuestProcessId", "ProcessorCount", "MemoryStartup", "DynamicMemoryEnabled")


@control_op("get-vmhistory")
def get_vmhistory(vmms, req):
    """The ledgers' recent past (CPU entitled / consumed / throttled and memory assigned /
    demand per second, the last 15 min) of the VMs in `vms` (names or Ids; all when absent):
    samples newer than `since` (wall-clock seconds), at most `limit` per VM. Each VM also
    carries its CPU settings (Count, Reserve, Maximum), CPUTime and ThrottledTime (seconds
    since it started) and disk byte totals; with `view`, also `VM`: the keys of its get-vm
    object a watcher needs besides the samples (hvctl top and the web manager poll this: one
    hypercall for all VMs)."""
    names = req.args.get("vms") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise HvError("BadRequest", "argument 'vms' must be a list of names or Ids")
    since = get_float(req.args, "since", lo=0) if req.args.get("since") is not None else None
    limit = get_int(req.args, "limit", None, lo=0, hi=1 << 20)
    with_view = get_bool(req.args, "view", False)
    recs = [vmms.find(n) for n in names] if names else \
        sorted(vmms.vms.values(), key=lambda r: r.name.lower())
    running = [r.id for r in recs if r.worker is not None]

    def build(hist: dict) -> list:
        interval, window, columns = 1.0, 900.0, SAMPLE_KEYS
        by_vm: dict[str, list] = {}
        if hist:
            interval, window = hist.get("interval", interval), hist.get("window", window)
            columns = [SAMPLE_KEYS[c] for c in hist.get("columns", SAMPLE_KEYS)]
            by_vm = {p[1]: p for p in hist["partitions"]}
        out = []
        no_disk = {"read": 0, "write": 0}
        for rec in recs:
            part = by_vm.get(rec.id) if rec.worker is not None else None
            p = rec.config["processor"]
            disk = vmms.disk_meter.totals(rec.id) if part else no_disk
            totals = part[2] if part else (0.0, 0.0, 0.0)
            entry = {"VMName": rec.name, "VMId": rec.id, "State": rec.state.value,
                     "CPUTime": float(totals[1]), "ThrottledTime": float(totals[2]),
                     "Count": p["count"], "Reserve": p["reserve"], "Maximum": p["maximum"],
                     "Interval": interval, "Window": window,
                     "Samples": dict(zip(columns, part[3:])) if part else _empty_samples(),
                     "TotalDiskRead": int(disk.get("read", 0)),
                     "TotalDiskWrite": int(disk.get("write", 0))}
            if with_view:
                entry["VM"] = watch_view(vmms, rec)
            out.append(entry)
        return out
    if not running:
        return build({})
    args = {"vm_ids": running} if names else {}
    if since is not None:
        args["since"] = since
    if limit is not None:
        args["limit"] = limit

    def answer(ok: bool, res) -> None:
        # asynchronous (parent/hypervisor_link.py): a hung hypervisor never stalls vmms's loop
        if ok and isinstance(res, dict):
            vmms.server.reply(req, build(res))
        elif isinstance(res, HvError) and res.code == "Unavailable":
            vmms.server.reply(req, build({"partitions": []}))
        else:
            vmms.server.reply_error(req, res if isinstance(res, HvError) else
                                    HvError("Internal", "malformed ledger history"))
    vmms.hv.call(hc.GET_LEDGER_HISTORY, args, answer, 2.0)
    return DEFERRED

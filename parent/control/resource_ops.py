"""Control ops for what the hypervisor's ledgers govern: processors (Set-VMProcessor), memory
(Set-VMMemory) and resource metering (Measure-VM), registered in parent/control/op_table.py.

Settings are validated here with the hypervisor's own types (hypervisor/hypercall_defs.py, the
one place each rule lives);
a running VM's change goes through its worker to the hypervisor, which re-checks admission,
and is saved only once the hypervisor accepted it.
"""
from __future__ import annotations

import os
import time

from hypervisor.hypercall_defs import MIB, check_running_change, memory_settings, processor_settings
from hypervisor.runtime.arg_checks import get_bool, get_int
from hypervisor.runtime.errors import HvError
from parent.control.op_table import control_op, size_arg, vm_arg
from worker.vm_state import VmState
from parent.saved_state import check_saved_change

DM_DEFAULT_MINIMUM = 512 * MIB
DM_DEFAULT_MAXIMUM = 1024 * 1024 * MIB   # Hyper-V's 1 TB default
LIVE_STATES = (VmState.Running, VmState.Paused)


def processor_view(rec) -> dict:
    p = rec.config["processor"]
    return {"VMName": rec.name, "Count": p["count"], "Reserve": p["reserve"],
            "Maximum": p["maximum"], "RelativeWeight": p["relative_weight"]}


def memory_view(rec) -> dict:
    m = rec.config["memory"]
    return {"VMName": rec.name, "DynamicMemoryEnabled": m["dynamic"], "Startup": m["startup"],
            "Minimum": m["minimum"], "Maximum": m["maximum"], "Buffer": m["buffer"],
            "Priority": m["priority"]}


def apply_change(vmms, rec, req, section: str, new: dict, worker_op: str, view):
    """Save `new` as config[section]; through the worker (and hypervisor) first if running."""
    def commit(_res=None):
        vmms.invalidate_stats()
        rec.config[section] = new
        vmms.save_config(rec)
        return view(rec)
    if rec.worker is None or rec.state not in LIVE_STATES:
        if rec.worker is not None:
            raise HvError("Busy", f"VM '{rec.name}' is {rec.state.value}; try again")
        rec.config[section] = new
        vmms.save_config(rec)
        return view(rec)
    return vmms.worker_call(rec, req, worker_op, {section: new}, commit)


@control_op("get-vmprocessor")
def get_vmprocessor(vmms, req):
    """A VM's CPU settings: Count, Reserve, Maximum, RelativeWeight."""
    return processor_view(vm_arg(vmms, req))


@control_op("set-vmprocessor")
def set_vmprocessor(vmms, req):
    """CPU controls: count (1..host CPUs, VM Off), reserve 0-100, maximum 0-100,
    relative_weight 1-10000. Reserve, maximum and weight apply live to a running VM."""
    rec = vm_arg(vmms, req)
    new = dict(rec.config["processor"])
    for key in ("count", "reserve", "maximum", "relative_weight"):
        if req.args.get(key) is not None:
            new[key] = req.args[key]
    if new == rec.config["processor"]:
        return processor_view(rec)
    processor_settings(new).validate(os.cpu_count() or 1)
    if new["count"] != rec.config["processor"]["count"] and rec.worker is not None:
        raise HvError("InvalidState", f"Count of VM '{rec.name}' can change only while it is Off")
    if new["count"] != rec.config["processor"]["count"]:
        check_saved_change(rec, "the processor count")
    return apply_change(vmms, rec, req, "processor", new, "set-processor", processor_view)


@control_op("get-vmmemory")
def get_vmmemory(vmms, req):
    """A VM's memory settings (Set-VMMemory's names)."""
    return memory_view(vm_arg(vmms, req))


@control_op("set-vmmemory")
def set_vmmemory(vmms, req):
    """Memory controls: dynamic_memory_enabled, startup_bytes, minimum_bytes, maximum_bytes,
    buffer (5-2000 %), priority (0-100). While running only maximum up, minimum down, buffer
    and priority may change."""
    rec = vm_arg(vmms, req)
    old = rec.config["memory"]
    new = dict(old)
    if req.args.get("dynamic_memory_enabled") is not None:
        new["dynamic"] = get_bool(req.args, "dynamic_memory_enabled")
    for arg, key in (("startup_bytes", "startup"), ("minimum_bytes", "minimum"),
                     ("maximum_bytes", "maximum")):
        if req.args.get(arg) is not None:
            new[key] = size_arg(req.args, arg)
    if req.args.get("buffer") is not None:
        new["buffer"] = get_int(req.args, "buffer", lo=5, hi=2000)
    if req.args.get("priority") is not None:
        new["priority"] = get_int(req.args, "priority", lo=0, hi=100)
    if not new["dynamic"]:
        new["minimum"] = new["maximum"] = new["startup"]   # static memory: one size
    elif not old["dynamic"]:  # just enabled: Hyper-V's defaults for what was not given
        if req.args.get("minimum_bytes") is None:
            new["minimum"] = min(DM_DEFAULT_MINIMUM, new["startup"])
        if req.args.get("maximum_bytes") is None:
            new["maximum"] = max(DM_DEFAULT_MAXIMUM, new["startup"])
    memory_settings(new).validate()
    if rec.worker is not None or rec.state.value == "Saved":   # Saved: as while running
        check_running_change(memory_settings(old), memory_settings(new))
    return apply_change(vmms, rec, req, "memory", new, "set-memory", memory_view)


@control_op("measure-vm")
def measure_vm(vmms, req):
    """Resource metering from the hypervisor's ledgers since the VM started. AvgCPU is percent
    of the whole host; RAM and disk figures are bytes; MeteringDuration is the seconds metered
    (since the VM's partition was created)."""
    rec = vm_arg(vmms, req)
    if rec.worker is None:
        raise HvError("InvalidState", f"VM '{rec.name}' is not running; metering covers a running VM")
    return vmms.with_stats(req, lambda all_stats: metering_view(vmms, rec, all_stats), fresh=True)


def metering_view(vmms, rec, all_stats: dict) -> dict:
    stats = all_stats.get(rec.id)
    if stats is None:
        if vmms.hv_error is not None:
            raise HvError(vmms.hv_error.code, f"metering of VM '{rec.name}' needs the hypervisor: "
                                              f"{vmms.hv_error.message}")
        raise HvError("InvalidState", f"VM '{rec.name}' is not running; metering covers a running VM")
    cpu, mem = stats["cpu"], stats["memory"]
    disk = stats.get("disk") or vmms.disk_meter.totals(rec.id)   # from the storage driver, not the hypervisor
    return {"VMName": rec.name, "AvgCPU": round(cpu.get("avg_cpu_percent", 0.0), 3),
            "CPUTime": round(cpu.get("consumed", 0.0), 6),
            "ThrottledTime": round(cpu.get("throttled", 0.0), 6),
            "AvgRAM": int(mem.get("avg", 0)), "MinRAM": int(mem.get("min", 0)),
            "MaxRAM": int(mem.get("max", 0)),
            "TotalDiskRead": int(disk.get("read", 0)), "TotalDiskWrite": int(disk.get("write", 0)),
            "MeteringDuration": round(max(0.0, time.time() - stats.get("created", time.time())), 3)}

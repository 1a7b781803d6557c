"""Control ops for the host: ping, get-vmhost, host-shutdown (registered in
parent/control/op_table.py)."""
from __future__ import annotations

import os
import signal
import time

from hypervisor import hypercall_defs as hc
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.pidfile import holder_pid
from hypervisor.runtime.rpc_server import DEFERRED
from parent.control.op_table import control_op


@control_op("ping")
def ping(vmms, req):
    """Liveness: answers vmms's pid."""
    return {"pid": os.getpid()}


@control_op("get-vmhost")
def get_vmhost(vmms, req):
    """Host figures: processors, memory pool, reserves, daemon pids."""
    try:
        info = vmms.hv_call(hc.GET_HOST_INFO)
    except HvError:
        info = {}
    return {"LogicalProcessorCount": info.get("logical_processors", os.cpu_count()),
            "MemoryCapacity": info.get("memory_capacity"),
            "RootMemoryReserve": info.get("root_reserve"),
            "MemoryAvailable": info.get("memory_available"),   # what a starting VM can get
            "MemoryFree": info.get("memory_free"),             # not assigned to any partition
            "CpuReserveAvailable": info.get("cpu_reserve_available"),
            "HypervisorProcessId": holder_pid(vmms.home.pidfile("hypervisor")),
            "VmmsProcessId": os.getpid(), "Home": str(vmms.home.root)}


@control_op("host-shutdown")
def host_shutdown(vmms, req):
    """Turn off every running VM, then stop vmms (the hypervisor is stopped by the caller)."""
    vmms.begin_host_shutdown()
    running = [r for r in vmms.vms.values() if r.worker is not None]
    for rec in running:
        try:
            os.kill(rec.worker.pid, signal.SIGTERM)  # the worker turns its VM off and exits
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10.0
    waiting = {"n": len(running)}

    def finish():
        vmms.stop_serving()
        vmms.server.reply(req, {"stopped": len(running)})
    if not running:
        finish()
        return DEFERRED

    def one(_err):
        waiting["n"] -= 1
        if waiting["n"] == 0:
            finish()
    for rec in running:
        rec.exit_waiters.append((one, deadline))
    return DEFERRED

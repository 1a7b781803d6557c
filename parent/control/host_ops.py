"""Control ops for the host: ping, get-vmhost, host-shutdown (registered in
parent/control/op_table.py)."""
from __future__ import annotations

import os
import signal
import time

from hypervisor import hypercall_defs as hc
from hypervisor.driver_model import DISPLAY as DRIVER_MODELS
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.pidfile import holder_pid
from hypervisor.runtime.rpc_server import DEFERRED
from parent.control.op_table import control_op
from worker.vm_state import VmState
from parent.saved_state import SAVE_TIMEOUT, refuse_unsaveable, saved_path


@control_op("ping")
def ping(vmms, req):
    """Liveness: answers vmms's pid."""
    return {"pid": os.getpid()}


@control_op("get-vmhost")
def get_vmhost(vmms, req):
    """Host figures: processors, memory pool, reserves, daemon pids, and HypervisorStatus
    (Running, NotResponding or Stopped). The hypercall never blocks vmms's loop; without the
    hypervisor's answer the figures are unknown (null), never made up."""
    def answer(ok, res):
        info = res if ok and isinstance(res, dict) else {}
        vmms.server.reply(req, {
            "LogicalProcessorCount": info.get("logical_processors", os.cpu_count()),
            "MemoryCapacity": info.get("memory_capacity"),
            "RootMemoryReserve": info.get("root_reserve"),
            "MemoryAvailable": info.get("memory_available"),   # what a starting VM can get
            "MemoryFree": info.get("memory_free"),             # not assigned to any partition
            "CpuReserveAvailable": info.get("cpu_reserve_available"),
            "IsolationMode": info.get("isolation_mode"), "Cgroup": info.get("cgroup"),
            "SandboxUidBase": info.get("sandbox_uid_base"),
            "HypervisorStatus": "Running" if ok else vmms.hv.state,
            "HypervisorError": None if ok else getattr(res, "message", str(res)),
            "HypervisorProcessId": holder_pid(vmms.home.pidfile("hypervisor")),
            "VmmsProcessId": os.getpid(), "Home": str(vmms.home.root),
            "DriverModel": DRIVER_MODELS.get(info.get("driver_model"))})
    vmms.hv.call(hc.GET_HOST_INFO, {}, answer, vmms.HV_TIMEOUT)
    return DEFERRED


HOST_SHUTDOWN_GUEST_WAIT = 5.0   # seconds a ShutDown guest gets at host down, then turned off


def turn_off(worker) -> None:
    """SIGTERM through the worker's pidfd: the worker turns its VM off and exits."""
    worker.signal(signal.SIGTERM)


def shut_down_guest(rec) -> None:
    """AutomaticStopAction ShutDown: ask the guest (shutdown integration service), turn it off
    if it has not gone in HOST_SHUTDOWN_GUEST_WAIT; a worker that refuses is turned off now."""
    worker = rec.worker
    worker.send("stop", {"mode": "shutdown", "force": True, "timeout": HOST_SHUTDOWN_GUEST_WAIT},
                lambda ok, _res: ok or rec.worker is None or turn_off(worker), HOST_SHUTDOWN_GUEST_WAIT + 2.0)


def saveable(rec) -> bool:
    try:
        refuse_unsaveable(rec)
    except HvError:
        return False
    return True


def save_guest(vmms, rec) -> None:
    """AutomaticStopAction Save: save-vm's path (the worker exits Saved); a worker that refuses
    is turned off now."""
    path = saved_path(vmms, rec)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    vmms.lock(rec, "save-vm", override=True)
    worker = rec.worker
    worker.send("save", {"path": path},
                lambda ok, _res: ok or rec.worker is None or turn_off(worker), SAVE_TIMEOUT)


@control_op("host-shutdown")
def host_shutdown(vmms, req):
    """Stop every running VM by its AutomaticStopAction (ShutDown: the guest is asked; TurnOff:
    the power is pulled), then stop vmms (the hypervisor is stopped by the caller)."""
    vmms.begin_host_shutdown()
    running = [r for r in vmms.vms.values() if r.worker is not None]
    for rec in running:
        action = rec.config.get("automatic_stop_action")
        if action == "ShutDown" and rec.state in (VmState.Running, VmState.Paused):
            shut_down_guest(rec)
        elif action == "Save" and rec.state in (VmState.Running, VmState.Paused) and \
                saveable(rec):
            save_guest(vmms, rec)
        else:
            turn_off(rec.worker)  # TurnOff (or a VM that cannot be saved)
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

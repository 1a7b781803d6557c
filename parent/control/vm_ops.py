"""Control ops for a VM's life: new-vm, get-vm, start-vm, stop-vm, suspend-vm, resume-vm,
restart-vm, remove-vm, set-vm, get-vmworkerprocess (registered in parent/control/op_table.py).

Start, stop and reset are carried out by the VM's worker: their replies are deferred until it
reports (Running, or its exit), each with a deadline.
"""
from __future__ import annotations

import os
import signal
import time
import uuid

from hypervisor.runtime import limits
from hypervisor.runtime.arg_checks import get_bool, get_float, get_int, get_str
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.rpc_server import DEFERRED
from parent.build_features import DEFAULT_STOP_ACTION, SAVE_MISSING, START_ACTIONS, STOP_ACTIONS
from parent.control.disk_ops import check_disks_for_start
from parent import saved_state
from parent.control.op_table import control_op, size_arg, vm_arg
from parent.vm_names import check_name
from parent.vm_record import VmRecord
from worker.guest.programs import parse_spec
from worker.vm_state import VmState, begin
from worker.worker_defs import STOP_TIMEOUT_DEFAULT

MIB = 1 << 20
TURN_OFF_ANSWER = 3.0   # a worker that does not answer turn-off by then is killed


@control_op("new-vm")
def new_vm(vmms, req):
    """Create a VM (Off). Args: name, memory_startup_bytes (512MB), processor_count (1), guest (idle)."""
    name = check_name(req.args.get("name"))
    limits.check_vm_count(len(vmms.vms))
    if any(r.name.lower() == name.lower() for r in vmms.vms.values()):
        raise HvError("AlreadyExists", f"a VM named '{name}' already exists")
    startup = size_arg(req.args, "memory_startup_bytes", 512 * MIB)
    count = get_int(req.args, "processor_count", 1, lo=1, hi=os.cpu_count() or 1)
    guest = str(parse_spec(get_str(req.args, "guest", "idle")))
    vm_id = str(uuid.uuid4())
    config = {"id": vm_id, "name": name, "created": time.time(), "guest": guest,
              "processor": {"count": count, "reserve": 0, "maximum": 100, "relative_weight": 100},
              "memory": {"dynamic": False, "startup": startup, "minimum": startup,
                         "maximum": startup, "buffer": 20, "priority": 50},
              "automatic_start_action": "StartIfRunning",
              "automatic_stop_action": DEFAULT_STOP_ACTION,
              "was_running": False, "last_exit_reason": None}
    rec = VmRecord(config=config)
    vmms.add_vm(rec)
    return vmms.vm_view(rec, {})


@control_op("get-vm")
def get_vm(vmms, req):
    """VMs as Get-VM objects. Args: vms (list of names or Ids; all when absent)."""
    names = req.args.get("vms") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise HvError("BadRequest", "argument 'vms' must be a list of names or Ids")
    if len(names) > limits.MAX_VMS:
        raise HvError("BadRequest", f"argument 'vms' lists more than {limits.MAX_VMS} VMs")
    recs = [vmms.find(n) for n in names] if names else \
        sorted(vmms.vms.values(), key=lambda r: r.name.lower())
    return vmms.with_stats(req, lambda stats: [vmms.vm_view(r, stats) for r in recs])


@control_op("start-vm")
def start_vm(vmms, req):
    """Off or Saved → Running; answers once the guest's first heartbeat arrived."""
    rec = vm_arg(vmms, req)
    begin(rec.state, "start", rec.name)
    check_disks_for_start(vmms, rec)  # attached disks valid and used by no one else
    saved_state.check_restorable(vmms, rec)  # a Saved VM's state file checks out
    before = rec.state
    prior = {key: rec.config.get(key) for key in ("was_running", "last_exit_reason")}
    deadline = time.monotonic() + get_float(req.args, "timeout", 30.0, lo=0.1, hi=600)
    start = _Start(vmms, req, rec, before, prior)
    vmms.lock(rec, "start-vm")
    try:
        vmms.set_state(rec, VmState.Starting)
        rec.config["was_running"] = True
        rec.config["last_exit_reason"] = None
        vmms.launch(rec, on_failed=start.launch_failed)
    except BaseException:
        vmms.unlock(rec)
        vmms.set_state(rec, before)
        raise
    start.handle = rec.worker
    # durable while the worker starts, off vmms's loop (parent/config_writer.py); the client's
    # answer waits for both
    vmms.save_config_async(rec, start.saved)
    start.waiter = (start.running, deadline)
    rec.start_waiters.append(start.waiter)
    return DEFERRED


class _Start:
    """One start-vm's completion: the client is answered once the VM is Running AND its
    configuration is durable (the start is undone if it cannot be saved), or with the first
    failure: the launch, the worker, the deadline or the write."""

    def __init__(self, vmms, req, rec, before, prior: dict):
        self.vmms, self.req, self.rec, self.before, self.prior = vmms, req, rec, before, prior
        self.handle = self.waiter = None
        self.is_running = self.is_durable = self.answered = False

    def running(self, err) -> None:          # a start waiter: Running, or the start failed
        self.is_running = err is None
        self.finish(err)

    def saved(self, err) -> None:            # the config writer: durable, or not
        self.is_durable = err is None
        if err is not None and not self.answered:
            # not durable: the start is undone, as when the save failed in the loop (its exit unlocks)
            if self.waiter in self.rec.start_waiters:
                self.rec.start_waiters.remove(self.waiter)
            if self.rec.worker is self.handle and self.handle is not None:
                self.handle.signal(signal.SIGKILL)
        self.finish(err)

    def launch_failed(self, err) -> None:    # no worker after all: as before the start
        vmms, rec = self.vmms, self.rec
        vmms.unlock(rec, "start-vm")
        vmms.set_state(rec, self.before, Reason=err.message)
        rec.config.update(self.prior)
        if self.waiter in rec.start_waiters:
            rec.start_waiters.remove(self.waiter)
        vmms.save_config_async(rec, lambda _err: None)   # the disk says what memory says
        self.finish(err)

    def finish(self, err) -> None:
        if self.answered or (err is None and not (self.is_running and self.is_durable)):
            return
        self.answered = True
        rec = self.rec
        if err is None and rec.worker is not self.handle:
            err = HvError("InvalidState", f"VM '{rec.name}' stopped while starting")
        if err is None and self.before == VmState.Saved:
            saved_state.resumed(self.vmms, rec, None)   # once Running again, the state is spent
        self.vmms.answer(self.req, rec)(err)


@control_op("stop-vm")
def stop_vm(vmms, req):
    """Shut the guest down (default), or turn_off (pull the power); force turns off a guest that
    does not shut down within timeout seconds."""
    rec = vm_arg(vmms, req)
    turn_off = get_bool(req.args, "turn_off", False)
    force = get_bool(req.args, "force", False)
    timeout = get_float(req.args, "timeout", STOP_TIMEOUT_DEFAULT, lo=0.1, hi=3600)
    if rec.worker is None:
        if rec.state == VmState.Off:
            return vmms.vm_view(rec, {})  # already off: Stop-VM succeeds quietly
        raise HvError("InvalidState", f"VM '{rec.name}' is {rec.state.value}")
    if turn_off:
        begin(rec.state, "turn-off", rec.name)
        vmms.lock(rec, "stop-vm", override=True)  # turning off overrides whatever was in progress
    else:
        begin(rec.state, "stop", rec.name)
        vmms.lock(rec, "stop-vm")
    # Success is the worker's exit (answered by the exit waiter), whatever order its reply and
    # its exit arrive in; only a refusal from a worker that keeps running answers here.
    waiter = (vmms.answer(req, rec), time.monotonic() + timeout + 10.0)
    rec.exit_waiters.append(waiter)
    handle = rec.worker

    def refused(ok: bool, err) -> None:
        if ok or rec.worker is not handle or waiter not in rec.exit_waiters:
            return
        if turn_off:  # a hung or refusing worker: pull the cord; its exit answers the client
            vmms.log.warning("turn_off_kill", vm_id=rec.id, error=err.message)
            handle.signal(signal.SIGKILL)
            return
        rec.exit_waiters.remove(waiter)
        vmms.unlock(rec)
        vmms.server.reply_error(req, err)
    args = {"mode": "turn-off" if turn_off else "shutdown", "force": force, "timeout": timeout}
    handle.send("stop", args, refused, TURN_OFF_ANSWER if turn_off else timeout + 5.0)
    return DEFERRED


@control_op("suspend-vm")
def suspend_vm(vmms, req):
    """Running → Paused: the partition's processes get no CPU."""
    rec = vm_arg(vmms, req)
    begin(rec.state, "suspend", rec.name)
    vmms.lock(rec, "suspend-vm")
    return vmms.worker_call(rec, req, "suspend", {})


@control_op("resume-vm")
def resume_vm(vmms, req):
    """Paused → Running."""
    rec = vm_arg(vmms, req)
    begin(rec.state, "resume", rec.name)
    vmms.lock(rec, "resume-vm")
    return vmms.worker_call(rec, req, "resume", {})


@control_op("restart-vm")
def restart_vm(vmms, req):
    """Hard reset: a fresh guest in a fresh partition; answers when it is Running again."""
    rec = vm_arg(vmms, req)
    begin(rec.state, "reset", rec.name)
    vmms.lock(rec, "restart-vm")
    return vmms.worker_call(rec, req, "reset", {}, timeout=30.0)


@control_op("remove-vm")
def remove_vm(vmms, req):
    """Delete a VM's configuration (disk files are kept); a running VM needs force."""
    rec = vm_arg(vmms, req)
    force = get_bool(req.args, "force", False)
    if rec.busy is not None and not force:
        raise HvError("Busy", f"VM '{rec.name}' is busy with {rec.busy}")
    if rec.worker is None:
        vmms.forget_vm(rec)
        return {"removed": rec.id}
    if not force:
        raise HvError("InvalidState", f"VM '{rec.name}' is {rec.state.value}; use --force to turn it off and remove it")
    vmms.lock(rec, "remove-vm", override=True)

    def gone(err):
        if err is not None:
            vmms.server.reply_error(req, err)
            return
        vmms.forget_vm(rec)
        vmms.server.reply(req, {"removed": rec.id})
    rec.exit_waiters.append((gone, time.monotonic() + 15.0))
    rec.worker.send("stop", {"mode": "turn-off"}, lambda ok, res: None, 10.0)
    return DEFERRED


@control_op("set-vm")
def set_vm(vmms, req):
    """Configuration: guest SPEC, automatic_start_action, automatic_stop_action."""
    rec = vm_arg(vmms, req)
    changes = {}
    if req.args.get("guest") is not None:
        changes["guest"] = str(parse_spec(get_str(req.args, "guest")))
    for key, allowed in (("automatic_start_action", START_ACTIONS), ("automatic_stop_action", STOP_ACTIONS)):
        if req.args.get(key) is not None:
            value = get_str(req.args, key)
            if key == "automatic_stop_action" and value == "Save" and "Save" not in allowed:
                raise HvError("NotSupported", f"AutomaticStopAction Save: {SAVE_MISSING}.")
            if value not in allowed:
                raise HvError("BadRequest", f"{key} must be one of {', '.join(allowed)}, got {value!r}")
            changes[key] = value
    if not changes:
        raise HvError("BadRequest", "set-vm needs at least one setting to change")
    if "guest" in changes and changes["guest"] != rec.config["guest"]:
        saved_state.check_saved_change(rec, "the guest program")
    rec.config.update(changes)
    vmms.save_config(rec)
    if "guest" in changes and rec.worker is not None:
        rec.worker.send("set-guest", {"guest": changes["guest"]}, lambda ok, res: None, 5.0)
    return vmms.vm_view(rec, {})


@control_op("get-vmworkerprocess")
def get_vmworkerprocess(vmms, req):
    """The VM's vmwp and vmmem pids."""
    rec = vm_arg(vmms, req)
    if rec.worker is None:
        raise HvError("InvalidState", f"VM '{rec.name}' is not running")
    return {"VMName": rec.name, "VMId": rec.id, "ProcessId": rec.worker.pid,
            "GuestProcessId": rec.worker.status.get("guest_pid")}

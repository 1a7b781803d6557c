"""Saved state control ops (CLI.md "Saved state and checkpoints"): save-vm (hvctl stop-vm --save
too) and remove-vmsavedstate. What a saved state is, and the hooks vmms and start-vm use, are in
parent/saved_state.py.
"""
from __future__ import annotations

import os
import time

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.rpc_server import DEFERRED
from parent.control.op_table import control_op, vm_arg
from parent.saved_state import SAVE_TIMEOUT, discard, refuse_unsaveable, saved_path
from worker.vm_state import VmState, begin


@control_op("save-vm")
def save_vm(vmms, req):
    """Running/Paused -> Saving -> Saved: guest RAM and device state to the VM's Saved folder;
    the partition ends and its memory returns to the pool. Answers the VM (State Saved)."""
    rec = vm_arg(vmms, req)
    begin(rec.state, "save", rec.name)
    refuse_unsaveable(rec)
    if rec.worker is None:
        raise HvError("InvalidState", f"VM '{rec.name}' has no worker to save")
    vmms.lock(rec, "save-vm")
    path = saved_path(vmms, rec)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    waiter = (vmms.answer(req, rec), time.monotonic() + SAVE_TIMEOUT + 10.0)
    rec.exit_waiters.append(waiter)   # success is the worker's exit with final state Saved
    handle = rec.worker

    def answered(ok: bool, res) -> None:
        if ok or rec.worker is not handle or waiter not in rec.exit_waiters:
            return
        rec.exit_waiters.remove(waiter)   # refused or failed: the VM runs on
        vmms.unlock(rec)   # refused or failed: the VM runs on
        vmms.server.reply_error(req, res)
    handle.send("save", {"path": path}, answered, SAVE_TIMEOUT)
    return DEFERRED


@control_op("remove-vmsavedstate")
def remove_vmsavedstate(vmms, req):
    """Discard a Saved VM's state (Saved -> Off)."""
    rec = vm_arg(vmms, req)
    if rec.state != VmState.Saved:
        raise HvError("InvalidState", f"VM '{rec.name}' is {rec.state.value}, not Saved: it has "
                                      "no saved state to remove")
    vmms.lock(rec, "remove-vmsavedstate")
    try:
        discard(vmms, rec)
        rec.config["last_exit_reason"] = "saved state removed"
        vmms.save_config(rec)
        vmms.set_state(rec, VmState.Off, Reason="saved state removed")
    finally:
        vmms.unlock(rec)
    return vmms.vm_view(rec, {})

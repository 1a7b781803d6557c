"""A VM's saved state on the parent's side: where it lives, what vmms does when a worker exits
Saved, what start-vm checks and passes to a worker restoring it, and what a Saved VM may change.
The ops (save-vm, remove-vmsavedstate) are in parent/control/saved_state_ops.py.

A VM's saved state is `vms/<Id>/Saved/state.vmrs` (worker/saved_state_file.py: guest RAM pages
that hold data plus the state the worker gathered, versioned, SHA-256 checksummed, written by
the worker atomically). The configuration says the VM is Saved (`state` = "Saved", which vmms
reads at boot, and `saved_state` = {path, saved_at}) only once the worker has exited with final
state Saved, i.e. after the file is complete; a worker killed while saving leaves the VM Off
with a LastExitReason that says so, and any earlier saved state is untouched.

Rules, as in Hyper-V:
- save-vm needs Running or Paused (InvalidState otherwise); a `command:` guest is refused
  (InvalidState: its processes' state is outside guest RAM).
- start-vm of a Saved VM checks the file first (SavedStateInvalid: missing, corrupt, of another
  VM — nothing changes, the VM stays Saved); the worker restores RAM (checking the checksum) and
  boots the guest runtime in restore mode; once Running the file is deleted. A restore that
  fails leaves the VM Saved.
- remove-vmsavedstate: Saved -> Off, the file deleted. remove-vm of a Saved VM deletes it too.
- While Saved: drives cannot change (disk_ops: Off only); set-vmmemory and set-vmprocessor
  --count are refused (the saved RAM and VPs belong to the saved configuration); set-vm
  --guest is refused (the saved program is in RAM).
"""
from __future__ import annotations

import os
import shutil
import time

from hypervisor.runtime.errors import HvError
from worker.guest.programs import parse_spec
from worker.vm_state import VmState
from worker import saved_state_file

SAVED_DIR = "Saved"
SAVED_FILE = "state.vmrs"
SAVE_TIMEOUT = 600.0


def saved_path(vmms, rec) -> str:
    return str(vmms.home.vm_dir(rec.id) / SAVED_DIR / SAVED_FILE)


def refuse_unsaveable(rec) -> None:
    if parse_spec(rec.config.get("guest", "idle")).kind == "command":
        raise HvError("InvalidState", f"VM '{rec.name}' runs a command: guest, whose processes "
                                      "keep state outside guest RAM that hvemu cannot capture; "
                                      "it cannot be saved (shut it down or turn it off)")


def check_saved_change(rec, what: str) -> None:
    """Refuse a configuration change the saved state depends on."""
    if rec.state == VmState.Saved:
        raise HvError("InvalidState", f"VM '{rec.name}' is Saved: {what} cannot change until "
                                      "it is started again or its saved state is removed "
                                      "(remove-vmsavedstate)")


def after_exit(vmms, rec, status: dict, reason: str):
    """Called by vmms when a worker exited: (the VM's state now, its LastExitReason)."""
    saved = rec.config.get("state") == VmState.Saved.value
    if status.get("state") == VmState.Saved.value:
        path = saved_path(vmms, rec)
        rec.config["state"] = VmState.Saved.value
        rec.config["saved_state"] = {"path": path, "saved_at": time.time()}
        vmms.log.info("vm_saved", vm_id=rec.id, vm_name=rec.name, path=path)
        return VmState.Saved, "saved"
    if rec.busy == "save-vm":
        return VmState.Off, (f"the worker died while saving ({reason}); no saved state was "
                             "kept")
    if saved and os.path.exists(saved_path(vmms, rec)):
        return VmState.Saved, f"restore failed: {reason}; the saved state is kept"
    return VmState.Off, reason


def check_restorable(vmms, rec) -> None:
    """Before starting a Saved VM: its state file exists, checks out and is this VM's."""
    if rec.state != VmState.Saved:
        return
    path = saved_path(vmms, rec)
    meta = saved_state_file.read_meta(path)
    if meta.get("vm_id") != rec.id:
        raise HvError("SavedStateInvalid", f"{path}: the saved state belongs to VM "
                                           f"{meta.get('vm_id')}, not '{rec.name}'")


def launch_config(vmms, rec) -> dict:
    """What the worker's launch config gains for a Saved VM: the state to restore."""
    if rec.config.get("state") == VmState.Saved.value:
        return {"restore": saved_path(vmms, rec)}
    return {}


def discard(vmms, rec) -> None:
    """Forget and delete the VM's saved state (durably: the config first)."""
    rec.config.pop("state", None)
    rec.config.pop("saved_state", None)
    vmms.save_config(rec)
    shutil.rmtree(vmms.home.vm_dir(rec.id) / SAVED_DIR, ignore_errors=True)


def resumed(vmms, rec, err) -> None:
    """A start from Saved finished: on success the saved state is spent."""
    if err is None:
        discard(vmms, rec)
        vmms.log.info("vm_restored", vm_id=rec.id, vm_name=rec.name)



"""Checkpoints (CLI.md "Saved state and checkpoints"): checkpoint-vm, get-vmsnapshot,
restore-vmsnapshot, remove-vmsnapshot. Registered in the one table of control ops.

The tree lives in the VM's configuration: `config["checkpoints"]` — a list of
`{id, name, parent_id, created, type, memory, disks: [{controller_location, path}], settings}` —
and `config["current_checkpoint"]`, the checkpoint the running state ("Now") derives from.
A checkpoint's memory (Standard, taken while the VM runs) is `vms/<Id>/Snapshots/<cid>.vmrs`.

Disks. Taking a checkpoint freezes each drive's current file (it becomes the checkpoint's disk
and is never written again) and puts a new differencing disk (`<name>_<cid8>.avhdx`, beside the
parent) under the drive; the VM runs on that. Restoring a checkpoint gives each drive a new
differencing disk over the checkpoint's frozen file (the discarded "Now" disk is deleted).
Removing a checkpoint whose disk has exactly one child merges that child into it (crash-safe,
parent/storage/vhdx/differencing.py) and re-points whoever used the child — a child
checkpoint or the drive — at the merged disk; the configuration is saved before the child file
is deleted, so a kill at any moment leaves a configuration whose every disk exists and reads the
right data, and a repeated remove completes the merge. A disk with several children (a branch)
stays until a later remove can merge it.

Standard checkpoints of a running VM reuse save and restore: the VM is saved (quiesced, RAM to
its Saved folder), the saved state is linked into the checkpoint, the drives switch to their new
differencing disks, and the VM starts again from the saved state — it keeps running on the new
disks after a short pause. Production checkpoints ask the guest to quiesce the same way (every
request in flight completes and the driver host flushes and closes the disks) and keep no memory.
Restore and remove need the VM Off or Saved (InvalidState otherwise, naming what to do).

Refusals, each changing nothing: a 51st checkpoint (InvalidState), a name that does not exist
for this VM — including another VM's checkpoint — (NotFound), a checkpoint whose memory file is
missing or corrupt (SavedStateInvalid, checked before anything moves), a disk whose parent
changed behind its back (ChainBroken, from the disk layer).
"""
from __future__ import annotations

import datetime
import os
import shutil
import time
import uuid

from hypervisor.runtime.arg_checks import get_bool, get_str
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.rpc_server import DEFERRED
from parent import saved_state
from parent.control.op_table import control_op, vm_arg
from worker.vm_state import VmState
from parent.storage.vhdx import create_differencing
from parent.storage.vhdx import open as open_vhdx
from parent.saved_state import saved_path
from parent.control.disk_ops import check_disks_for_start
from worker import saved_state_file
from parent.storage.vhdx import merge_into_parent

MAX_CHECKPOINTS = 50
TYPES = ("Standard", "Production")
SNAPSHOTS_DIR = "Snapshots"


# --- the tree -----------------------------------------------------------------------------------

def checkpoints(rec) -> list[dict]:
    return rec.config.setdefault("checkpoints", [])


def find(rec, name: str) -> dict:
    for cp in checkpoints(rec):
        if cp["name"] == name or cp["id"] == name:
            return cp
    raise HvError("NotFound", f"VM '{rec.name}' has no checkpoint named '{name}'")


def by_id(rec, cid) -> dict | None:
    return next((c for c in checkpoints(rec) if c["id"] == cid), None)


def view(rec, cp: dict) -> dict:
    parent = by_id(rec, cp.get("parent_id"))
    return {"VMName": rec.name, "VMId": rec.id, "Name": cp["name"], "Id": cp["id"],
            "SnapshotType": cp["type"], "ParentSnapshotName": parent["name"] if parent else None,
            "ParentSnapshotId": cp.get("parent_id"),
            "CreationTime": datetime.datetime.fromtimestamp(
                cp["created"], datetime.timezone.utc).isoformat(),
            "HasMemory": bool(cp.get("memory"))}


def memory_file(vmms, rec, cp: dict) -> str:
    return str(vmms.home.vm_dir(rec.id) / SNAPSHOTS_DIR / f"{cp['id']}.vmrs")


def default_name(rec) -> str:
    stamp = datetime.datetime.now().strftime("%d/%m/%Y - %H:%M:%S")
    return f"{rec.name} - ({stamp})"


# --- disks --------------------------------------------------------------------------------------

def child_path(parent: str, cid: str) -> str:
    folder, base = os.path.split(parent)
    stem = os.path.splitext(base)[0].split("_cp")[0]
    return os.path.join(folder, f"{stem}_cp{cid[:8]}.avhdx")


def switch_drives(vmms, rec, cid: str, over: dict[int, str]) -> list[str]:
    """Give each drive at location -> a new differencing disk over `over[location]`; answers
    the files made (removed again if any step fails)."""
    made = []
    try:
        new_drives = []
        for drive in rec.config.get("hard_disk_drives") or []:
            loc = drive["controller_location"]
            path = child_path(over[loc], cid)
            if os.path.exists(path):
                path = child_path(over[loc], uuid.uuid4().hex)
            create_differencing(path, over[loc])
            made.append(path)
            new_drives.append({**drive, "path": path})
    except BaseException:
        for path in made:
            os.unlink(path)
        raise
    rec.config["hard_disk_drives"] = new_drives
    return made


def frozen_disks(rec) -> list[dict]:
    return [{"controller_location": d["controller_location"], "path": d["path"]}
            for d in rec.config.get("hard_disk_drives") or []]


def disk_users(rec, path: str) -> list[tuple[str, object]]:
    """Who uses disk file `path` as their own: ("drive", location) / ("checkpoint", id)."""
    users = [("drive", d["controller_location"]) for d in rec.config.get("hard_disk_drives") or []
             if d["path"] == path]
    for cp in checkpoints(rec):
        users += [("checkpoint", cp["id"]) for d in cp["disks"] if d["path"] == path]
    return users


def children_of(path: str, candidates: set[str]) -> list[str]:
    """The differencing disks among `candidates` whose parent is `path`."""
    out = []
    for c in sorted(candidates):
        if c == path or not os.path.exists(c):
            continue
        try:
            with open_vhdx(c, writable=False, with_parent=False) as disk:
                parent = disk.parent_path
        except HvError:
            continue
        if parent and os.path.exists(parent) and os.path.samefile(parent, path):
            out.append(c)
    return out


def all_disk_paths(rec) -> set[str]:
    paths = {d["path"] for d in rec.config.get("hard_disk_drives") or []}
    for cp in checkpoints(rec):
        paths |= {d["path"] for d in cp["disks"]}
    return paths


# --- ops ------------------------------------------------------------------------------------------

@control_op("checkpoint-vm")
def checkpoint_vm(vmms, req):
    """Create a checkpoint. Args: vm, snapshot_name (default: VM name and time), snapshot_type
    Standard (default: memory too when running) or Production (disks only, after the guest
    quiesced). Answers the checkpoint (Get-VMSnapshot's object)."""
    rec = vm_arg(vmms, req)
    name = get_str(req.args, "snapshot_name", None) or default_name(rec)
    kind = get_str(req.args, "snapshot_type", "Standard")
    if kind not in TYPES:
        raise HvError("BadRequest", f"snapshot_type must be Standard or Production, got {kind!r}")
    if any(c["name"] == name for c in checkpoints(rec)):
        raise HvError("AlreadyExists", f"VM '{rec.name}' already has a checkpoint named '{name}'")
    if len(checkpoints(rec)) >= MAX_CHECKPOINTS:
        raise HvError("InvalidState", f"VM '{rec.name}' already has {MAX_CHECKPOINTS} "
                                      "checkpoints, the most a VM may have; remove one first")
    if rec.state not in (VmState.Off, VmState.Saved, VmState.Running, VmState.Paused):
        raise HvError("InvalidState", f"VM '{rec.name}' is {rec.state.value}; try again")
    cid = str(uuid.uuid4())
    cp = {"id": cid, "name": name, "parent_id": rec.config.get("current_checkpoint"),
          "created": time.time(), "type": kind, "memory": False, "disks": frozen_disks(rec),
          "settings": {k: rec.config[k] for k in ("guest", "memory", "processor")}}
    if rec.worker is None:
        vmms.lock(rec, "checkpoint-vm")
        try:
            if rec.state == VmState.Saved and kind == "Standard":
                link_memory(vmms, rec, cp)
            commit_checkpoint(vmms, rec, cp)
        finally:
            vmms.unlock(rec)
        return view(rec, cp)
    saved_state.refuse_unsaveable(rec)

    def saved(err):
        if err is not None or rec.state != VmState.Saved:
            vmms.server.reply_error(req, err or HvError(
                "InvalidState", f"VM '{rec.name}' could not be quiesced for the checkpoint"))
            return
        try:
            if kind == "Standard":
                link_memory(vmms, rec, cp)
            commit_checkpoint(vmms, rec, cp)
        except HvError as exc:
            vmms.server.reply_error(req, exc)
            return
        restart(vmms, rec, lambda e: vmms.server.reply_error(req, e) if e else
                vmms.server.reply(req, view(rec, cp)))
    quiesce(vmms, rec, saved)
    return DEFERRED


def link_memory(vmms, rec, cp: dict) -> None:
    """The VM's saved state becomes the checkpoint's memory too (a hard link: no copy)."""
    target = memory_file(vmms, rec, cp)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.link(saved_path(vmms, rec), target)
    cp["memory"] = True


def commit_checkpoint(vmms, rec, cp: dict) -> None:
    made = switch_drives(vmms, rec, cp["id"],
                         {d["controller_location"]: d["path"] for d in cp["disks"]})
    checkpoints(rec).append(cp)
    rec.config["current_checkpoint"] = cp["id"]
    try:
        vmms.save_config(rec)
    except BaseException:
        for path in made:
            os.unlink(path)
        raise
    vmms.log.info("checkpoint_created", vm_id=rec.id, vm_name=rec.name, checkpoint=cp["name"],
                  type=cp["type"], memory=cp["memory"])


def quiesce(vmms, rec, then) -> None:
    """Save the running VM (the save-vm path), then call `then(err)`."""
    path = saved_state.saved_path(vmms, rec)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    waiter = (then, time.monotonic() + saved_state.SAVE_TIMEOUT + 10.0)
    rec.exit_waiters.append(waiter)
    handle = rec.worker

    def answered(ok, res):
        if ok or rec.worker is not handle or waiter not in rec.exit_waiters:
            return
        rec.exit_waiters.remove(waiter)
        vmms.unlock(rec)
        then(res)
    vmms.lock(rec, "save-vm")   # a worker dying now dies while saving (parent/saved_state.py)
    handle.send("save", {"path": path}, answered, saved_state.SAVE_TIMEOUT)


def restart(vmms, rec, then) -> None:
    """Start the Saved VM again (start-vm's path); `then(err)` once Running or failed."""
    deadline = time.monotonic() + 30.0
    waiters = [(lambda err: saved_state.resumed(vmms, rec, err), deadline), (then, deadline)]

    def launch_failed(err):   # the fork-server's late failure: as if the launch had raised
        vmms.unlock(rec, "start-vm")
        vmms.set_state(rec, VmState.Saved)
        for waiter in waiters:
            if waiter in rec.start_waiters:
                rec.start_waiters.remove(waiter)
        then(err)
    try:
        check_disks_for_start(vmms, rec)
        saved_state.check_restorable(vmms, rec)
        vmms.lock(rec, "start-vm")
        vmms.set_state(rec, VmState.Starting)
        rec.config["was_running"] = True
        vmms.save_config(rec)
        vmms.launch(rec, on_failed=launch_failed)
    except HvError as err:
        vmms.unlock(rec)
        vmms.set_state(rec, VmState.Saved)
        then(err)
        return
    rec.start_waiters.extend(waiters)


@control_op("get-vmsnapshot")
def get_vmsnapshot(vmms, req):
    """A VM's checkpoints in creation order (Get-VMSnapshot's objects)."""
    rec = vm_arg(vmms, req)
    return [view(rec, cp) for cp in sorted(checkpoints(rec), key=lambda c: c["created"])]


def check_offline(rec, verb: str) -> None:
    if rec.worker is not None or rec.state not in (VmState.Off, VmState.Saved):
        raise HvError("InvalidState", f"VM '{rec.name}' is {rec.state.value}: {verb} a checkpoint "
                                      "while it is Off or Saved (turn it off or save it first)")
    if rec.busy is not None:
        raise HvError("Busy", f"VM '{rec.name}' is busy with {rec.busy}; try again")


@control_op("restore-vmsnapshot")
def restore_vmsnapshot(vmms, req):
    """Return the VM to a checkpoint (memory and disks): Saved when the checkpoint has memory,
    Off otherwise. Args: vm, name. The VM must be Off or Saved."""
    rec = vm_arg(vmms, req)
    cp = find(rec, get_str(req.args, "name"))
    check_offline(rec, "apply")
    if cp.get("memory"):
        meta = saved_state_file.read_meta(memory_file(vmms, rec, cp))   # before anything moves
        if meta.get("vm_id") != rec.id:
            raise HvError("SavedStateInvalid", f"checkpoint '{cp['name']}' holds the memory of "
                                               f"another VM ({meta.get('vm_id')})")
    for d in cp["disks"]:
        if not os.path.exists(d["path"]):
            raise HvError("NotFound", f"checkpoint '{cp['name']}': its disk {d['path']} is gone")
    vmms.lock(rec, "restore-vmsnapshot")
    try:
        old_now = {d["path"] for d in rec.config.get("hard_disk_drives") or []}
        loc_paths = {d["controller_location"]: d["path"] for d in cp["disks"]}
        rec.config["hard_disk_drives"] = [
            {"path": p, "controller_type": "SCSI", "controller_number": 0,
             "controller_location": loc} for loc, p in sorted(loc_paths.items())]
        switch_drives(vmms, rec, str(uuid.uuid4()), loc_paths)
        rec.config.update({k: v for k, v in cp["settings"].items()})
        rec.config["current_checkpoint"] = cp["id"]
        saved_dir = os.path.dirname(saved_state.saved_path(vmms, rec))
        shutil.rmtree(saved_dir, ignore_errors=True)
        if cp.get("memory"):
            os.makedirs(saved_dir, exist_ok=True)
            os.link(memory_file(vmms, rec, cp), saved_state.saved_path(vmms, rec))
            rec.config["state"] = VmState.Saved.value
            rec.config["saved_state"] = {"path": saved_state.saved_path(vmms, rec),
                                         "saved_at": time.time()}
            state = VmState.Saved
        else:
            rec.config.pop("state", None)
            rec.config.pop("saved_state", None)
            state = VmState.Off
        vmms.save_config(rec)
        for path in old_now - all_disk_paths(rec):   # the discarded "Now" disks
            if path.endswith(".avhdx") and os.path.exists(path):
                os.unlink(path)
        vmms.set_state(rec, state, Reason=f"checkpoint '{cp['name']}' applied")
    finally:
        vmms.unlock(rec)
    vmms.log.info("checkpoint_applied", vm_id=rec.id, vm_name=rec.name, checkpoint=cp["name"])
    return vmms.vm_view(rec, {})


@control_op("remove-vmsnapshot")
def remove_vmsnapshot(vmms, req):
    """Delete a checkpoint (and with include_all_child_snapshots its subtree), merging its
    differencing disks. Args: vm, name. The VM must be Off or Saved. Answers the removed
    checkpoints' names."""
    rec = vm_arg(vmms, req)
    cp = find(rec, get_str(req.args, "name"))
    check_offline(rec, "remove")
    subtree = [cp]
    if get_bool(req.args, "include_all_child_snapshots", False):
        i = 0
        while i < len(subtree):
            subtree += [c for c in checkpoints(rec) if c.get("parent_id") == subtree[i]["id"]]
            i += 1
    vmms.lock(rec, "remove-vmsnapshot")
    try:
        for victim in reversed(subtree):        # leaves first
            remove_one(vmms, rec, victim)
    finally:
        vmms.unlock(rec)
    return {"removed": [c["name"] for c in subtree]}


def remove_one(vmms, rec, cp: dict) -> None:
    """Remove checkpoint `cp`: merge, then the configuration, then delete the merged files (see
    the module doc: a kill at any point leaves a configuration that reads right, and a repeated
    remove finishes the merge)."""
    import copy
    after = copy.deepcopy(rec.config)   # changed only in memory until the merges are done
    rest = after["checkpoints"] = [c for c in after["checkpoints"] if c["id"] != cp["id"]]
    for child in rest:
        if child.get("parent_id") == cp["id"]:
            child["parent_id"] = cp.get("parent_id")
    if after.get("current_checkpoint") == cp["id"]:
        after["current_checkpoint"] = cp.get("parent_id")

    class View:   # the VM as it will be without `cp`
        config = after
    candidates = all_disk_paths(View) | {d["path"] for d in cp["disks"]}
    renamed: dict[str, str] = {}
    doomed: list[str] = []
    for disk in cp["disks"]:
        path = disk["path"]
        if disk_users(View, path):
            continue   # another checkpoint or a drive still uses this file as its own
        kids = children_of(path, candidates)
        if len(kids) != 1:
            if not kids and path.endswith(".avhdx") and os.path.exists(path):
                doomed.append(path)
            continue   # a branch: kept until a later remove leaves it one child
        kid = kids[0]

        def progress(done, total, kid=kid):
            vmms.publish(rec, "merge-progress", Done=done, Total=total, Path=kid)
        merge_into_parent(kid, reparent=tuple(children_of(kid, candidates)), delete=False,
                          progress=progress)
        renamed[kid] = path
        doomed.append(kid)
    for d in after.get("hard_disk_drives") or []:
        d["path"] = renamed.get(d["path"], d["path"])
    for other in rest:
        for d in other["disks"]:
            d["path"] = renamed.get(d["path"], d["path"])
    rec.config.clear()
    rec.config.update(after)
    vmms.save_config(rec)
    for path in doomed:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.unlink(memory_file(vmms, rec, cp))
    except FileNotFoundError:
        pass
    vmms.log.info("checkpoint_removed", vm_id=rec.id, vm_name=rec.name, checkpoint=cp["name"],
                  merged=sorted(renamed))

"""Control ops for parent-hosted drivers and the VMBus devices they serve, registered in
parent/control/op_table.py.

Drivers: `get-vmhostdriver`, `restart-vmhostdriver`. Devices (a VM's VMBus devices served by
a driver; kept in the VM's configuration as `devices`: [{driver, instance_id, settings}], see
parent/vm_devices.py): `add-vmdevice`, `get-vmdevice`, `remove-vmdevice`. Loading the drivers a
VM needs and telling workers about driver states is vmms's (parent/vmms.py, `ensure_drivers`).
"""
from __future__ import annotations

import uuid

from hypervisor.runtime.arg_checks import get_map, get_str
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.rpc_server import DEFERRED
from parent.control import disk_ops
from parent.control.op_table import control_op, vm_arg
from parent.drivers import registry
from parent.vm_devices import DEVICES_KEY, devices_of
from worker.vmbus.driver_protocol import DriverState, check_driver_name

MAX_DEVICES = 16
MAX_SETTINGS = 32


# --- drivers -----------------------------------------------------------------------------------

@control_op("get-vmhostdriver")
def get_vmhostdriver(vmms, req):
    """Installed drivers and their driver hosts: Name, Version, ProcessId, State, Restarts,
    Channels (open channels), Package (the distribution that provides it)."""
    return vmms.drivers.describe()


@control_op("restart-vmhostdriver")
def restart_vmhostdriver(vmms, req):
    """Replace a driver's process (e.g. after an upgrade) without stopping any VM; answers when
    the new process is Running. Also brings a Failed driver back."""
    name = check_driver_name(get_str(req.args, "name", max_len=32))
    registry.find(name)

    def done(err):
        if err is not None:
            vmms.server.reply_error(req, err)
        else:
            vmms.server.reply(req, next(d for d in vmms.drivers.describe() if d["Name"] == name))
    vmms.drivers.restart(name, done)
    return DEFERRED


# --- devices -------------------------------------------------------------------------------------

def _settings(req) -> dict:
    settings = get_map(req.args, "settings", {})
    if len(settings) > MAX_SETTINGS or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64
                                               and len(v) <= 1024 for k, v in settings.items()):
        raise HvError("BadRequest", f"settings must be at most {MAX_SETTINGS} string keys "
                                    "(64 chars) and string values (1024 chars)")
    return settings


def _device_view(rec, dev: dict, live: dict | None) -> dict:
    live = live or {}
    return {"VMName": rec.name, "Driver": dev["driver"], "InstanceId": dev["instance_id"],
            "Settings": dev.get("settings") or {}, "ClassId": live.get("ClassId"),
            "ChannelState": live.get("ChannelState") if rec.worker else None,
            "ChannelId": live.get("ChannelId"), "Error": live.get("Error")}


@control_op("add-vmdevice")
def add_vmdevice(vmms, req):
    """Give a VM a VMBus device served by a parent-hosted driver. Args: vm, driver, settings
    (string map handed to the driver). Works while the VM runs (the device is offered hot)."""
    rec = vm_arg(vmms, req)
    driver = check_driver_name(get_str(req.args, "driver", max_len=32))
    registry.find(driver)
    settings = _settings(req)
    devices = devices_of(rec)
    if len(devices) >= MAX_DEVICES:
        raise HvError("InvalidState", f"VM '{rec.name}' already has {MAX_DEVICES} devices")
    if driver == disk_ops.STORAGE_DRIVER and settings.get("path"):
        disk_ops.check_disk_free(vmms, rec, settings["path"])  # one disk, one VM
    dev = {"driver": driver, "instance_id": str(uuid.uuid4()), "settings": settings}
    rec.config[DEVICES_KEY] = devices + [dev]
    vmms.save_config(rec)
    if rec.worker is not None:
        vmms.drivers.ensure(driver)
        rec.worker.send("add-device", dev, lambda ok, res: None, 5.0)
        for name, reason in vmms.driver_failures(rec).items():
            if name == driver:
                rec.worker.send("driver-state", {"driver": name, "state": DriverState.FAILED, "reason": reason},
                                lambda ok, res: None, 5.0)
    return _device_view(rec, dev, None)


@control_op("get-vmdevice")
def get_vmdevice(vmms, req):
    """A VM's VMBus devices, with their channel state while it runs."""
    rec = vm_arg(vmms, req)
    devices = devices_of(rec)
    if rec.worker is None or not devices:
        return [_device_view(rec, d, None) for d in devices]

    def done(ok, res):
        live = {d.get("InstanceId"): d for d in res} if ok and isinstance(res, list) else {}
        vmms.server.reply(req, [_device_view(rec, d, live.get(d["instance_id"])) for d in devices])
    rec.worker.send("get-devices", {}, done, 5.0)
    return DEFERRED


@control_op("remove-vmdevice")
def remove_vmdevice(vmms, req):
    """Remove a VM's device by instance id (rescinded at once while the VM runs)."""
    rec = vm_arg(vmms, req)
    instance = get_str(req.args, "instance_id", max_len=64)
    devices = devices_of(rec)
    if not any(d["instance_id"] == instance for d in devices):
        raise HvError("NotFound", f"VM '{rec.name}' has no device {instance}")
    rec.config[DEVICES_KEY] = [d for d in devices if d["instance_id"] != instance]
    vmms.save_config(rec)
    if rec.worker is not None:
        rec.worker.send("remove-device", {"instance_id": instance}, lambda ok, res: None, 5.0)
    return {"removed": instance}


"""What a VM's configuration puts on its VMBus: the devices served by parent-hosted drivers
(its own `devices`, one `storvsp` device per hard disk drive, one `netvsp` device per network
adapter) and its integration services.

Pure functions of the configuration, used by vmms when it launches a worker and by the control
ops that change devices, drives and services (parent/control/).

Configuration keys: `devices` [{driver, instance_id, settings}]; `hard_disk_drives`
[{path, controller_type, controller_number, controller_location}] (parent/control/disk_ops.py);
`integration_services` {name: enabled} (absent names are enabled).
"""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from hypervisor.runtime.errors import HvError
from worker.integration import ic_defs
from parent.storage.disk_backend import chain_paths

if TYPE_CHECKING:
    from parent.vm_record import VmRecord

DEVICES_KEY = "devices"
DRIVES_KEY = "hard_disk_drives"
ADAPTERS_KEY = "network_adapters"
STORAGE_DRIVER = "storvsp"
NETWORK_DRIVER = "netvsp"


def devices_of(rec: "VmRecord") -> list[dict]:
    """The VM's own devices (add-vmdevice)."""
    return list(rec.config.get(DEVICES_KEY) or [])


def drives_of(rec: "VmRecord") -> list[dict]:
    """The VM's hard disk drives (add-vmharddiskdrive), by controller location."""
    return list(rec.config.get(DRIVES_KEY) or [])


def storage_devices(rec: "VmRecord") -> list[dict]:
    """The VMBus devices a VM's drives become when it starts: one `storvsp` channel per drive,
    in controller-location order (the guest's first disk is the lowest location). The instance
    id is stable per VM and location, so a re-offered disk is the same device to the guest."""
    return [{"driver": STORAGE_DRIVER,
             "instance_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hvemu:{rec.id}:scsi:"
                                                             f"{d['controller_number']}:{d['controller_location']}")),
             "settings": _drive_settings(d)}
            for d in sorted(drives_of(rec), key=lambda d: d["controller_location"])]


def adapters_of(rec: "VmRecord") -> list[dict]:
    """The VM's network adapters (add-vmnetworkadapter; parent/control/network_ops.py), in
    adapter order."""
    return [dict(a) for a in rec.config.get(ADAPTERS_KEY) or []]


def net_devices(rec: "VmRecord") -> list[dict]:
    """The VMBus devices a VM's network adapters become: one `netvsp` channel each (its switch
    port), in adapter order (the guest's eth<index>)."""
    return [{"driver": NETWORK_DRIVER, "instance_id": a["instance_id"],
             "settings": {"mac": a["mac"], "index": str(i), "name": a["name"]}}
            for i, a in enumerate(adapters_of(rec))]
def _drive_settings(drive: dict) -> dict:
    """A drive's storvsp settings. A differencing disk also names its parent chain
    (`parent_paths`, nearest first): the worker opens every file of the chain and hands the
    descriptors over, since the sandboxed driver host can open no path (DESIGN.md §9). A chain
    that cannot be read here is left out: the driver then refuses the channel and says why."""
    settings = {"path": drive["path"], "controller_location": str(drive["controller_location"])}
    try:
        parents = chain_paths(drive["path"])
    except (HvError, OSError):
        parents = []
    if parents:
        settings["parent_paths"] = parents
    return settings


def vm_devices(rec: "VmRecord") -> list[dict]:
    """Every VMBus device a running VM has: its own, its hard disk drives' and its network
    adapters'."""
    return devices_of(rec) + storage_devices(rec) + net_devices(rec)


def enabled_services(rec: "VmRecord") -> dict[str, bool]:
    """Every integration service by name: enabled (the default) or not."""
    return ic_defs.enabled_services(rec.config.get("integration_services"))

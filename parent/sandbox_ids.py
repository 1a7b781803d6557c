"""Which sandbox uid a VM's partition or a driver host gets (vmms's side of DESIGN.md §9).

One uid per running VM and one per driver, from the host's range (hypervisor/runtime/
isolation.py, chosen at `host up`). A VM's slot is the lowest one no running VM holds (its
worker reports it in its status, so a restarted vmms sees the slots in use again); a driver's is
kept for the life of vmms by name. `launch_sandbox()` is what goes into a worker's launch.
"""
from __future__ import annotations

from hypervisor.runtime import isolation

_cache: dict[str, isolation.HostIsolation] = {}


def host_isolation(home) -> isolation.HostIsolation:
    key = str(home.root)
    if key not in _cache:
        _cache[key] = isolation.load(home.run_dir)
    return _cache[key]


def vm_sandbox(vmms, rec) -> dict:
    """{mode, uid, gid, slot} for a VM about to start."""
    iso = host_isolation(vmms.home)
    if iso.mode != "Full":
        return {"mode": iso.mode, "uid": None, "gid": None, "slot": None}
    used = set()
    for other in vmms.vms.values():
        if other is not rec and other.worker is not None:
            slot = (other.worker.status or {}).get("sandbox_slot")
            if isinstance(slot, int):
                used.add(slot)
            used.update(getattr(other.worker, "reserved_slots", ()))
    slot = isolation.slot_free(used, isolation.DRIVER_OFFSET - 1)
    uid = iso.vm_uid(slot)
    return {"mode": "Full", "uid": uid, "gid": uid, "slot": slot}


_driver_slots: dict[str, int] = {}


def driver_sandbox(home, driver: str) -> dict:
    iso = host_isolation(home)
    if iso.mode != "Full":
        return {"mode": iso.mode, "uid": None, "gid": None}
    if driver not in _driver_slots:
        _driver_slots[driver] = isolation.slot_free(set(_driver_slots.values()),
                                                    isolation.UID_SPAN - isolation.DRIVER_OFFSET)
    uid = iso.driver_uid(_driver_slots[driver])
    return {"mode": "Full", "uid": uid, "gid": uid}

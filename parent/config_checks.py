"""Whether a stored VM configuration can be served, checked once when vmms loads it.

A configuration written by an older hvemu, edited by hand or left by a bug may hold values no op
would accept today (a 10^26-byte memory size, a missing section, a guest SPEC that no longer
parses). vmms must not crash on it at load or at any later op: `config_problem` names what is
wrong, vmms keeps the VM as "cannot be served" (get-vm shows it with the error, remove-vm
removes it, every other op answers InvalidState naming the problem). Pure; uses the same rules
the ops use (the hypervisor's settings types, the name and SPEC parsers).
"""
from __future__ import annotations

import os

from hypervisor.runtime.errors import HvError
from hypervisor.hypercall_defs import MemorySettings, ProcessorSettings
from parent.vm_names import check_name
from worker.guest.programs import parse_spec

SECTIONS = ("processor", "memory")


def config_problem(config: dict) -> str | None:
    """None when `config` can be served, else one sentence naming the first problem."""
    try:
        check_name(config.get("name"))
        for section in SECTIONS:
            if not isinstance(config.get(section), dict):
                return f"section '{section}' is missing or not a map"
        p = config["processor"]
        ProcessorSettings(count=p.get("count"), reserve=p.get("reserve"), maximum=p.get("maximum"),
                          relative_weight=p.get("relative_weight")).validate(os.cpu_count() or 1)
        m = config["memory"]
        MemorySettings(dynamic=m.get("dynamic"), startup=m.get("startup"), minimum=m.get("minimum"),
                       maximum=m.get("maximum"), buffer=m.get("buffer"),
                       priority=m.get("priority")).validate()
        parse_spec(config.get("guest"))
        for key in ("automatic_start_action", "automatic_stop_action"):
            if not isinstance(config.get(key), str):
                return f"'{key}' is missing"
        for key in ("devices", "hard_disk_drives"):
            value = config.get(key)
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(d, dict) for d in value)):
                return f"'{key}' must be a list of maps"
        for drive in config.get("hard_disk_drives") or []:
            if not isinstance(drive.get("path"), str) or not isinstance(drive.get("controller_location"), int):
                return "a hard disk drive has no path or location"
        for dev in config.get("devices") or []:
            if not isinstance(dev.get("driver"), str) or not isinstance(dev.get("instance_id"), str) \
                    or not isinstance(dev.get("settings", {}), dict):
                return "a device has no driver, instance id or settings map"
    except HvError as err:
        return err.message
    except (TypeError, ValueError, AttributeError) as exc:
        return f"malformed value ({type(exc).__name__}: {exc})"
    return None

"""Which drivers are installed: the entry-point group `hvemu.drivers`, read through
importlib.metadata each time (a package installed with pip while the host runs is seen at the
next look). vmms only reads the metadata — it never imports driver code; the driver host
(`load`) is the only process that does.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from hypervisor.runtime.errors import HvError
from worker.vmbus.driver_protocol import DRIVER_NAME
from parent.drivers.driver_api import Driver

GROUP = "hvemu.drivers"


@dataclass(frozen=True)
class DriverEntry:
    name: str
    target: str            # "module:Class"
    package: str | None    # the distribution that provides it
    package_version: str | None


def installed() -> dict[str, DriverEntry]:
    out: dict[str, DriverEntry] = {}
    for ep in metadata.entry_points(group=GROUP):
        if not DRIVER_NAME.match(ep.name) or ep.name in out:
            continue
        dist = getattr(ep, "dist", None)
        out[ep.name] = DriverEntry(ep.name, ep.value, dist.name if dist else None,
                                   dist.version if dist else None)
    return out


def find(name: str) -> DriverEntry:
    entry = installed().get(name)
    if entry is None:
        raise HvError("NotFound", f"no driver named {name!r} is installed (entry-point group {GROUP})")
    return entry


def load(name: str):
    """Import and return the driver class (in the driver host only)."""
    for ep in metadata.entry_points(group=GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Driver)):
                raise HvError("BadRequest", f"driver {name!r} ({ep.value}) is not a Driver subclass")
            if not isinstance(cls.class_id, str) or not cls.class_id:
                raise HvError("BadRequest", f"driver {name!r} declares no class_id")
            return cls
    raise HvError("NotFound", f"no driver named {name!r} is installed")

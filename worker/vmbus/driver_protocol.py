"""What a worker and a driver host say to each other over the driver's socket
(`run/d/<driver>.sock`, SOCK_SEQPACKET, one msgpack map per packet, descriptors by SCM_RIGHTS).

Definitions only, so the worker (worker/vmbus/host_bus.py) and the driver host
(parent/drvhost.py) share them without importing each other. The worker is the client: it
connects when a VM it runs has a device the driver serves. Ring data never travels here — only
the three descriptors of a channel, once, when it opens.

    drvhost -> worker  hello   {driver, version, class_id, versions, ring_size}   on accept
    worker -> drvhost  open    {channel_id, vm_id, vm_name, instance_id, version, ring_size,
                                settings} + fds [region, host doorbell, guest doorbell]
    drvhost -> worker  opened  {channel_id}            | refused {channel_id, reason}
    worker -> drvhost  close   {channel_id}            -> closed {channel_id}
    drvhost -> worker  failed  {channel_id, reason}    the guest broke the protocol: the driver
                                                       dropped that channel (and only that one)

Also the driver states (`DriverState`): vmms's supervisor keeps one per driver, shows it in
get-vmhostdriver and tells workers of changes (worker op `driver-state`).
"""
from __future__ import annotations

import re
from enum import Enum

from hypervisor.runtime.errors import HvError

HELLO, OPEN, OPENED, REFUSED, CLOSE, CLOSED, FAILED = (
    "hello", "open", "opened", "refused", "close", "closed", "failed")

# drvhost -> vmms over the socketpair vmms created when it started the driver host
READY, STATS = "ready", "stats"
# vmms -> a driver host served inside the hypervisor (monolithic model): unload the driver
STOP = "stop"
# vmms -> drvhost: {t: configure, body} + fds, handed to Driver.configure (netvsp's switches and
# the host-side descriptors vmms opened for them)
CONFIGURE = "configure"



class DriverState(str, Enum):
    """A driver's state (a str: it goes on the wire and into get-vmhostdriver as its value).
    Stopped → Starting → Running; a crash: Restarting (after a back-off) → Starting; too many
    crashes: Failed, until restart-vmhostdriver."""
    STOPPED = "Stopped"
    STARTING = "Starting"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    FAILED = "Failed"


def driver_state(value) -> DriverState:
    try:
        return DriverState(value)
    except ValueError:
        raise HvError("BadRequest", f"driver state must be one of "
                                    f"{', '.join(s.value for s in DriverState)}, got {value!r}") from None


DRIVER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_RING_SIZE = 16 << 20


def check_driver_name(name) -> str:
    if not isinstance(name, str) or not DRIVER_NAME.match(name):
        raise HvError("BadRequest", f"driver name {name!r} must be 1-32 of a-z, 0-9, '-', '_' "
                                    "starting with a letter")
    return name


def open_device_files(settings: dict) -> tuple[list[str], list[int]]:
    """The files a device's settings name (`path`: a storvsp disk; `parent_paths`: the parent
    chain of a differencing disk, opened read-only), opened here — by the worker, the parent —
    and handed to the driver host with the open as descriptors after the channel's three
    (DESIGN.md §9: a sandboxed driver host can open no path itself). A file that cannot be
    opened is left out: the driver then refuses the channel and says why."""
    import os
    if not isinstance(settings, dict):
        return [], []
    path = settings.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        return [], []
    files, fds = [], []
    parents = settings.get("parent_paths") or []
    wanted = [(path, os.O_RDWR)] + [(p, os.O_RDONLY) for p in parents
                                     if isinstance(p, str) and os.path.isabs(p)]
    for name, mode in wanted:
        try:
            fds.append(os.open(name, mode | os.O_CLOEXEC | os.O_NOFOLLOW))
        except OSError:
            if name == path:
                return [], []
            continue
        files.append(name)
    return files, fds

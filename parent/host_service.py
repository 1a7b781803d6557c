"""`hvctl host serve`: the host in the foreground, as a systemd `Type=notify` service runs it
(examples in scripts/systemd/).

It brings the daemons up with `host up`, tells the service manager `READY=1` on
`$NOTIFY_SOCKET` (sd_notify's datagram protocol: a few lines, no library), then watches: a
daemon that dies is started again (`host up` starts only what is missing; running VMs survive a
vmms restart, DESIGN.md §1). SIGTERM or SIGINT — `systemctl stop` — runs `host down` (turns the
VMs off, stops the daemons), sends `STOPPING=1` and returns.
"""
from __future__ import annotations

import os
import select
import socket

from hypervisor.runtime import signal_wakeup
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import holder_pid
from parent.host_control import host_down, host_up

WATCH_INTERVAL = 1.0


def notify(message: str) -> bool:
    """Send one sd_notify message; False when not run by a service manager."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]   # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(path)
            s.sendall(message.encode())
        except OSError:
            return False
    return True


def serve(home: Home, host_memory: int | None, root_reserve: int | None, log=print) -> None:
    rfd = signal_wakeup.install()
    up = host_up(home, host_memory, root_reserve)
    notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=hypervisor pid {up['HypervisorProcessId']}, "
           f"vmms pid {up['VmmsProcessId']}")
    log(f"host serving at {home.root}: hypervisor pid {up['HypervisorProcessId']}, "
        f"vmms pid {up['VmmsProcessId']}", flush=True)
    try:
        while True:
            ready, _, _ = select.select([rfd], [], [], WATCH_INTERVAL)
            if ready and signal_wakeup.stop_requested(rfd):
                break
            missing = [d for d in ("hypervisor", "vmms") if not holder_pid(home.pidfile(d))]
            if missing:
                log(f"{', '.join(missing)} not running: starting again", flush=True)
                try:
                    up = host_up(home)
                    notify(f"STATUS=restarted {', '.join(up['Started'])}")
                except HvError as err:
                    log(f"hvctl: {err.code}: {err.message}", flush=True)
    finally:
        notify("STOPPING=1")
        down = host_down(home)
        log("host down" + (f": stopped {', '.join(down['Stopped'])}" if down["Stopped"] else ""),
            flush=True)

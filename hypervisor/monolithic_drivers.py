"""The monolithic driver model: driver plugins loaded into the hypervisor process (DESIGN.md §9).

In `monolithic` mode the hypervisor listens on `run/hvdrv.sock` (SOCK_SEQPACKET, in the private
run directory, and only its own uid is accepted). vmms connects once per driver it loads and
sends `{"t": "load", "driver": NAME}`; that connection is then the driver's status channel,
exactly as the socketpair to a `drvhost` process is in the microkernel model (`ready`, `stats`
from the driver host, `stop` to unload it; it closes when the driver is gone — or when the
hypervisor is).

Each loaded driver is served by a thread of the hypervisor: the code that serves channels is
found through the entry-point group `hvemu.driver_hosts` (name `in-process`) and the driver
through `hvemu.drivers`, both by importlib.metadata, so this layer imports neither parent/ nor
worker/. Workers connect to `run/d/<driver>.sock` as always; what answers there is the
hypervisor itself, with every partition's RAM mapped beside the driver (daemon.py). A driver's
unhandled fault is the hypervisor's fault.
"""
from __future__ import annotations

import os
import re
import socket
import struct
import threading
from importlib import metadata

from hypervisor.runtime import wire
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home

HOSTS_GROUP = "hvemu.driver_hosts"
IN_PROCESS = "in-process"
SOCKET_NAME = "hvdrv.sock"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
LOAD_WAIT = 2.0


def socket_path(home: Home):
    return home.run_dir / SOCKET_NAME


def _serving_code():
    for ep in metadata.entry_points(group=HOSTS_GROUP):
        if ep.name == IN_PROCESS:
            return ep.load()
    raise HvError("NotFound", f"no {IN_PROCESS!r} entry point in group {HOSTS_GROUP}")


class MonolithicDrivers:
    """The listening socket and one serving thread per loaded driver."""

    def __init__(self, home: Home, log):
        self.home, self.log = home, log
        self.threads: dict[str, threading.Thread] = {}
        self.conns: dict[str, socket.socket] = {}
        path = socket_path(home)
        try:
            os.unlink(path)   # we hold the hypervisor's pid-file lock: a socket here is stale
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        self.listener.listen(16)
        self.listener.setblocking(False)

    def fileno(self) -> int:
        return self.listener.fileno()

    def accept(self) -> None:
        """Take every waiting load request (called when the listener is readable)."""
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            try:
                self._load(conn)
            except (HvError, OSError, ValueError) as exc:
                reason = exc.message if isinstance(exc, HvError) else str(exc)
                self.log.warning("driver_load_refused", error=reason)
                try:
                    conn.send(wire.pack({"t": "error", "message": reason[:500]}))
                except OSError:
                    pass
                conn.close()

    def _load(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            raise HvError("Unauthorized", f"uid {uid} may not load drivers")
        conn.settimeout(LOAD_WAIT)
        msg = wire.unpack(conn.recv(4096))
        name = msg.get("driver") if isinstance(msg, dict) and msg.get("t") == "load" else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise HvError("BadRequest", f"bad load request {msg!r}"[:200])
        old = self.threads.get(name)
        if old is not None:
            old.join(LOAD_WAIT)   # an unload that just closed its channel is finishing
        if old is not None and old.is_alive():
            raise HvError("Busy", f"driver {name} is still loaded")
        serve = _serving_code()
        conn.setblocking(False)
        thread = threading.Thread(target=self._run, args=(serve, name, conn), daemon=True,
                                  name=f"driver {name}")
        self.threads[name], self.conns[name] = thread, conn
        thread.start()
        self.log.info("driver_loaded_in_hypervisor", driver=name)

    def _run(self, serve, name: str, conn: socket.socket) -> None:
        try:
            serve(str(self.home.root), name, conn, self.log.bind(driver=name))
        except BaseException:
            self.log.exception("driver_host_thread_failed", driver=name)
        finally:
            conn.close()   # vmms sees the driver gone
            self.log.info("driver_unloaded_from_hypervisor", driver=name)

    def close(self, wait: float = 2.0) -> None:
        """Unload every driver (their loops end when the status channel shuts), bounded."""
        for conn in list(self.conns.values()):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self.threads.values()):
            thread.join(wait / max(1, len(self.threads)))
        self.listener.close()
        try:
            os.unlink(socket_path(self.home))
        except OSError:
            pass

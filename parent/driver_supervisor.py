"""How vmms starts, watches and restarts the driver hosts (`drvhost <driver>`, one per loaded
driver).

A driver is loaded when a VM that has one of its devices starts (or the device is added to a
running VM), or by `restart-vmhostdriver`. Its host is forked by the driver fork-server
(parent/driver_forkserver.py: started by fork+exec with a clean environment, it has the driver
host's code imported, so a start costs a fork, not an interpreter); if that is unavailable,
vmms starts the host itself with fork+exec (subprocess: no Python code runs between fork and
exec, so vmms's ZeroMQ threads are no hazard). Either way the host gets a clean environment and
one descriptor: a socketpair on which it reports `ready` (its class id, versions, ring size) and
`stats` (open channels). A pidfd says the moment it exits and carries every signal vmms sends
it (no pid-reuse race).

States (`get-vmhostdriver`): `Starting` → `Running`; after a crash `Restarting` (started again
after a back-off: at once the first time, then 0.2 s, 0.4 s, … up to BACKOFF_MAX); `Failed`
after MAX_CRASHES crashes within CRASH_WINDOW — its devices then report errors instead of
hanging, until `restart-vmhostdriver`; `Stopped` for an installed driver not loaded.
`Restarts` counts every replacement of the process (crash or restart-vmhostdriver).

In the monolithic driver model (`host up --driver-model monolithic`) the same drivers are
loaded into the hypervisor process instead (hypervisor/monolithic_drivers.py): vmms connects
to the hypervisor's `run/hvdrv.sock` and asks it to load one, and that connection is the status
channel. `InProcessHost` stands where `HostProcess` does: its "process" is the hypervisor, a
stop is a `stop` message, and the driver is gone when the channel closes or the hypervisor dies.

Workers never go through vmms to reach a driver: they connect to its socket themselves. vmms
only tells them (`driver-state`) when a driver is back or has failed, via `on_state`.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from hypervisor import driver_model
from hypervisor.monolithic_drivers import socket_path as monolithic_socket
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from hypervisor.runtime.packet_socket import receive_messages, send_message
from hypervisor.runtime.pidfile import holder_pid
from hypervisor.runtime.process_tree import is_zombie_or_gone
from parent.driver_forkserver import DriverForkServer
from parent.drivers import registry
from worker.vmbus import driver_protocol as dp
from worker.vmbus.driver_protocol import DriverState

MAX_CRASHES = 5
CRASH_WINDOW = 60.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
READY_TIMEOUT = 20.0
STOP_WAIT = 3.0

Waiter = Callable[[HvError | None], None]


class HostProcess:
    """One driver host process: forked by the fork-server (`popen` None: the fork-server reaps
    it and reports its wait status) or exec'd by vmms (`popen`: vmms reaps it), with the status
    socket it reports on (`sock`, None once the host closed it)."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None):
        self.pid, self.popen = pid, popen
        self.pidfd = os.pidfd_open(pid)          # ProcessLookupError if it is already gone
        self.wait_status: int | None = None      # from the fork-server
        self.sock: socket.socket | None = None

    def send_signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except (ProcessLookupError, OSError):
            pass

    def has_exited(self) -> bool:
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def returncode(self) -> int | None:
        """Exit status (negative: killed by that signal), None if not known (yet)."""
        if self.popen is not None:
            return self.popen.poll()
        if self.wait_status is not None:
            return os.waitstatus_to_exitcode(self.wait_status)
        return None

    def close(self) -> None:
        if self.popen is not None:
            try:
                self.popen.wait(timeout=1.0)   # reap it (it has exited, or was just killed)
            except subprocess.TimeoutExpired:
                pass
        os.close(self.pidfd)


class InProcessHost:
    """A driver loaded into the hypervisor process (monolithic model): `pid` is the
    hypervisor's; a signal asks for an unload (a thread cannot be killed, and killing its
    process is killing the hypervisor); it has exited once its status channel closed."""

    popen = None
    wait_status = None

    def __init__(self, pid: int, sock: socket.socket):
        self.pid, self.sock = pid, sock
        self.pidfd = os.pidfd_open(pid)          # the hypervisor's: its death ends the driver
        self.ended = False

    def send_signal(self, sig: int) -> None:
        send_message(self.sock, {"t": dp.STOP})

    def has_exited(self) -> bool:
        return self.ended or self.pidfd < 0 or bool(select.select([self.pidfd], [], [], 0)[0])

    def returncode(self) -> int | None:
        return None

    def close(self) -> None:
        if self.pidfd >= 0:   # the channel's close and the hypervisor's death may both report it
            os.close(self.pidfd)
            self.pidfd = -1


@dataclass
class Driver:
    """What the supervisor keeps per driver across the host processes that serve it in turn:
    its state, restarts and crash history, what its last host said; `host` is the current one."""
    name: str
    state: DriverState = DriverState.STOPPED
    host: HostProcess | InProcessHost | None = None
    restarts: int = 0
    started_once: bool = False
    crashes: list[float] = field(default_factory=list)
    next_start: float | None = None
    ready_deadline: float | None = None
    info: dict = field(default_factory=dict)
    driver_stats: dict = field(default_factory=dict)
    channels: int = 0
    protocol_errors: int = 0
    reason: str = ""                       # why it failed (or last crashed)
    last_error: str = ""                   # what the host said before exiting
    stopping: str | None = None            # "restart" | "stop" while we are stopping it
    waiters: list[tuple[Waiter, float]] = field(default_factory=list)


class DriverSupervisor:
    def __init__(self, home: Home, log, watch: Callable[[int, Callable[[], None]], None],
                 unwatch: Callable[[int], None], on_state: Callable[[str, str, str], None]):
        self.home, self.log = home, log
        self._watch, self._unwatch, self.on_state = watch, unwatch, on_state
        self.drivers: dict[str, Driver] = {}
        self.forkserver = None                 # DriverForkServer, made at the first start
        self.on_stats: Callable[[str, int, dict], None] | None = None   # (driver, pid, its stats)
        self.model = driver_model.load(home)

    # --- starting --------------------------------------------------------------------------------
    def get(self, name: str) -> Driver:
        dp.check_driver_name(name)
        drv = self.drivers.get(name)
        if drv is None:
            registry.find(name)  # NotFound unless installed
            drv = self.drivers[name] = Driver(name)
        return drv

    def ensure(self, name: str) -> Driver:
        """Load the driver if it is not loaded (a Failed driver stays Failed)."""
        drv = self.get(name)
        if drv.state == DriverState.STOPPED:
            self._start(drv)
        return drv

    def _fork(self, name: str, theirs: socket.socket) -> HostProcess | None:
        """A driver host from the fork-server, or None if the fork-server cannot."""
        try:
            if self.forkserver is None or not self.forkserver.alive():
                if self.forkserver is not None:
                    self.forkserver.close()
                self.forkserver = DriverForkServer(self.home, self.log, self._watch, self._unwatch,
                                                   self._reaped)
            pid = self.forkserver.start(name, theirs)
            return HostProcess(pid)
        except (HvError, OSError) as exc:
            self.log.warning("driver_forkserver_unavailable", driver=name, error=str(exc))
            return None

    def _exec(self, name: str, theirs: socket.socket) -> HostProcess:
        with open(self.home.logs_dir / f"drvhost-{name}.out", "ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "parent.drvhost", "--home", str(self.home.root),
                 "--driver", name, "--vmms-fd", str(theirs.fileno()), "--parent", str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, close_fds=True,
                env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})  # nothing else
        return HostProcess(popen.pid, popen)

    def _load_in_hypervisor(self, name: str) -> tuple[socket.socket, InProcessHost]:
        """Monolithic model: ask the hypervisor to load the driver into its own process."""
        hv = holder_pid(self.home.pidfile("hypervisor"))
        if not hv or is_zombie_or_gone(hv):
            raise OSError("the hypervisor is not running")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(2.0)
            sock.connect(str(monolithic_socket(self.home)))
            if not send_message(sock, {"t": "load", "driver": name}):
                raise OSError("the hypervisor did not take the load request")
            return sock, InProcessHost(hv, sock)
        except BaseException:
            sock.close()
            raise

    def _reaped(self, pid: int, wait_status: int) -> None:
        """The fork-server reaped one of its driver hosts."""
        for drv in self.drivers.values():
            if drv.host is not None and drv.host.pid == pid:
                drv.host.wait_status = wait_status

    def _start(self, drv: Driver) -> None:
        if self.model == driver_model.MONOLITHIC:
            try:
                ours, proc = self._load_in_hypervisor(drv.name)
            except OSError as exc:
                self._failed(drv, f"the hypervisor cannot load it: {exc}")
                return
        else:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                proc = self._fork(drv.name, theirs)
                if proc is None:
                    proc = self._exec(drv.name, theirs)
            except OSError as exc:
                ours.close()
                self._failed(drv, f"cannot start its driver host: {exc}")
                return
            finally:
                theirs.close()
        if drv.started_once:
            drv.restarts += 1
        drv.started_once = True
        proc.sock = ours
        drv.host = proc
        ours.setblocking(False)
        drv.state, drv.next_start, drv.stopping = DriverState.STARTING, None, None
        drv.ready_deadline = time.monotonic() + READY_TIMEOUT
        drv.channels, drv.last_error = 0, ""
        self._watch(proc.pidfd, lambda d=drv: self._exited(d))
        self._watch(ours.fileno(), lambda d=drv: self._readable(d))
        self.log.info("drvhost_started", driver=drv.name, drvhost_pid=proc.pid, restarts=drv.restarts,
                      forked=proc.popen is None)

    # --- events -------------------------------------------------------------------------------
    def _readable(self, drv: Driver) -> None:
        host = drv.host
        if host is None or host.sock is None:
            return
        msgs, closed = receive_messages(host.sock, accept_fds=False)
        for msg in msgs:
            kind = msg.get("t")
            if kind == dp.READY:
                drv.info = {k: msg.get(k) for k in ("version", "class_id", "versions", "ring_size")}
                drv.state, drv.ready_deadline = DriverState.RUNNING, None
                self.log.info("drvhost_ready", driver=drv.name, drvhost_pid=host.pid)
                self._call_waiters(drv, None)
                self.on_state(drv.name, DriverState.RUNNING, "")
            elif kind == dp.STATS:
                if isinstance(msg.get("channels"), int):
                    drv.channels = msg["channels"]
                if isinstance(msg.get("protocol_errors"), int):
                    drv.protocol_errors = msg["protocol_errors"]
                if isinstance(msg.get("driver"), dict):
                    drv.driver_stats = msg["driver"]      # the driver's own figures, last seen
                if self.on_stats is not None and isinstance(msg.get("driver"), dict):
                    self.on_stats(drv.name, host.pid, msg["driver"])
            elif kind == "error":
                drv.last_error = str(msg.get("message", ""))[:500]
        if closed:
            self._close_status(host)
            if isinstance(host, InProcessHost):   # the only sign an unloaded driver gives
                host.ended = True
                self._exited(drv)

    def _close_status(self, host: HostProcess) -> None:
        if host.sock is not None:
            self._unwatch(host.sock.fileno())
            host.sock.close()
            host.sock = None

    def _exited(self, drv: Driver) -> None:
        proc = drv.host
        if proc is None or not proc.has_exited():
            return  # a spurious wake-up: the pidfd is readable only once it has exited
        if proc.popen is None and proc.wait_status is None and self.forkserver is not None:
            self.forkserver.wait_for(proc.pid, 0.05)  # its status follows within a millisecond
        code = proc.returncode()
        self._readable(drv)  # anything it said before it went
        self._unwatch(proc.pidfd)
        proc.close()
        self._close_status(proc)
        pid, drv.host = proc.pid, None
        drv.channels = 0
        how = ("exited" if code is None else
               f"killed by signal {-code}" if code < 0 else f"exited with status {code}")
        if drv.stopping == "stop":
            drv.state, drv.stopping = DriverState.STOPPED, None
            self.log.info("drvhost_stopped", driver=drv.name, drvhost_pid=pid)
            return
        if drv.stopping == "restart":
            self.log.info("drvhost_replaced", driver=drv.name, drvhost_pid=pid)
            self._start(drv)
            return
        now = time.monotonic()
        drv.crashes = [t for t in drv.crashes if now - t < CRASH_WINDOW] + [now]
        drv.reason = f"driver host {how}" + (f": {drv.last_error}" if drv.last_error else "")
        self.log.warning("drvhost_crashed", driver=drv.name, drvhost_pid=pid, reason=drv.reason,
                         crashes=len(drv.crashes))
        if len(drv.crashes) >= MAX_CRASHES:
            self._failed(drv, f"{len(drv.crashes)} crashes within {CRASH_WINDOW:g} s; last: {drv.reason}")
            return
        delay = 0.0 if len(drv.crashes) == 1 else min(BACKOFF_FIRST * 2 ** (len(drv.crashes) - 2), BACKOFF_MAX)
        drv.state, drv.next_start = DriverState.RESTARTING, now + delay
        self.on_state(drv.name, DriverState.RESTARTING, drv.reason)
        if delay == 0.0:
            self._start(drv)

    def _failed(self, drv: Driver, reason: str) -> None:
        drv.state, drv.reason, drv.next_start = DriverState.FAILED, reason, None
        self.log.error("drvhost_failed", driver=drv.name, reason=reason)
        self._call_waiters(drv, HvError("DriverFault", f"driver {drv.name} failed: {reason}"))
        self.on_state(drv.name, DriverState.FAILED, reason)

    def _call_waiters(self, drv: Driver, err: HvError | None) -> None:
        waiters, drv.waiters = drv.waiters, []
        for callback, _ in waiters:
            callback(err)

    def timers_pending(self) -> bool:
        """A restart, a ready deadline or a waiter that tick() must look at soon."""
        return any(drv.state == DriverState.RESTARTING or drv.ready_deadline is not None or drv.waiters
                   for drv in self.drivers.values())

    def tick(self, now: float) -> None:
        for drv in self.drivers.values():
            if drv.state == DriverState.RESTARTING and drv.host is None and drv.next_start is not None \
                    and now >= drv.next_start:
                self._start(drv)
            if drv.ready_deadline is not None and now > drv.ready_deadline and drv.host is not None:
                drv.last_error = f"not ready within {READY_TIMEOUT:g} s"
                drv.ready_deadline = None
                drv.host.send_signal(signal.SIGKILL)   # its exit takes the crash path
            for item in [w for w in drv.waiters if w[1] <= now]:
                drv.waiters.remove(item)
                item[0](HvError("Timeout", f"driver {drv.name} did not become ready in time"))

    # --- commands ----------------------------------------------------------------------------------
    def restart(self, name: str, callback: Waiter, timeout: float = READY_TIMEOUT) -> None:
        """Replace the driver's process (an update in place); callback once it is Running."""
        drv = self.get(name)
        registry.find(name)
        drv.waiters.append((callback, time.monotonic() + timeout))
        drv.crashes.clear()
        if drv.host is not None:
            drv.stopping = "restart"
            drv.state = DriverState.RESTARTING
            self.on_state(drv.name, DriverState.RESTARTING, "restart requested")
            drv.host.send_signal(signal.SIGTERM)
        else:
            self._start(drv)

    def send(self, name: str, msg: dict, fds: list[int] = ()) -> bool:
        """A message (and descriptors, duplicated into the host) to a running driver host (e.g.
        `configure`); False if it is not up."""
        drv = self.drivers.get(name)
        host = drv.host if drv is not None else None
        sock = getattr(host, "sock", None)
        if sock is None or drv.state not in ("Starting", "Running"):
            return False
        return send_message(sock, msg, fds)

    def describe(self) -> list[dict]:
        entries = registry.installed()
        out = []
        for name in sorted(set(entries) | set(self.drivers)):
            drv = self.drivers.get(name) or Driver(name)
            entry = entries.get(name)
            out.append({"Name": name, "Version": drv.info.get("version"),
                        "ProcessId": drv.host.pid if drv.host is not None else None,
                        "State": drv.state.value if entry is not None or drv.host else "NotInstalled",
                        "Restarts": drv.restarts, "Channels": drv.channels,
                        "Package": entry.package if entry else None,
                        "PackageVersion": entry.package_version if entry else None,
                        "ClassId": drv.info.get("class_id"), "ProtocolErrors": drv.protocol_errors,
                        "Error": drv.reason if drv.state in (DriverState.FAILED, DriverState.RESTARTING) else None})
        return out

    def failures(self) -> dict[str, str]:
        return {d.name: d.reason for d in self.drivers.values() if d.state == DriverState.FAILED}

    def close(self) -> None:
        """Stop every driver host (bounded), e.g. when vmms exits."""
        for drv in [d for d in self.drivers.values() if isinstance(d.host, InProcessHost)]:
            # monolithic: closing the status channel unloads it; the hypervisor is not ours to wait on
            drv.host.send_signal(signal.SIGTERM)
            drv.host.close()
            if drv.host.sock is not None:
                drv.host.sock.close()
            drv.host, drv.state = None, DriverState.STOPPED
        live = [d for d in self.drivers.values() if d.host is not None]
        for drv in live:
            drv.stopping = "stop"
            drv.host.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        for drv in live:
            left = max(0.05, deadline - time.monotonic())
            if not select.select([drv.host.pidfd], [], [], left)[0]:
                drv.host.send_signal(signal.SIGKILL)
                select.select([drv.host.pidfd], [], [], STOP_WAIT)
            drv.host.close()
            if drv.host.sock is not None:
                drv.host.sock.close()
            drv.host, drv.state = None, DriverState.STOPPED
        if self.forkserver is not None:
            self.forkserver.close()
            self.forkserver = None


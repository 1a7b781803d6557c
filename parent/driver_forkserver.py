"""The driver-host fork-server: starts each `drvhost <driver>` by fork from a process that has
already imported what every driver host needs (the driver host, structlog, msgpack, the
plugin API) — but never a driver's own module, so a restarted host loads the driver as it is
installed now (an update in place takes effect). A restart after a crash then costs a fork and
the driver's import instead of a whole interpreter start (DESIGN.md §7).

    python -m parent.driver_forkserver FD HOME   (vmms starts it: parent/driver_supervisor.py)

It is started by fork+exec with an environment of PYTHONPATH only and holds no ZeroMQ context,
no threads and no credential, so forking it is safe and its children inherit nothing that is
not theirs. It talks to vmms over a SOCK_SEQPACKET socketpair, one msgpack map per packet
(hypervisor/runtime/packet_socket.py, the framing the worker fork-server speaks too):

    vmms -> here   start {driver, home}  + the new host's status socket (one descriptor)
    here -> vmms   started {driver, pid} | error {driver, message}
    here -> vmms   exited {pid, status}  for each child it reaps (status: a wait status)

It exits when vmms goes away (EOF); the driver hosts then see their own status sockets close
and exit too. Its signal handler only wakes its loop.
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import sys

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.packet_socket import close_fds, receive_messages, send_message
from hypervisor.runtime.process_tree import reap_children


class DriverForkServer:
    """vmms's side: starts the fork-server (fork+exec, clean environment) and asks it for hosts.
    `on_exit(pid, wait_status)` hears about every host it reaps."""

    START_WAIT = 5.0

    def __init__(self, home, log, watch, unwatch, on_exit):
        import subprocess
        self.home, self.log, self._unwatch, self.on_exit = home, log, unwatch, on_exit
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(home.logs_dir / "drvhost-forkserver.out", "ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "parent.driver_forkserver", str(theirs.fileno()),
                     str(home.root)],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, close_fds=True,
                    env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self.answers: list[dict] = []
        watch(ours.fileno(), self._readable)

    def alive(self) -> bool:
        return self.sock is not None and self.proc.poll() is None

    def _readable(self) -> bool:
        if self.sock is None:
            return False
        msgs, closed = receive_messages(self.sock, accept_fds=False)
        for msg in msgs:
            if msg.get("t") == "exited" and isinstance(msg.get("pid"), int):
                self.on_exit(msg["pid"], int(msg.get("status") or 0))
            else:
                self.answers.append(msg)
        if closed:
            self._unwatch(self.sock.fileno())
            self.sock.close()
            self.sock = None
        return bool(msgs)

    def _wait(self, match, timeout: float):
        import select
        import time
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.answers):
                if match(msg):
                    return self.answers.pop(i)
            left = deadline - time.monotonic()
            if self.sock is None or left <= 0:
                return None
            select.select([self.sock], [], [], left)
            self._readable()

    def start(self, driver: str, status_sock: socket.socket) -> int:
        """Fork a host for `driver` that reports on `status_sock`; its pid (bounded wait)."""
        from parent.sandbox_ids import driver_sandbox
        start = {"t": "start", "driver": driver, "home": str(self.home.root),
                 "sandbox": driver_sandbox(self.home, driver)}   # its own uid (DESIGN §9)
        if self.sock is None or not send_message(self.sock, start, [status_sock.fileno()]):
            raise HvError("Unavailable", "the driver fork-server is gone")
        answer = self._wait(lambda m: m.get("driver") == driver and m.get("t") in ("started", "error"),
                            self.START_WAIT)
        if answer is None or answer.get("t") != "started" or not isinstance(answer.get("pid"), int):
            raise HvError("Unavailable", f"the driver fork-server did not start {driver}: {answer!r}")
        return answer["pid"]

    def wait_for(self, pid: int, timeout: float) -> None:
        """Read the fork-server's reports for up to `timeout` s, until it reports `pid` reaped."""
        import select
        import time
        deadline = time.monotonic() + timeout
        seen = {"done": False}
        on_exit = self.on_exit

        def hook(p, status):
            on_exit(p, status)
            if p == pid:
                seen["done"] = True
        self.on_exit = hook
        try:
            while not seen["done"] and self.sock is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                select.select([self.sock], [], [], left)
                self._readable()
        finally:
            self.on_exit = on_exit

    def close(self) -> None:
        import subprocess
        if self.sock is not None:
            self._unwatch(self.sock.fileno())
            self.sock.close()
            self.sock = None
        try:
            self.proc.wait(timeout=3.0)   # it exits on EOF
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=3.0)


def _child(msg: dict, fd: int, closing: list) -> None:
    """In the forked child: become `drvhost <driver>`; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        for obj in closing:
            obj.close() if hasattr(obj, "close") else os.close(obj)
        import json
        from parent import drvhost
        try:
            drvhost.main(["--home", str(msg["home"]), "--driver", str(msg["driver"]),
                          "--vmms-fd", str(fd), "--parent", str(os.getppid()),
                          "--sandbox", json.dumps(msg.get("sandbox") or {})])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def serve(sock: socket.socket) -> None:
    # preload: every child inherits these pages and skips these imports
    import hypervisor.runtime.logging_setup  # noqa: F401
    import parent.drivers.driver_api  # noqa: F401
    import parent.drivers.registry  # noqa: F401
    import parent.drvhost  # noqa: F401
    from hypervisor.runtime.sandbox import fork_in_new_pid_ns
    from worker.vmbus.driver_protocol import check_driver_name
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)   # only wakes the loop
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(rfd, selectors.EVENT_READ)
    sock.setblocking(False)
    while True:
        sel.select(1.0)
        try:
            os.read(rfd, 512)
        except BlockingIOError:
            pass
        for pid, status in reap_children():
            send_message(sock, {"t": "exited", "pid": pid, "status": status})
        msgs, closed = receive_messages(sock, accept_fds=True)
        for msg in msgs:
            fds = msg.pop("fds", [])
            try:
                if msg.get("t") != "start" or len(fds) != 1 or not isinstance(msg.get("home"), str):
                    raise ValueError("a start needs {driver, home} and one descriptor")
                check_driver_name(msg.get("driver"))
            except Exception as exc:  # noqa: BLE001 — answered, never fatal
                close_fds(fds)
                send_message(sock, {"t": "error", "driver": str(msg.get("driver"))[:40],
                                    "message": str(exc)[:300]})
                continue
            sandbox = msg.get("sandbox") if isinstance(msg.get("sandbox"), dict) else {}
            try:   # Full isolation: the host is pid 1 of its own PID namespace
                pid = fork_in_new_pid_ns() if sandbox.get("mode") == "Full" else os.fork()
            except OSError as exc:
                close_fds(fds)
                send_message(sock, {"t": "error", "driver": msg["driver"], "message": str(exc)[:300]})
                continue
            if pid == 0:
                _child(msg, fds[0], [sel, sock, rfd, wfd])
            os.close(fds[0])
            send_message(sock, {"t": "started", "driver": msg["driver"], "pid": pid})
        if closed:
            return   # vmms is gone


def main() -> None:
    import setproctitle
    fd, home = int(sys.argv[1]), sys.argv[2]
    setproctitle.setproctitle(f"drvhost-forkserver {home}")
    from hypervisor.runtime.sandbox import set_not_dumpable
    set_not_dumpable()
    os.umask(0o077)
    serve(socket.socket(fileno=fd))


if __name__ == "__main__":
    main()

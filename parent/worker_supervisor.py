"""How vmms launches, talks to and finds again its workers.

`ForkServer` is the client of worker/forkserver.py (started before vmms makes any ZeroMQ
context). `WorkerHandle` is vmms's asynchronous connection to one `vmwp`: a DEALER on the
worker's socket, a pidfd that says the moment it exits, requests with deadlines, and the last
`status` the worker pushed. `find_live_workers` is the restart path: one pid file per worker,
held with flock by a live worker.
"""
from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import zmq

from hypervisor.runtime import wire
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import holder_pid
from worker.forkserver import recv_msg, send_msg
from worker.worker_defs import NOTIFY_STATUS, WORKER_OPS

_ids = itertools.count(1)


class ForkServer:
    """The worker fork-server's client. A fork-server that died (kill -9) or hangs (SIGSTOP)
    is replaced by a fresh one (fork+exec, safe while vmms has a ZeroMQ context) and the launch
    is tried once more on it; each exchange is bounded by LAUNCH_TIMEOUT."""

    LAUNCH_TIMEOUT = 2.0
    FRESH_TIMEOUT = 15.0   # a fresh fork-server first imports the worker code, then answers

    def __init__(self, home: Home):
        self.home = home
        self._spawn()

    def _spawn(self) -> None:
        home = self.home
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.forkserver", str(theirs.fileno()), str(home.root)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            stdout=open(home.logs_dir / "forkserver.out", "ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        theirs.close()
        ours.settimeout(self.FRESH_TIMEOUT)
        self.sock = ours
        self.fresh = True

    def ensure(self) -> None:
        """From vmms's timer: a fork-server that died is replaced at once (non-blocking), so it
        has imported the worker code before the next start-vm needs it."""
        if self.proc.poll() is not None:
            self._replace()

    def _replace(self) -> None:
        self.sock.close()
        self.proc.kill()   # dead already, or hung: either way it is replaced
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
        self._spawn()

    def launch(self, launch: dict) -> int:
        for attempt in (1, 2):
            if self.proc.poll() is not None:
                self._replace()
            try:
                send_msg(self.sock, {"launch": launch})
                reply = recv_msg(self.sock)
                if reply is None:
                    raise OSError("the fork-server closed its socket")
            except (OSError, ValueError) as exc:
                if attempt == 2:
                    raise HvError("Unavailable", f"the worker fork-server failed twice: {exc}") from None
                self._replace()
                continue
            if self.fresh:
                self.fresh = False
                self.sock.settimeout(self.LAUNCH_TIMEOUT)
            if not isinstance(reply, dict) or "pid" not in reply:
                raise HvError("Internal", f"the worker fork-server refused: {reply!r}")
            return int(reply["pid"])
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


Callback = Callable[[bool, object], None]


class WorkerHandle:
    def __init__(self, ctx: zmq.Context, home: Home, vm_id: str, pid: int,
                 on_status: Callable[["WorkerHandle", dict], None]):
        self.vm_id, self.pid = vm_id, pid
        self.pidfd = os.pidfd_open(pid)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
        # vmms connects as soon as the worker is forked, before it has bound: retry fast
        self.sock.setsockopt(zmq.RECONNECT_IVL, 2)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 10)
        self.sock.connect(home.worker_endpoint(vm_id))
        self.pending: dict[str, tuple[Callback, float]] = {}
        self.status: dict = {}
        self.on_status = on_status

    def send(self, op: str, args: dict, callback: Callback, timeout: float) -> None:
        assert op in WORKER_OPS, op
        req_id = f"w{next(_ids)}"
        self.pending[req_id] = (callback, time.monotonic() + timeout)
        env = {"id": req_id, "op": op, "args": args, "deadline_ms": int(timeout * 1000)}
        self.sock.send_multipart([wire.TAG, wire.pack(env)], zmq.NOBLOCK)

    def on_readable(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                env = wire.unpack(frames[-1]) if frames and frames[0] == wire.TAG else None
            except HvError:
                env = None
            if not isinstance(env, dict):
                continue
            if env.get("op") == NOTIFY_STATUS and isinstance(env.get("args"), dict):
                self.status = env["args"]
                self.on_status(self, self.status)
                continue
            entry = self.pending.pop(env.get("id"), None)
            if entry is None:
                continue
            if env.get("ok"):
                entry[0](True, env.get("result"))
            else:
                entry[0](False, HvError.from_wire(env.get("error")))

    def signal(self, sig: int) -> None:
        """Signal the worker through its pidfd: a reused pid number can never be hit."""
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except (ProcessLookupError, OSError):
            pass

    def expire(self, now: float) -> None:
        for req_id, (callback, deadline) in list(self.pending.items()):
            if now >= deadline:
                del self.pending[req_id]
                callback(False, HvError("Timeout", f"worker {self.pid} of VM {self.vm_id} did not answer"))

    def fail_pending(self, err: HvError) -> None:
        pending, self.pending = self.pending, {}
        for callback, _ in pending.values():
            callback(False, err)

    def close(self) -> None:
        self.sock.close(0)
        try:
            os.close(self.pidfd)
        except OSError:
            pass


def signal_worker(home: Home, vm_id: str, pid: int, sig: int) -> bool:
    """Signal the worker of `vm_id` found by its pid file, through a pidfd taken while it still
    holds its pid-file lock (so the number cannot have been reused by then). True if sent."""
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        if holder_pid(home.worker_pidfile(vm_id)) != pid:
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except (ProcessLookupError, OSError):
        return False
    finally:
        os.close(pidfd)


def find_live_workers(home: Home) -> tuple[dict[str, int], list[Path]]:
    """({VMId: pid} of workers holding their pid-file lock, [stale run files])."""
    live: dict[str, int] = {}
    stale: list[Path] = []
    if not home.workers_dir.exists():
        return live, stale
    for path in home.workers_dir.glob("*.pid"):
        pid = holder_pid(path)
        if pid:
            live[path.stem] = pid
        else:
            stale.append(path)
            sock = path.with_suffix(".sock")
            if sock.exists():
                stale.append(sock)
    for extra in (*home.workers_dir.glob("*.sock"), *home.workers_dir.glob("*.exit")):
        if extra.stem not in live and extra not in stale:
            stale.append(extra)
    return live, stale

"""How vmms launches, talks to and finds again its workers.

`ForkServer` is the client of worker/forkserver.py (started before vmms makes any ZeroMQ
context; one msgpack map per SOCK_SEQPACKET packet, hypervisor/runtime/packet_socket.py). `WorkerHandle` is vmms's asynchronous connection to one `vmwp`: a DEALER on the
worker's socket, a pidfd that says the moment it exits, requests with deadlines, and the last
`status` the worker pushed. `find_live_workers` is the restart path: one pid file per worker,
held with flock by a live worker.
"""
from __future__ import annotations

import itertools
import os
import select
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
from hypervisor.runtime.rpc_client import dealer_socket
from hypervisor.runtime.packet_socket import allow_large_packets, receive_messages, send_message
from worker.worker_defs import LAUNCH_KEYS, NOTIFY_STATUS, WORKER_OPS

_ids = itertools.count(1)


class ForkServer:
    """The worker fork-server's client. A fork-server that died (kill -9) or hangs (SIGSTOP)
    is replaced by a fresh one (fork+exec, safe while vmms has a ZeroMQ context) and the launch
    is tried once more on it; each exchange is bounded by LAUNCH_TIMEOUT."""

    LAUNCH_TIMEOUT = 2.0
    FRESH_TIMEOUT = 15.0   # a fresh fork-server first imports the worker code, then answers
    MAX_LAUNCH = 4 << 20   # as worker/forkserver.py: a VM's host KVP pool rides in its launch

    def __init__(self, home: Home):
        self.home = home
        self._spawn()

    def _spawn(self) -> None:
        home = self.home
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.forkserver", str(theirs.fileno()), str(home.root)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            stdout=open(home.logs_dir / "forkserver.out", "ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        theirs.close()
        ours.setblocking(False)
        allow_large_packets(ours, self.MAX_LAUNCH)
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
        """Fork a worker for `launch` (LAUNCH_KEYS); its pid. Bounded wait; a dead or hung
        fork-server is replaced and the launch tried once more."""
        assert set(launch) == set(LAUNCH_KEYS), sorted(launch)
        for attempt in (1, 2):
            if self.proc.poll() is not None:
                self._replace()
            try:
                reply = self._exchange(launch)
            except OSError as exc:
                if attempt == 2:
                    raise HvError("Unavailable",
                                  f"the worker fork-server failed twice: {exc}") from None
                self._replace()
                continue
            self.fresh = False
            if "pid" not in reply:
                raise HvError("Internal", f"the worker fork-server refused: {reply.get('error')!r}")
            return int(reply["pid"])
        raise AssertionError("unreachable")

    def _exchange(self, launch: dict) -> dict:
        if not send_message(self.sock, {"launch": launch}):
            raise OSError("it is gone, or the launch is larger than this host's socket "
                          "buffers allow")
        deadline = time.monotonic() + (self.FRESH_TIMEOUT if self.fresh else self.LAUNCH_TIMEOUT)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise OSError("no answer in time")
            replies, closed = receive_messages(self.sock, accept_fds=False)
            if replies:
                return replies[0]
            if closed:
                raise OSError("it exited")

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
        # vmms connects as soon as the worker is forked, before it has bound: retry fast
        self.sock = dealer_socket(ctx, home.worker_endpoint(vm_id), reconnect_ms=2, reconnect_max_ms=10)
        self.pending: dict[str, tuple[Callback, float]] = {}
        self.status: dict = {}
        self.on_status = on_status

    def send(self, op: str, args: dict, callback: Callback, timeout: float) -> None:
        assert op in WORKER_OPS, op
        req_id = f"w{next(_ids)}"
        self.pending[req_id] = (callback, time.monotonic() + timeout)
        self.sock.send_multipart(wire.request_frames(req_id, op, args, int(timeout * 1000)), zmq.NOBLOCK)

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

"""How vmms launches, talks to and finds again its workers.

`ForkServer` is the client of worker/forkserver.py (started before vmms makes any ZeroMQ
context; one msgpack map per SOCK_SEQPACKET packet, hypervisor/runtime/packet_socket.py). `WorkerHandle` is vmms's asynchronous connection to one `vmwp`: a DEALER on the
worker's socket, a pidfd that says the moment it exits, requests with deadlines, and the last
`status` the worker pushed. `find_live_workers` is the restart path: one pid file per worker,
held with flock by a live worker.
"""
from __future__ import annotations

import collections
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
from hypervisor.runtime.rpc_client import dealer_socket
from hypervisor.runtime.packet_socket import allow_large_packets, receive_messages, send_message
from worker.worker_defs import LAUNCH_KEYS, NOTIFY_STATUS, WORKER_OPS

_ids = itertools.count(1)


class ForkServer:
    """The worker fork-server's client, asynchronous (issue 16): `launch` sends and returns; the
    fork-server answers each launch in order (`{"pid": N}` or `{"error": ...}`) on its one
    SEQPACKET socket, which vmms's loop watches (`attach_loop`), so the answers are matched to a
    FIFO of pending launches and each launch's callback runs from the loop. Several launches
    may be in flight.

    A fork-server that died (kill -9) or hangs (SIGSTOP: no answer within LAUNCH_TIMEOUT of
    the last one while launches are pending) is replaced by a fresh one (fork+exec, safe while
    vmms has a ZeroMQ context) and what was in flight is tried once more on it; a launch that
    fails twice fails with Unavailable."""

    LAUNCH_TIMEOUT = 2.0
    FRESH_TIMEOUT = 15.0   # a fresh fork-server first imports the worker code, then answers
    MAX_LAUNCH = 4 << 20   # as worker/forkserver.py: a VM's host KVP pool rides in its launch
    TRIES = 2

    def __init__(self, home: Home):
        self.home = home
        self.pending: collections.deque = collections.deque()   # [launch, callback, tries]
        self.deadline: float | None = None   # the next answer is due by then (while pending)
        self._watch = self._unwatch = None
        self._spawn()

    def attach_loop(self, watch_fd, unwatch_fd) -> None:
        """Let the loop watch the socket (re-registered whenever the fork-server is replaced)."""
        self._watch, self._unwatch = watch_fd, unwatch_fd
        watch_fd(self.sock.fileno(), self.on_readable)

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
        if self._watch is not None:
            self._watch(ours.fileno(), self.on_readable)

    def ensure(self) -> None:
        """From vmms's timer or the fork-server's pidfd: one that died is replaced at once, so
        it has imported the worker code before the next start-vm needs it."""
        if self.proc.poll() is not None:
            self._replace("it exited")

    def _replace(self, why: str) -> None:
        if self._unwatch is not None:
            self._unwatch(self.sock.fileno())
        self.sock.close()
        self.proc.kill()   # dead already, or hung: either way it is replaced
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
        self._spawn()
        # what was in flight is tried once more on the fresh one, in the same order
        inflight, self.pending = self.pending, collections.deque()
        failed = []
        for item in inflight:
            if item[2] >= self.TRIES or not self._send(item[0]):
                failed.append(item)
                continue
            item[2] += 1
            self.pending.append(item)
        self._complete([(cb, None, HvError("Unavailable", f"the worker fork-server failed twice: {why}"))
                        for _, cb, _ in failed])

    def _send(self, launch: dict) -> bool:
        if not send_message(self.sock, {"launch": launch}):
            return False
        if not self.pending:
            self.deadline = time.monotonic() + (self.FRESH_TIMEOUT if self.fresh else self.LAUNCH_TIMEOUT)
        return True

    def launch(self, launch: dict, callback: Callable[[int | None, HvError | None], None]) -> None:
        """Send the launch (LAUNCH_KEYS) and return: `callback(pid, None)` or `callback(None,
        HvError)` follows from the loop. Raises HvError at once if it cannot be sent, even to a
        fresh fork-server."""
        assert set(launch) == set(LAUNCH_KEYS), sorted(launch)
        if self.proc.poll() is not None:
            self._replace("it exited")
        tries = 1
        if not self._send(launch):
            self._replace("it is gone, or the launch is larger than this host's socket buffers allow")
            if not self._send(launch):
                raise HvError("Unavailable", "the worker fork-server failed twice: it is gone, or the "
                                             "launch is larger than this host's socket buffers allow")
            tries = 2
        self.pending.append([launch, callback, tries])

    def on_readable(self) -> None:
        """Answers, in the order of the launches."""
        replies, closed = receive_messages(self.sock, accept_fds=False)
        done = []
        for reply in replies:
            if not self.pending:
                break   # nothing asked: ignored
            _, callback, _ = self.pending.popleft()
            self.fresh = False
            if "pid" in reply:
                done.append((callback, int(reply["pid"]), None))
            else:
                done.append((callback, None, HvError(
                    "Internal", f"the worker fork-server refused: {reply.get('error')!r}")))
        if replies:
            self.deadline = time.monotonic() + self.LAUNCH_TIMEOUT if self.pending else None
        if closed:
            self._replace("it exited")
        self._complete(done)

    def expire(self, now: float) -> None:
        """From vmms's timer: launches pending and no answer in time: a hung fork-server."""
        if self.pending and self.deadline is not None and now >= self.deadline:
            self._replace("no answer in time")

    @staticmethod
    def _complete(done: list) -> None:
        """Run each callback; one that raises does not stop the others (re-raised after)."""
        error = None
        for callback, pid, err in done:
            try:
                callback(pid, err)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch(self.sock.fileno())
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


Callback = Callable[[bool, object], None]


class WorkerHandle:
    """A launched worker's pid may follow its handle (the fork-server answers asynchronously):
    until `set_pid`, requests queue on the DEALER and signals are held, then sent."""

    def __init__(self, ctx: zmq.Context, home: Home, vm_id: str, pid: int | None,
                 on_status: Callable[["WorkerHandle", dict], None]):
        self.vm_id = vm_id
        self.pid: int | None = None
        self.pidfd: int | None = None
        self._held: list[int] = []            # signals asked for before the pid was known
        # vmms connects as soon as the worker is forked, before it has bound: retry fast (2, 4,
        # 8 ms ...), backing off to 40 ms, so a burst of 200 starts, whose workers bind late,
        # does not spin vmms's I/O thread on connect attempts (issue 16)
        self.sock = dealer_socket(ctx, home.worker_endpoint(vm_id), reconnect_ms=2, reconnect_max_ms=40)
        self.pending: dict[str, tuple[Callback, float]] = {}
        self.status: dict = {}
        self.on_status = on_status
        # a send may consume the socket's ZMQ_FD signal while a reply waits: vmms's poller
        # watches this socket lazily and must hear of each send (hypervisor/runtime/event_poller.py)
        self.sent: Callable[[zmq.Socket], None] | None = None
        if pid is not None:
            try:
                self.set_pid(pid)
            except OSError:
                self.sock.close(0)
                raise

    def set_pid(self, pid: int) -> None:
        """The worker's pid is known: its pidfd (OSError if it is gone already), held signals."""
        self.pidfd = os.pidfd_open(pid)
        self.pid = pid
        held, self._held = self._held, []
        for sig in held:
            self.signal(sig)

    def send(self, op: str, args: dict, callback: Callback, timeout: float) -> None:
        assert op in WORKER_OPS, op
        req_id = f"w{next(_ids)}"
        self.pending[req_id] = (callback, time.monotonic() + timeout)
        self.sock.send_multipart(wire.request_frames(req_id, op, args, int(timeout * 1000)), zmq.NOBLOCK)
        if self.sent is not None:
            self.sent(self.sock)

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
        """Signal the worker through its pidfd: a reused pid number can never be hit (held until
        its pid is known)."""
        if self.pidfd is None:
            self._held.append(sig)
            return
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
        if self.pidfd is not None:
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

"""The worker fork-server: starts every `vmwp` by fork from a process that has already
imported the worker and guest code, so a VM starts in milliseconds and its processes share
those pages (DESIGN.md §7).

It holds no ZeroMQ context and no threads, so forking it is safe. vmms starts it (fork+exec)
before it makes its own ZeroMQ context and talks to it over a SOCK_SEQPACKET socketpair, one
msgpack map per packet (hypervisor/runtime/packet_socket.py, the framing the driver fork-server
speaks too): `{"launch": {LAUNCH_KEYS}}` → `{"pid": N}` or `{"error": "..."}`. It reaps the
workers it forked and exits when vmms goes away (EOF); the workers, in their own sessions, keep
running.

A spare (issue 16): one worker is forked ahead of its launch (`vmwp-spare <home>`, in its own
session, log and collector set as for a worker) and waits on a socketpair of its own. A launch
goes to it and the answer is its pid at once: the fork and what a forked child does first
(CPython's after-fork work, ~400 page copies) are off the start's path, and vmms, which waits
for this answer, is free again sooner. The next spare is forked right after the answer. A
spare that died, or a launch too large for its socket, falls back to a fork on the spot; a
spare whose fork-server is gone reads EOF and exits.

Its imported image (logging set-up included) is made immortal before the first fork
(hypervisor/runtime/immortal_image.py): a worker or guest that uses it writes none of those
objects' reference counts, so their pages stay shared with every VM (issue 16).
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    # structlog formats tracebacks with rich when rich is importable: 80 modules and ~5 MiB
    # in the image every fork copies the page tables of (issue 16). The workers' log renders
    # tracebacks as plain text instead; a None entry is how an import is refused.
    sys.modules.setdefault("rich", None)

import gc
import os
import select
import selectors
import signal
import socket

import setproctitle
import zmq  # noqa: F401  (imported for the workers, never instantiated here)

import hypervisor.runtime.rpc_client  # noqa: F401  (preload: every fork inherits these pages)
import hypervisor.runtime.rpc_server  # noqa: F401
from hypervisor.runtime import immortal_image, logging_setup
from hypervisor.runtime.packet_socket import allow_large_packets, receive_messages, send_message
from hypervisor.runtime.paths import Home
from hypervisor.runtime.process_tree import reap_children
from hypervisor.runtime.sandbox import set_not_dumpable
from worker.vmwp import worker_main
from worker.worker_defs import LAUNCH_KEYS

MAX_LAUNCH = 4 << 20   # a launch carries the VM's host KVP pool: up to 1024 items of 2.5 KB


SPARE_CHECK = 60.0     # s; a spare waiting for its launch looks whether its fork-server lives


def _worker_child() -> None:
    """In a freshly forked worker (or spare), before its launch."""
    os.setsid()  # killing or restarting vmms must never reach the VM
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # no collection while the worker starts (what it allocates then lives as long as it
    # does); the worker freezes it all and collects again once its VM runs (guest_ready)
    gc.disable()


def _await_launch(sock: socket.socket, server: int) -> dict:
    """A spare's wait for its launch; exits when the fork-server is gone (EOF, or re-parented)."""
    while True:
        if select.select([sock], [], [], SPARE_CHECK)[0]:
            msgs, closed = receive_messages(sock, accept_fds=False, max_bytes=MAX_LAUNCH)
            for msg in msgs:
                if isinstance(msg.get("launch"), dict):
                    return msg["launch"]
            if closed:
                os._exit(0)
        elif os.getppid() != server:
            os._exit(0)


class Spares:
    """The one worker forked ahead of its launch (see the module's docstring)."""

    def __init__(self, home: Home, closing: list):
        self.home, self.closing = home, closing   # what a child closes first (our sockets)
        self.pid: int | None = None
        self.sock: socket.socket | None = None

    def fork(self) -> None:
        if self.pid is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        allow_large_packets(ours, MAX_LAUNCH)
        server = os.getpid()
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                for thing in self.closing:
                    thing.close()
                _worker_child()
                setproctitle.setproctitle(f"vmwp-spare {self.home.root}")
                theirs.setblocking(False)
                launch = _await_launch(theirs, server)
                theirs.close()
                worker_main(launch)
            finally:
                os._exit(1)
        theirs.close()
        ours.setblocking(False)
        self.pid, self.sock = pid, ours

    def take(self, launch: dict) -> int | None:
        """Hand `launch` to the spare: its pid, or None (no spare, or it could not take it)."""
        pid, sock = self.pid, self.sock
        self.pid = self.sock = None
        if pid is None:
            return None
        sent = send_message(sock, {"launch": launch})
        sock.close()        # a spare that did not get it reads EOF and exits
        return pid if sent else None

    def reaped(self, pids) -> None:
        if self.pid is not None and self.pid in pids:
            self.sock.close()
            self.pid = self.sock = None


def serve(sock: socket.socket, home: Home) -> None:
    # The workers' log, set up once here (and one line written through it): each worker only
    # binds its own pid (logging_setup.inherited).
    log = logging_setup.configure(home.logs_dir, "vmwp", warm="worker_forkserver_started")
    # Then the whole image, logging included, made immortal: a worker or guest that uses it
    # writes none of its pages, so they stay shared with every VM (issue 16). Before any
    # socket or selector of ours exists; what is made from here on stays mortal.
    made = immortal_image.immortalize()
    gc.freeze()
    log.info("worker_forkserver_ready", immortal_objects=made,
             immortal_unsupported=immortal_image.supported())
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    spares = Spares(home, [sel, sock])
    spares.fork()
    while True:
        events = sel.select(0.5)
        spares.reaped({pid for pid, _ in reap_children()})
        if not events:
            spares.fork()
            continue
        msgs, closed = receive_messages(sock, accept_fds=False, max_bytes=MAX_LAUNCH)
        for msg in msgs:
            launch = msg.get("launch")
            if not isinstance(launch, dict) or set(launch) != set(LAUNCH_KEYS):
                send_message(sock, {"error": "bad fork-server request"})
                continue
            pid = spares.take(launch)
            if pid is None:
                pid = fork_worker(launch, [sel, sock, spares.sock])
            send_message(sock, {"pid": pid})
        if closed:
            return  # vmms is gone (the spare reads EOF and exits)
        spares.fork()   # the next start finds one ready


def fork_worker(launch: dict, closing: list) -> int:
    """Fork a worker for `launch` on the spot (no spare ready)."""
    # Freeze what is imported so far: a child's garbage collection then never touches
    # (and so never copies) the pages it shares with this process.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        try:
            for thing in closing:
                if thing is not None:
                    thing.close()
            _worker_child()
            worker_main(launch)
        finally:
            os._exit(1)
    return pid


def main() -> None:
    fd, home = int(sys.argv[1]), sys.argv[2]
    setproctitle.setproctitle(f"vmms-forkserver {home}")
    set_not_dumpable()  # it and every vmwp it forks: no /proc/<pid>/mem, no ptrace
    os.umask(0o077)
    serve(socket.socket(fileno=fd), Home.resolve(home))


if __name__ == "__main__":
    main()

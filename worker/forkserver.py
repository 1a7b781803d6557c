"""The worker fork-server: starts every `vmwp` by fork from a process that has already
imported the worker and guest code, so a VM starts in milliseconds and its processes share
those pages (DESIGN.md §7).

It holds no ZeroMQ context and no threads, so forking it is safe. vmms starts it (fork+exec)
before it makes its own ZeroMQ context and talks to it over a SOCK_SEQPACKET socketpair, one
msgpack map per packet (hypervisor/runtime/packet_socket.py, the framing the driver fork-server
speaks too): `{"launch": {LAUNCH_KEYS}}` → `{"pid": N}` or `{"error": "..."}`. It reaps the
workers it forked and exits when vmms goes away (EOF); the workers, in their own sessions, keep
running.
"""
from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import sys

import setproctitle
import zmq  # noqa: F401  (imported for the workers, never instantiated here)

import hypervisor.runtime.rpc_client  # noqa: F401  (preload: every fork inherits these pages)
import hypervisor.runtime.rpc_server  # noqa: F401
from hypervisor.runtime import logging_setup
from hypervisor.runtime.packet_socket import receive_messages, send_message
from hypervisor.runtime.paths import Home
from hypervisor.runtime.process_tree import reap_children
from hypervisor.runtime.sandbox import set_not_dumpable
from worker.vmwp import worker_main
from worker.worker_defs import LAUNCH_KEYS

MAX_LAUNCH = 4 << 20   # a launch carries the VM's host KVP pool: up to 1024 items of 2.5 KB


def serve(sock: socket.socket, home: Home) -> None:
    # The workers' log, set up once here (and one line written through it): each worker only
    # binds its own pid (logging_setup.inherited).
    logging_setup.configure(home.logs_dir, "vmwp", warm="worker_forkserver_ready")
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    while True:
        events = sel.select(0.5)
        reap_children()
        if not events:
            continue
        msgs, closed = receive_messages(sock, accept_fds=False, max_bytes=MAX_LAUNCH)
        for msg in msgs:
            launch = msg.get("launch")
            if not isinstance(launch, dict) or set(launch) != set(LAUNCH_KEYS):
                send_message(sock, {"error": "bad fork-server request"})
                continue
            # Freeze what is imported so far: a child's garbage collection then never touches
            # (and so never copies) the pages it shares with this process.
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                try:
                    sel.close()
                    sock.close()
                    os.setsid()  # killing or restarting vmms must never reach the VM
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    # no collection while the worker starts (what it allocates then lives as
                    # long as it does); the worker freezes it all and collects again once its
                    # VM runs (Worker.guest_ready)
                    gc.disable()
                    worker_main(launch)
                finally:
                    os._exit(1)
            send_message(sock, {"pid": pid})
        if closed:
            return  # vmms is gone


def main() -> None:
    fd, home = int(sys.argv[1]), sys.argv[2]
    setproctitle.setproctitle(f"vmms-forkserver {home}")
    set_not_dumpable()  # it and every vmwp it forks: no /proc/<pid>/mem, no ptrace
    os.umask(0o077)
    serve(socket.socket(fileno=fd), Home.resolve(home))


if __name__ == "__main__":
    main()

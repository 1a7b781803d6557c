"""The worker fork-server: starts every `vmwp` by fork from a process that has already
imported the worker and guest code, so a VM starts in milliseconds and its processes share
those pages (DESIGN.md §7).

It holds no ZeroMQ context and no threads, so forking it is safe. vmms starts it (fork+exec)
before it makes its own ZeroMQ context and talks to it over a socketpair: length-prefixed
msgpack `{"launch": {...}}` → `{"pid": N}` or `{"error": "..."}`. It reaps the workers it forked
and exits when vmms goes away (EOF); the workers, in their own sessions, keep running.
"""
from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import struct
import sys

import msgpack

HEADER = struct.Struct(">I")
MAX_REQUEST = 1 << 20


def send_msg(sock: socket.socket, obj) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    sock.sendall(HEADER.pack(len(data)) + data)


def recv_msg(sock: socket.socket):
    """One message, or None on EOF. Blocking (callers bound it with a socket timeout)."""
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    (length,) = HEADER.unpack(head)
    if length > MAX_REQUEST:
        raise ValueError(f"fork-server message of {length} bytes")
    body = _recv_exact(sock, length)
    if body is None:
        return None
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(sock: socket.socket) -> None:
    from worker.vmwp import worker_main  # preload: every fork inherits these pages
    import hypervisor.runtime.rpc_client, hypervisor.runtime.rpc_server, hypervisor.runtime.logging_setup  # noqa: F401,E401
    import zmq  # noqa: F401  (imported, never instantiated here)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    while True:
        events = sel.select(0.5)
        _reap()
        if not events:
            continue
        try:
            msg = recv_msg(sock)
        except (OSError, ValueError):
            return
        if msg is None:
            return  # vmms is gone
        launch = msg.get("launch") if isinstance(msg, dict) else None
        if not isinstance(launch, dict):
            send_msg(sock, {"error": "bad fork-server request"})
            continue
        # Freeze what is imported so far: a child's garbage collection then never touches (and
        # so never copies) the pages it shares with this process.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            try:
                sel.close()
                sock.close()
                os.setsid()  # killing or restarting vmms must never reach the VM
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                worker_main(launch)
            finally:
                os._exit(1)
        send_msg(sock, {"pid": pid})


def main() -> None:
    import setproctitle
    fd, home = int(sys.argv[1]), sys.argv[2]
    setproctitle.setproctitle(f"vmms-forkserver {home}")
    from hypervisor.runtime.sandbox import set_not_dumpable
    set_not_dumpable()  # it and every vmwp it forks: no /proc/<pid>/mem, no ptrace
    os.umask(0o077)
    serve(socket.socket(fileno=fd))


if __name__ == "__main__":
    main()

"""The one framing of hvemu's Unix socketpairs: one msgpack map (and optionally descriptors,
SCM_RIGHTS) per SOCK_SEQPACKET packet — message boundaries for free, no length prefix.

Used by both fork-servers (worker/forkserver.py, parent/driver_forkserver.py) and their vmms
sides, the driver hosts' status and channel sockets, and the worker ↔ guest link. msgpack
options are wire.py's. `close_fds` closes received descriptors (once, here, for every caller).

Limits: a packet is at most the sender's socket buffer (`SO_SNDBUF`; `allow_large_packets`
raises it where a message can be big) and the receiver's `max_bytes`; a truncated packet is
dropped, never half-read.
"""
from __future__ import annotations

import os
import socket
from typing import Any

from hypervisor.runtime import wire
from hypervisor.runtime.errors import HvError

MAX_FDS = 8
MAX_CONTROL_MESSAGE = 256 * 1024
_TRUNCATED = int(socket.MSG_CTRUNC | socket.MSG_TRUNC)   # a plain int: no enum work per packet


def send_message(sock: socket.socket, msg: dict, fds: list[int] = ()) -> bool:
    """One msgpack map (and descriptors) per packet. False if the socket is full or closed."""
    data = wire.pack(msg)
    try:
        if fds:
            socket.send_fds(sock, [data], list(fds))
        else:
            sock.send(data)
        return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False


def receive_messages(sock: socket.socket, accept_fds: bool, limit: int = 256,
                     max_bytes: int = MAX_CONTROL_MESSAGE) -> tuple[list[dict], bool]:
    """Read what is waiting: ([messages], closed). A message carrying descriptors gets them as
    `msg["fds"]` (overwriting whatever the peer wrote there); when `accept_fds` is False any
    descriptors that arrive are closed at once, so a hostile peer cannot fill our fd table."""
    out: list[dict] = []
    for _ in range(limit):
        try:
            data, fds, flags, _ = socket.recv_fds(sock, max_bytes, MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return out, False
        except OSError:
            return out, True
        if not accept_fds:
            for fd in fds:
                os.close(fd)
            fds = []
        if not data and not fds:
            return out, True
        try:
            msg: Any = wire.unpack(data)
        except HvError:
            msg = None
        if not isinstance(msg, dict) or flags & _TRUNCATED:
            for fd in fds:
                os.close(fd)
            continue
        msg["fds"] = list(fds)
        out.append(msg)
    return out, False


def allow_large_packets(sock: socket.socket, nbytes: int) -> None:
    """Let `sock` send packets of up to about `nbytes` (SO_SNDBUFFORCE when privileged, else
    SO_SNDBUF, which the kernel caps at net.core.wmem_max)."""
    for opt in (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, nbytes)
            return
        except OSError:
            continue


def close_fds(fds) -> None:
    """Close each descriptor (ignoring ones already closed); None and negatives are skipped."""
    for fd in fds or ():
        if isinstance(fd, int) and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

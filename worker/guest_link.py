"""The private link between a worker and its guest: a SOCK_SEQPACKET socketpair carrying one
msgpack map per packet (message boundaries for free, no framing code).

It carries what is not VMBus data: boot, console bytes (COM1), program halts, and the VMBus
connection itself — offers, opens, rescinds — whose open results carry each channel's region
and doorbells as descriptors (SCM_RIGHTS). Only the guest's end accepts descriptors; any that
a guest sends the worker are closed unread. Both ends are non-blocking; a peer that vanished
reads as `closed`.

Bulk data (a command's console output) may fill only half of the link's send buffer
(`bulk_room`): a `send` that finds the buffer full drops its message, and a guest that floods
its console must not crowd out its own VMBus opens or its halt (a start then waited for a
heartbeat whose channel was never opened).
"""
from __future__ import annotations

import fcntl
import socket
import struct
import termios

from hypervisor.runtime import wire
from hypervisor.runtime.packet_socket import receive_messages


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a, b


class GuestLink:
    def __init__(self, sock: socket.socket, accept_fds: bool = False):
        self.sock = sock
        self.sock.setblocking(False)
        self.accept_fds = accept_fds
        self.closed = False
        # bulk data's share of the send buffer, in the kernel's own accounting (SO_SNDBUF and
        # the queued bytes TIOCOUTQ reports are both what the packets take in memory)
        self.bulk_limit = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict, fds: list[int] = ()) -> bool:
        """False when the link is full (the peer is stopped or slow; dropping a beat is fine)
        or closed. Descriptors are duplicated into the peer; the caller keeps its own."""
        if self.closed:
            return False
        data = wire.pack(msg)
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.send(data)
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.closed = True
            return False

    def bulk_room(self, nbytes: int) -> bool:
        """May `nbytes` of bulk data (console output) be sent now? Only while what the peer has
        not read yet plus them stays within half the send buffer: the other half is kept for
        control messages, which must not be dropped."""
        if self.closed:
            return False
        try:
            queued = struct.unpack("i", fcntl.ioctl(self.sock, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return False
        return queued + nbytes <= self.bulk_limit

    def receive(self) -> list[dict]:
        """Messages waiting now. A message's descriptors are in msg["fds"] (guest end only)."""
        msgs, closed = receive_messages(self.sock, self.accept_fds)
        if closed:
            self.closed = True
        return msgs

    def close(self) -> None:
        self.closed = True
        self.sock.close()

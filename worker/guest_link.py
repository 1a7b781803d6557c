"""The private link between a worker and its guest: a SOCK_SEQPACKET socketpair carrying one
msgpack map per packet (message boundaries for free, no framing code).

It is the seam the integration services ride on until VMBus carries them: boot, heartbeat,
shutdown, console. Both ends are non-blocking; a peer that vanished reads as `closed`.
"""
from __future__ import annotations

import socket

import msgpack

MAX_PACKET = 64 * 1024


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a, b


class GuestLink:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.setblocking(False)
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict) -> bool:
        try:
            self.sock.send(msgpack.packb(msg, use_bin_type=True))
            return True
        except (BlockingIOError, InterruptedError):
            return False  # full: the peer is stopped or slow; dropping a beat is fine
        except OSError:
            self.closed = True
            return False

    def receive(self) -> list[dict]:
        out = []
        while True:
            try:
                data = self.sock.recv(MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                self.closed = True
                return out
            if not data:
                self.closed = True
                return out
            try:
                msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
            except Exception:
                continue  # a garbled packet from a guest is ignored, never fatal
            if isinstance(msg, dict):
                out.append(msg)

    def close(self) -> None:
        self.closed = True
        self.sock.close()

"""A direct client of a driver host that plays the worker and the guest at once: it connects
to `run/d/<driver>.sock`, creates channels exactly as a worker does (ChannelResources, the
same `open` message and descriptors) and keeps the guest's endpoint for itself.

For benchmarks (scripts/bench/vmbus), tests (fuzzing a driver host with malformed rings) and
diagnostics. Everything blocks with a bounded timeout.
"""
from __future__ import annotations

import os
import select
import socket
import time

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.packet_socket import receive_messages, send_message
from worker.vmbus import driver_protocol as dp
from worker.vmbus import messages as m
from worker.vmbus.transport import ChannelEndpoint, ChannelResources


class DriverConnection:
    def __init__(self, path: str, timeout: float = 5.0, vm_id: str = "direct-client"):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.timeout = timeout
        self.vm_id = vm_id
        self.events: list[dict] = []
        self.hello = self._wait(lambda msg: msg.get("t") == dp.HELLO, "hello")
        self._next_channel = 1

    def _wait(self, match, what: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, msg in enumerate(self.events):
                if match(msg):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise HvError("Timeout", f"the driver host did not send {what}")
            select.select([self.sock], [], [], left)
            msgs, closed = receive_messages(self.sock, accept_fds=False)
            self.events.extend(msgs)
            if closed and not msgs:
                raise HvError("Unavailable", "the driver host closed the connection")

    def wait_event(self, kind: str, channel_id: int, timeout: float) -> dict | None:
        try:
            return self._wait(lambda msg: msg.get("t") == kind and msg.get("channel_id") == channel_id,
                              kind, timeout)
        except HvError:
            return None

    def open_channel(self, settings: dict | None = None, version: int | None = None) -> "DirectChannel":
        cid = self._next_channel
        self._next_channel += 1
        ring_size, buffer_size = self.hello["ring_size"], self.hello.get("buffer_size", 0)
        res = ChannelResources(ring_size, f"vmbus-direct-{cid}", buffer_size)
        try:
            guest = ChannelEndpoint([os.dup(fd) for fd in res.fds()], ring_size, "guest", buffer_size)
            files, file_fds = dp.open_device_files(settings or {})
            sent = send_message(self.sock, {
                "t": dp.OPEN, "channel_id": cid, "vm_id": self.vm_id, "vm_name": self.vm_id,
                "instance_id": f"direct-{cid}", "version": version or max(self.hello["versions"]),
                "ring_size": ring_size, "buffer_size": buffer_size, "settings": settings or {},
                "files": files},
                res.fds() + file_fds)
        finally:
            res.close()
            for fd in locals().get("file_fds", ()):
                os.close(fd)
        if not sent:
            guest.close()
            raise HvError("Unavailable", "the driver host did not take the channel")
        answer = self._wait(lambda msg: msg.get("t") in (dp.OPENED, dp.REFUSED) and msg.get("channel_id") == cid,
                            "an open answer")
        if answer["t"] == dp.REFUSED:
            guest.close()
            raise HvError("DriverFault", f"open refused: {answer.get('reason')}")
        return DirectChannel(self, cid, guest)

    def close(self) -> None:
        self.sock.close()


class DirectChannel:
    def __init__(self, conn: DriverConnection, channel_id: int, guest: ChannelEndpoint):
        self.conn, self.channel_id, self.guest = conn, channel_id, guest
        self._txid = 0
        self.answers: dict[int, m.Message] = {}

    def send_request(self, kind: str, body: dict) -> int:
        self._txid += 1
        self.guest.send_request(self._txid, kind, body)
        return self._txid

    def wait(self, txid: int, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while txid not in self.answers:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HvError("Timeout", f"no completion for transaction {txid}")
            select.select([self.guest.fileno()], [], [], min(left, 0.05))
            for msg in self.guest.receive_messages():
                if msg.is_completion:
                    self.answers[msg.txid] = msg
        return self.answers.pop(txid).body

    def request(self, kind: str, body: dict, timeout: float = 5.0) -> dict:
        return self.wait(self.send_request(kind, body), timeout)

    def close(self) -> None:
        send_message(self.conn.sock, {"t": dp.CLOSE, "channel_id": self.channel_id})
        self.guest.close()

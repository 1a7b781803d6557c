"""The driver plugin API: what a parent-hosted driver (a VSP) implements.

A driver is a class registered under the entry-point group `hvemu.drivers` in its package's
metadata — the built-in ones in hvemu's own pyproject.toml, a third party's in theirs:

    [project.entry-points."hvemu.drivers"]
    upper = "hvemu_upper:UpperDriver"

    from parent.drivers.driver_api import Driver

    class UpperDriver(Driver):
        version = "1.0"
        class_id = "upper"                        # the device class it serves
        def request(self, channel, kind, body):   # one request from a guest's client
            return {"data": body["data"].upper()}

The entry point's name is the driver's name. Each driver runs alone in its own `drvhost <name>`
process; it gets channels (one per device of a running VM), never a guest's memory, never a
hypervisor credential. Everything else it may use comes as arguments, never from the driver
host's internals: its constructor gets a `DriverContext` (its name, its logger, its hypercall
access), each channel brings its device's `settings` (the string map given to add-vmdevice). A request's answer is the dict `request()` returns (sent as the
completion with the request's transaction id), or `PENDING` when the driver will answer later
with `channel.complete(txid, body)`. A file a device's settings name (a disk's `path`) is opened by the parent and
handed over as a descriptor: `channel.take_file(path)`. A driver with a binary protocol sets `raw_packets` and
implements `packet()` instead; `buffer_size` gives each channel a shared data buffer (the role
of a GPADL: bulk data a packet points into). Raising `DriverError` answers
`{"error": {"code", "message"}}`; any other exception is a driver bug: it is logged and answered
as `DriverFault`, and the driver host keeps serving. Requests may be re-issued after a driver
host restart (same transaction id), so handlers should be idempotent.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import structlog

VERSION_1_0 = 0x00010000
PENDING = object()


class DriverError(Exception):
    """Answer the request with an error (code is one of hvemu's error names)."""

    def __init__(self, message: str, code: str = "BadRequest"):
        super().__init__(message)
        self.code = code
        self.message = message


class DriverRefused(Exception):
    """Raised by `open()` to decline a channel (the guest is told why)."""


class DriverChannel:
    """A channel as a driver sees it (created by the driver host)."""

    def __init__(self, host, channel_id: int, vm_id: str, vm_name: str, instance_id: str,
                 version: int, settings: dict):
        self._host = host
        self.channel_id, self.vm_id, self.vm_name = channel_id, vm_id, vm_name
        self.instance_id, self.version, self.settings = instance_id, version, settings
        self.state: Any = None            # the driver's own per-channel state
        self.requests = 0
        self.files: dict[str, int] = {}   # files of the device opened by the parent, by path
        self.endpoint = None              # the host's ChannelEndpoint (a driver's fast path)
        self.port = None                  # its FramePort (frame_port drivers)

    def take_file(self, path: str) -> int | None:
        """The descriptor of a file the device's settings name, opened and handed over by the
        parent (the driver owns it from now on), or None. A sandboxed driver host cannot open a
        path itself: this is the only way to a disk."""
        return self.files.pop(path, None)

    @property
    def buffer(self) -> memoryview | None:
        """The channel's shared data buffer (Driver.buffer_size bytes; None without one). The
        guest may change it at any moment: copy what you check before you use it."""
        return self._host.buffer_of(self)

    def send(self, kind: str, body: dict) -> None:
        """A one-way message to the guest's client."""
        self._host.send_oneway(self, kind, body)

    def send_packet(self, type: int, payload: bytes, txid: int = 0, flags: int = 0) -> None:
        """A raw packet (drivers with raw_packets = True)."""
        self._host.send_packet(self, type, payload, txid, flags)

    def complete(self, txid: int, body: dict, kind: str = "completion") -> None:
        """Answer a request that returned PENDING."""
        self._host.send_completion(self, txid, kind, body)


def _no_hypervisor(op: str, args: dict | None = None) -> dict:
    return {"ok": False, "code": "Unavailable", "message": "not running in a driver host"}


class DriverContext:
    """What the driver host hands its driver at construction (`Driver(context)`):

    - `name` — the driver's name (its entry point's);
    - `log` — a structlog logger bound to the driver, writing to the host's JSON log;
    - `hypercall(op, args=None)` — call the hypervisor with what the driver host holds: no
      credential, so the answer is the hypervisor's refusal. A dict: {"ok": True, "result"} or
      {"ok": False, "code", "message"}, plus "environment" (the names the host process was
      given), so a driver can show what it can and cannot reach.

    Without a driver host (unit tests) it has an unbound logger and no hypervisor."""

    def __init__(self, name: str = "", log: Any = None,
                 hypercall: Callable[..., dict] = _no_hypervisor):
        self.name = name
        self.log = log if log is not None else structlog.get_logger().bind(driver=name)
        self.hypercall = hypercall


class Driver:
    """Subclass and override. Class attributes declare what the driver is. A subclass with its
    own `__init__` takes the context and passes it on: `super().__init__(context)`."""

    name = ""                             # the context's name once constructed
    version = "0"
    class_id = ""                         # the device class (VMBus class id) it serves
    protocol_versions: tuple[int, ...] = (VERSION_1_0,)
    ring_size = 256 * 1024                # bytes of each ring of its channels
    buffer_size = 0                       # bytes of a shared data buffer per channel (pages)
    raw_packets = False                   # True: packet() gets every packet undecoded
    frame_port = False                    # True (with raw_packets): netvsp's frame path, frames()

    def __init__(self, context: DriverContext | None = None):
        self.context = context if context is not None else DriverContext(type(self).name)
        self.name = self.context.name
        self.log = self.context.log

    def attach(self, io) -> None:
        """Called once, before any channel, with the driver host's loop services:
        `io.add_reader(fd, callback)`, `io.remove_reader(fd)` (a driver with descriptors of its
        own, e.g. netvsp's host TAP). `tick()` runs by `next_deadline()`."""

    def configure(self, body: dict, fds: list[int] = ()) -> None:
        """Configuration vmms pushes to this driver (netvsp: its switches and ports), when the
        host is ready and on every change, with descriptors vmms opened for it (netvsp: the
        host TAPs and packet sockets; the driver owns them: it keeps or closes each)."""
        for fd in fds:
            os.close(fd)

    def next_deadline(self) -> float:
        """When `tick()` must run next (monotonic seconds; inf: only on the host's own tick)."""
        return float("inf")

    def tick(self, now: float) -> None:
        """Timed work (called at least every driver-host tick and by `next_deadline()`)."""

    def open(self, channel: DriverChannel) -> None:
        """A guest opened a device of this class. Raise DriverRefused to decline."""

    def request(self, channel: DriverChannel, kind: str, body: dict) -> Any:
        """Answer one request (a dict, or PENDING)."""
        raise DriverError(f"{self.name} does not handle {kind!r}")

    def message(self, channel: DriverChannel, kind: str, body: dict) -> None:
        """A one-way message from the guest."""

    def packet(self, channel: DriverChannel, packet) -> bytes | None:
        """(raw_packets drivers) One packet (worker.vmbus.ring.Packet). Return a payload to
        answer it with a COMPLETION of the same transaction id, or None. Raise
        RingProtocolError for a malformed packet: the channel is failed."""
        return None

    def frames(self, channel: DriverChannel, frames: list) -> None:
        """(frame_port drivers) The frames of the DATA packets the channel's `FramePort`
        (worker/vmbus/frame_port.py, `channel.port`) took; other packets still go to packet().
        Raise RingProtocolError for a malformed frame: the channel is failed."""

    def close(self, channel: DriverChannel) -> None:
        """The channel ended (closed, rescinded or failed)."""

    def stats(self) -> dict:
        return {}

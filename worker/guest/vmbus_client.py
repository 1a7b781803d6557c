"""The guest's VMBus driver: it initiates contact over the link, takes offers, opens the
channels it has a client (VSC) for, and keeps requests safe across a driver host's crash.

What: `GuestBus` runs in the guest runtime's loop. `ClientDevice` is one device as the guest
sees it, identified by its instance id, so it outlives the channel it currently uses: when a
channel is rescinded (its driver host died) the device keeps every request that has not been
completed, and when the device is offered again it reopens and re-issues them with the same
transaction ids, in order. Each request completes exactly once: a completion pops it, a
re-issue only repeats what had no completion. When the host says the device failed (its driver
is `Failed`) or refuses to open it (no common protocol version), every waiting request
completes with an error, and new ones fail at once, instead of hanging.

Clients register per class id (`GuestBus.register`): the integration services
(worker/guest/integration.py) and the guest programs that use devices
(worker/guest/device_programs.py).
"""
from __future__ import annotations

import functools
import time
from collections import OrderedDict
from typing import Callable

from hypervisor.runtime.errors import HvError
from worker.vmbus import messages as m
from worker.vmbus.channel import Offer
from worker.vmbus.host_bus import DEVICE_FAILED, INITIATE_CONTACT, VMBUS
from worker.vmbus.ring import RingProtocolError
from hypervisor.runtime.packet_socket import close_fds
from worker.vmbus.transport import ChannelEndpoint

V1 = 0x00010000
MAX_PENDING = 4096
Callback = Callable[[bool, dict], None]   # (ok, completion body | {"code", "message"})


def fast_path(callback: Callable[[], None]) -> Callable[[], None]:
    """Mark a descriptor callback whose events need none of the guest loop's housekeeping
    afterwards (device programs, integration services, memory): the runtime then goes straight
    back to waiting, so a peer woken on this CPU is not held up behind it (network frames).
    A `functools.partial` carries the mark: calling it adds no Python frame."""
    call = functools.partial(callback)
    call.fast_path = True
    return call


class ClientDevice:
    """A device's client. Subclasses override `opened`, `on_request`, `on_oneway`, `lost`."""

    versions: tuple[int, ...] = (V1,)
    raw = False    # True: packets go to on_packet() undecoded (a binary protocol such as storvsp);
                   # the device then tracks and re-issues its own requests in opened()
    fast_path = False    # True: its doorbell needs no loop housekeeping after it (`fast_path()`)
    spin_seconds = 0.0   # > 0: after a drain, busy-poll the ring this long for the next packet
                         # while `spin_wanted()` (a request in flight), before sleeping on the
                         # doorbell: a completion caught this way costs no poll wake-up
    SPIN_TOTAL = 2e-3    # one drain never holds the loop longer than this spinning

    def __init__(self, bus: "GuestBus", offer: Offer):
        self.bus = bus
        self.offer = offer
        self.instance_id = offer.instance_id
        self.channel_id: int | None = None
        self.endpoint: ChannelEndpoint | None = None
        self.version: int | None = None
        self.failure: str | None = None
        self.pending: OrderedDict[int, tuple[str, dict, Callback | None]] = OrderedDict()
        self.sent: set[int] = set()     # pending requests already written to some channel
        self._next_txid = 1
        self.reissued = 0
        self.completed = 0

    @property
    def is_open(self) -> bool:
        return self.endpoint is not None

    # --- requests --------------------------------------------------------------------------
    def request(self, kind: str, body: dict, callback: Callback | None = None) -> int:
        if self.failure is not None:
            if callback is not None:
                callback(False, {"code": "DriverFault", "message": self.failure})
            return 0
        if len(self.pending) >= MAX_PENDING:
            raise HvError("Busy", f"{MAX_PENDING} requests already waiting")
        txid = self._next_txid
        self._next_txid += 1
        self.pending[txid] = (kind, body, callback)
        if self.endpoint is not None:
            self.endpoint.send_request(txid, kind, body)
            self.sent.add(txid)
        return txid

    def send_oneway(self, kind: str, body: dict) -> bool:
        """One-way messages are not kept: dropped while the channel is not open."""
        if self.endpoint is None:
            return False
        self.endpoint.send_oneway(kind, body)
        return True

    def _completion(self, msg: m.Message) -> None:
        entry = self.pending.pop(msg.txid, None)
        self.sent.discard(msg.txid)
        if entry is None:
            self.bus.note(f"vmbus: completion for unknown transaction {msg.txid} ignored")
            return
        self.completed += 1
        if entry[2] is not None:
            entry[2](True, msg.body)

    # --- channel events (called by the bus) -----------------------------------------------------
    def _open(self, channel_id: int, endpoint: ChannelEndpoint, version: int) -> None:
        self.channel_id, self.endpoint, self.version = channel_id, endpoint, version
        self.failure = None
        if self.raw:
            self.opened()
            return
        for txid, (kind, body, _) in self.pending.items():  # re-issue, same txids, in order
            endpoint.send_request(txid, kind, body)
            if txid in self.sent:
                self.reissued += 1        # it was in flight on a channel that is gone
            self.sent.add(txid)
        self.opened()

    def _drain(self) -> None:
        ep = self.endpoint
        if ep is None:
            return
        if self.raw:
            for packet in ep.receive(rearm=False):
                self.on_packet(packet)
            ep.rearm()
            if self.spin_seconds > 0:
                self._spin(ep)
            return
        for msg in ep.receive_messages():
            if msg.is_completion:
                self._completion(msg)
            elif msg.expects_reply:
                reply = self.on_request(msg.kind, msg.body)
                if reply is not None and self.endpoint is not None:
                    self.endpoint.send_completion(msg.txid, msg.kind, reply)
            else:
                self.on_oneway(msg.kind, msg.body)

    def _spin(self, ep: ChannelEndpoint) -> None:
        """Bounded busy-poll (raw devices with `spin_seconds`): only while `spin_wanted()`, at
        most `spin_seconds` per wait and `SPIN_TOTAL` per drain — never spins idle."""
        clock = time.perf_counter
        stop = clock() + self.SPIN_TOTAL
        inp = ep.ring.inp
        while self.endpoint is ep and not ep.closed and self.spin_wanted():
            now = clock()
            deadline = min(now + self.spin_seconds, stop)
            while inp.is_empty():
                if clock() >= deadline:
                    return
            for packet in ep.receive():
                self.on_packet(packet)

    def spin_wanted(self) -> bool:
        return False

    def _drop_channel(self) -> None:
        if self.endpoint is not None:
            try:
                self._drain()  # take what the host already answered before letting go
            except RingProtocolError:
                pass
            self.bus.unwatch(self.endpoint.fileno())
            self.endpoint.close()
        self.endpoint, self.channel_id, self.version = None, None, None
        self.lost()

    def _fail(self, reason: str) -> None:
        self.failure = reason
        pending, self.pending = self.pending, OrderedDict()
        self.sent.clear()
        for _, _, callback in pending.values():
            if callback is not None:
                callback(False, {"code": "DriverFault", "message": reason})
        self.failed(reason)

    # --- for subclasses -------------------------------------------------------------------------
    def opened(self) -> None: ...

    def lost(self) -> None: ...

    def failed(self, reason: str) -> None: ...

    def on_request(self, kind: str, body: dict) -> dict | None:
        """Answer a host request; None means no answer (ever)."""
        return {"error": f"unexpected request {kind!r}"}

    def on_oneway(self, kind: str, body: dict) -> None: ...

    def on_packet(self, packet) -> None:
        """A raw packet (devices with raw = True); raise RingProtocolError if it is malformed."""

    @property
    def buffer(self) -> memoryview | None:
        """The channel's shared data buffer while it is open (None without one)."""
        return self.endpoint.buffer if self.endpoint is not None else None

    def tick(self, now: float) -> None: ...

    def next_deadline(self) -> float:
        return float("inf")


class GuestBus:
    def __init__(self, link, watch: Callable[[int, Callable[[], None]], None],
                 unwatch: Callable[[int], None], note: Callable[[str], None]):
        self.link, self.watch, self.unwatch, self.note = link, watch, unwatch, note
        self.factories: dict[str, Callable[["GuestBus", Offer], ClientDevice]] = {}
        self.devices: dict[str, ClientDevice] = {}       # instance_id -> device
        self.channels: dict[int, ClientDevice] = {}      # channel_id -> device
        self.offers: dict[int, Offer] = {}

    def register(self, class_id: str, factory: Callable[["GuestBus", Offer], ClientDevice]) -> None:
        self.factories[class_id] = factory
        for cid, offer in list(self.offers.items()):   # already offered: open it now
            if offer.class_id == class_id and cid not in self.channels:
                self._take_offer(cid, offer)

    def device(self, class_id: str) -> ClientDevice | None:
        for dev in self.devices.values():
            if dev.offer.class_id == class_id:
                return dev
        return None

    def contact(self) -> None:
        self._send(INITIATE_CONTACT, {"version": V1})

    def _send(self, kind: str, body: dict) -> None:
        self.link.send({"t": VMBUS, "kind": kind, "body": body})

    def on_link_message(self, msg: dict) -> None:
        kind, body, fds = msg.get("kind"), msg.get("body"), msg.get("fds") or []
        try:
            if not isinstance(body, dict):
                raise ValueError("body is not a map")
            if kind == m.OFFER:
                offer = Offer.from_wire(body.get("offer"))
                self.offers[body["channel_id"]] = offer
                self._take_offer(body["channel_id"], offer)
            elif kind == m.OPEN_RESULT:
                owned, fds = fds, []
                self._open_result(body, owned)
            elif kind == m.RESCIND:
                self._rescind(body["channel_id"])
            elif kind == m.CLOSE_RESPONSE:
                pass
            elif kind == DEVICE_FAILED:
                dev = self.devices.get(body.get("instance_id"))
                if dev is not None:
                    self.note(f"vmbus: device {dev.offer.class_id} failed: {body.get('reason')}")
                    dev._fail(str(body.get("reason") or "the device failed"))
        except (HvError, KeyError, ValueError, TypeError, RingProtocolError) as exc:
            self.note(f"vmbus: bad message {kind!r} from the host: {exc}")
        finally:
            close_fds(fds)

    def _take_offer(self, cid: int, offer: Offer) -> None:
        factory = self.factories.get(offer.class_id)
        if factory is None:
            return  # no client for this class (yet): leave it offered
        dev = self.devices.get(offer.instance_id)
        if dev is None:
            dev = self.devices[offer.instance_id] = factory(self, offer)
        dev.offer = offer
        self.channels[cid] = dev
        self._send(m.OPEN, {"channel_id": cid, "versions": list(dev.versions)})

    def _open_result(self, body: dict, fds: list[int]) -> None:
        """Takes ownership of fds (the channel's region and doorbells)."""
        dev = self.channels.get(body.get("channel_id"))
        version = body.get("version")
        if dev is None or version is None or len(fds) != 3:
            close_fds(fds)
            if dev is not None and version is None:
                self.note(f"vmbus: open of {dev.offer.class_id} refused: {body.get('reason')}")
                dev._fail(f"open refused: {body.get('reason')}")
            return
        cid = body["channel_id"]
        endpoint = ChannelEndpoint(fds, dev.offer.ring_size, "guest",   # closes fds if it fails
                                   body.get("buffer_size") or 0)
        readable = functools.partial(self._readable, dev)
        self.watch(endpoint.fileno(), fast_path(readable) if dev.fast_path else readable)
        dev._open(cid, endpoint, version)
        self._readable(dev)

    def _readable(self, dev: ClientDevice) -> None:
        try:
            dev._drain()
        except RingProtocolError as exc:
            self.note(f"vmbus: protocol error on {dev.offer.class_id}: {exc}; closing the channel")
            cid = dev.channel_id
            dev._drop_channel()
            if cid is not None:
                self._send(m.CLOSE, {"channel_id": cid})

    def _rescind(self, cid: int) -> None:
        self.offers.pop(cid, None)
        dev = self.channels.pop(cid, None)
        if dev is not None and dev.channel_id == cid:
            dev._drop_channel()
        self._send(m.RELEASED, {"channel_id": cid})

    def tick(self, now: float) -> None:
        for dev in list(self.devices.values()):
            ep = dev.endpoint
            if ep is not None and (ep.backlog or not ep.ring.inp.is_empty()):
                self._readable(dev)  # bounds a lost wake-up (no system call for an empty ring)
            dev.tick(now)

    def next_deadline(self) -> float:
        return min((d.next_deadline() for d in self.devices.values()), default=float("inf"))


"""The guest's network adapters (netvsc): each netvsp device is a TAP `eth<index>` in the
partition's network namespace (worker/guest/net_namespace.py), whose frames the guest runtime
moves over the device's VMBus channel (protocol: worker/vmbus/netvsp_protocol.py).

`NetAdapterClient` (one per device): on open it asks the switch for the adapter's MAC and index,
creates the TAP once (it outlives channels: a driver-host crash rescinds the channel, the
interface and its addresses stay, and frames resume on the reopened channel), and then:
- TAP → ring: on the TAP's readability the first frame goes out at once (its doorbell is not
  delayed by the read that finds the TAP empty), then every other frame waiting (bounded) as
  one batch packet. When the ring is full the endpoint keeps a backlog; the client then stops
  reading the TAP (the kernel queues, then drops: TCP backs off) until the switch drained it.
- ring → TAP: each frame of a batch is written to the TAP; one the kernel has no room for is
  dropped (Ethernet). The kernel often answers in that same write (an echo reply, a TCP ACK,
  new data a window update released): the TAP is read right after, not one loop turn later.
Both are `fast_path` callbacks: the guest loop skips its housekeeping after them.
While no channel is open, frames read from the TAP are dropped.

Each of these runs right after a wake-up, with the caches cold, where every Python call and
object costs microseconds (worker/vmbus/ring.py): the frame path is a few flat methods —
ring → TAP in `_drain`, TAP → ring in `_tap_readable` — over the channel's `FramePort`
(worker/vmbus/frame_port.py: one object with both rings and both doorbells).

`NetAdapters` (one per guest) is the KVP side, as Hyper-V's KVP integration service does it:
host items `NetworkAdapter.<MAC>.IPAddresses` (comma-separated CIDRs) and
`NetworkAdapter.<MAC>.DefaultGateway` are applied with `ip`; the guest publishes the addresses
the interface actually has as guest item `NetworkAdapter.<MAC>.IPAddresses`.
"""
from __future__ import annotations

import json
import os
import select
import subprocess

from hypervisor.runtime import sched_slice
from worker import tap_device
from worker.guest.vmbus_client import ClientDevice, GuestBus, fast_path
from worker.vmbus import netvsp_protocol as proto
from worker.vmbus.channel import Offer
from worker.vmbus.frame_port import FramePort
from worker.vmbus.ring import PacketFlags, PacketType

READ_BATCH = 64
_DATA = int(PacketType.DATA)      # a plain int on the frame path (no enum attribute lookup)
_pack_length = proto.pack_length
REFRESH_EVERY = 2.0
IP_TIMEOUT = 5.0
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
KVP_PREFIX = "NetworkAdapter."


def kvp_key(mac: bytes, what: str) -> str:
    return f"{KVP_PREFIX}{proto.mac_text(mac)}.{what}"


class NetAdapterClient(ClientDevice):
    raw = True
    fast_path = True

    def __init__(self, bus: GuestBus, offer: Offer, adapters: "NetAdapters"):
        super().__init__(bus, offer)
        self.adapters = adapters
        self.tap: int | None = None
        self.ifname: str | None = None
        self.mac: bytes | None = None
        self.reading = False
        self.port: FramePort | None = None     # the open channel's frame path
        self._tap_callback = fast_path(self._tap_readable)
        # "is a frame waiting?" without a read that fails: an EAGAIN raises BlockingIOError,
        # and a cold exception costs tens of µs right after the frame we just handed over
        self._tap_ready = select.poll()
        self.tx_frames = self.rx_frames = self.dropped = 0

    # --- the channel -------------------------------------------------------------------------
    def opened(self) -> None:
        self.port = FramePort(self.endpoint)
        self.endpoint.send_packet(PacketType.DATA, b"", proto.QUERY_TXID, PacketFlags.COMPLETION_REQUESTED)

    def lost(self) -> None:
        self.port = None
        self._resume()       # drop what the TAP gets until the channel is back

    def on_packet(self, packet) -> None:
        """A packet other than frames (those are written to the TAP in `_drain`)."""
        if packet.type == PacketType.COMPLETION and packet.txid == proto.QUERY_TXID:
            mac, index = proto.decode_info(packet.payload)
            if self.tap is None:
                self._make_tap(mac, index)

    def _make_tap(self, mac: bytes, index: int) -> None:
        name = f"eth{index}"
        try:
            self.tap = tap_device.open_tap(name)
            tap_device.set_mac(name, mac)
            tap_device.set_up(name)
            self._tap_ready.register(self.tap, select.POLLIN)
        except OSError as exc:
            self.bus.note(f"netvsc: cannot create {name}: {exc}")
            if self.tap is not None:
                os.close(self.tap)
                self.tap = None
            return
        self.ifname, self.mac = name, mac
        self.bus.note(f"netvsc: {name} is up with MAC {proto.mac_text(mac)}")
        self._resume()
        self.adapters.adapter_ready(self)

    # --- the TAP ---------------------------------------------------------------------------------
    def _resume(self) -> None:
        if self.tap is not None and not self.reading:
            self.bus.watch(self.tap, self._tap_callback)
            self.reading = True

    def _pause(self) -> None:
        if self.reading:
            self.bus.unwatch(self.tap)
            self.reading = False

    def _tap_readable(self) -> None:
        port = self.port
        if port is not None and port.backlog:
            self._pause()            # the ring is full: let the kernel queue until it drains
            return
        # The first frame goes out (and rings the switch) at once; what else waits follows
        # as one batch, so the read that finds the TAP empty is not on the first frame's path.
        try:
            f = os.read(self.tap, tap_device.MAX_FRAME)
        except BlockingIOError:
            return
        if port is None:
            self.dropped += 1 + len(tap_device.read_frames(self.tap, READ_BATCH))
            return
        port.put_frame(f)
        self.tx_frames += 1
        if self._tap_ready.poll(0):
            frames = tap_device.read_frames(self.tap, READ_BATCH - 1)
            self.tx_frames += len(frames)
            ep = port.ep
            for pieces, n in proto.gather_batches(frames):
                ep.send_gather(_DATA, pieces, n)

    def _drain(self) -> None:
        # ClientDevice._drain's raw branch, flat, through the frame port: write what the switch
        # sent to the TAP, then clear the doorbell and look again (`FramePort.done`)
        port = self.port
        if port is None:
            self._resume()
            return
        frames = port.take_frames()
        if port.control:                    # the query's answer (it creates the TAP)
            todo = port.control[:]
            port.control.clear()
            for packet in todo:
                self.on_packet(packet)
        tap = self.tap
        if frames and tap is not None:
            write = os.write
            for frame in frames:
                try:
                    write(tap, frame)
                    self.rx_frames += 1
                except OSError:
                    self.dropped += 1
            if self.reading and self._tap_ready.poll(0):
                # The kernel answers what it was just handed in the same system call (an echo
                # reply, a TCP ACK): take it now instead of after another trip round the loop.
                self._tap_readable()
        port.done()
        if not self.reading and not port.backlog:
            self._resume()

    def tick(self, now: float) -> None:
        if not self.reading and (self.endpoint is None or not self.endpoint.backlog):
            self._resume()
        self.adapters.tick(now)

    def next_deadline(self) -> float:
        return self.adapters.next_refresh


class NetAdapters:
    """Every adapter of the guest, and their addresses through KVP."""

    def __init__(self, services):
        self.services = services
        self.clients: list[NetAdapterClient] = []
        self.next_refresh = float("inf")
        services.bus.register(proto.CLASS_ID, self._client)
        services.host_listeners.append(self._host_change)
        sched_slice.request_slice()     # the runtime is on every frame's path (not its programs)

    def _client(self, bus: GuestBus, offer: Offer) -> NetAdapterClient:
        client = NetAdapterClient(bus, offer, self)
        self.clients.append(client)
        return client

    def adapter_ready(self, client: NetAdapterClient) -> None:
        self._apply(client, self.services.host_pool())
        self.next_refresh = 0.0

    def _host_change(self, items: dict, removed: list) -> None:
        if any(k.startswith(KVP_PREFIX) for k in list(items) + list(removed)):
            pool = self.services.host_pool()
            for client in self.clients:
                self._apply(client, pool)
            self.next_refresh = 0.0

    def _apply(self, client: NetAdapterClient, pool: dict) -> None:
        if client.mac is None:
            return
        addresses = pool.get(kvp_key(client.mac, "IPAddresses"))
        gateway = pool.get(kvp_key(client.mac, "DefaultGateway"))
        name = client.ifname
        if addresses is not None:
            self._ip("addr", "flush", "dev", name, "scope", "global")
            for cidr in filter(None, (a.strip() for a in addresses.split(","))):
                self._ip("addr", "add", cidr, "dev", name)
        if gateway:
            self._ip("route", "replace", "default", "via", gateway, "dev", name)

    def _ip(self, *args: str) -> str | None:
        try:
            proc = subprocess.run(["ip", *args], capture_output=True, text=True, env=ENV,
                                  timeout=IP_TIMEOUT, close_fds=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.services.note(f"netvsc: ip {' '.join(args)}: {exc}")
            return None
        if proc.returncode != 0:
            self.services.note(f"netvsc: ip {' '.join(args)}: {proc.stderr.strip()[:200]}")
            return None
        return proc.stdout

    def tick(self, now: float) -> None:
        if now < self.next_refresh:
            return
        self.next_refresh = now + REFRESH_EVERY
        ready = [c for c in self.clients if c.ifname is not None]
        if not ready:
            return
        out = self._ip("-j", "addr", "show")
        try:
            links = {link.get("ifname"): link for link in json.loads(out or "[]")}
        except ValueError:
            return
        for client in ready:
            link = links.get(client.ifname) or {}
            found = [a.get("local") for a in link.get("addr_info") or [] if a.get("local")]
            self.services.publish(kvp_key(client.mac, "IPAddresses"), ",".join(found))

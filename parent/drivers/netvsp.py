"""netvsp: the network VSP, Hyper-V's virtual switch as a parent-hosted driver.

One `drvhost netvsp` serves every switch of the host. Devices in three parts (STYLE.md): the
channel protocol is worker/vmbus/netvsp_protocol.py (shared with the guest's VSC,
worker/guest/net_adapter.py); the configuration is what vmms pushes with `configure`
(parent/network_ops.py `driver_config`: every switch and every adapter's port settings);
this module is the implementation around the pure forwarding core
(parent/network/switch_core.py).

Ports: a VM's adapter is a port keyed by its device instance id, in the switch its
configuration names (none: disconnected, its frames are dropped and counted). An Internal
switch has a `host` port (the persistent host TAP, parent/network/host_ports.py), an External
one an `uplink` port (a packet socket on the host interface).

Crash and restart: nothing here is durable. When the driver host comes back, vmms pushes the
configuration again at `ready` (switches, VLANs, mirroring, limits), the guests reopen their
channels, and MACs are learned again from the next frames (flooded until then). Frames in
flight are lost, as Ethernet allows; TCP retransmits them.

Flow control: the switch never waits for a slow port. A VM port whose outgoing ring is full
keeps at most BACKLOG_FRAMES batches in the endpoint's backlog (written as the guest drains
its ring); beyond that its frames are dropped (`dropped_full`). The token bucket queues a
limited port's frames and `tick()` releases them on time.

Performance: per guest packet one batch decode, one dict lookup per frame, one batched ring
write per destination. Each channel's frame path is a `FramePort` (worker/vmbus/frame_port.py):
the driver host hands `frames()` what the port took, and one frame to one port is
`put_frame` into that port's ring.
Each frame's hop runs right after a wake-up with the caches cold (a Python call costs
microseconds then): one frame to one VM port goes from `packet` through the switch core
straight into the port's ring, with no helper in between.
"""
from __future__ import annotations

import os
import time

from hypervisor.runtime import sched_slice
from parent.drivers.driver_api import Driver, DriverChannel
from parent.network.switch_core import PortConfig, Switch
from worker import tap_device
from worker.vmbus import netvsp_protocol as proto
from worker.vmbus.ring import PacketFlags, PacketType, RingProtocolError
from parent.network.host_ports import open_host_port, port_for

HOST_PORT = "host"
UPLINK_PORT = "uplink"
BACKLOG_FRAMES = 64
AGE_EVERY = 10.0
_DATA = int(PacketType.DATA)                      # plain ints: an IntFlag `&` runs Python code
_COMPLETION_REQUESTED = int(PacketFlags.COMPLETION_REQUESTED)
_pack_length = proto.pack_length


class SwitchState:
    def __init__(self, spec: dict):
        self.spec = spec
        self.core = Switch(spec["name"], l2_offset=tap_device.VNET_HDR_SIZE)
        self.host = None          # HostTapPort | UplinkPort
        self.host_port_id: str | None = None
        self.error: str | None = None


def port_config(cfg: dict) -> PortConfig:
    mac = cfg.get("mac")
    return PortConfig(mac=proto.mac_bytes(mac) if mac else None, vlan=cfg.get("vlan"),
                      mirroring=cfg.get("mirroring") or "None",
                      max_bandwidth=int(cfg.get("max_bandwidth") or 0),
                      spoofing=bool(cfg.get("spoofing")))


class NetvspDriver(Driver):
    version = "1.0"
    class_id = proto.CLASS_ID
    ring_size = proto.RING_SIZE
    raw_packets = True
    frame_port = True

    def __init__(self, context=None):
        super().__init__(context)
        self.io = None
        self.switches: dict[str, SwitchState] = {}
        self.port_cfg: dict[str, dict] = {}
        self.channels: dict[str, DriverChannel] = {}
        self.attached: dict[str, str] = {}        # port (instance id) -> switch id
        self.dropped_disconnected = 0
        self.configured = False
        self.next_age = time.monotonic() + AGE_EVERY

    def attach(self, io) -> None:
        self.io = io
        sched_slice.request_slice()     # on a frame's path: preempt promptly when woken

    # --- configuration from vmms ------------------------------------------------------------------
    def configure(self, body: dict, fds: list[int] = ()) -> None:
        """The whole configuration; `fds` are the switches' host-side descriptors (a spec's
        `fd_index`), kept for a switch being added and closed otherwise."""
        fds = list(fds)
        specs = {s["id"]: s for s in body.get("switches") or [] if isinstance(s, dict) and "id" in s}
        for sid in list(self.switches):
            old = self.switches[sid]
            if sid not in specs or _host_side(specs[sid]) != _host_side(old.spec):
                self._drop_switch(sid)
        for sid, spec in specs.items():
            if sid not in self.switches:
                index = spec.get("fd_index")
                fd = None
                if isinstance(index, int) and 0 <= index < len(fds) and fds[index] is not None:
                    fd, fds[index] = fds[index], None
                self._add_switch(spec, fd)
            else:
                self.switches[sid].spec = spec
                self.switches[sid].core.name = spec["name"]
        for fd in fds:
            if fd is not None:
                os.close(fd)          # a duplicate for a switch already served
        ports = body.get("ports")
        self.port_cfg = dict(ports) if isinstance(ports, dict) else {}
        self.configured = True
        for iid in set(self.channels) | set(self.attached):
            self._place(iid)

    def _add_switch(self, spec: dict, fd: int | None) -> None:
        st = self.switches[spec["id"]] = SwitchState(spec)
        if spec.get("type") not in ("Internal", "External"):
            if fd is not None:
                os.close(fd)
            return
        try:
            if fd is None:
                fd = open_host_port(spec)     # not handed over: open it here (needs privilege)
            st.host = port_for(spec, fd)
            st.host_port_id = HOST_PORT if spec.get("type") == "Internal" else UPLINK_PORT
        except OSError as exc:
            st.error = f"{spec.get('type')} switch {spec['name']!r}: {exc}"
            st.host = None
        if st.host is not None:
            st.core.set_port(st.host_port_id, PortConfig(), time.monotonic())
            if self.io is not None:
                self.io.add_reader(st.host.fileno(), lambda s=st: self._host_readable(s))

    def _drop_switch(self, sid: str) -> None:
        st = self.switches.pop(sid)
        if st.host is not None:
            if self.io is not None:
                self.io.remove_reader(st.host.fileno())
            st.host.close()
        for iid in [i for i, s in self.attached.items() if s == sid]:
            del self.attached[iid]

    def _place(self, iid: str) -> None:
        """Put a port where its configuration says (or nowhere)."""
        cfg = self.port_cfg.get(iid)
        want = cfg.get("switch") if cfg and iid in self.channels else None
        have = self.attached.get(iid)
        if have is not None and have != want:
            st = self.switches.get(have)
            if st is not None:
                st.core.remove_port(iid)
            del self.attached[iid]
        if want is None or want not in self.switches:
            return
        try:
            config = port_config(cfg)
        except ValueError:
            return
        self.switches[want].core.set_port(iid, config, time.monotonic())
        self.attached[iid] = want

    # --- channels ------------------------------------------------------------------------------
    def open(self, channel: DriverChannel) -> None:
        iid = channel.instance_id
        old = self.channels.get(iid)
        self.channels[iid] = channel
        if old is None and not self.configured and channel.settings.get("mac"):
            self.port_cfg.setdefault(iid, {"mac": channel.settings["mac"]})
        self._place(iid)

    def close(self, channel: DriverChannel) -> None:
        iid = channel.instance_id
        if self.channels.get(iid) is channel:
            del self.channels[iid]
            self._place(iid)

    def packet(self, channel: DriverChannel, packet) -> bytes | None:
        """A packet the frame port left over (the query), or any packet when the channel has
        no port (a driver used without the driver host)."""
        if packet.type != _DATA:
            return None
        if packet.flags & _COMPLETION_REQUESTED:
            return self._query(channel)
        self.frames(channel, proto.decode_batch(packet.payload))
        return None

    def frames(self, channel: DriverChannel, frames: list) -> None:
        """Frames a VM port sent, through its switch to their ports."""
        iid = channel.instance_id
        sid = self.attached.get(iid)
        st = self.switches.get(sid) if sid is not None else None
        if st is None:
            self.dropped_disconnected += len(frames)
            return
        now = time.monotonic()
        ingress = st.core.ingress
        if len(frames) == 1:                   # the common case (a ping, an ACK)
            out = ingress(iid, frames[0], now)
            if len(out) == 1:                  # to one port: a VM's with room goes straight
                pid, frame = out[0]            # into its ring (`_deliver` otherwise)
                ch = self.channels.get(pid) if pid != st.host_port_id else None
                port = ch.port if ch is not None else None
                if port is not None and not port.ep.closed and not port.backlog:
                    port.put_frame(frame)
                    return
        else:
            out = []
            for f in frames:
                out += ingress(iid, f, now)
        if out:
            self._deliver(st, out)

    def _query(self, channel: DriverChannel) -> bytes:
        """The adapter's identity (RNDIS's permanent-address query)."""
        cfg = self.port_cfg.get(channel.instance_id) or {}
        try:
            mac = proto.mac_bytes(cfg.get("mac") or channel.settings.get("mac") or "")
            index = int(channel.settings.get("index") or 0)
        except ValueError:
            raise RingProtocolError("netvsp: the adapter has no valid MAC in its settings") from None
        return proto.encode_info(mac, index)

    def _host_readable(self, st: SwitchState) -> None:
        if st.host is None:
            return
        now = time.monotonic()
        out: list = []
        for f in st.host.read():
            out += st.core.ingress(st.host_port_id, f, now)
        if out:
            self._deliver(st, out)

    def _deliver(self, st: SwitchState, out: list[tuple[str, bytes]]) -> None:
        if len(out) == 1:
            pid, frame = out[0]
            by_port = ((pid, (frame,)),)
        else:
            grouped: dict[str, list] = {}
            for pid, frame in out:
                grouped.setdefault(pid, []).append(frame)
            by_port = grouped.items()
        for pid, frames in by_port:
            if pid == st.host_port_id:
                for f in frames:
                    st.host.write(f)
                continue
            ch = self.channels.get(pid)
            ep = ch.endpoint if ch is not None else None
            if ep is None or ep.closed:
                continue
            if len(frames) == 1 and not ep.backlog:
                f = frames[0]
                if ch.port is not None:
                    ch.port.put_frame(f)
                else:
                    ep.send_gather(_DATA, (_pack_length(len(f)), f), len(f) + 4)
                continue
            for pieces, n in proto.gather_batches(frames):
                if len(ep.backlog) >= BACKLOG_FRAMES:
                    st.core.undelivered(pid)
                    continue
                ep.send_gather(_DATA, pieces, n)

    # --- time ----------------------------------------------------------------------------------------
    def next_deadline(self) -> float:
        return min((st.core.next_deadline() for st in self.switches.values()), default=float("inf"))

    def tick(self, now: float) -> None:
        for st in self.switches.values():
            out = st.core.release(now)
            if out:
                self._deliver(st, out)
        if now >= self.next_age:
            self.next_age = now + AGE_EVERY
            for st in self.switches.values():
                st.core.age(now)

    def stats(self) -> dict:
        ports = {}
        for st in self.switches.values():
            for pid, port in st.core.ports.items():
                ports[pid] = {"switch": st.spec["id"], **port.counters.as_dict()}
        return {"ports": ports, "dropped_disconnected": self.dropped_disconnected,
                "switches": {sid: {"macs": len(st.core.macs), "error": st.error}
                             for sid, st in self.switches.items()}}


def _host_side(spec: dict) -> tuple:
    return (spec.get("type"), spec.get("host_interface"), spec.get("net_adapter"))

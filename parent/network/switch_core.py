"""The virtual switch's forwarding logic (Hyper-V's extensible switch), pure: no I/O, no clock.

What: a `Switch` has `Port`s (a VM's network adapter, an Internal switch's host interface, an
External switch's uplink). `Switch.ingress(port_id, frame, now)` answers where one frame goes:
a list of `(port_id, frame)` deliveries. The shell (parent/drivers/netvsp.py) moves the bytes.

Rules (as Hyper-V's switch):
- MAC learning per VLAN: (vlan, source MAC) -> port, refreshed by every frame, forgotten after
  `ageing` seconds (Hyper-V's default 300 s) or when the port goes.
- Broadcast, multicast and unknown unicast are flooded to every other port of the same VLAN.
- VLAN access mode: a port has one VLAN id (None = untagged); frames never cross VLANs. Frames
  on the wire between a VM and its port are untagged (the switch tags internally, as access
  mode does); the host and uplink ports are untagged.
- MAC address spoofing (per VM port, off by default): a frame whose source MAC is not the
  port's own is dropped and counted (`dropped_spoofed`). Host and uplink ports learn any MAC.
- Port mirroring: every frame a `Source` port sends or receives is copied to each
  `Destination` port of the switch (once, whatever the VLANs).
- `MaximumBandwidth` (bits/s, 0 = none): a token bucket on what a port sends into the switch.
  A frame without tokens waits in the port's queue (bounded: QUEUE_FRAMES / QUEUE_BYTES; beyond
  it, dropped and counted as `dropped_rate`); `release(now)` lets queued frames go when tokens
  are back and `next_deadline()` says when that is.

Frames may start with a fixed-size header before the Ethernet header (`l2_offset`: the netvsp
frames carry a 10-byte virtio-net header for checksum/segmentation offloads); the switch reads
the MACs after it and counts bytes without it.

Performance: one dict lookup per learned source and per unicast destination; a flood walks the
VLAN's ports. Frames (bytes or read-only memoryviews of a batch) are never copied here (the same
object goes to every recipient), except into a shaping queue.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

BROADCAST = b"\xff" * 6
DEFAULT_AGEING = 300.0
QUEUE_FRAMES = 512
QUEUE_BYTES = 4 << 20
BURST_SECONDS = 0.02         # a bucket holds this much time of its rate ...
MIN_BURST_BITS = 8 * 65536 * 2   # ... and at least two of the largest (offloaded) frames
MIRROR_MODES = ("None", "Source", "Destination")


@dataclass
class PortConfig:
    mac: bytes | None = None          # the VM adapter's MAC (None: a host or uplink port)
    vlan: int | None = None           # access VLAN id, None = untagged
    mirroring: str = "None"
    max_bandwidth: int = 0            # bits/s, 0 = no limit
    spoofing: bool = False            # MacAddressSpoofing On

    def __post_init__(self):
        if self.mirroring not in MIRROR_MODES:
            raise ValueError(f"mirroring must be one of {MIRROR_MODES}")
        if self.vlan is not None and not 1 <= self.vlan <= 4094:
            raise ValueError("VLAN id must be 1-4094")
        if self.max_bandwidth < 0:
            raise ValueError("bandwidth must not be negative")
        if self.mac is not None and len(self.mac) != 6:
            raise ValueError("a MAC address is 6 bytes")


@dataclass
class Counters:
    rx_frames: int = 0        # frames the port sent into the switch (the VM's transmit)
    rx_bytes: int = 0
    tx_frames: int = 0        # frames the switch delivered to the port
    tx_bytes: int = 0
    dropped_spoofed: int = 0
    dropped_rate: int = 0
    dropped_full: int = 0     # the shell could not deliver (the port's ring was full)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class TokenBucket:
    """Bits per second; `take(bits, now)` True when the frame may go now."""

    def __init__(self, rate: int, now: float = 0.0):
        self.rate = rate
        self.capacity = max(rate * BURST_SECONDS, MIN_BURST_BITS)
        self.tokens = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, bits: int, now: float) -> bool:
        self.refill(now)
        if self.tokens >= bits:
            self.tokens -= bits
            return True
        return False

    def ready_at(self, bits: int) -> float:
        """When `bits` tokens will be there (after the last refill)."""
        return self.stamp + max(0.0, bits - self.tokens) / self.rate + 1e-6   # past rounding


@dataclass
class Port:
    port_id: str
    config: PortConfig
    counters: Counters = field(default_factory=Counters)
    bucket: TokenBucket | None = None
    queue: deque = field(default_factory=deque)
    queued_bytes: int = 0


class Switch:
    def __init__(self, name: str, l2_offset: int = 0, ageing: float = DEFAULT_AGEING):
        self.name = name
        self.l2 = l2_offset
        self.ageing = ageing
        self.ports: dict[str, Port] = {}
        self.macs: dict[tuple[int | None, bytes], tuple[str, float]] = {}
        self.flooded = 0
        self.mirroring = False        # some port is a mirror Destination (kept by set/remove_port)

    # --- ports -----------------------------------------------------------------------------------
    def set_port(self, port_id: str, config: PortConfig, now: float = 0.0) -> Port:
        """Add a port or change its configuration (learned MACs of a port whose VLAN changed
        are forgotten; a new rate starts with a full bucket)."""
        port = self.ports.get(port_id)
        if port is None:
            port = self.ports[port_id] = Port(port_id, config)
        else:
            if port.config.vlan != config.vlan:
                self._forget(port_id)
            port.config = config
        self.mirroring = any(p.config.mirroring == "Destination" for p in self.ports.values())
        rate = config.max_bandwidth
        if rate <= 0:
            port.bucket = None
        elif port.bucket is None or port.bucket.rate != rate:
            port.bucket = TokenBucket(rate, now)
        return port

    def remove_port(self, port_id: str) -> Port | None:
        port = self.ports.pop(port_id, None)
        self._forget(port_id)
        self.mirroring = any(p.config.mirroring == "Destination" for p in self.ports.values())
        return port

    def _forget(self, port_id: str) -> None:
        for key in [k for k, (p, _) in self.macs.items() if p == port_id]:
            del self.macs[key]

    # --- frames -----------------------------------------------------------------------------------
    def ingress(self, port_id: str, frame: bytes, now: float) -> list[tuple[str, bytes]]:
        """A frame the port sent into the switch: where it goes (after shaping, maybe later)."""
        port = self.ports.get(port_id)
        l2 = self.l2
        if port is None or len(frame) < l2 + 14:
            return []
        cfg = port.config
        macs = bytes(frame[l2:l2 + 12])           # destination, source: one small copy
        if cfg.mac is not None and not cfg.spoofing and macs[6:] != cfg.mac:
            port.counters.dropped_spoofed += 1
            return []
        bucket = port.bucket
        if bucket is not None:
            if port.queue or not bucket.take((len(frame) - l2) * 8, now):
                size = len(frame)
                if len(port.queue) >= QUEUE_FRAMES or port.queued_bytes + size > QUEUE_BYTES:
                    port.counters.dropped_rate += 1
                    return []
                frame = bytes(frame)      # a queued frame must not pin its whole batch
                port.queue.append(frame)
                port.queued_bytes += size
                return self.release(now) if len(port.queue) == 1 else []
        return self._forward(port, frame, now, macs)

    def release(self, now: float) -> list[tuple[str, bytes]]:
        """Queued frames whose tokens are there now."""
        out: list[tuple[str, bytes]] = []
        for port in list(self.ports.values()):
            bucket, queue = port.bucket, port.queue
            if not queue:
                continue
            if bucket is None:       # the limit was lifted
                while queue:
                    out += self._forward(port, queue.popleft(), now)
                port.queued_bytes = 0
                continue
            while queue and bucket.take((len(queue[0]) - self.l2) * 8, now):
                frame = queue.popleft()
                port.queued_bytes -= len(frame)
                out += self._forward(port, frame, now)
        return out

    def next_deadline(self) -> float:
        """When a queued frame can go (inf when nothing waits)."""
        best = float("inf")
        for port in self.ports.values():
            if port.queue and port.bucket is not None:
                best = min(best, port.bucket.ready_at((len(port.queue[0]) - self.l2) * 8))
        return best

    def _forward(self, port: Port, frame: bytes, now: float,
                 macs: bytes | None = None) -> list[tuple[str, bytes]]:
        l2 = self.l2
        if macs is None:
            macs = bytes(frame[l2:l2 + 12])
        n = len(frame) - l2
        pid, vlan = port.port_id, port.config.vlan
        c = port.counters
        c.rx_frames += 1
        c.rx_bytes += n
        table, ports = self.macs, self.ports
        if not macs[6] & 1:           # never learn a multicast source
            table[(vlan, macs[6:])] = (pid, now)
        targets: list[str]
        if macs[0] & 1:               # broadcast or multicast
            targets = self._flood(pid, vlan)
        else:
            key = (vlan, macs[:6])
            hit = table.get(key)
            if hit is not None and now - hit[1] <= self.ageing and hit[0] in ports:
                to = hit[0]
                if to == pid:
                    return []
                if not self.mirroring:                     # the common case: one port
                    tc = ports[to].counters
                    tc.tx_frames += 1
                    tc.tx_bytes += n
                    return [(to, frame)]
                targets = [to]
            else:
                if hit is not None:
                    del table[key]
                targets = self._flood(pid, vlan)
        if self.mirroring and (port.config.mirroring == "Source" or any(
                ports[t].config.mirroring == "Source" for t in targets)):
            for p in ports.values():
                if p.config.mirroring == "Destination" and p.port_id != pid \
                        and p.port_id not in targets:
                    targets.append(p.port_id)
        for t in targets:
            tc = ports[t].counters
            tc.tx_frames += 1
            tc.tx_bytes += n
        return [(t, frame) for t in targets]

    def _flood(self, from_port: str, vlan: int | None) -> list[str]:
        self.flooded += 1
        return [p.port_id for p in self.ports.values()
                if p.port_id != from_port and p.config.vlan == vlan]

    def age(self, now: float) -> int:
        """Forget entries older than the ageing time; answers how many went."""
        old = [k for k, (_, seen) in self.macs.items() if now - seen > self.ageing]
        for k in old:
            del self.macs[k]
        return len(old)

    def undelivered(self, port_id: str) -> None:
        """The shell could not deliver a frame to this port (its ring was full)."""
        port = self.ports.get(port_id)
        if port is not None:
            port.counters.dropped_full += 1

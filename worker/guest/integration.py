"""Integration services, guest side, and `GuestServices`: the guest runtime's VMBus, its
integration-service clients, its console and any guest program that uses a device.

- Heartbeat: a beat as soon as the channel opens, then every HEARTBEAT_INTERVAL: it pushes the
  host's watchdog timer on (a descriptor the worker sent), and writes a one-way `heartbeat`
  {seq, at} to the ring only while the host listens (its interrupts unmasked: before the first
  beat, after a loss) or when there is no watchdog (worker/integration/heartbeat.py). The
  worker's first beat makes the VM Running.
- Shutdown: answers `shutdown` by accepting and shutting the guest down — except the
  `no-shutdown` program, which never answers (for testing the host's timeout).
- Key-value exchange: keeps the host pool (`sync`, `set`, `remove` requests) and publishes the
  guest pool (intrinsic items such as FullyQualifiedDomainName, plus what programs publish).
- Time synchronization: `GuestClock` is the guest's wall clock: the host kernel's clock, read
  through the vDSO's time page (one host-wide, read-only page, updated by the host's timer
  tick: the role of Hyper-V's reference TSC page; nothing to wake for), plus an offset. Like
  a VM that reads a one-second-resolution RTC at boot, it starts up to a second behind; the
  host's `sample` (when the channel opens, and after a pause) steps the offset to the host's
  time, and the answer reports the guest's reading.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable

from hypervisor.runtime import timerfd
from worker.guest.vmbus_client import ClientDevice, GuestBus
from worker.integration.ic_defs import (CLASS_IDS, HEARTBEAT, HEARTBEAT_INTERVAL, IC_VERSION, KVP,
                                        KVP_MAX_ITEMS, SHUTDOWN, TIMESYNC, batches,
                                        heartbeat_lost_at, valid_item)
from worker.vmbus.channel import Offer

RUNTIME_VERSION = "1.0"


class HeartbeatClient(ClientDevice):
    versions = (IC_VERSION,)

    def __init__(self, bus: GuestBus, offer: Offer, watchdog: Callable[[], int | None] = lambda: None):
        super().__init__(bus, offer)
        self.seq = 0
        self.next_beat = float("inf")
        self.watchdog = watchdog   # the host's heartbeat timer, once it sent one

    def opened(self) -> None:
        self.next_beat = 0.0
        self.tick(time.monotonic())

    def lost(self) -> None:
        self.next_beat = float("inf")

    def tick(self, now: float) -> None:
        if self.is_open and now >= self.next_beat:
            self.seq += 1
            pushed = self._push_watchdog(heartbeat_lost_at(now))
            if not pushed or not self.endpoint.ring.out.interrupts_masked():
                self.send_oneway("heartbeat", {"seq": self.seq, "at": now})  # the host wants it
            self.next_beat = now + HEARTBEAT_INTERVAL

    def _push_watchdog(self, when: float) -> bool:
        fd = self.watchdog()
        if fd is None:
            return False
        try:
            timerfd.arm_at(fd, when)
            return True
        except OSError:
            return False

    def next_deadline(self) -> float:
        return self.next_beat


class ShutdownClient(ClientDevice):
    versions = (IC_VERSION,)

    def __init__(self, bus: GuestBus, offer: Offer, on_shutdown: Callable[[str], bool]):
        super().__init__(bus, offer)
        self.on_shutdown = on_shutdown

    def on_request(self, kind: str, body: dict) -> dict | None:
        if kind != "shutdown":
            return {"error": f"unknown request {kind!r}"}
        if self.on_shutdown(str(body.get("reason", ""))):
            return {"accepted": True}
        return None  # a guest that ignores the request: the host times out


class KvpClient(ClientDevice):
    versions = (IC_VERSION,)

    def __init__(self, bus: GuestBus, offer: Offer, guest_pool: dict[str, str],
                 on_host_change: Callable[[dict[str, str], list[str]], None]):
        super().__init__(bus, offer)
        self.host_pool: dict[str, str] = {}
        self.guest_pool = guest_pool
        self.on_host_change = on_host_change

    def opened(self) -> None:
        for part in batches(self.guest_pool):
            self.send_oneway("guest-set", {"items": part})

    def publish(self, key: str, value: str) -> None:
        if not valid_item(key, value) or (key not in self.guest_pool and len(self.guest_pool) >= KVP_MAX_ITEMS):
            return
        if self.guest_pool.get(key) == value:
            return
        self.guest_pool[key] = value
        self.send_oneway("guest-set", {"items": {key: value}})

    def unpublish(self, key: str) -> None:
        if self.guest_pool.pop(key, None) is not None:
            self.send_oneway("guest-remove", {"keys": [key]})

    def on_request(self, kind: str, body: dict) -> dict | None:
        items = body.get("items") if isinstance(body.get("items"), dict) else {}
        items = {k: v for k, v in items.items() if valid_item(k, v)}
        removed: list[str] = []
        if kind == "sync":
            if body.get("replace"):
                removed = [k for k in self.host_pool if k not in items]
                self.host_pool = {}
            self.host_pool.update(items)
        elif kind == "set":
            self.host_pool.update(items)
        elif kind == "remove":
            keys = body.get("keys") if isinstance(body.get("keys"), list) else []
            removed = [k for k in keys if isinstance(k, str) and self.host_pool.pop(k, None) is not None]
        else:
            return {"error": f"unknown request {kind!r}"}
        self.on_host_change(items, removed)
        return {"ok": True}


class GuestClock:
    def __init__(self):
        now = time.time()
        self.offset = math.floor(now) - now   # the RTC's whole second: up to 1 s behind
        self.synced = False

    def now(self) -> float:
        return time.time() + self.offset


class TimeSyncClient(ClientDevice):
    versions = (IC_VERSION,)

    def __init__(self, bus: GuestBus, offer: Offer, clock: GuestClock):
        super().__init__(bus, offer)
        self.clock = clock

    def on_request(self, kind: str, body: dict) -> dict | None:
        host_time = body.get("host_time")
        if kind != "sample" or not isinstance(host_time, (int, float)):
            return {"error": "bad sample"}
        correction = float(host_time) - self.clock.now()
        self.clock.offset += correction
        self.clock.synced = True
        return {"guest_time": self.clock.now(), "offset": correction}


class GuestServices:
    """The guest runtime's VMBus and everything on it. `guest` is worker.guest.runtime.Guest."""

    def __init__(self, guest, watch, unwatch):
        self.guest = guest
        self.clock = GuestClock()
        self.guest_pool: dict[str, str] = {
            "FullyQualifiedDomainName": guest.name, "OSName": "hvemu guest runtime",
            "OSVersion": RUNTIME_VERSION, "IntegrationServicesVersion": RUNTIME_VERSION}
        self.host_listeners: list[Callable[[dict[str, str], list[str]], None]] = []
        self.bus = GuestBus(guest.link, watch, unwatch, self.note)
        self.watchdog: int | None = None   # the host's heartbeat timer (set_watchdog)
        self.bus.register(CLASS_IDS[HEARTBEAT], lambda b, o: HeartbeatClient(b, o, lambda: self.watchdog))
        self.bus.register(CLASS_IDS[SHUTDOWN], lambda b, o: ShutdownClient(b, o, guest.on_shutdown_request))
        self.bus.register(CLASS_IDS[KVP], lambda b, o: KvpClient(b, o, self.guest_pool, self._host_change))
        self.bus.register(CLASS_IDS[TIMESYNC], lambda b, o: TimeSyncClient(b, o, self.clock))
        self.program = None           # a device-using guest program (device_programs.py)
        self.console = None           # the runtime console when no command program runs

    def start(self) -> None:
        self.bus.contact()

    def set_watchdog(self, fds: list[int]) -> None:
        """The host's heartbeat watchdog arrived (a `watchdog` link message): keep the first
        descriptor (replacing an older one), close any other."""
        for extra in fds[1:]:
            os.close(extra)
        if fds:
            if self.watchdog is not None:
                os.close(self.watchdog)
            self.watchdog = fds[0]

    def note(self, text: str) -> None:
        if self.console is not None:
            self.console.log(text)

    @property
    def kvp(self) -> KvpClient | None:
        dev = self.bus.device(CLASS_IDS[KVP])
        return dev if isinstance(dev, KvpClient) else None

    def publish(self, key: str, value: str) -> None:
        if self.kvp is not None:
            self.kvp.publish(key, value)
        elif valid_item(key, value):
            self.guest_pool[key] = value   # goes out when the KVP channel opens

    def host_pool(self) -> dict[str, str]:
        return dict(self.kvp.host_pool) if self.kvp is not None else {}

    def _host_change(self, items: dict[str, str], removed: list[str]) -> None:
        for key in items:
            self.note(f"kvp: host set {key}")
        for listener in self.host_listeners:
            listener(items, removed)

    def on_link_message(self, msg: dict) -> None:
        self.bus.on_link_message(msg)

    def tick(self, now: float) -> None:
        self.bus.tick(now)
        if self.program is not None:
            self.program.tick(now)

    def next_deadline(self) -> float:
        deadline = self.bus.next_deadline()
        if self.program is not None:
            deadline = min(deadline, self.program.next_deadline())
        return deadline

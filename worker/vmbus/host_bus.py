"""The worker's side of a VM's VMBus: offers, opens, closes and rescinds, driven by the pure
channel state machine (worker/vmbus/channel.py) and carried out with real descriptors.

What: `HostBus` owns one VM's `ChannelTable`. It offers two kinds of device:
- *local services* (`HostService`, the integration services) — the worker itself is their VSP
  and maps their rings;
- *driver devices* — served by a `drvhost <driver>` process. The worker connects to the
  driver's socket (`DriverLink`), learns the device class from its hello, offers the device,
  and on open hands the driver the channel's region and doorbells. The worker never touches
  a driver channel's ring data.

The guest talks to the bus over its link (worker/guest_link.py): it initiates contact, then
gets offers, opens channels (the open result carries the channel's descriptors), closes them,
and releases rescinded ones. Anything malformed from the guest is logged and dropped.

Crash containment: when a driver host dies (its socket reads EOF) every channel it served is
rescinded; the link reconnects (on every tick, and at once when vmms says the driver is back),
and the devices are offered again under new channel ids, so the guest reopens and re-issues
what was in flight. vmms tells the worker when a driver is `Failed`; the guest is then told
its devices failed, so requests end with errors instead of waiting forever.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from hypervisor.runtime.packet_socket import receive_messages, send_message
from worker.vmbus import driver_protocol as dp
from worker.vmbus import messages as m
from worker.vmbus.channel import (Action, ChannelFailed, ChannelState, ChannelTable, CloseDevice,
                                  Offer, OpenDevice, SendCloseResponse, SendOffer, SendOpenResult,
                                  SendRescind)
from worker.vmbus.ring import RingProtocolError
from worker.vmbus.transport import ChannelEndpoint, ChannelResources

# VMBus connection messages beyond messages.py's, carried on the guest link as
# {"t": "vmbus", "kind": ..., "body": {...}}
INITIATE_CONTACT = "initiate_contact"   # guest -> host: the guest's VMBus driver is up
DEVICE_FAILED = "device_failed"         # host -> guest: {instance_id, reason}
VMBUS = "vmbus"
RECONNECT_INTERVAL = 0.1
MAX_CHANNELS = 64


class HostService:
    """A VSP that runs inside the worker (an integration service). Subclasses implement
    `opened()`, `on_message()` and `closed()`; `endpoint` is set while the channel is open."""

    name = ""
    offer: Offer

    def __init__(self):
        self.endpoint: ChannelEndpoint | None = None
        self.version: int | None = None

    def attach(self, endpoint: ChannelEndpoint, version: int) -> None:
        self.endpoint, self.version = endpoint, version
        self.opened()

    def detach(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        self.endpoint, self.version = None, None
        self.closed()

    def opened(self) -> None: ...

    def closed(self) -> None: ...

    def on_message(self, msg: m.Message) -> None: ...

    def tick(self, now: float) -> None: ...

    def next_deadline(self) -> float:
        """When tick() next has work (monotonic seconds); inf for none."""
        return float("inf")


@dataclass
class DriverLink:
    """The worker's connection to one driver host."""

    name: str
    path: str
    sock: socket.socket | None = None
    hello: dict | None = None             # the driver's announcement, once connected
    failed: str | None = None             # vmms says the driver is Failed (reason)
    next_try: float = 0.0
    opening: dict[int, ChannelResources] = field(default_factory=dict)   # channel_id -> res


@dataclass
class Device:
    """A driver device of this VM: {"driver", "instance_id", "settings"} from its config."""

    driver: str
    instance_id: str
    settings: dict


class HostBus:
    def __init__(self, vm_id: str, vm_name: str, home: Home, log,
                 send_to_guest: Callable[[dict, list[int]], bool],
                 watch: Callable[[int, Callable[[], None]], None],
                 unwatch: Callable[[int], None]):
        self.vm_id, self.vm_name, self.home, self.log = vm_id, vm_name, home, log
        self._send_to_guest, self._watch, self._unwatch = send_to_guest, watch, unwatch
        self.table = ChannelTable()
        self.connected = False
        self.services: dict[str, HostService] = {}         # instance_id -> service
        self.devices: dict[str, Device] = {}                # instance_id -> device
        self.drivers: dict[str, DriverLink] = {}
        self.slot_of: dict[int, str] = {}                   # channel_id -> instance_id
        self.on_contact: Callable[[], None] | None = None
        self.protocol_errors = 0

    # --- what is offered -------------------------------------------------------------------
    def add_service(self, service: HostService) -> None:
        self.services[service.offer.instance_id] = service
        if self.connected:
            self._offer(service.offer)

    def remove_service(self, instance_id: str) -> None:
        self._rescind_instance(instance_id)   # closes it first if it is open
        self.services.pop(instance_id, None)

    def add_device(self, driver: str, instance_id: str, settings: dict) -> None:
        self.devices[instance_id] = Device(driver, instance_id, dict(settings or {}))
        link = self.drivers.get(driver)
        if link is None:
            link = self.drivers[driver] = DriverLink(driver, str(self.home.driver_socket(driver)))
        if link.hello is not None and self.connected:
            self._offer_device(self.devices[instance_id], link)
        elif link.sock is None:
            self._connect(link, time.monotonic())

    def remove_device(self, instance_id: str) -> None:
        self.devices.pop(instance_id, None)
        self._rescind_instance(instance_id)

    def _offer(self, offer: Offer) -> None:
        try:
            ch, actions = self.table.offer(offer)
        except HvError as err:
            self.log.info("vmbus_offer_skipped", instance_id=offer.instance_id, error=err.message)
            return
        self.slot_of[ch.channel_id] = offer.instance_id
        self._run(actions)

    def _offer_device(self, dev: Device, link: DriverLink) -> None:
        h = link.hello
        try:
            offer = Offer(h["class_id"], dev.instance_id, h["ring_size"], h["versions"])
        except (HvError, KeyError, TypeError) as err:
            self.log.warning("driver_bad_hello", driver=link.name, error=str(err))
            return
        self._offer(offer)

    def _live_channel(self, instance_id: str):
        for ch in self.table.channels():
            if ch.offer.instance_id == instance_id and ch.state is not ChannelState.RESCINDED:
                return ch
        return None

    def _rescind_instance(self, instance_id: str) -> None:
        ch = self._live_channel(instance_id)
        if ch is not None:
            self._run(ch.rescind())

    # --- the guest ---------------------------------------------------------------------------
    def on_guest_message(self, msg: dict) -> None:
        kind, body = msg.get("kind"), msg.get("body")
        if not isinstance(body, dict):
            self.log.warning("vmbus_bad_message", error="body is not a map")
            return
        try:
            if kind == INITIATE_CONTACT:
                self._contact()
            elif kind == m.OPEN:
                self._run(self.table.get(_channel_id(body)).open_request(body.get("versions")))
            elif kind == m.CLOSE:
                self._run(self.table.get(_channel_id(body)).close())
            elif kind == m.RELEASED:
                cid = _channel_id(body)
                self.table.release(cid)
                self.slot_of.pop(cid, None)
            else:
                raise HvError("BadRequest", f"unknown VMBus message {kind!r}")
        except HvError as err:
            self.log.warning("vmbus_bad_message", kind=str(kind)[:64], code=err.code, error=err.message)

    def _contact(self) -> None:
        if self.connected:
            return
        self.connected = True
        for service in self.services.values():
            self._offer(service.offer)
        for dev in self.devices.values():
            link = self.drivers.get(dev.driver)
            if link is not None and link.hello is not None:
                self._offer_device(dev, link)
            elif link is not None and link.failed:
                self._tell_failed(dev, link.failed)
        if self.on_contact is not None:
            self.on_contact()

    def send(self, kind: str, body: dict, fds: list[int] = ()) -> None:
        self._send_to_guest({"t": VMBUS, "kind": kind, "body": body}, list(fds))

    # --- carrying out the state machine's actions ----------------------------------------------
    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            cid = action.channel_id
            if isinstance(action, SendOffer):
                self.send(m.OFFER, {"channel_id": cid, "offer": action.offer.to_wire()})
            elif isinstance(action, OpenDevice):
                self._open_device(cid, action.version)
            elif isinstance(action, SendOpenResult):
                if action.version is None:
                    self.send(m.OPEN_RESULT, {"channel_id": cid, "version": None, "reason": action.reason})
            elif isinstance(action, CloseDevice):
                self._close_device(cid)
            elif isinstance(action, SendCloseResponse):
                self.send(m.CLOSE_RESPONSE, {"channel_id": cid})
            elif isinstance(action, SendRescind):
                self.send(m.RESCIND, {"channel_id": cid})
            elif isinstance(action, ChannelFailed):
                self.protocol_errors += 1
                self.log.warning("vmbus_protocol_error", channel_id=cid,
                                 instance_id=self.slot_of.get(cid), reason=action.reason)

    def _open_device(self, cid: int, version: int) -> None:
        ch = self.table.get(cid)
        instance = ch.offer.instance_id
        live = sum(1 for c in self.table.channels() if c.state in (ChannelState.OPEN, ChannelState.OPENING))
        service = self.services.get(instance)
        dev = self.devices.get(instance)
        link = self.drivers.get(dev.driver) if dev else None
        buffer_size = (link.hello or {}).get("buffer_size", 0) if link is not None and service is None else 0
        try:
            if live > MAX_CHANNELS:
                raise HvError("Busy", f"more than {MAX_CHANNELS} open channels")
            res = ChannelResources(ch.offer.ring_size, f"vmbus-{self.vm_id[:8]}-{cid}", buffer_size)
        except (OSError, HvError) as err:
            self._run(ch.refuse(f"cannot create the channel: {err}"))
            return
        if service is not None:
            try:
                endpoint = ChannelEndpoint([os.dup(fd) for fd in res.fds()], ch.offer.ring_size, "host")
            except (OSError, RingProtocolError) as err:
                res.close()
                self._run(ch.refuse(str(err)))
                return
            self._accepted(cid, res)
            service.attach(endpoint, version)
            self._watch(endpoint.fileno(), lambda s=service, c=cid: self._service_readable(s, c))
            return
        if link is None or link.sock is None or link.hello is None:
            res.close()
            self._run(ch.refuse("the driver is not available"))
            return
        files, file_fds = dp.open_device_files(dev.settings)   # the disk, as a descriptor
        try:
            sent = send_message(link.sock, {"t": dp.OPEN, "channel_id": cid, "vm_id": self.vm_id,
                                            "vm_name": self.vm_name, "instance_id": instance,
                                            "version": version, "ring_size": ch.offer.ring_size,
                                            "buffer_size": res.buffer_size, "settings": dev.settings,
                                            "files": files},
                                res.fds() + file_fds)
        finally:
            for fd in file_fds:
                os.close(fd)
        if not sent:
            res.close()
            self._run(ch.refuse("the driver host did not take the channel"))
            return
        link.opening[cid] = res

    def _accepted(self, cid: int, res: ChannelResources) -> None:
        ch = self.table.get(cid)
        ch.accept()
        self.send(m.OPEN_RESULT, {"channel_id": cid, "version": ch.version, "reason": "",
                                  "ring_size": ch.offer.ring_size, "buffer_size": res.buffer_size},
                  res.fds())
        res.close()

    def _release_device(self, cid: int) -> bool:
        """Detach the server side of a channel; True when a driver will answer `closed` later."""
        instance = self.slot_of.get(cid)
        service = self.services.get(instance) if instance else None
        if service is not None and service.endpoint is not None:
            self._unwatch(service.endpoint.fileno())
            service.detach()
            return False
        dev = self.devices.get(instance) if instance else None
        link = self.drivers.get(dev.driver) if dev else None
        if link is not None:
            res = link.opening.pop(cid, None)
            if res is not None:
                res.close()
            if link.sock is not None:
                return bool(send_message(link.sock, {"t": dp.CLOSE, "channel_id": cid}))
        return False

    def _close_device(self, cid: int) -> None:
        if not self._release_device(cid):
            self._complete_close(cid)  # otherwise it completes when the driver answers `closed`

    def _complete_close(self, cid: int) -> None:
        try:
            ch = self.table.get(cid)
        except HvError:
            return
        if ch.state is ChannelState.CLOSING:
            self._run(ch.close_complete())

    # --- local services ------------------------------------------------------------------------
    def _service_readable(self, service: HostService, cid: int) -> None:
        ep = service.endpoint
        if ep is None:
            return
        try:
            for msg in ep.receive_messages():
                service.on_message(msg)
        except RingProtocolError as exc:
            self.log.warning("vmbus_ring_state", channel_id=cid, received=ep.received,
                             **ep.ring.inp.state())
            self.fail_channel(cid, f"{service.name}: {exc}")
        except HvError as exc:
            self.fail_channel(cid, f"{service.name}: {exc.message}")

    def drain_service(self, instance_id: str) -> None:
        """Read what waits on a local service's channel now (a service that reads lazily)."""
        service = self.services.get(instance_id)
        ch = self._live_channel(instance_id)
        if service is not None and service.endpoint is not None and ch is not None:
            self._service_readable(service, ch.channel_id)

    def fail_channel(self, cid: int, reason: str) -> None:
        """A guest broke a channel's protocol: close that channel only, and rescind it."""
        try:
            ch = self.table.get(cid)
            self._run(ch.protocol_error(reason))
            self._run(ch.rescind())
        except HvError:
            pass

    # --- driver links --------------------------------------------------------------------------
    def _connect(self, link: DriverLink, now: float) -> None:
        link.next_try = now + RECONNECT_INTERVAL
        if link.failed:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.connect(link.path)
        except (BlockingIOError, InterruptedError):
            pass  # completes later; the hello tells us it is up
        except OSError:
            sock.close()
            return
        link.sock = sock
        self._watch(sock.fileno(), lambda l=link: self._driver_readable(l))

    def _driver_readable(self, link: DriverLink) -> None:
        if link.sock is None:
            return
        msgs, closed = receive_messages(link.sock, accept_fds=False)
        for msg in msgs:
            self._driver_message(link, msg)
        if closed:
            self._driver_lost(link, "the driver host went away")

    def _driver_message(self, link: DriverLink, msg: dict) -> None:
        kind = msg.get("t")
        cid = msg.get("channel_id")
        if kind == dp.HELLO:
            link.hello, link.failed = msg, None
            self.log.info("driver_connected", driver=link.name, version=msg.get("version"))
            if self.connected:
                for dev in self.devices.values():
                    if dev.driver == link.name and self._live_channel(dev.instance_id) is None:
                        self._offer_device(dev, link)
            return
        if not isinstance(cid, int):
            return
        try:
            if kind == dp.OPENED:
                res = link.opening.pop(cid, None)
                if res is not None:
                    self._accepted(cid, res)
            elif kind == dp.REFUSED:
                res = link.opening.pop(cid, None)
                if res is not None:
                    res.close()
                    self._run(self.table.get(cid).refuse(str(msg.get("reason", ""))[:500]))
            elif kind == dp.CLOSED:
                self._complete_close(cid)
            elif kind == dp.FAILED:
                link.opening.pop(cid, None)
                reason = f"driver {link.name}: {str(msg.get('reason', ''))[:500]}"
                ch = self.table.get(cid)
                self._run([a for a in ch.protocol_error(reason) if not isinstance(a, CloseDevice)])
                self._run(ch.rescind())
        except HvError as err:
            self.log.info("driver_late_answer", driver=link.name, channel_id=cid, error=err.message)

    def _driver_lost(self, link: DriverLink, why: str) -> None:
        if link.sock is not None:
            self._unwatch(link.sock.fileno())
            link.sock.close()
            link.sock = None
        had_hello = link.hello is not None
        link.hello = None
        for res in link.opening.values():
            res.close()
        link.opening.clear()
        rescinded = 0
        for ch in self.table.channels():
            dev = self.devices.get(ch.offer.instance_id)
            if dev is not None and dev.driver == link.name and ch.state is not ChannelState.RESCINDED:
                self._run([a for a in ch.rescind() if not isinstance(a, CloseDevice)])
                rescinded += 1
        if had_hello:
            self.log.warning("driver_lost", driver=link.name, reason=why, rescinded=rescinded)
        link.next_try = 0.0

    def driver_state(self, name: str, state: dp.DriverState, reason: str = "") -> None:
        """vmms reports a driver host's state: Running (connect now) or Failed."""
        link = self.drivers.get(name)
        if link is None:
            return
        if state == dp.DriverState.FAILED:
            link.failed = reason or f"driver {name} failed"
            if link.sock is not None:
                self._driver_lost(link, "failed")
            for dev in self.devices.values():
                if dev.driver == name:
                    self._rescind_instance(dev.instance_id)
                    self._tell_failed(dev, link.failed)
        elif state == dp.DriverState.RUNNING:
            link.failed = None
            if link.sock is None:
                self._connect(link, time.monotonic())

    def _tell_failed(self, dev: Device, reason: str) -> None:
        if self.connected:
            self.send(DEVICE_FAILED, {"instance_id": dev.instance_id, "reason": reason})

    # --- housekeeping ----------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        for link in self.drivers.values():
            if link.sock is None and not link.failed and now >= link.next_try and \
                    any(d.driver == link.name for d in self.devices.values()):
                self._connect(link, now)
        for instance, service in self.services.items():
            ep = service.endpoint
            # a drain that bounds a lost wake-up: no system call for an empty ring (issue 16:
            # this runs at every heartbeat deadline of every idle VM)
            if ep is not None and _pending(ep):
                ch = self._live_channel(instance)
                if ch is not None:
                    self._service_readable(service, ch.channel_id)
            service.tick(now)

    def next_deadline(self, now: float) -> float:
        """When tick() next has work: a driver host to reconnect to, a service's timer."""
        due = min((s.next_deadline() for s in self.services.values()), default=float("inf"))
        for link in self.drivers.values():
            if link.sock is None and not link.failed and \
                    any(d.driver == link.name for d in self.devices.values()):
                due = min(due, max(now, link.next_try))
        return due

    def guest_gone(self) -> None:
        """The guest exited or is being replaced: every channel ends; a new guest starts over."""
        for ch in self.table.channels():
            if ch.state in (ChannelState.OPENING, ChannelState.OPEN, ChannelState.CLOSING):
                self._close_device_quietly(ch.channel_id)
        self.table = ChannelTable(self.table.next_id)   # ids are never reused, even across guests
        self.slot_of.clear()
        self.connected = False

    def _close_device_quietly(self, cid: int) -> None:
        self._release_device(cid)

    def close(self) -> None:
        self.guest_gone()
        for link in self.drivers.values():
            if link.sock is not None:
                self._unwatch(link.sock.fileno())
                link.sock.close()
                link.sock = None

    def describe_devices(self) -> list[dict]:
        out = []
        for dev in self.devices.values():
            ch = self._live_channel(dev.instance_id)
            link = self.drivers.get(dev.driver)
            state = ch.state.value if ch is not None else (
                "Failed" if link is not None and link.failed else "Waiting")
            out.append({"Driver": dev.driver, "InstanceId": dev.instance_id,
                        "ClassId": ch.offer.class_id if ch else (link.hello or {}).get("class_id") if link else None,
                        "ChannelId": ch.channel_id if ch else None, "ChannelState": state,
                        "ProtocolVersion": ch.version if ch else None,
                        "Error": (link.failed if link and link.failed else ch.failure if ch else None)})
        return out


def _pending(ep: ChannelEndpoint) -> bool:
    """Something to read or to send on this endpoint (a malformed ring counts: reading it
    fails the channel)."""
    try:
        return bool(ep.backlog) or not ep.ring.inp.is_empty()
    except RingProtocolError:
        return True


def _channel_id(body: dict) -> int:
    cid = body.get("channel_id")
    if not isinstance(cid, int) or isinstance(cid, bool):
        raise HvError("BadRequest", "channel_id must be an integer")
    return cid


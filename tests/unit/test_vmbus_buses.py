"""The worker's HostBus and the guest's GuestBus connected over a real link socketpair in one
process: contact, offers, opens with real descriptors, the integration services, version
refusal, rescind and re-offer with re-issue, failed devices, and a guest that writes garbage
into a ring (fuzzed)."""
from __future__ import annotations

import ctypes
import select
import struct
import time

from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisor.runtime import timerfd
from hypervisor.runtime.paths import Home
from worker.guest.integration import GuestServices
from worker.guest.vmbus_client import ClientDevice
from worker.guest_link import GuestLink, pair
from worker.integration.heartbeat import HeartbeatService
from worker.integration.ic_defs import CLASS_IDS, HEARTBEAT
from worker.integration.kvp import KvpService
from worker.integration.shutdown import ShutdownService
from worker.integration.timesync import TimeSyncService
from worker.vmbus.channel import ChannelState, Offer
from worker.vmbus.host_bus import HostBus, HostService
from worker.vmbus.ring import HEADER_SIZE


class ListLog:
    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def _add(self, event, **kw):
        self.events.append((event, kw))

    info = warning = error = _add

    def bind(self, **kw):
        return self

    def names(self):
        return [e for e, _ in self.events]


class FakeGuest:
    """What GuestServices needs of worker.guest.runtime.Guest."""

    def __init__(self, link, ignore_shutdown=False):
        self.link, self.name, self.vm_id = link, "vm1", "id1"
        self.ignore_shutdown = ignore_shutdown
        self.shutdowns: list[str] = []

    def on_shutdown_request(self, reason):
        self.shutdowns.append(reason)
        return not self.ignore_shutdown


class HeldEcho(HostService):
    """An in-worker VSP for tests: answers requests, or holds them while `hold` is set."""

    name = "held-echo"

    def __init__(self, versions=(0x00010000,)):
        super().__init__()
        self.offer = Offer("test-echo", "echo-instance", 4096, versions)
        self.hold = False
        self.held = []
        self.seen: list[int] = []

    def on_message(self, msg):
        if msg.expects_reply:
            self.seen.append(msg.body["seq"])
            if self.hold:
                self.held.append(msg)
            else:
                self.endpoint.send_completion(msg.txid, msg.kind, {"seq": msg.body["seq"]})


class Rig:
    def __init__(self, ignore_shutdown=False, heartbeat=True, watchdog=False):
        self.log = ListLog()
        a, b = pair()
        self.host_link, self.guest_link = GuestLink(a), GuestLink(b, accept_fds=True)
        self.host_fds, self.guest_fds = {}, {}
        self.bus = HostBus("id1", "vm1", Home.resolve("/tmp/hv-unused"), self.log,
                           lambda msg, fds: self.host_link.send(msg, fds),
                           self.host_fds.__setitem__, lambda fd: self.host_fds.pop(fd, None))
        self.beats = 0
        share = (lambda fd: self.host_link.send({"t": "watchdog"}, [fd])) if watchdog else None
        self.heartbeat = HeartbeatService(self.log, self._beat, lambda: "OkApplicationsUnknown", share)
        self.shutdown = ShutdownService(self.log)
        self.kvp = KvpService(self.log, {"from-host": "1"})
        self.timesync = TimeSyncService(self.log)
        for s in ((self.heartbeat,) if heartbeat else ()) + (self.shutdown, self.kvp, self.timesync):
            self.bus.add_service(s)
        self.guest = FakeGuest(self.guest_link, ignore_shutdown)
        self.services = GuestServices(self.guest, self.guest_fds.__setitem__,
                                      lambda fd: self.guest_fds.pop(fd, None))
        self.services.start()

    def _beat(self, at=None):
        self.beats += 1
        self.beat_at = at

    def pump(self, rounds=20):
        for _ in range(rounds):
            for msg in self.host_link.receive():
                self.bus.on_guest_message(msg)
            for msg in self.guest_link.receive():
                if msg.get("t") == "watchdog":
                    self.services.set_watchdog(msg["fds"])
                else:
                    self.services.on_link_message(msg)
            for cb in list(self.host_fds.values()):
                cb()
            for cb in list(self.guest_fds.values()):
                cb()
            now = time.monotonic()
            self.bus.tick(now)
            self.services.tick(now)

    def state_of(self, instance_id):
        ch = self.bus._live_channel(instance_id)
        return ch.state if ch else None


def test_contact_opens_every_service_and_the_first_beat_arrives():
    rig = Rig()
    rig.pump()
    for s in (rig.heartbeat, rig.shutdown, rig.kvp, rig.timesync):
        assert s.is_open, s.name
        assert rig.state_of(s.offer.instance_id) is ChannelState.OPEN
    assert rig.beats >= 1
    assert rig.timesync.samples == 1 and abs(rig.timesync.skew) < 0.05
    assert rig.services.clock.synced


def _readable(fd) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_heartbeat_is_read_lazily_once_masked_and_at_once_when_unmasked():
    rig = Rig()
    rig.pump()
    assert rig.beats >= 1 and isinstance(rig.beat_at, float)
    beater = rig.services.bus.device(CLASS_IDS[HEARTBEAT])
    bell = rig.heartbeat.endpoint.fileno()
    rig.heartbeat.set_lazy(True)
    beats = rig.beats
    before = time.monotonic()
    beater.tick(beater.next_beat)                  # a beat while masked: no signal to the host
    assert not _readable(bell) and rig.beats == beats
    rig.bus.tick(time.monotonic())                 # the worker's drain at its loss deadline
    assert rig.beats == beats + 1 and rig.beat_at >= before   # with the beat's own time
    beater.tick(beater.next_beat)                  # another, unread ...
    assert not _readable(bell)
    rig.heartbeat.set_lazy(False)                  # ... unmasking rings our own doorbell for it
    assert _readable(bell)
    rig.pump(2)
    assert rig.beats == beats + 2
    beater.tick(beater.next_beat)                  # unmasked: the guest signals again
    assert _readable(bell)


def test_heartbeat_watchdog_is_pushed_on_by_beats_and_fires_on_silence():
    rig = Rig(watchdog=True)
    rig.pump()
    assert rig.beats >= 1 and rig.services.watchdog is not None   # the guest holds the timer
    beater = rig.services.bus.device(CLASS_IDS[HEARTBEAT])
    host_timer, ring = rig.heartbeat.watchdog, rig.heartbeat.endpoint.ring.inp
    rig.heartbeat.set_lazy(True)                   # status OK: the host stops listening
    beats = rig.beats
    rig.heartbeat.arm(time.monotonic() + 0.05)     # the deadline the host set at its last read
    beater.tick(beater.next_beat)                  # a beat pushes it 5 s on ...
    assert ring.is_empty()                         # ... and writes nothing the host must read
    assert not select.select([host_timer], [], [], 0.2)[0] and not rig.heartbeat.fired()
    rig.heartbeat.arm(time.monotonic() + 0.05)     # silence: the timer fires
    assert select.select([host_timer], [], [], 2.0)[0] and rig.heartbeat.fired()
    assert not rig.heartbeat.fired()               # cleared
    rig.heartbeat.set_lazy(False)                  # LostCommunication: the host listens again
    beater.tick(beater.next_beat)
    assert not ring.is_empty() and _readable(rig.heartbeat.endpoint.fileno())
    rig.pump(2)
    assert rig.beats == beats + 1
    rig.heartbeat.close()


def test_a_guest_that_sets_the_shared_watchdog_repeating_buys_one_worker_wake_up():
    """The guest holds the worker's heartbeat timer (a shared descriptor). A hostile guest sets it
    to fire every millisecond; each time the worker settles a firing it re-arms the timer
    one-shot at its own deadline, so the worker is not kept awake and no loss is invented."""
    rig = Rig(watchdog=True)
    rig.pump()
    host_timer = rig.heartbeat.watchdog
    now = time.monotonic()
    spec = timerfd._Itimerspec(timerfd._Timespec(0, 1_000_000), timerfd._Timespec(0, 1_000_000))
    assert timerfd._libc.timerfd_settime(rig.services.watchdog, 0, ctypes.byref(spec), None) == 0
    assert select.select([host_timer], [], [], 1.0)[0] and rig.heartbeat.fired()
    assert rig.heartbeat.settle(now, time.monotonic(), far=30.0) is False    # beat 1 ms ago: alive
    assert not select.select([host_timer], [], [], 0.3)[0]     # one-shot again, 5 s out: quiet
    assert rig.heartbeat.settle(time.monotonic() - 6.0, time.monotonic(), far=30.0) is True
    assert rig.heartbeat.settle(None, time.monotonic(), far=30.0) is False   # no beat yet: NoContact
    assert not select.select([host_timer], [], [], 0.1)[0]
    rig.heartbeat.close()


def test_timesync_samples_at_open_and_after_a_resync_only():
    rig = Rig()
    rig.pump()
    assert rig.timesync.samples == 1 and rig.timesync.next_deadline() == float("inf")
    rig.timesync.tick(time.monotonic() + 3600)     # no periodic sample: nothing to wake for
    rig.pump()
    assert rig.timesync.samples == 1
    rig.timesync.resync()                          # after a pause
    assert rig.timesync.next_deadline() == 0.0
    rig.pump()
    assert rig.timesync.samples == 2 and rig.timesync.next_deadline() == float("inf")


def test_kvp_both_ways():
    rig = Rig()
    rig.pump()
    assert rig.services.host_pool() == {"from-host": "1"}       # synced at open
    assert rig.kvp.guest_pool["FullyQualifiedDomainName"] == "vm1"  # intrinsic items
    rig.kvp.set_items({"a": "x"})
    rig.kvp.remove_keys(["from-host"])
    rig.services.publish("guest-key", "y")
    rig.pump()
    assert rig.services.host_pool() == {"a": "x"}
    assert rig.kvp.guest_pool["guest-key"] == "y"
    rig.services.kvp.unpublish("guest-key")
    rig.pump()
    assert "guest-key" not in rig.kvp.guest_pool


def test_shutdown_is_accepted_or_ignored():
    for ignore in (False, True):
        rig = Rig(ignore_shutdown=ignore)
        rig.pump()
        answers = []
        rig.shutdown.request_shutdown("test", lambda ok, body: answers.append(body))
        rig.pump()
        assert rig.guest.shutdowns == ["test"]
        assert answers == ([] if ignore else [{"accepted": True}])


def test_shutdown_asked_before_the_guest_opened_goes_out_at_open():
    rig = Rig()
    answers = []
    rig.shutdown.request_shutdown("early", lambda ok, body: answers.append(body))
    rig.pump()
    assert answers == [{"accepted": True}]


def test_no_common_version_is_refused_cleanly():
    rig = Rig()
    echo = HeldEcho(versions=(0x00020000,))
    rig.bus.add_service(echo)
    results = []
    rig.services.bus.register("test-echo", ClientDevice)        # speaks 1.0 only
    rig.pump()
    dev = rig.services.bus.device("test-echo")
    assert dev.failure and "no common protocol version" in dev.failure
    dev.request("request", {"seq": 1}, lambda ok, body: results.append((ok, body["code"])))
    assert results == [(False, "DriverFault")]
    assert rig.state_of("echo-instance") is ChannelState.OFFERED


def test_rescind_and_reoffer_reissue_every_request_exactly_once():
    rig = Rig()
    echo = HeldEcho()
    rig.bus.add_service(echo)
    rig.services.bus.register("test-echo", ClientDevice)
    rig.pump()
    dev = rig.services.bus.device("test-echo")
    done: dict[int, int] = {}
    cb = (lambda seq: lambda ok, body: done.__setitem__(seq, done.get(seq, 0) + 1))
    for seq in range(5):
        dev.request("request", {"seq": seq}, cb(seq))
    rig.pump()
    assert done == {i: 1 for i in range(5)}
    echo.hold = True                          # the "driver" takes requests and then dies
    for seq in range(5, 10):
        dev.request("request", {"seq": seq}, cb(seq))
    rig.pump()
    assert echo.held and not any(s in done for s in range(5, 10))
    echo.hold, echo.held = False, []
    rig.bus.remove_service("echo-instance")   # rescind (the driver host is gone)
    rig.pump()
    assert not dev.is_open
    for seq in range(10, 12):                 # asked while the device is away: queued
        dev.request("request", {"seq": seq}, cb(seq))
    rig.bus.add_service(echo)                 # offered again under a new channel id
    rig.pump()
    assert done == {i: 1 for i in range(12)}
    assert dev.reissued == 5 and not dev.pending


def test_device_failed_ends_waiting_requests_with_errors():
    rig = Rig()
    echo = HeldEcho()
    rig.bus.add_service(echo)
    rig.services.bus.register("test-echo", ClientDevice)
    rig.pump()
    dev = rig.services.bus.device("test-echo")
    rig.bus.remove_service("echo-instance")
    rig.pump()
    results = []
    dev.request("request", {"seq": 1}, lambda ok, body: results.append(ok))
    rig.bus.send("device_failed", {"instance_id": "echo-instance", "reason": "driver echo Failed"})
    rig.pump()
    assert results == [False] and "Failed" in dev.failure


def test_heartbeat_disabled_means_no_heartbeat_channel():
    rig = Rig(heartbeat=False)
    rig.pump()
    assert rig.beats == 0 and rig.kvp.is_open


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=1, max_size=600), write_index=st.integers(0, 2**32 - 1),
       header=st.binary(min_size=0, max_size=20))
def test_garbage_in_a_guest_ring_fails_that_channel_only(data, write_index, header):
    rig = Rig()
    rig.pump()
    kvp_dev = rig.services.kvp
    region = kvp_dev.endpoint.mm                 # the guest's mapping of the KVP channel
    ring_size = kvp_dev.offer.ring_size
    region[HEADER_SIZE:HEADER_SIZE + len(data)] = data         # the guest -> host ring's data
    region[0:4] = struct.pack("<I", write_index)               # its write index
    region[8:8 + len(header)] = header                         # and more header fields
    assert ring_size > len(data)
    beats = rig.beats
    rig.pump(5)                                  # never raises
    kvp_state = rig.state_of(rig.kvp.offer.instance_id)
    if kvp_state is None:                        # failed and rescinded
        assert "vmbus_protocol_error" in rig.log.names()
        assert not rig.kvp.is_open
    assert rig.heartbeat.is_open and rig.shutdown.is_open and rig.timesync.is_open
    rig.services.bus.device(CLASS_IDS[HEARTBEAT]).tick(time.monotonic() + 10)   # beat now
    rig.pump(3)
    assert rig.beats > beats                      # the other channels keep working


def test_a_new_guest_starts_over_but_channel_ids_are_never_reused():
    rig = Rig()
    rig.pump()
    first = {ch.channel_id for ch in rig.bus.table.channels()}
    rig.bus.guest_gone()                      # a reset: the guest is replaced
    assert not rig.heartbeat.is_open and rig.bus.table.channels() == []
    rig.bus.on_guest_message({"t": "vmbus", "kind": "initiate_contact", "body": {}})
    again = {ch.channel_id for ch in rig.bus.table.channels()}
    assert len(again) == 4 and min(again) > max(first)


def test_items_a_guest_publishes_are_held_to_the_same_limits():
    rig = Rig()
    rig.pump()
    rig.services.kvp.send_oneway("guest-set", {"items": {"k" * 600: "v", "ok": "1", "bad": 5,
                                                          "big": "v" * 3000}})
    rig.services.kvp.send_oneway("guest-remove", {"keys": ["FullyQualifiedDomainName", 7]})
    rig.pump()
    pool = rig.kvp.guest_pool
    assert pool.get("ok") == "1" and "big" not in pool and "bad" not in pool
    assert not any(len(k) > 512 for k in pool) and "FullyQualifiedDomainName" not in pool
    assert rig.kvp.dropped == 3 and rig.kvp.is_open

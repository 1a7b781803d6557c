"""The storvsp driver (parent/drivers/storvsp.py) against the guest's block client
(worker/guest/block_client.py) over a real channel region in this process: requests in flight,
the shared data buffer, error statuses, the disk lock, and re-issue on a new channel after the
"driver host" is gone."""
from __future__ import annotations

import os

import pytest

from parent.drivers.driver_api import DriverChannel, DriverRefused
from parent.drivers.storvsp import StorvspDriver
from parent.storage.disk_backend import create_disk, open_disk
from worker.guest import disk_pattern
from worker.guest.block_client import BufferAllocator, StorageDevice
from worker.vmbus.channel import Offer
from worker.vmbus.ring import PacketType
from worker.vmbus.transport import ChannelEndpoint, ChannelResources

MIB = 1 << 20


class FakeHost:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    def buffer_of(self, channel):
        return self.endpoint.buffer


class FakeBus:
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)

    def unwatch(self, fd):
        pass


class Link:
    """One channel between a driver and a guest device, pumped by hand."""

    def __init__(self, driver, dev, path, cid):
        res = ChannelResources(driver.ring_size, "t", driver.buffer_size)
        self.host = ChannelEndpoint([os.dup(f) for f in res.fds()], driver.ring_size, "host",
                                    driver.buffer_size)
        guest = ChannelEndpoint([os.dup(f) for f in res.fds()], driver.ring_size, "guest",
                                driver.buffer_size)
        res.close()
        self.driver, self.dev = driver, dev
        self.channel = DriverChannel(FakeHost(self.host), cid, "vm-1", "vm", dev.instance_id,
                                     0x10000, {"path": path})
        driver.open(self.channel)
        dev._open(cid, guest, 0x10000)

    def pump(self, rounds=1000):
        for _ in range(rounds):
            packets = self.host.receive()
            for p in packets:
                answer = self.driver.packet(self.channel, p)
                if answer is not None:
                    self.host.send_packet(PacketType.COMPLETION, answer, p.txid)
            self.dev._drain()
            if not packets:
                return

    def crash(self):
        """The driver host dies: its disk is released, the guest's channel is dropped."""
        self.driver.close(self.channel)
        self.host.close()
        self.dev._drop_channel()


@pytest.fixture
def disk(tmp_path):
    path = str(tmp_path / "d.vhdx")
    create_disk(path, 16 * MIB)
    return path


def device():
    return StorageDevice(FakeBus(), Offer("storvsp", "disk-0", 128 * 1024, (0x10000,)))


def test_write_flush_read_round_trip_with_many_in_flight(disk):
    driver, dev = StorvspDriver(), device()
    link = Link(driver, dev, disk, 1)
    link.pump()
    assert dev.ready and dev.properties.size == 16 * MIB
    done = []
    for i in range(32):
        dev.write(i * 65536, disk_pattern.generate("s", i * 65536, 65536),
                  lambda err, _d, i=i: done.append((i, err)))
    assert len(dev.entries) == 32                      # all in flight at once
    dev.flush(lambda err, _d: done.append(("flush", err)))
    link.pump()
    assert sorted(e for _, e in done if e) == [] and len(done) == 33
    got = []
    dev.read(0, MIB, lambda err, data: got.append((err, data)))
    dev.read(MIB, MIB, lambda err, data: got.append((err, data)))
    link.pump()
    assert [e for e, _ in got] == [None, None]
    assert got[0][1] + got[1][1] == disk_pattern.generate("s", 0, 2 * MIB)
    assert driver.stats()["vms"]["vm-1"] == {"read": 2 * MIB, "write": 2 * MIB}
    assert dev.alloc.free_list == [[0, driver.buffer_size]]   # every buffer extent came back


def test_bad_requests_answer_statuses_and_the_disk_is_locked(disk):
    driver, dev = StorvspDriver(), device()
    link = Link(driver, dev, disk, 1)
    link.pump()
    errors = []
    dev.read(16 * MIB, 4096, lambda err, _d: errors.append(err))
    dev.write(100, b"x" * 512, lambda err, _d: errors.append(err))
    dev.read(0, 2 * MIB, lambda err, _d: errors.append(err))      # above max_transfer
    link.pump()
    assert "OUT_OF_RANGE" in errors[1] and "MISALIGNED" in errors[2]
    assert "exceeds max_transfer" in errors[0]
    with pytest.raises(DriverRefused, match="open in another process"):
        StorvspDriver().open(DriverChannel(FakeHost(link.host), 9, "vm-2", "vm2", "x", 0x10000,
                                           {"path": disk}))


def test_requests_in_flight_are_reissued_once_on_a_new_channel(disk):
    driver, dev = StorvspDriver(), device()
    link = Link(driver, dev, disk, 1)
    link.pump()
    done = []
    for i in range(16):
        dev.write(i * MIB, disk_pattern.generate("r", i * MIB, MIB),
                  lambda err, _d, i=i: done.append((i, err)))
    # the driver serves part of the ring, then dies before the rest
    served = link.host.receive()[:5]
    for p in served:
        link.host.send_packet(PacketType.COMPLETION, driver.packet(link.channel, p), p.txid)
    link.crash()
    assert sorted(i for i, _ in done) == [0, 1, 2, 3, 4]   # answered before the crash: taken
    dev.write(15 * MIB + 4096, b"\x01" * 4096, lambda err, _d: done.append(("late", err)))
    link2 = Link(StorvspDriver(), dev, disk, 2)             # a new driver host, a new channel
    link2.pump()
    assert dev.reissued >= 1
    assert sorted(str(i) for i, _ in done) == sorted([str(i) for i in range(16)] + ["late"])
    assert all(err is None for _, err in done)
    link2.crash()
    with open_disk(disk) as d:
        data = d.read(0, 15 * MIB)
        assert disk_pattern.first_mismatch("r", 0, data) is None
        assert d.read(15 * MIB + 4096, 4096) == b"\x01" * 4096


def test_overlapping_writes_never_fly_together(disk):
    driver, dev = StorvspDriver(), device()
    link = Link(driver, dev, disk, 1)
    link.pump()
    dev.write(0, b"a" * 8192, lambda *a: None)
    dev.write(4096, b"b" * 4096, lambda *a: None)
    assert len(dev.entries) == 1 and len(dev.waiting) == 1
    link.pump()
    got = []
    dev.read(0, 8192, lambda err, data: got.append(data))
    link.pump()
    assert got == [b"a" * 4096 + b"b" * 4096]


def test_buffer_allocator_first_fit_and_merge():
    a = BufferAllocator(16 * 4096)
    x, y, z = a.alloc(4096), a.alloc(8192), a.alloc(1)
    assert (x, y, z) == (0, 4096, 12288)
    assert a.alloc(13 * 4096) is None
    a.free(y, 8192)
    assert a.alloc(4096 * 2) == 4096
    a.free(4096, 8192)
    a.free(x, 4096)
    a.free(z, 1)
    assert a.free_list == [[0, 16 * 4096]]

"""The netvsp frame port (worker/vmbus/frame_port.py): it interoperates with RingReader and
RingWriter on the same channel (either side, in any order, across wrap-around and a full ring),
signals only on empty → non-empty, and rejects hostile ring contents exactly as the ring does."""
from __future__ import annotations

import os
import select
import struct
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.vmbus import netvsp_protocol as proto
from worker.vmbus import frame_port
from worker.vmbus.frame_port import FramePort
from worker.vmbus.ring import (HEADER_SIZE, PacketFlags, PacketType, RingProtocolError,
                               attach, region_size)
from worker.vmbus.transport import ChannelEndpoint, ChannelResources

DATA = int(PacketType.DATA)
CAP = frame_port.TAKE_MAX


def endpoints(ring_size=4096):
    res = ChannelResources(ring_size, "test-port")
    host = ChannelEndpoint([os.dup(fd) for fd in res.fds()], ring_size, "host")
    guest = ChannelEndpoint([os.dup(fd) for fd in res.fds()], ring_size, "guest")
    res.close()
    return guest, host


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def clear(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


def batch(*frames: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(f)) + f for f in frames)


def test_put_frame_is_a_one_frame_batch_for_ring_reader_and_rings_on_empty_to_non_empty():
    guest, host = endpoints()
    port = FramePort(guest)
    port.put_frame(b"x" * 60)
    assert readable(host.fileno())
    clear(host.fileno())
    port.put_frame(memoryview(b"y" * 61))           # not empty: no second signal
    assert not readable(host.fileno())
    got = host.receive()
    assert [(p.type, p.flags) for p in got] == [(DATA, 0), (DATA, 0)]
    assert [proto.decode_batch(p.payload) for p in got] == [[b"x" * 60], [b"y" * 61]]
    port.put_frame(b"z")                             # the reader caught up: empty again
    assert readable(host.fileno())


def test_take_frames_reads_what_ring_writer_wrote_and_keeps_control_packets_in_order():
    guest, host = endpoints()
    port = FramePort(host)
    guest.send_packet(DATA, b"", 7, PacketFlags.COMPLETION_REQUESTED)   # the query
    guest.send_packet(DATA, batch(b"a" * 20))
    guest.send_gather(DATA, [struct.pack("<I", 3), b"bcd", struct.pack("<I", 2), b"ef"], 13)
    assert port.take_frames() == [b"a" * 20, b"bcd", b"ef"]
    assert [(p.txid, p.flags, p.payload) for p in port.control] == [(7, 1, b"")]
    assert port.take_frames() == []
    # the endpoint's own reader sees the same index: nothing is read twice
    assert host.receive() == []


def test_done_rings_again_when_a_packet_arrived_after_the_take():
    guest, host = endpoints()
    port = FramePort(host)
    guest.send_packet(DATA, batch(b"1"))
    assert port.take_frames() == [b"1"]
    guest.send_packet(DATA, batch(b"2"))             # arrives before done(): its ring is kept
    port.done()
    assert readable(host.fileno())
    assert port.take_frames() == [b"2"]
    port.done()
    assert not readable(host.fileno())


def test_the_backlog_goes_out_when_the_peer_frees_room_even_with_nothing_to_read():
    """The peer's "room freed" signal comes with an empty incoming ring: take_frames must still
    flush what waited (or the sender stalls until a frame happens to arrive)."""
    guest, host = endpoints(4096)
    gport = FramePort(guest)
    frames = [bytes([i]) * 1000 for i in range(8)]
    for f in frames:
        gport.put_frame(f)
    assert guest.backlog                             # the ring is full: some wait
    got: list = []
    for _ in range(len(frames)):
        got += [bytes(f) for p in host.receive() for f in proto.decode_batch(p.payload)]
        if not guest.backlog:
            break
        assert readable(guest.fileno())              # the host freed room and says so
        clear(guest.fileno())
        waiting = len(guest.backlog)
        assert gport.take_frames() == []             # nothing for the guest, but ...
        assert len(guest.backlog) < waiting          # ... what waited goes out
    got += [bytes(f) for p in host.receive() for f in proto.decode_batch(p.payload)]
    assert not guest.backlog and got == frames
    guest.close()
    host.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 900)), min_size=1, max_size=60))
def test_port_and_ring_endpoints_interoperate_across_wrap_and_a_full_ring(steps):
    """Frames of many sizes go guest port → host endpoint and host endpoint → guest port, with
    the sender's ring filling up (backlog) and wrapping: every frame arrives once, in order."""
    guest, host = endpoints(4096)
    gport = FramePort(guest)
    sent_up, got_up, sent_down, got_down = [], [], [], []
    try:
        for i, (up, size) in enumerate(steps):
            frame = bytes([i % 251]) * size
            if up:
                gport.put_frame(frame)
                sent_up.append(frame)
            else:
                host.send_gather(DATA, [struct.pack("<I", size), frame], size + 4)
                sent_down.append(frame)
            if i % 3 == 2:                           # the readers drain now and then
                for p in host.receive():
                    got_up += [bytes(f) for f in proto.decode_batch(p.payload)]
                got_down += gport.take_frames()
        for _ in range(200):
            if not (guest.backlog or host.backlog):
                break
            for p in host.receive():
                got_up += [bytes(f) for f in proto.decode_batch(p.payload)]
            got_down += gport.take_frames()
        for p in host.receive():
            got_up += [bytes(f) for f in proto.decode_batch(p.payload)]
        for _ in range(len(steps) + 1):
            more = gport.take_frames()
            if not more:
                break
            got_down += more
        assert got_up == sent_up and got_down == sent_down
    finally:
        guest.close()
        host.close()


# --- hostile ring contents -----------------------------------------------------------------------

RING = 1024


def region():
    """A bytearray channel region and a port on its host side (eventfds as the doorbells)."""
    buf = bytearray(region_size(RING))
    guest_ring = attach(buf, RING, "guest", init=True)
    host_ring = attach(buf, RING, "host", init=False)
    bells = [os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)]
    ep = SimpleNamespace(ring=host_ring, backlog=[], own_bell=bells[0], peer_bell=bells[1],
                         flush=lambda: None, send_gather=None)
    return buf, guest_ring, FramePort(ep), bells


def close(bells):
    for fd in bells:
        os.close(fd)


def set_word(buf, ring_offset, field, value):
    struct.pack_into("<I", buf, ring_offset + field, value)


@pytest.mark.parametrize("write", [4, RING - HEADER_SIZE, RING, 0xFFFFFFF8])
def test_take_frames_rejects_a_bad_write_index(write):
    buf, _, port, bells = region()
    set_word(buf, 0, 0, write)                       # guest → host ring comes first
    with pytest.raises(RingProtocolError):
        port.take_frames()
    close(bells)


@pytest.mark.parametrize("header", [
    struct.pack("<HHIQ", 99, 0, 8, 0),               # unknown type
    struct.pack("<HHIQ", DATA, 0x80, 8, 0),          # unknown flags
    struct.pack("<HHIQ", DATA, 0, 5000, 0),          # a payload past the data area
    struct.pack("<HHIQ", DATA, 0, 0xFFFFFFFF, 0),    # a payload past everything
])
def test_take_frames_rejects_bad_packet_headers_and_consumes_nothing(header):
    buf, _, port, bells = region()
    buf[HEADER_SIZE:HEADER_SIZE + 16] = header
    set_word(buf, 0, 0, 32)                          # 32 bytes published
    with pytest.raises(RingProtocolError):
        port.take_frames()
    assert port.rd._read == 0 and struct.unpack_from("<I", buf, 4)[0] == 0
    close(bells)


def test_take_frames_rejects_a_bad_batch_length():
    buf, writer_side, port, bells = region()
    writer_side.out.write(DATA, struct.pack("<I", 500) + b"short")   # claims 500, has 5
    with pytest.raises(RingProtocolError):
        port.take_frames()
    close(bells)


def test_put_frame_rejects_a_bad_read_index():
    buf, _, port, bells = region()
    set_word(buf, RING, 4, 12)                       # host → guest ring: read index misaligned
    with pytest.raises(RingProtocolError):
        port.put_frame(b"frame")
    close(bells)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=RING - HEADER_SIZE, max_size=RING - HEADER_SIZE),
       read=st.integers(0, (RING - HEADER_SIZE) // 8 - 1).map(lambda i: i * 8),
       write=st.one_of(st.integers(0, (RING - HEADER_SIZE) // 8 - 1).map(lambda i: i * 8),
                       st.integers(0, (1 << 32) - 1)))
def test_hostile_ring_contents_give_what_ring_reader_gives_or_a_protocol_error(data, read, write):
    """Any contents and indices (wrap-around included): the port raises RingProtocolError
    whenever RingReader does, and otherwise yields exactly the frames of RingReader's DATA
    packets (or a RingProtocolError for a malformed batch) — never another exception."""
    buf, _, port, bells = region()
    frame_port.TAKE_MAX = 1 << 30                  # compared with a reader that takes all
    buf[HEADER_SIZE:RING] = data
    set_word(buf, 0, 4, read)
    set_word(buf, 0, 0, write)
    port.rd._read = read
    twin = bytearray(buf)
    reader = attach(twin, RING, "host", init=False).inp
    try:
        try:
            packets = reader.read_all()
        except RingProtocolError:
            with pytest.raises(RingProtocolError):
                port.take_frames()
            return
        want = []
        try:
            for p in packets:
                if p.type == DATA and not p.flags:
                    want += [bytes(f) for f in proto.decode_batch(p.payload)]
        except RingProtocolError:
            with pytest.raises(RingProtocolError):
                port.take_frames()
            return
        assert port.take_frames() == want
        assert [p for p in packets if not (p.type == DATA and not p.flags)] == port.control
        assert port.rd._read == reader._read
    finally:
        frame_port.TAKE_MAX = CAP
        close(bells)


def test_take_frames_hands_over_at_most_take_max_and_rings_again_for_the_rest():
    guest, host = endpoints(1 << 16)
    port = FramePort(host)
    frames = [bytes([i]) * 10 for i in range(CAP + 5)]
    for f in frames:
        guest.send_packet(DATA, batch(f))
    first = port.take_frames()
    assert first == frames[:CAP]
    clear(host.fileno())
    port.done()
    assert readable(host.fileno())                   # the rest is not forgotten
    assert port.take_frames() == frames[CAP:]
    guest.close()
    host.close()

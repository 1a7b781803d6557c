"""The VMBus ring: round trips, wrap-around, full rings, signalling, and a hostile peer."""
from __future__ import annotations

import mmap
import struct
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from worker.vmbus.ring import (
    ALIGN, HEADER_SIZE, PACKET_HEADER_SIZE, Packet, PacketFlags, PacketType, Ring, RingFull,
    RingProtocolError, RingReader, RingWriter, attach, packet_size, ring_pair)

DATA, COMP = PacketType.DATA, PacketType.COMPLETION


def one_ring(total=HEADER_SIZE + 128, buf=None):
    buf = bytearray(total) if buf is None else buf
    ring = Ring(buf, 0, total, init=True)
    return buf, RingWriter(ring), RingReader(Ring(buf, 0, total, init=False))


def payload(n, seed=0):
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


# --- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 4000])
def test_round_trip_sizes(n):
    guest, host = ring_pair(8192)
    data = payload(n, n)
    guest.send(DATA, data, txid=n + 1, flags=PacketFlags.COMPLETION_REQUESTED)
    assert host.receive_all() == [Packet(DATA, data, n + 1, 1)]
    assert host.receive_all() == []


def test_wrap_around_all_offsets():
    # A 128-byte data area and packets of every size up to the maximum: the header and the
    # payload both get split at the end of the ring, at every possible index.
    _, w, r = one_ring()
    for i in range(600):
        n = i % (w.ring.max_payload + 1)
        w.write(COMP, payload(n, i), txid=i)
        assert r.read_all() == [Packet(COMP, payload(n, i), i, 0)]


def test_gathered_writes_wrap_at_every_offset_like_one_payload():
    # write_gather copies its pieces one by one (no join): any split of a payload, at any ring
    # index, reads back as the same packet, zero-padded like write()'s
    _, w, r = one_ring()
    buf2, w2, _ = one_ring()
    for i in range(600):
        n = i % (w.ring.max_payload + 1)
        data = payload(n, i)
        cut = [0, n // 3, n // 2, n]
        pieces = [data[a:b] for a, b in zip(cut, cut[1:])] + [memoryview(b"")]
        w.write_gather(DATA, pieces, n, txid=i)
        w2.write(DATA, data, txid=i)
        assert bytes(w.ring._view) == bytes(buf2)          # the same bytes in the ring
        assert r.read_all() == [Packet(DATA, data, i, 0)]
        w2.ring.store(4, w2._write)                          # the twin's reader keeps up


def test_many_packets_read_in_order_and_one_by_one():
    _, w, r = one_ring(HEADER_SIZE + 1024)
    for rounds in range(20):
        sent = [payload(k * 5 % 60, k + rounds) for k in range(12)]
        for k, p in enumerate(sent):
            w.write(DATA, p, txid=k)
        got = [r.read_one() for _ in range(3)] + r.read_all()
        assert [p.payload for p in got] == sent and [p.txid for p in got] == list(range(12))
        assert r.read_one() is None


def test_accepts_bytes_like_payloads():
    guest, host = ring_pair(4096)
    guest.send(DATA, memoryview(b"abcdef")[1:4])
    guest.send(DATA, bytearray(b"xy"))
    assert [p.payload for p in host.receive_all()] == [b"bcd", b"xy"]


def test_works_on_mmap():
    size = 4096
    with mmap.mmap(-1, 2 * size) as m:
        guest = attach(m, size, "guest", init=True)
        host = attach(m, size, "host", init=False)
        assert host.send(DATA, b"to guest") is True
        assert guest.send(DATA, b"to host") is True
        assert guest.receive_all() == [Packet(DATA, b"to guest")]
        assert host.receive_all() == [Packet(DATA, b"to host")]
        guest.release()
        host.release()


def test_pair_directions_are_independent():
    guest, host = ring_pair(1024)
    guest.send(DATA, b"g1")
    host.send(DATA, b"h1")
    guest.send(DATA, b"g2")
    assert [p.payload for p in host.receive_all()] == [b"g1", b"g2"]
    assert [p.payload for p in guest.receive_all()] == [b"h1"]


def test_reattach_resumes_at_shared_indices():
    buf, w, r = one_ring()
    w.write(DATA, b"one")
    w.write(DATA, b"two")
    assert r.read_one().payload == b"one"
    r2 = RingReader(Ring(buf, 0, len(buf), init=False))     # e.g. a restarted driver host
    w2 = RingWriter(Ring(buf, 0, len(buf), init=False))
    w2.write(DATA, b"three")
    assert [p.payload for p in r2.read_all()] == [b"two", b"three"]


# --- full ring, oversized packets, signalling -----------------------------------------------

def test_full_ring_leaves_one_slot_and_recovers():
    _, w, r = one_ring()                       # 128 data bytes
    assert w.free_bytes() == 128 - ALIGN
    for _ in range(5):
        w.write(DATA, b"x" * 8)                # 24 bytes each: 5 * 24 = 120 = 128 - 8
    assert w.free_bytes() == 0
    with pytest.raises(RingFull) as full:
        w.write(DATA, b"y" * 8)
    assert (full.value.needed, full.value.free) == (24, 0)
    assert r.take_writer_signal() is False
    assert r.read_one() is not None
    assert r.take_writer_signal() is True      # freed the space the writer asked for
    assert r.take_writer_signal() is False
    w.write(DATA, b"y" * 8)                    # now it fits
    r.read_one()
    assert r.take_writer_signal() is False     # the writer is no longer waiting
    assert len(r.read_all()) == 4


def test_exactly_full_ring():
    _, w, r = one_ring()
    w.write(DATA, b"z" * w.ring.max_payload)   # one packet of data_size - 8 bytes
    assert w.free_bytes() == 0
    with pytest.raises(RingFull):
        w.write(DATA)
    assert r.read_all()[0].payload == b"z" * w.ring.max_payload
    assert w.free_bytes() == 128 - ALIGN


def test_packet_larger_than_ring_is_a_protocol_error():
    _, w, _ = one_ring()
    with pytest.raises(RingProtocolError, match="never fit"):
        w.write(DATA, bytes(w.ring.max_payload + 1))


def test_bad_write_arguments():
    _, w, _ = one_ring()
    with pytest.raises(ValueError):
        w.write(99, b"")
    with pytest.raises(ValueError):
        w.write(DATA, b"", flags=0x8000)
    with pytest.raises(ValueError):
        w.write(DATA, b"", txid=-1)


def test_signal_only_on_empty_to_non_empty():
    _, w, r = one_ring(HEADER_SIZE + 1024)
    assert w.write(DATA, b"a") is True
    assert w.write(DATA, b"b") is False
    assert w.write(DATA, b"c") is False
    r.read_one()
    assert w.write(DATA, b"d") is False         # still not empty
    r.read_all()
    assert w.write(DATA, b"e") is True
    r.read_all()


def test_masked_reader_gets_no_signal_and_unmask_reports_pending_data():
    _, w, r = one_ring(HEADER_SIZE + 1024)
    r.mask_interrupts()
    assert w.write(DATA, b"a") is False
    assert r.unmask_interrupts() is True        # data arrived while masked: drain again
    r.read_all()
    assert r.unmask_interrupts() is False
    assert w.write(DATA, b"b") is True


def test_bad_ring_geometry():
    with pytest.raises(ValueError):
        Ring(bytearray(100), 0, 100, init=True)          # not a multiple of 8
    with pytest.raises(ValueError):
        Ring(bytearray(64), 0, 64, init=True)            # no data area
    with pytest.raises(ValueError):
        Ring(bytearray(256), 8, 256, init=True)          # overruns the buffer
    with pytest.raises(ValueError):
        Ring(bytes(256), 0, 256, init=True)              # read-only
    buf = bytearray(256)
    Ring(buf, 0, 256, init=True)
    with pytest.raises(RingProtocolError, match="data_size"):
        Ring(buf, 0, 192, init=False)                    # header disagrees


# --- a hostile peer -------------------------------------------------------------------------

def poke(buf, offset, fmt, value):
    struct.pack_into(fmt, buf, offset, value)


@pytest.mark.parametrize("write_index", [3, 128, 1 << 31, 0xFFFFFFFF])
def test_reader_rejects_bad_write_index(write_index):
    buf, _, r = one_ring()
    poke(buf, 0, "<I", write_index)
    with pytest.raises(RingProtocolError, match="write index"):
        r.read_all()


def test_writer_rejects_bad_read_index():
    buf, w, _ = one_ring()
    poke(buf, 4, "<I", 12)
    with pytest.raises(RingProtocolError, match="read index"):
        w.write(DATA, b"x")


@pytest.mark.parametrize("field,fmt,value,match", [
    (0, "<H", 3, "type"),                   # unknown packet type
    (2, "<H", 0x10, "flags"),               # reserved flag bit
    (4, "<I", 1 << 20, "claims"),           # length larger than what is present
    (4, "<I", 0xFFFFFFFF, "claims"),        # would be a 4 GiB allocation if trusted
])
def test_reader_rejects_bad_packet_header(field, fmt, value, match):
    buf, w, r = one_ring()
    w.write(DATA, b"payload!")
    poke(buf, HEADER_SIZE + field, fmt, value)
    with pytest.raises(RingProtocolError, match=match):
        r.read_all()


def test_reader_rejects_partial_packet_header():
    buf, w, r = one_ring()
    w.write(DATA, b"")
    poke(buf, 0, "<I", 8)                   # writer claims only 8 bytes were written
    with pytest.raises(RingProtocolError, match="less than a packet header"):
        r.read_all()


# --- properties -----------------------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 300), st.sampled_from(list(PacketType)),
              st.integers(0, 2**64 - 1), st.booleans()),
    st.tuples(st.just("read_one")), st.tuples(st.just("read_all"))), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, data_size=st.sampled_from([32, 40, 128, 256, 1000]))
def test_random_sequences_round_trip_exactly(ops, data_size):
    _, w, r = one_ring(HEADER_SIZE + data_size)
    model: deque[Packet] = deque()
    for i, op in enumerate(ops):
        if op[0] == "write":
            _, n, type_, txid, req = op
            pkt = Packet(int(type_), payload(n, i), txid, int(req))
            used = sum(p.size for p in model)
            try:
                signal = w.write(pkt.type, pkt.payload, pkt.txid, pkt.flags)
            except RingProtocolError:
                assert n > data_size - ALIGN - PACKET_HEADER_SIZE
                continue
            except RingFull:
                assert pkt.size > data_size - used - ALIGN
                continue
            assert signal == (not model)
            model.append(pkt)
        elif op[0] == "read_one":
            assert r.read_one() == (model.popleft() if model else None)
        else:
            assert r.read_all() == list(model)
            model.clear()
        assert w.free_bytes() == data_size - ALIGN - sum(p.size for p in model)
    assert r.read_all() == list(model)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_hostile_bytes_never_crash_the_reader(data):
    total = HEADER_SIZE + data.draw(st.sampled_from([32, 64, 256]))
    buf, w, r = one_ring(total)
    for i in range(data.draw(st.integers(0, 4))):
        try:
            w.write(DATA, payload(i * 9, i))
        except (RingFull, RingProtocolError):
            break
    if data.draw(st.booleans()):
        r.read_one()
    for _ in range(data.draw(st.integers(1, 6))):       # scribble over header and data
        at = data.draw(st.integers(0, total - 1))
        blob = data.draw(st.binary(min_size=1, max_size=24))
        buf[at:at + len(blob)] = blob[:total - at]
    if data.draw(st.booleans()):                        # a plausible-looking write index
        poke(buf, 0, "<I", data.draw(st.integers(0, total - HEADER_SIZE - 1)) & ~7)
    for _ in range(3):
        try:
            packets = r.read_all()
        except RingProtocolError:
            continue
        for p in packets:
            assert p.type in set(PacketType) and len(p.payload) <= total - HEADER_SIZE
        try:
            w.write(DATA, b"again")
        except (RingFull, RingProtocolError):
            pass


@settings(max_examples=300, deadline=None)
@given(header=st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE),
       body=st.binary(min_size=128, max_size=128), plausible=st.booleans())
def test_arbitrary_ring_contents_attach_read_or_refuse(header, body, plausible):
    buf = bytearray(header + body)
    if plausible:                              # right data_size, small aligned indices
        poke(buf, 16, "<I", 128)
        poke(buf, 0, "<I", buf[0] & 0x78)
        poke(buf, 4, "<I", buf[4] & 0x78)
    try:
        r = RingReader(Ring(buf, 0, len(buf), init=False))
        packets = r.read_all()
    except RingProtocolError:
        return
    assert sum(p.size for p in packets) <= 128 - ALIGN
    assert all(p.size == packet_size(len(p.payload)) for p in packets)

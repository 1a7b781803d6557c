"""The storvsp wire protocol: round trips, exact bytes, hostile input, semantic checks, and the
VSC's table of requests in flight — including a guest and a VSP talking over a real ring pair."""
from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.runtime.errors import HvError
from worker.vmbus import storvsp_protocol as sp
from worker.vmbus.ring import PacketFlags, PacketType, RingProtocolError, ring_pair
from worker.vmbus.storvsp_protocol import Operation as Op, RequestFlags as F, Status as S

PROPS = sp.DiskProperties(size=64 << 20, logical_sector_size=512, physical_sector_size=4096,
                          max_transfer=1 << 20, max_outstanding=16,
                          disk_id=uuid.UUID("12345678-1234-5678-9abc-def012345678"))
U64 = (1 << 64) - 1


def roundtrip_request(req):
    return sp.decode_request(sp.encode_request(req))


def roundtrip_response(resp):
    return sp.decode_response(sp.encode_response(resp))


def test_each_request_round_trips():
    data = bytes(range(256)) * 16
    for req in (sp.negotiate(1), sp.query_properties(2), sp.read(3, 4096, 8192),
                sp.read(4, 0, 512, buffer_offset=65536), sp.write(5, 512, data),
                sp.write(6, 1024, data, fua=True), sp.write_from_buffer(7, 0, 4096, 8192, fua=True),
                sp.flush(8), sp.write(9, 0, b"")):
        assert roundtrip_request(req) == req


def test_exact_request_bytes():
    wire = sp.encode_request(sp.write(0x0102, 0x200, b"\xaa" * 512, fua=True))
    assert wire[:32] == struct.pack("<HHIQQQ", 4, 1, 512, 0x0102, 0x200, 0)
    assert wire[32:] == b"\xaa" * 512
    assert sp.encode_request(sp.negotiate(9)) == struct.pack("<HHIQQQII", 1, 0, 0, 9, 0, 0,
                                                             sp.PROTOCOL_VERSION, 0)
    assert sp.encode_request(sp.flush(1)) == struct.pack("<HHIQQQ", 5, 0, 0, 1, 0, 0)


def test_each_response_round_trips():
    data = b"\x5a" * 4096
    cases = [
        sp.complete(sp.negotiate(1), version=sp.PROTOCOL_VERSION),
        sp.complete(sp.negotiate(1), S.VERSION_MISMATCH, version=0x10000),
        sp.complete(sp.negotiate(1), S.INVALID_REQUEST),
        sp.complete(sp.query_properties(2), properties=PROPS),
        sp.complete(sp.query_properties(2), S.BUSY),
        sp.complete(sp.read(3, 0, 4096), data=data),
        sp.complete(sp.read(3, 0, 4096), S.OUT_OF_RANGE),
        sp.complete(sp.read(4, 0, 4096, buffer_offset=0)),
        sp.complete(sp.write(5, 0, data)),
        sp.complete(sp.write_from_buffer(6, 0, 4096, 0), S.IO_ERROR),
        sp.complete(sp.flush(7)),
        sp.complete(sp.flush(7), S.IO_ERROR),
    ]
    for resp in cases:
        assert roundtrip_response(resp) == resp
    assert roundtrip_response(cases[3]).properties == PROPS
    assert cases[8].length == 4096 and cases[7].flags == F.DATA_IN_BUFFER
    assert cases[6].length == 0 and cases[6].data == b""


def test_large_transfers_are_one_copy_and_no_copy():
    mib = bytes(range(256)) * 4096
    wire = sp.encode_request(sp.write(1, 0, mib))
    req = sp.decode_request(wire)
    assert isinstance(req.data, memoryview) and req.data.obj is wire and req.data == mib
    resp = sp.decode_response(sp.encode_response(sp.complete(sp.read(2, 0, len(mib)), data=mib)))
    assert resp.length == 1 << 20 and bytes(resp.data) == mib
    eight = sp.MAX_TRANSFER_LIMIT
    assert sp.decode_request(sp.encode_request(sp.read(3, 0, eight))).length == eight
    with pytest.raises(ValueError, match="exceeds"):
        sp.encode_request(sp.read(3, 0, eight + 1))


@pytest.mark.parametrize("make,match", [
    (lambda: sp.read(0, 0, 512), "transaction id"),
    (lambda: sp.read(1 << 64, 0, 512), "transaction id"),
    (lambda: sp.read(1, U64, 512), "overflows"),
    (lambda: sp.read(1, -512, 512), "overflows"),
    (lambda: sp.Request(Op.FLUSH, 1, offset=4), "carries"),
    (lambda: sp.Request(Op.READ, 1, 0, 512, F.FUA), "flags"),
    (lambda: sp.Request(Op.READ, 1, 0, 512, buffer_offset=8), "without DATA_IN_BUFFER"),
    (lambda: sp.Request(Op.WRITE, 1, 0, 512, data=b"x"), "bytes of data"),
    (lambda: sp.Request(Op.READ, 1, 0, 512, data=b"x" * 512), "no inline data"),
    (lambda: sp.negotiate(1, version=0), "version"),
])
def test_encode_refuses_what_the_protocol_cannot_say(make, match):
    with pytest.raises(ValueError, match=match):
        sp.encode_request(make())


def header(op=3, flags=0, length=512, txid=1, offset=0, buffer_offset=0) -> bytes:
    return struct.pack("<HHIQQQ", op, flags, length, txid, offset, buffer_offset)


@pytest.mark.parametrize("wire,match", [
    (b"", "shorter"),
    (header()[:31], "shorter"),
    (header(op=0), "unknown operation"),
    (header(op=99), "unknown operation"),
    (header(flags=1), "flags"),
    (header(op=4, flags=4, length=0), "flags"),
    (header(txid=0), "transaction id"),
    (header(length=sp.MAX_TRANSFER_LIMIT + 1), "exceeds"),
    (header(length=0xFFFFFFFF), "exceeds"),
    (header(offset=U64), "overflows"),
    (header(flags=2, buffer_offset=U64), "overflows"),
    (header(buffer_offset=4), "without DATA_IN_BUFFER"),
    (header(op=5, length=0, offset=1), "carries"),
    (header(op=2, length=4), "carries"),
    (header() + b"x", "body"),
    (header(op=4, length=512) + bytes(511), "body"),
    (header(op=4, length=512) + bytes(513), "body"),
    (header(op=4, flags=2, length=512) + bytes(512), "body"),
    (header(op=1, length=0), "version body"),
    (header(op=1, length=0) + struct.pack("<II", 0, 0), "version"),
    (header(op=1, length=0) + struct.pack("<II", 1, 7), "reserved"),
])
def test_decode_refuses_malformed_requests(wire, match):
    with pytest.raises(sp.StorProtocolError, match=match) as info:
        sp.decode_request(wire)
    assert isinstance(info.value, RingProtocolError)  # the channel code fails the channel


def resp_header(op=3, flags=0, status=0, txid=1, length=0, reserved=0) -> bytes:
    return struct.pack("<HHIQII", op, flags, status, txid, length, reserved)


@pytest.mark.parametrize("wire,match", [
    (resp_header()[:23], "shorter"),
    (resp_header(op=7), "unknown operation"),
    (resp_header(status=77), "unknown READ status"),
    (resp_header(txid=0), "transaction id 0"),
    (resp_header(reserved=1), "reserved"),
    (resp_header(flags=1), "flags"),
    (resp_header(op=5, flags=2), "flags"),
    (resp_header(op=5, length=4), "length"),
    (resp_header(status=7, length=512), "length"),
    (resp_header(length=sp.MAX_TRANSFER_LIMIT + 1), "length"),
    (resp_header(length=512) + bytes(100), "body"),
    (resp_header(flags=2, length=512) + bytes(512), "body"),
    (resp_header(op=5) + b"x", "body"),
    (resp_header(op=1), "version body"),
    (resp_header(op=2), "properties are 0 bytes"),
    (resp_header(op=2) + struct.pack("<QIIIIII16s", 1000, 512, 4096, 1 << 20, 8, 0, 0, bytes(16)),
     "whole logical sectors"),
    (resp_header(op=2) + struct.pack("<QIIIIII16s", 1024, 520, 4096, 1 << 20, 8, 0, 0, bytes(16)),
     "logical sector size"),
    (resp_header(op=2) + struct.pack("<QIIIIII16s", 1024, 512, 4096, 1 << 30, 8, 0, 0, bytes(16)),
     "max_transfer"),
    (resp_header(op=2) + struct.pack("<QIIIIII16s", 1024, 512, 4096, 1 << 20, 0, 0, 0, bytes(16)),
     "max_outstanding"),
    (resp_header(op=2) + struct.pack("<QIIIIII16s", 1024, 512, 4096, 1 << 20, 8, 2, 0, bytes(16)),
     "unknown flags"),
])
def test_decode_refuses_malformed_responses(wire, match):
    with pytest.raises(sp.StorProtocolError, match=match):
        sp.decode_response(wire)


def test_decode_takes_any_buffer_and_refuses_non_buffers():
    wire = sp.encode_request(sp.write(3, 0, b"z" * 512))
    for buf in (bytearray(wire), memoryview(wire), memoryview(wire).cast("B", [len(wire)])):
        assert bytes(sp.decode_request(buf).data) == b"z" * 512
    with pytest.raises(sp.StorProtocolError, match="bytes"):
        sp.decode_request("text")
    with pytest.raises(sp.StorProtocolError, match="bytes"):
        sp.decode_response(12)


# --- hostile input: whatever the bytes, a request/response or a StorProtocolError -----------------

requests = st.one_of(
    st.builds(sp.negotiate, st.integers(1, U64), st.integers(1, (1 << 32) - 1)),
    st.builds(sp.query_properties, st.integers(1, U64)),
    st.builds(sp.flush, st.integers(1, U64)),
    st.builds(sp.read, st.integers(1, U64), st.integers(0, 1 << 40), st.integers(0, 1 << 16),
              st.one_of(st.none(), st.integers(0, 1 << 30))),
    st.builds(sp.write, st.integers(1, U64), st.integers(0, 1 << 40), st.binary(max_size=2048),
              st.booleans()),
    st.builds(sp.write_from_buffer, st.integers(1, U64), st.integers(0, 1 << 40),
              st.integers(0, 1 << 16), st.integers(0, 1 << 30), st.booleans()),
)


@settings(max_examples=400, deadline=None)
@given(requests)
def test_requests_round_trip(req):
    assert roundtrip_request(req) == req


@settings(max_examples=400, deadline=None)
@given(requests, st.sampled_from(list(S)), st.binary(max_size=64))
def test_responses_round_trip(req, status, noise):
    if req.operation == Op.READ and req.inline and status == S.SUCCESS:
        resp = sp.complete(req, status, data=(noise * (req.length // max(1, len(noise)) + 1))
                           [:req.length] if noise else bytes(req.length))
    elif req.operation == Op.QUERY_PROPERTIES and status == S.SUCCESS:
        resp = sp.complete(req, properties=PROPS)
    else:
        resp = sp.complete(req, status, version=sp.PROTOCOL_VERSION)
    back = roundtrip_response(resp)
    assert back == resp
    tracker = sp.Outstanding(4)
    tracker._in_flight[req.txid] = req  # as if issued with this txid
    assert tracker.complete(back) is req and len(tracker) == 0


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoders(data):
    for decode in (sp.decode_request, sp.decode_response):
        try:
            decode(data)
        except sp.StorProtocolError:
            pass


@settings(max_examples=1000, deadline=None)
@given(requests, st.data())
def test_mutated_messages_never_crash_the_decoders(req, data):
    wire = bytearray(sp.encode_request(req))
    resp = bytearray(sp.encode_response(sp.complete(req, S.SUCCESS, properties=PROPS,
                                                    version=sp.PROTOCOL_VERSION,
                                                    data=bytes(req.length))))
    for buf, decode in ((wire, sp.decode_request), (resp, sp.decode_response)):
        edits = data.draw(st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(0, 255)),
                                   max_size=4))
        for pos, value in edits:
            buf[pos] = value
        cut = data.draw(st.integers(0, len(buf)))
        for candidate in (bytes(buf), bytes(buf[:cut]), bytes(buf) + b"\0"):
            try:
                decode(candidate)
            except sp.StorProtocolError:
                pass


# --- semantics and the VSC's table ------------------------------------------------------------

@pytest.mark.parametrize("req,status", [
    (sp.read(1, 0, 512), S.SUCCESS),
    (sp.read(1, (64 << 20) - 4096, 4096), S.SUCCESS),
    (sp.read(1, (64 << 20) - 512, 1024), S.OUT_OF_RANGE),
    (sp.read(1, 100, 512), S.MISALIGNED),
    (sp.read(1, 0, 100), S.MISALIGNED),
    (sp.read(1, 0, 2 << 20), S.TOO_LARGE),
    (sp.write(1, 0, bytes(512)), S.SUCCESS),
    (sp.flush(1), S.SUCCESS),
    (sp.negotiate(1), S.SUCCESS),
])
def test_check_request_against_the_disk(req, status):
    assert sp.check_request(req, PROPS) == status


def test_check_request_on_read_only_disk():
    ro = sp.DiskProperties(size=1 << 20, read_only=True)
    assert sp.check_request(sp.write(1, 0, bytes(512)), ro) == S.READ_ONLY
    assert sp.check_request(sp.read(1, 0, 512), ro) == S.SUCCESS
    assert roundtrip_response(sp.complete(sp.query_properties(1), properties=ro)).properties == ro


def test_outstanding_tracks_matches_and_lists_for_reissue():
    t = sp.Outstanding(limit=3)
    r1 = t.issue(sp.write, 0, b"a" * 512)
    r2 = t.issue(sp.read, 512, 512)
    r3 = t.issue(sp.flush)
    assert (r1.txid, r2.txid, r3.txid) == (1, 2, 3) and len(t) == 3
    with pytest.raises(HvError) as info:
        t.issue(sp.flush)
    assert info.value.code == "Busy"
    assert t.pending() == [r1, r2, r3]
    with pytest.raises(sp.StorProtocolError, match="unknown txid"):
        t.complete(sp.Response(Op.FLUSH, 99))
    with pytest.raises(sp.StorProtocolError, match="answers a WRITE"):
        t.complete(sp.Response(Op.FLUSH, 1))
    with pytest.raises(sp.StorProtocolError, match="moved 256 bytes"):
        t.complete(sp.Response(Op.READ, 2, length=256, data=bytes(256)))
    with pytest.raises(sp.StorProtocolError, match="data mode"):
        t.complete(sp.Response(Op.READ, 2, length=512, flags=F.DATA_IN_BUFFER))
    assert t.complete(sp.complete(r2, S.IO_ERROR)) is r2  # a failure fits any request
    assert t.complete(sp.complete(r1)) is r1
    assert t.pending() == [r3]
    r4 = t.issue(sp.flush)
    assert r4.txid == 4
    t._next = 3  # wrap onto a txid still in flight: skipped
    assert t.issue(sp.flush).txid == 5
    with pytest.raises(ValueError):
        sp.Outstanding(0)


def test_a_guest_and_a_vsp_over_a_ring_pair():
    """A fake VSC and a minimal VSP (a bytearray disk) speak the protocol over VMBus rings."""
    guest, host = ring_pair(4 << 20)
    disk = bytearray(PROPS.size)
    vsc = sp.Outstanding(PROPS.max_outstanding)

    def send(req):
        guest.send(PacketType.DATA, sp.encode_request(req), req.txid,
                   PacketFlags.COMPLETION_REQUESTED)

    def serve():
        for packet in host.receive_all():
            req = sp.decode_request(packet.payload)
            assert packet.txid == req.txid
            status = sp.check_request(req, PROPS)
            if status != S.SUCCESS:
                resp = sp.complete(req, status)
            elif req.operation == Op.NEGOTIATE:
                resp = sp.complete(req, version=min(req.version, sp.PROTOCOL_VERSION))
            elif req.operation == Op.QUERY_PROPERTIES:
                resp = sp.complete(req, properties=PROPS)
            elif req.operation == Op.READ:
                resp = sp.complete(req, data=memoryview(disk)[req.offset:req.offset + req.length])
            elif req.operation == Op.WRITE:
                disk[req.offset:req.offset + req.length] = req.data
                resp = sp.complete(req)
            else:
                resp = sp.complete(req)
            host.send(PacketType.COMPLETION, sp.encode_response(resp), req.txid)

    def answers():
        return {r.txid: (vsc.complete(r), r) for r in
                (sp.decode_response(p.payload) for p in guest.receive_all())}

    send(vsc.issue(sp.negotiate))
    send(vsc.issue(sp.query_properties))
    serve()
    done = answers()
    assert done[1][1].version == sp.PROTOCOL_VERSION and done[2][1].properties == PROPS
    mib = bytes(range(256)) * 4096
    writes = [vsc.issue(sp.write, i << 20, mib) for i in range(3)]  # 3 MiB in flight at once
    for w in writes:
        send(w)
    send(vsc.issue(sp.flush))
    serve()
    assert all(r.status == S.SUCCESS for _req, r in answers().values())
    reads = [vsc.issue(sp.read, (1 << 20) - 512, 1024), vsc.issue(sp.read, PROPS.size, 512)]
    for r in reads:
        send(r)
    serve()
    got = answers()
    assert bytes(got[reads[0].txid][1].data) == mib[-512:] + mib[:512]
    assert got[reads[1].txid][1].status == S.OUT_OF_RANGE
    assert len(vsc) == 0 and disk[:3 << 20] == mib * 3

"""The wire envelope (pure): requests parse or fail with BadRequest naming the problem."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.runtime import wire
from hypervisor.runtime.errors import ERROR_CODES, HvError


def test_round_trip_request_and_replies():
    frames = wire.request_frames("r1", "get-vm", {"vms": ["a"]}, deadline_ms=500)
    req = wire.parse_request(frames)
    assert req == {"id": "r1", "op": "get-vm", "args": {"vms": ["a"]}, "deadline_ms": 500, "auth": None}
    ok = wire.parse_reply(wire.ok_frames("r1", [1, 2]))
    assert ok == {"id": "r1", "ok": True, "result": [1, 2]}
    err = wire.parse_reply(wire.error_frames("r1", HvError("Busy", "later")))
    assert err["error"] == {"code": "Busy", "message": "later", "retryable": True}


@pytest.mark.parametrize("frames,needle", [
    ([b"OTHER", wire.pack({})], "protocol tag"),
    ([wire.TAG], "protocol tag"),
    ([wire.TAG, b"\xc1"], "undecodable"),
    ([wire.TAG, wire.pack([1])], "map"),
    ([wire.TAG, wire.pack({"op": "x", "args": {}})], "'id'"),
    ([wire.TAG, wire.pack({"id": "1", "args": {}})], "'op'"),
    ([wire.TAG, wire.pack({"id": "1", "op": "x", "args": [1]})], "'args'"),
    ([wire.TAG, wire.pack({"id": "1", "op": "x", "deadline_ms": -5})], "deadline_ms"),
    ([wire.TAG, wire.pack({"id": "1", "op": "x", "deadline_ms": True})], "deadline_ms"),
    ([wire.TAG, msgpack.packb({1: "int key"})], "undecodable"),
])
def test_malformed_requests_name_the_problem(frames, needle):
    with pytest.raises(HvError) as exc:
        wire.parse_request(frames)
    assert exc.value.code == "BadRequest" and needle in exc.value.message


def test_oversized_payload_is_refused_before_decoding():
    with pytest.raises(HvError) as exc:
        wire.unpack(b"\x00" * (wire.MAX_MESSAGE_BYTES + 1))
    assert "exceeds" in exc.value.message


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_arbitrary_frames_never_raise_anything_but_badrequest(frames):
    try:
        wire.parse_request(frames)
    except HvError as err:
        assert err.code == "BadRequest"
    wire.request_id_of(frames or [b""])


def test_error_codes_are_one_table():
    assert {"BadRequest", "Unauthorized", "NotFound", "AlreadyExists", "InvalidState",
            "InsufficientMemory", "InsufficientCpu", "Busy", "Timeout", "DriverFault",
            "Internal"} <= set(ERROR_CODES)
    with pytest.raises(ValueError):
        HvError("NoSuchCode", "x")
    assert HvError.from_wire({"code": "weird"}).code == "Internal"

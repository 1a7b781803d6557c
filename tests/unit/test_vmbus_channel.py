"""The VMBus channel lifecycle: transitions, version negotiation, invalid inputs, the table."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.runtime.errors import HvError
from worker.vmbus.channel import (
    Channel, ChannelFailed, ChannelState as S, ChannelTable, CloseDevice, Offer, OpenDevice,
    SendCloseResponse, SendOffer, SendOpenResult, SendRescind)


def offer(instance="disk0", versions=(1, 2, 3)):
    return Offer("storvsp", instance, 8192, versions)


def channel_in(state: S) -> Channel:
    """A channel driven into `state` through the public inputs."""
    ch = ChannelTable().offer(offer())[0]
    path = {
        S.OFFERED: [],
        S.OPENING: [lambda: ch.open_request([2])],
        S.OPEN: [lambda: ch.open_request([2]), ch.accept],
        S.CLOSING: [lambda: ch.open_request([2]), ch.accept, ch.close],
        S.CLOSED: [lambda: ch.open_request([2]), ch.accept, ch.close, ch.close_complete],
        S.RESCINDED: [ch.rescind],
        S.FAILED: [lambda: ch.protocol_error("garbage")],
    }[state]
    for step in path:
        step()
    assert ch.state is state
    return ch


def test_full_lifecycle_actions():
    table = ChannelTable()
    ch, actions = table.offer(offer())
    assert actions == [SendOffer(1, offer())] and ch.state is S.OFFERED
    assert ch.open_request([1, 2, 3, 4]) == [OpenDevice(1, 3)]
    assert (ch.state, ch.version) == (S.OPENING, 3)
    assert ch.accept() == [SendOpenResult(1, 3)]
    assert ch.state is S.OPEN
    assert ch.close() == [CloseDevice(1)] and ch.state is S.CLOSING
    assert ch.close_complete() == [SendCloseResponse(1)]
    assert (ch.state, ch.version) == (S.CLOSED, None)
    assert ch.open_request([1]) == [OpenDevice(1, 1)]           # reopen, another version
    assert ch.accept() == [SendOpenResult(1, 1)]
    assert ch.rescind() == [CloseDevice(1), SendRescind(1)]
    assert ch.state is S.RESCINDED


@pytest.mark.parametrize("host,guest,chosen", [
    ((1,), (1,), 1),
    ((1, 2, 3), (3, 2, 1), 3),
    ((1, 2, 3), (2,), 2),
    ((0x30000, 0x20001), (0x20001, 0x10000), 0x20001),
    ((5, 1), (9, 5, 1), 5),
])
def test_negotiates_highest_common_version(host, guest, chosen):
    ch = ChannelTable().offer(offer(versions=host))[0]
    assert ch.open_request(list(guest)) == [OpenDevice(ch.channel_id, chosen)]


@pytest.mark.parametrize("start", [S.OFFERED, S.CLOSED])
def test_no_common_version_refuses_cleanly(start):
    ch = channel_in(start)
    [result] = ch.open_request([7, 8])
    assert isinstance(result, SendOpenResult) and result.version is None
    assert "[1, 2, 3]" in result.reason and "[7, 8]" in result.reason
    assert ch.state is start and ch.version is None


@pytest.mark.parametrize("start", [S.OFFERED, S.CLOSED])
def test_device_refusal_returns_to_idle(start):
    ch = channel_in(start)
    ch.open_request([1])
    [result] = ch.refuse("backing file missing")
    assert result.version is None and "backing file missing" in result.reason
    assert ch.state is start and ch.version is None


@pytest.mark.parametrize("versions", [[], "12", [1, 1], [-1], [1 << 32], [True], [1.0],
                                      list(range(40)), None])
def test_malformed_open_request_is_bad_request(versions):
    ch = channel_in(S.OFFERED)
    with pytest.raises(HvError) as err:
        ch.open_request(versions)
    assert err.value.code == "BadRequest" and ch.state is S.OFFERED


# Which inputs each state accepts; every other (state, input) pair must raise InvalidState.
INPUTS = {
    "open_request": lambda ch: ch.open_request([1]),
    "accept": lambda ch: ch.accept(),
    "refuse": lambda ch: ch.refuse("no"),
    "close": lambda ch: ch.close(),
    "close_complete": lambda ch: ch.close_complete(),
    "rescind": lambda ch: ch.rescind(),
    "protocol_error": lambda ch: ch.protocol_error("bad"),
}
ALLOWED = {
    S.OFFERED: {"open_request", "rescind", "protocol_error"},
    S.OPENING: {"accept", "refuse", "rescind", "protocol_error"},
    S.OPEN: {"close", "rescind", "protocol_error"},
    S.CLOSING: {"close_complete", "rescind", "protocol_error"},
    S.CLOSED: {"open_request", "rescind", "protocol_error"},
    S.RESCINDED: set(),
    S.FAILED: {"rescind"},
}


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("name", list(INPUTS))
def test_transition_table(state, name):
    ch = channel_in(state)
    if name in ALLOWED[state]:
        assert INPUTS[name](ch)                  # every accepted input produces an action
    else:
        with pytest.raises(HvError) as err:
            INPUTS[name](ch)
        assert err.value.code == "InvalidState"
        assert state.value in err.value.message and ch.state is state


@pytest.mark.parametrize("state,device_told", [
    (S.OFFERED, False), (S.OPENING, True), (S.OPEN, True), (S.CLOSING, False), (S.CLOSED, False)])
def test_protocol_error_fails_and_stops_device(state, device_told):
    ch = channel_in(state)
    actions = ch.protocol_error("bad packet type 3")
    assert actions[-1] == ChannelFailed(ch.channel_id, "bad packet type 3")
    assert (CloseDevice(ch.channel_id) in actions) == device_told
    assert (ch.state, ch.failure, ch.version) == (S.FAILED, "bad packet type 3", None)
    assert ch.rescind() == [SendRescind(ch.channel_id)]


@pytest.mark.parametrize("bad", [
    dict(class_id=""), dict(instance_id="x" * 200), dict(ring_size=100), dict(ring_size=8),
    dict(ring_size=True), dict(versions=()), dict(versions=(1, 1))])
def test_offer_validation(bad):
    fields = dict(class_id="storvsp", instance_id="d", ring_size=4096, versions=(1,)) | bad
    with pytest.raises(HvError) as err:
        Offer(**fields)
    assert err.value.code == "BadRequest"


def test_offer_wire_round_trip():
    o = offer(versions=[2, 1])
    assert Offer.from_wire(o.to_wire()) == o and o.versions == (2, 1)
    with pytest.raises(HvError, match="lacks 'versions'"):
        Offer.from_wire({"class_id": "a", "instance_id": "b", "ring_size": 4096})
    with pytest.raises(HvError):
        Offer.from_wire([1, 2])


def test_table_ids_duplicates_release_and_reoffer():
    table = ChannelTable()
    a, _ = table.offer(offer("a"))
    b, _ = table.offer(offer("b"))
    assert (a.channel_id, b.channel_id) == (1, 2) and table.get(2) is b
    with pytest.raises(HvError) as err:
        table.offer(offer("a"))
    assert err.value.code == "AlreadyExists"
    with pytest.raises(HvError) as err:
        table.get(99)
    assert err.value.code == "NotFound"
    a.open_request([1])
    a.accept()
    new, actions = table.reoffer(a.channel_id)           # a driver host restarted
    assert new.channel_id == 3 and new.offer == a.offer and a.state is S.RESCINDED
    assert actions == [CloseDevice(1), SendRescind(1), SendOffer(3, a.offer)]
    with pytest.raises(HvError):
        table.release(b.channel_id)                      # not rescinded yet
    table.release(a.channel_id)
    with pytest.raises(HvError):
        table.get(a.channel_id)
    assert table.rescind_all() == [SendRescind(2), SendRescind(3)]
    assert table.rescind_all() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(INPUTS)), max_size=30))
def test_random_inputs_keep_invariants(names):
    ch = channel_in(S.OFFERED)
    failed = False
    for name in names:
        before = ch.state
        try:
            actions = INPUTS[name](ch)
        except HvError as err:
            assert err.code == "InvalidState"
            assert name not in ALLOWED[before] and ch.state is before
            continue
        failed |= ch.state is S.FAILED
        assert name in ALLOWED[before] and actions
        assert all(a.channel_id == ch.channel_id for a in actions)
        assert (ch.version is not None) == (ch.state in (S.OPENING, S.OPEN, S.CLOSING))
        assert (ch.failure is not None) == failed

"""Control messages over a ring, transaction tracking, and a whole open/rescind conversation
between a fake VSC (the guest) and the channel state machine (the host), all in memory."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.runtime.errors import HvError
from worker.vmbus import messages as m
from worker.vmbus.channel import (
    ChannelTable, CloseDevice, Offer, OpenDevice, SendCloseResponse, SendOffer, SendOpenResult,
    SendRescind)
from worker.vmbus.ring import Packet, PacketType, RingProtocolError, ring_pair

DATA, COMP = PacketType.DATA, PacketType.COMPLETION


def test_request_oneway_completion_round_trip():
    guest, host = ring_pair(4096)
    m.send_request(guest.out, 7, m.OPEN, {"channel_id": 1, "versions": [1, 2]})
    m.send_oneway(guest.out, m.RELEASED, {"channel_id": 3})
    req, one = [m.decode(p) for p in host.receive_all()]
    assert req == m.Message(m.OPEN, {"channel_id": 1, "versions": [1, 2]}, 7)
    assert req.expects_reply and not one.expects_reply and one.txid == 0
    m.send_completion(host.out, req.txid, m.OPEN_RESULT, {"version": 2})
    [done] = [m.decode(p) for p in guest.receive_all()]
    assert done.is_completion and not done.expects_reply and done.txid == 7


@pytest.mark.parametrize("packet,match", [
    (Packet(PacketType.CANCEL, b"", 1), "carries no message"),
    (Packet(DATA, b"\xc1"), "undecodable"),
    (Packet(DATA, b""), "undecodable"),
    (Packet(DATA, msgpack.packb([1, 2])), "kind, body"),
    (Packet(DATA, msgpack.packb({"kind": "x", "body": {}, "more": 1})), "kind, body"),
    (Packet(DATA, msgpack.packb({"kind": 5, "body": {}})), "bad kind"),
    (Packet(DATA, msgpack.packb({"kind": "", "body": {}})), "bad kind"),
    (Packet(DATA, msgpack.packb({"kind": "x", "body": [1]})), "not a map"),
    (Packet(DATA, msgpack.packb({"kind": "x", "body": {}}), 5, 0), "disagrees"),
    (Packet(DATA, msgpack.packb({"kind": "x", "body": {}}), 0, 1), "disagrees"),
    (Packet(COMP, msgpack.packb({"kind": "x", "body": {}}), 0, 0), "completion"),
    (Packet(COMP, msgpack.packb({"kind": "x", "body": {}}), 3, 1), "completion"),
])
def test_decode_rejects_malformed_packets(packet, match):
    with pytest.raises(RingProtocolError, match=match):
        m.decode(packet)


def test_encode_rejects_bad_arguments():
    guest, _ = ring_pair(4096)
    with pytest.raises(ValueError):
        m.encode("", {})
    with pytest.raises(ValueError):
        m.encode("x", [])
    with pytest.raises(ValueError):
        m.send_request(guest.out, 0, "x", {})


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=200), type_=st.sampled_from(list(PacketType)),
       txid=st.integers(0, 3), flags=st.integers(0, 1))
def test_decode_of_arbitrary_bytes_is_a_message_or_a_protocol_error(payload, type_, txid, flags):
    try:
        msg = m.decode(Packet(int(type_), payload, txid, flags))
    except RingProtocolError:
        return
    assert isinstance(msg.kind, str) and isinstance(msg.body, dict)


def test_transactions():
    tx = m.Transactions(limit=2)
    a = tx.begin(m.OPEN, {"channel_id": 1})
    b = tx.begin(m.CLOSE, {"channel_id": 2})
    assert a != b and 0 not in (a, b)
    with pytest.raises(HvError) as err:
        tx.begin(m.OPEN, {})
    assert err.value.code == "Busy"
    assert tx.complete(m.Message(m.OPEN_RESULT, {}, a, True)) == (m.OPEN, {"channel_id": 1})
    with pytest.raises(RingProtocolError, match="unknown txid"):
        tx.complete(m.Message(m.OPEN_RESULT, {}, a, True))          # answered twice
    with pytest.raises(RingProtocolError, match="not a completion"):
        tx.complete(m.Message(m.OPEN, {}, b))
    c = tx.begin(m.OPEN, {"channel_id": 3})
    assert list(tx.in_flight()) == [b, c]
    assert tx.abandon_all() == [(m.CLOSE, {"channel_id": 2}), (m.OPEN, {"channel_id": 3})]
    assert tx.in_flight() == {}


# --- a whole conversation: fake VSC <-> control ring <-> host glue <-> ChannelTable ----------

class FakeVsc:
    """The guest's VMBus driver, scripted: learns offers, opens with its versions, closes."""

    def __init__(self, endpoint, versions):
        self.ep, self.versions, self.tx = endpoint, versions, m.Transactions()
        self.offers: dict[int, Offer] = {}
        self.opened: dict[int, int] = {}
        self.refused: dict[int, str] = {}
        self.rescinded: list[int] = []

    def open(self, channel_id):
        body = {"channel_id": channel_id, "versions": self.versions}
        m.send_request(self.ep.out, self.tx.begin(m.OPEN, body), m.OPEN, body)

    def close(self, channel_id):
        body = {"channel_id": channel_id}
        m.send_request(self.ep.out, self.tx.begin(m.CLOSE, body), m.CLOSE, body)

    def poll(self):
        for msg in map(m.decode, self.ep.receive_all()):
            if msg.kind == m.OFFER:
                self.offers[msg.body["channel_id"]] = Offer.from_wire(msg.body["offer"])
            elif msg.kind == m.RESCIND:
                self.rescinded.append(msg.body["channel_id"])
                m.send_oneway(self.ep.out, m.RELEASED, {"channel_id": msg.body["channel_id"]})
            elif msg.kind == m.OPEN_RESULT:
                _, req = self.tx.complete(msg)
                if msg.body["version"] is None:
                    self.refused[req["channel_id"]] = msg.body["reason"]
                else:
                    self.opened[req["channel_id"]] = msg.body["version"]
            elif msg.kind == m.CLOSE_RESPONSE:
                _, req = self.tx.complete(msg)
                self.opened.pop(req["channel_id"])


class FakeHost:
    """The worker's side: guest messages in, channel inputs, actions out; the VSP accepts."""

    def __init__(self, endpoint):
        self.ep, self.table = endpoint, ChannelTable()
        self.pending: dict[int, int] = {}        # channel id -> txid of the guest's request
        self.device_log: list[tuple[str, int]] = []

    def carry_out(self, actions):
        for a in actions:
            cid = a.channel_id
            if isinstance(a, SendOffer):
                m.send_oneway(self.ep.out, m.OFFER, {"channel_id": cid, "offer": a.offer.to_wire()})
            elif isinstance(a, OpenDevice):
                self.device_log.append(("open", a.version))
                self.carry_out(self.table.get(cid).accept())
            elif isinstance(a, SendOpenResult):
                m.send_completion(self.ep.out, self.pending.pop(cid), m.OPEN_RESULT,
                                  {"channel_id": cid, "version": a.version, "reason": a.reason})
            elif isinstance(a, CloseDevice):
                self.device_log.append(("close", cid))
                if self.table.get(cid).state.value == "Closing":
                    self.carry_out(self.table.get(cid).close_complete())
            elif isinstance(a, SendCloseResponse):
                m.send_completion(self.ep.out, self.pending.pop(cid), m.CLOSE_RESPONSE,
                                  {"channel_id": cid})
            elif isinstance(a, SendRescind):
                m.send_oneway(self.ep.out, m.RESCIND, {"channel_id": cid})

    def poll(self):
        for msg in map(m.decode, self.ep.receive_all()):
            ch = self.table.get(msg.body["channel_id"])
            if msg.kind == m.OPEN:
                self.pending[ch.channel_id] = msg.txid
                self.carry_out(ch.open_request(msg.body["versions"]))
            elif msg.kind == m.CLOSE:
                self.pending[ch.channel_id] = msg.txid
                self.carry_out(ch.close())
            elif msg.kind == m.RELEASED:
                self.table.release(ch.channel_id)


def test_guest_opens_closes_and_survives_a_reoffer():
    guest_ep, host_ep = ring_pair(4096)
    host, vsc = FakeHost(host_ep), FakeVsc(guest_ep, versions=[2, 3, 4])
    disk, _ = host.table.offer(Offer("storvsp", "disk0", 16384, (1, 2, 3)))
    host.carry_out([SendOffer(disk.channel_id, disk.offer)])
    nic, actions = host.table.offer(Offer("netvsp", "nic0", 16384, (5,)))
    host.carry_out(actions)
    vsc.poll()
    assert set(vsc.offers) == {disk.channel_id, nic.channel_id}

    vsc.open(disk.channel_id)
    vsc.open(nic.channel_id)
    host.poll()
    vsc.poll()
    assert vsc.opened == {disk.channel_id: 3}
    assert "[5]" in vsc.refused[nic.channel_id] and "[2, 3, 4]" in vsc.refused[nic.channel_id]

    # The driver host restarts: the disk is rescinded and offered again; the guest reopens.
    new_disk, actions = host.table.reoffer(disk.channel_id)
    host.carry_out(actions)
    vsc.poll()
    assert vsc.rescinded == [disk.channel_id] and new_disk.channel_id in vsc.offers
    vsc.open(new_disk.channel_id)
    host.poll()
    vsc.poll()
    assert vsc.opened[new_disk.channel_id] == 3
    with pytest.raises(HvError):
        host.table.get(disk.channel_id)          # released by the guest

    vsc.close(new_disk.channel_id)
    host.poll()
    vsc.poll()
    assert new_disk.channel_id not in vsc.opened and new_disk.state.value == "Closed"
    assert vsc.tx.in_flight() == {}
    assert host.device_log == [("open", 3), ("close", 1), ("open", 3), ("close", 3)]

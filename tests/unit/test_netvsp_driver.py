"""The netvsp driver's switching shell with scripted channels (no driver host, no I/O), and the
channel protocol's batch codec (hypothesis: any byte string decodes or is refused cleanly)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parent.drivers.driver_api import DriverChannel
from parent.drivers.netvsp import NetvspDriver
from worker.tap_device import VNET_HDR_SIZE
from worker.vmbus import netvsp_protocol as proto
from worker.vmbus.ring import Packet, PacketFlags, PacketType, RingProtocolError

MAC_A, MAC_B, MAC_C = "00155D000001", "00155D000002", "00155D000003"


class FakeEndpoint:
    def __init__(self):
        self.sent: list[tuple[int, bytes]] = []
        self.backlog: list = []
        self.closed = False

    def send_packet(self, type, payload=b"", txid=0, flags=0):
        self.sent.append((type, bytes(payload)))

    def send_gather(self, type, pieces, n, txid=0, flags=0):
        payload = b"".join(pieces)
        assert len(payload) == n
        self.sent.append((type, payload))

    def frames(self) -> list[bytes]:
        return [f for _, p in self.sent for f in proto.decode_batch(p)]


def channel(iid: str, mac: str, index: int = 0) -> DriverChannel:
    ch = DriverChannel(None, hash(iid) & 0xFFFF, "vm", "vm", iid, 0x10000,
                       {"mac": mac, "index": str(index)})
    ch.endpoint = FakeEndpoint()
    return ch


def frame(dst: str, src: str) -> bytes:
    return bytes(VNET_HDR_SIZE) + bytes.fromhex(dst) + bytes.fromhex(src) + b"\x08\x00" + bytes(46)


def data(*frames: bytes) -> Packet:
    return Packet(PacketType.DATA, proto.encode_batch(list(frames)), 0, 0)


def config(**ports) -> dict:
    return {"switches": [{"id": "s1", "name": "lan", "type": "Private"}],
            "ports": {iid: {"switch": "s1", "mac": mac, "vlan": None, "mirroring": "None",
                            "max_bandwidth": 0, "spoofing": False, **extra}
                      for iid, (mac, extra) in ports.items()}}


@pytest.fixture
def lan():
    drv = NetvspDriver()
    drv.configure(config(a=(MAC_A, {}), b=(MAC_B, {}), c=(MAC_C, {"vlan": 5})))
    chans = {i: channel(i, m) for i, m in (("a", MAC_A), ("b", MAC_B), ("c", MAC_C))}
    for ch in chans.values():
        drv.open(ch)
    return drv, chans


def test_broadcast_reaches_the_same_vlan_in_one_batch(lan):
    drv, ch = lan
    f1, f2 = frame("ff" * 6, MAC_A), frame("ff" * 6, MAC_A)[:-1] + b"\x01"
    assert drv.packet(ch["a"], data(f1, f2)) is None
    assert ch["b"].endpoint.frames() == [f1, f2] and len(ch["b"].endpoint.sent) == 1
    assert ch["c"].endpoint.sent == [] and ch["a"].endpoint.sent == []


def test_query_answers_the_adapter_identity(lan):
    drv, ch = lan
    q = Packet(PacketType.DATA, b"", proto.QUERY_TXID, PacketFlags.COMPLETION_REQUESTED)
    assert proto.decode_info(drv.packet(ch["b"], q)) == (bytes.fromhex(MAC_B), 0)


def test_disconnected_port_drops_and_reconnect_works(lan):
    drv, ch = lan
    cfg = config(a=(MAC_A, {"switch": None}), b=(MAC_B, {}))
    drv.configure(cfg)
    drv.packet(ch["a"], data(frame("ff" * 6, MAC_A)))
    assert ch["b"].endpoint.sent == [] and drv.dropped_disconnected == 1
    drv.configure(config(a=(MAC_A, {}), b=(MAC_B, {})))
    drv.packet(ch["a"], data(frame("ff" * 6, MAC_A)))
    assert len(ch["b"].endpoint.frames()) == 1


def test_a_new_driver_gets_its_state_back_from_the_configuration(lan):
    """What a restarted switch host sees: the configuration again, then the channels reopen."""
    drv, _ = lan
    fresh = NetvspDriver()
    fresh.configure(config(a=(MAC_A, {"vlan": 9}), b=(MAC_B, {"vlan": 9, "mirroring": "Destination"})))
    a, b = channel("a", MAC_A), channel("b", MAC_B)
    fresh.open(a)
    fresh.open(b)
    port = fresh.switches["s1"].core.ports["b"]
    assert port.config.vlan == 9 and port.config.mirroring == "Destination"
    fresh.packet(a, data(frame(MAC_B, MAC_A)))          # unknown yet: flooded, then learned
    assert len(b.endpoint.frames()) == 1
    assert fresh.switches["s1"].core.macs


def test_full_ring_backlog_drops_and_counts(lan):
    drv, ch = lan
    ch["b"].endpoint.backlog = [None] * 64
    drv.packet(ch["a"], data(frame("ff" * 6, MAC_A)))
    assert ch["b"].endpoint.sent == []
    assert drv.stats()["ports"]["b"]["dropped_full"] == 1


def test_bandwidth_limit_queues_and_tick_releases(lan):
    drv, ch = lan
    drv.configure(config(a=(MAC_A, {"max_bandwidth": 1_000_000}), b=(MAC_B, {})))
    big = frame("ff" * 6, MAC_A) + bytes(1400)
    drv.packet(ch["a"], data(*[big] * 120))     # 120 x ~1.5 kB: more than the burst
    first = len(ch["b"].endpoint.frames())
    assert 0 < first < 120
    deadline = drv.next_deadline()
    assert deadline < float("inf")
    drv.tick(deadline + 1.0)
    assert len(ch["b"].endpoint.frames()) > first


def test_closed_channel_leaves_the_switch(lan):
    drv, ch = lan
    drv.close(ch["b"])
    assert "b" not in drv.switches["s1"].core.ports


@given(st.binary(max_size=300))
def test_decode_batch_accepts_or_refuses_cleanly(blob):
    try:
        frames = proto.decode_batch(blob)
    except RingProtocolError:
        return
    assert proto.encode_batch(frames) == blob


@given(st.lists(st.binary(min_size=1, max_size=2000), max_size=40))
def test_batches_round_trip(frames):
    payloads = proto.split_batches(frames, limit=4096)
    assert [f for p in payloads for f in proto.decode_batch(p)] == frames


@given(st.lists(st.binary(min_size=1, max_size=2000), min_size=1, max_size=40))
def test_gathered_batches_are_the_split_batches(frames):
    gathered = proto.gather_batches(frames, limit=4096)
    assert [b"".join(pieces) for pieces, _ in gathered] == proto.split_batches(frames, limit=4096)
    assert all(n == sum(len(p) for p in pieces) for pieces, n in gathered)


def test_mac_text():
    assert proto.mac_text(proto.mac_bytes("00:15:5d:0a:0b:0c")) == "00155D0A0B0C"
    with pytest.raises(ValueError):
        proto.mac_bytes("00155D0A0B")

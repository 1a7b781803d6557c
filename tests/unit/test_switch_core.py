"""The virtual switch's pure core: learning, ageing, flooding, VLAN isolation, spoofing,
mirroring, the token bucket and counters."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from parent.network.switch_core import BROADCAST, PortConfig, Switch

A, B, C, D = (bytes([0x00, 0x15, 0x5D, 0, 0, i]) for i in range(1, 5))


def frame(dst: bytes, src: bytes, size: int = 60, l2: int = 0) -> bytes:
    return bytes(l2) + dst + src + b"\x08\x00" + bytes(max(0, size - 14))


def targets(out):
    return sorted(p for p, _ in out)


def three_ports(**extra):
    sw = Switch("s")
    for pid, mac in (("a", A), ("b", B), ("c", C)):
        sw.set_port(pid, PortConfig(mac=mac, **extra.get(pid, {})))
    return sw


def test_unknown_unicast_floods_then_learned_goes_to_one_port():
    sw = three_ports()
    assert targets(sw.ingress("a", frame(B, A), 0.0)) == ["b", "c"]
    assert targets(sw.ingress("b", frame(A, B), 0.1)) == ["a"]      # A was learned
    assert targets(sw.ingress("a", frame(B, A), 0.2)) == ["b"]      # B was learned
    assert sw.ports["a"].counters.rx_frames == 2
    assert sw.ports["b"].counters.tx_frames == 2


def test_broadcast_floods_to_every_other_port():
    sw = three_ports()
    assert targets(sw.ingress("c", frame(BROADCAST, C), 0.0)) == ["a", "b"]


def test_ageing_forgets_a_silent_mac():
    sw = three_ports()
    sw.ingress("b", frame(BROADCAST, B), 0.0)
    assert targets(sw.ingress("a", frame(B, A), 1.0)) == ["b"]
    sw.ageing = 10.0
    assert targets(sw.ingress("a", frame(B, A), 20.0)) == ["b", "c"]   # aged out: flooded
    sw.ingress("b", frame(BROADCAST, B), 21.0)
    assert sw.age(40.0) == 2 and not sw.macs


def test_vlans_do_not_mix():
    sw = three_ports(a={"vlan": 10}, b={"vlan": 20}, c={"vlan": 10})
    assert targets(sw.ingress("a", frame(BROADCAST, A), 0.0)) == ["c"]
    assert targets(sw.ingress("a", frame(B, A), 0.0)) == ["c"]
    sw.ingress("b", frame(BROADCAST, B), 0.0)
    assert targets(sw.ingress("a", frame(B, A), 0.1)) == ["c"]   # B is known only in VLAN 20


def test_spoofed_source_is_dropped_and_counted_unless_allowed():
    sw = three_ports()
    assert sw.ingress("a", frame(BROADCAST, D), 0.0) == []
    assert sw.ports["a"].counters.dropped_spoofed == 1
    sw.set_port("a", PortConfig(mac=A, spoofing=True))
    assert targets(sw.ingress("a", frame(BROADCAST, D), 0.0)) == ["b", "c"]


def test_host_port_learns_any_mac():
    sw = Switch("s")
    sw.set_port("vm", PortConfig(mac=A))
    sw.set_port("host", PortConfig())
    sw.ingress("host", frame(BROADCAST, D), 0.0)
    assert targets(sw.ingress("vm", frame(D, A), 0.1)) == ["host"]


def test_mirroring_copies_source_traffic_both_ways_to_destination():
    sw = three_ports(a={"mirroring": "Source"}, c={"mirroring": "Destination"})
    sw.ingress("b", frame(BROADCAST, B), 0.0)
    sw.ingress("a", frame(BROADCAST, A), 0.0)
    assert targets(sw.ingress("a", frame(B, A), 0.1)) == ["b", "c"]   # sent by the source
    assert targets(sw.ingress("b", frame(A, B), 0.1)) == ["a", "c"]   # received by the source
    sw.set_port("a", PortConfig(mac=A))
    assert targets(sw.ingress("b", frame(A, B), 0.2)) == ["a"]


def test_token_bucket_holds_the_rate_and_queues():
    sw = Switch("s")
    sw.set_port("a", PortConfig(mac=A, max_bandwidth=8_000_000))   # 1 MB/s
    sw.set_port("b", PortConfig(mac=B))
    sent = 0
    now = 0.0
    for i in range(4000):                     # offer 4 MB within 2 s
        now = i * 0.0005
        for _, f in sw.ingress("a", frame(B, A, 1000), now) + sw.release(now):
            sent += len(f)
    t = now
    for _ in range(10000):                    # bounded: the queue drains in ~600 steps
        if sw.next_deadline() == float("inf"):
            break
        t = max(t, sw.next_deadline())
        for _, f in sw.release(t):
            sent += len(f)
    c = sw.ports["a"].counters
    assert c.dropped_rate > 0                        # the queue is bounded
    rate = (sent - 8 * 65536 * 2 / 8) / t            # minus the initial burst
    assert 0.9e6 <= rate <= 1.1e6, rate


def test_frames_with_an_offload_header():
    sw = Switch("s", l2_offset=10)
    sw.set_port("a", PortConfig(mac=A))
    sw.set_port("b", PortConfig(mac=B))
    out = sw.ingress("a", frame(BROADCAST, A, l2=10), 0.0)
    assert targets(out) == ["b"] and sw.ports["a"].counters.rx_bytes == 60
    assert sw.ingress("a", bytes(20), 0.0) == []      # too short: ignored


def test_removed_port_is_forgotten():
    sw = three_ports()
    sw.ingress("b", frame(BROADCAST, B), 0.0)
    sw.remove_port("b")
    assert targets(sw.ingress("a", frame(B, A), 0.1)) == ["c"]


macs = st.sampled_from([A, B, C, D, BROADCAST])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), macs, macs,
                          st.floats(0, 1000)), max_size=60),
       st.lists(st.sampled_from([None, 10, 20]), min_size=4, max_size=4))
def test_invariants(events, vlans):
    """Never back to the sender, never across VLANs (mirror destinations apart), counters add up."""
    sw = Switch("s", ageing=50.0)
    own = dict(zip("abcd", (A, B, C, D)))
    for pid, vlan, mode in zip("abcd", vlans, ["Source", "None", "Destination", "None"]):
        sw.set_port(pid, PortConfig(mac=own[pid], vlan=vlan, mirroring=mode))
    delivered = 0
    for pid, dst, src, now in sorted(events, key=lambda e: e[3]):
        out = sw.ingress(pid, frame(dst, src), now)
        delivered += len(out)
        for t, _ in out:
            assert t != pid
            if sw.ports[t].config.mirroring != "Destination":
                assert sw.ports[t].config.vlan == sw.ports[pid].config.vlan
        if src != own[pid]:
            assert out == []
    assert sum(p.counters.tx_frames for p in sw.ports.values()) == delivered
    assert sum(p.counters.rx_frames + p.counters.dropped_spoofed for p in sw.ports.values()) == len(events)

"""The VMBus transport: a channel's shared region and doorbells, descriptor passing, and the
backlog of a full ring — two endpoints of one real memfd in one process."""
from __future__ import annotations

import os
import random
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.packet_socket import receive_messages, send_message
from worker.vmbus.ring import PacketType, RingProtocolError
from worker.vmbus.transport import ChannelEndpoint, ChannelResources

DATA = PacketType.DATA


def readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def endpoints(ring_size=4096, buffer_size=0):
    res = ChannelResources(ring_size, "test-channel", buffer_size)
    host = ChannelEndpoint([os.dup(fd) for fd in res.fds()], ring_size, "host", buffer_size)
    guest = ChannelEndpoint([os.dup(fd) for fd in res.fds()], ring_size, "guest", buffer_size)
    res.close()
    return guest, host


def test_round_trip_rings_the_peer_only_on_empty_to_non_empty():
    guest, host = endpoints()
    assert not readable(host.fileno())
    guest.send_request(1, "request", {"seq": 1})
    assert readable(host.fileno())
    guest.send_request(2, "request", {"seq": 2})   # not empty any more: no second signal needed
    [a, b] = host.receive_messages()
    assert (a.kind, a.body, a.txid, b.txid) == ("request", {"seq": 1}, 1, 2)
    assert not readable(host.fileno())             # receiving cleared the doorbell
    host.send_completion(1, "request", {"ok": True})
    assert readable(guest.fileno())
    [c] = guest.receive_messages()
    assert c.is_completion and c.txid == 1
    guest.close()
    host.close()


def test_full_ring_waits_in_backlog_and_drains_when_the_reader_frees_space():
    guest, host = endpoints(ring_size=1024)
    payload = b"x" * 200
    for _ in range(20):                            # far more than a 960-byte ring holds
        guest.send_packet(DATA, payload)
    assert guest.backlog, "packets that did not fit wait in the backlog"
    got = []
    for _ in range(50):
        got += host.receive()                      # frees space and rings the writer
        if readable(guest.fileno()):
            guest.receive()                        # the writer wakes and flushes its backlog
        if len(got) == 20:
            break
    assert len(got) == 20 and all(p.payload == payload for p in got)
    assert not guest.backlog


def test_a_region_of_the_wrong_size_is_refused_and_its_descriptors_closed():
    res = ChannelResources(4096, "wrong-size")
    fds = [os.dup(fd) for fd in res.fds()]
    with pytest.raises(RingProtocolError, match="region"):
        ChannelEndpoint(fds, 8192, "guest")
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    res.close()


def test_shared_buffer_is_seen_by_both_sides():
    guest, host = endpoints(buffer_size=8192)
    guest.buffer[100:105] = b"hello"
    assert bytes(host.buffer[100:105]) == b"hello"
    assert len(host.buffer) == 8192
    guest.close()
    host.close()


def test_bad_buffer_size_is_refused():
    with pytest.raises(HvError, match="buffer size"):
        ChannelResources(4096, "x", buffer_size=1000)


def test_descriptors_travel_with_a_message_and_a_refusing_end_closes_them():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    res = ChannelResources(4096, "passed")
    assert send_message(a, {"t": "open", "fds": "forged"}, res.fds())
    [msg], closed = receive_messages(b, accept_fds=True)
    assert not closed and msg["t"] == "open" and len(msg["fds"]) == 3
    ep = ChannelEndpoint(msg["fds"], 4096, "guest")   # a working endpoint from passed fds
    ep.close()
    before = len(os.listdir("/proc/self/fd"))
    assert send_message(a, {"t": "x"}, res.fds())
    [msg], _ = receive_messages(b, accept_fds=False)
    assert msg["fds"] == [] and len(os.listdir("/proc/self/fd")) == before
    a.close()
    _, closed = receive_messages(b, accept_fds=False)
    assert closed
    res.close()
    b.close()


def test_garbage_on_the_socket_is_dropped_not_fatal():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.setblocking(False)
    a.send(b"\xc1\xc1")
    a.send(b"\x93\x01\x02\x03")                   # msgpack, but not a map
    send_message(a, {"t": "ok"})
    msgs, closed = receive_messages(b, accept_fds=False)
    assert [m["t"] for m in msgs] == ["ok"] and not closed


ECHO_PEER = r"""
import os, select, sys
sys.path.insert(0, sys.argv[1])
from worker.vmbus.transport import ChannelEndpoint
host = ChannelEndpoint([int(fd) for fd in sys.argv[2:5]], 4096, "host")
while True:
    if not select.select([host.fileno()], [], [], 5.0)[0]:
        sys.exit("echo peer: no doorbell for 5 s")
    for p in host.receive():
        if p.payload == b"stop":
            sys.exit(0)
        host.send_packet(p.type, p.payload, p.txid)
"""


def test_two_processes_ping_pong_never_lose_a_wake_up():
    """Both sides publish an index and then read the other's (ring.full_fence between): a lost
    wake-up would leave a burst unanswered and this side waiting on its doorbell. A small ring
    (4 KiB) also makes both sides run full and wait for room."""
    res = ChannelResources(4096, "ping-pong")
    guest = ChannelEndpoint([os.dup(fd) for fd in res.fds()], 4096, "guest")
    peer_fds = [os.dup(fd) for fd in res.fds()]
    res.close()
    root = str(Path(__file__).resolve().parents[2])
    peer = subprocess.Popen([sys.executable, "-c", ECHO_PEER, root, *map(str, peer_fds)],
                            pass_fds=peer_fds)
    for fd in peer_fds:
        os.close(fd)
    rng = random.Random(7)
    try:
        for round_ in range(1500):
            burst = rng.randint(1, 40)
            for i in range(burst):
                guest.send_packet(DATA, bytes(rng.randint(0, 200)), i + 1)
            got = 0
            while got < burst:
                assert readable(guest.fileno(), 2.0), f"round {round_}: {got}/{burst} echoes, then silence"
                got += len(guest.receive())
                guest.flush()
        guest.send_packet(DATA, b"stop")
        assert peer.wait(timeout=10) == 0
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait(timeout=5)
        guest.close()

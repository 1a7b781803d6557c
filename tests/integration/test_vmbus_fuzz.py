"""Malformed ring contents from a guest (fuzzed with hypothesis) close that channel only, with a
logged protocol error: the driver host, its other channels and the VMs keep working.

The fuzzing guest is played directly against the real driver host of a running host
(worker.vmbus.driver_client: a channel made exactly as a worker makes it), while a VM streams
requests over the same driver host."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.conftest import wait_until
from tests.helpers.host_views import driver, progress, summary
from worker.vmbus.driver_client import DriverConnection
from worker.vmbus.ring import HEADER_SIZE, PacketType
from worker.vmbus.transport import ring_doorbell

pytestmark = pytest.mark.integration

packets = st.lists(st.tuples(st.sampled_from([t.value for t in PacketType] + [0, 7, 99]),
                             st.binary(max_size=300), st.integers(0, 2**64 - 1), st.integers(0, 3)),
                   min_size=1, max_size=4)


@pytest.fixture
def echo_host(host):
    host.new_vm("streaming", guest="device-stream:echo:100000:5:2")
    host.call("add-vmdevice", vm="streaming", driver="echo")
    host.start("streaming")
    wait_until(lambda: progress(host, "streaming") > 0, 15, what="the VM's stream under way")
    conn = DriverConnection(str(host.home / "run" / "d" / "echo.sock"))
    yield host, conn
    conn.close()


def test_fuzzed_rings_fail_only_their_channel(echo_host):
    host, conn = echo_host
    pid = driver(host, "echo")["ProcessId"]
    healthy = conn.open_channel()
    failed = []

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(raw=st.binary(min_size=1, max_size=400), write_index=st.integers(0, 2**32 - 1),
           frames=packets, mode=st.sampled_from(["raw", "packets"]))
    def one(raw, write_index, frames, mode):
        ch = conn.open_channel()
        ring = ch.guest.ring.out
        if mode == "raw":                      # bytes and an index, anything at all
            region = ch.guest.mm
            region[HEADER_SIZE:HEADER_SIZE + len(raw)] = raw
            region[0:4] = struct.pack("<I", write_index)
        else:                                  # well-framed packets with hostile contents
            for type_, payload, txid, flags in frames:
                try:
                    ring.write(type_, payload, txid, flags)
                except ValueError:             # our own writer refuses some: write them raw
                    hdr = struct.pack("<HHIQ", type_ & 0xFFFF, flags, len(payload), txid)
                    ch.guest.mm[HEADER_SIZE:HEADER_SIZE + len(hdr)] = hdr
                    ch.guest.mm[0:4] = struct.pack("<I", len(hdr) + ((len(payload) + 7) & ~7))
                    break
        ring_doorbell(ch.guest.peer_bell)
        event = conn.wait_event("failed", ch.channel_id, 0.5)
        if event is not None:
            failed.append(event["reason"])
            ch.guest.close()
        else:
            ch.close()
        assert healthy.request("request", {"seq": 1, "data": "still here"}) == \
            {"seq": 1, "data": "still here"}
    one()
    assert failed, "no fuzzed channel was failed: the fuzzing did not reach the driver host"
    assert driver(host, "echo")["ProcessId"] == pid and driver(host, "echo")["Restarts"] == 0
    log = (host.home / "logs" / "drvhost-echo.log").read_text()
    assert log.count('"protocol_error"') >= len(failed)
    before = progress(host, "streaming")
    wait_until(lambda: progress(host, "streaming") > before, 5, what="the VM's stream keeps going")
    assert summary(host, "streaming") is None and host.vm("streaming")["State"] == "Running"

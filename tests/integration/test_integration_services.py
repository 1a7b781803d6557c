"""Integration services over VMBus (issue 5): key-value exchange both ways with its limits and
durable host pool, get-/enable-/disable-vmintegrationservice, heartbeat and shutdown with a
service turned off, time synchronization status. (A guest that ignores shutdown is in
test_lifecycle.py.)"""
from __future__ import annotations

import json

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def host(vm_host):
    """These tests need only a running host: they share the module's (tests/conftest.py)."""
    return vm_host


NAMES = ["Heartbeat", "Shutdown", "Key-Value Pair Exchange", "Time Synchronization"]


def services(host, name) -> dict:
    return {s["Name"]: s for s in host.call("get-vmintegrationservice", vm=name)}


def guest_pool(host, name) -> dict:
    return host.call("get-vmkvp", vm=name)


def test_kvp_round_trip_both_ways_and_limits(host):
    host.new_vm("k1", guest="kvp-echo")
    host.start("k1")
    pool = wait_until(lambda: (p := guest_pool(host, "k1")).get("FullyQualifiedDomainName") and p, 5,
                      what="the guest's intrinsic items")
    assert pool["FullyQualifiedDomainName"] == "k1" and pool["OSName"] == "hvemu guest runtime"
    rc, out, _ = host.hvctl("set-vmkvp", "k1", "color", "blue")
    assert out == {"color": "blue"}
    host.call("set-vmkvp", vm="k1", key="ünïcode", value="välue ✓")
    # the guest got them (it echoes the host pool into its own)
    wait_until(lambda: guest_pool(host, "k1").get("color") == "blue", 5, what="host -> guest -> host")
    wait_until(lambda: guest_pool(host, "k1").get("ünïcode") == "välue ✓", 5, what="unicode item")
    rc, out, _ = host.hvctl("get-vmkvp", "k1", "--pool", "host")
    assert out == {"color": "blue", "ünïcode": "välue ✓"}
    host.hvctl("remove-vmkvp", "k1", "color")
    wait_until(lambda: "color" not in guest_pool(host, "k1"), 5, what="removal reaches the guest")
    for args, needle in ((("k" * 513, "v"), "512-byte"), (("k", "v" * 2049), "2048-byte"),
                         (("", "v"), "non-empty"), (("ä" * 257, "v"), "512-byte")):
        rc, out, err = host.hvctl("set-vmkvp", "k1", *args, check=False)
        assert rc == 1 and out["error"]["code"] == "BadRequest" and needle in out["error"]["message"], args
    host.hvctl("set-vmkvp", "k1", "k" * 512, "v" * 2048)        # exactly at the limits
    rc, out, _ = host.hvctl("remove-vmkvp", "k1", "absent", check=False)
    assert rc == 1 and out["error"]["code"] == "NotFound"
    rc, out, _ = host.hvctl("get-vmkvp", "k1", "--pool", "neither", check=False)
    assert rc == 2


def test_host_pool_survives_a_restart_of_the_vm(host):
    vm = host.new_vm("k2", guest="kvp-echo")
    host.call("set-vmkvp", vm="k2", key="before-boot", value="1")   # set while Off
    host.start("k2")
    wait_until(lambda: guest_pool(host, "k2").get("before-boot") == "1", 5, what="delivered at boot")
    host.call("set-vmkvp", vm="k2", key="while-running", value="2")
    host.hvctl("stop-vm", "k2")
    assert guest_pool(host, "k2") == {}                              # no guest, no guest pool
    cfg = json.loads((host.home / "vms" / vm["Id"] / "config.json").read_text())
    assert cfg["kvp_host"] == {"before-boot": "1", "while-running": "2"}
    host.start("k2")
    wait_until(lambda: guest_pool(host, "k2").get("while-running") == "2", 5, what="redelivered")


def test_integration_services_listed_and_toggled(host):
    host.new_vm("i1")
    off = services(host, "i1")
    assert list(off) == NAMES and all(s["Enabled"] and s["PrimaryStatusDescription"] is None
                                      for s in off.values())
    host.start("i1")
    # the channels are OK at once; the time sync's offset once its first sample came back
    on = wait_until(lambda: (s := services(host, "i1")) and all(
        v["PrimaryStatusDescription"] == "OK" for v in s.values())
        and "ms of the host" in (s["Time Synchronization"]["SecondaryStatusDescription"] or "")
        and s, 5, what="all OK, and the time offset measured")
    assert on["Time Synchronization"]["PrimaryStatusDescription"] == "OK"
    rc, out, _ = host.hvctl("disable-vmintegrationservice", "i1", "heartbeat")
    assert {s["Name"]: s["Enabled"] for s in out}["Heartbeat"] is False
    wait_until(lambda: host.vm("i1")["Heartbeat"] == "Disabled", 3, what="Heartbeat Disabled")
    host.hvctl("disable-vmintegrationservice", "i1", "Shutdown")
    rc, out, _ = host.hvctl("stop-vm", "i1", check=False)
    assert rc == 1 and out["error"]["code"] == "InvalidState" and "Shutdown" in out["error"]["message"]
    assert host.vm("i1")["State"] == "Running"
    host.hvctl("enable-vmintegrationservice", "i1", "Shutdown")
    host.hvctl("enable-vmintegrationservice", "i1", "Heartbeat")
    wait_until(lambda: host.vm("i1")["Heartbeat"] == "OkApplicationsUnknown", 3, what="beats again")
    wait_until(lambda: services(host, "i1")["Shutdown"]["PrimaryStatusDescription"] == "OK", 3,
               what="Shutdown reopened")
    rc, out, _ = host.hvctl("stop-vm", "i1")
    assert out[0]["State"] == "Off"
    rc, out, _ = host.hvctl("enable-vmintegrationservice", "i1", "Guest Service Interface", check=False)
    assert rc == 1 and out["error"]["code"] == "BadRequest"


def test_a_vm_without_heartbeat_still_starts_and_stop_force_turns_it_off(host):
    host.new_vm("i2")
    host.call("disable-vmintegrationservice", vm="i2", name="Heartbeat")
    host.call("disable-vmintegrationservice", vm="i2", name="Shutdown")
    host.start("i2")                     # Running on VMBus contact instead of the first beat
    vm = host.vm("i2")
    assert vm["State"] == "Running" and vm["Heartbeat"] == "Disabled"
    rc, out, _ = host.hvctl("stop-vm", "i2", "--force")
    assert out[0]["State"] == "Off"

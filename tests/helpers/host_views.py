"""Reading a running host the way several integration tests need: through vmms (KVP items,
driver hosts) or straight from the hypervisor (its partitions, with the root credential)."""
from __future__ import annotations

from hypervisor.hypercall_defs import LIST_PARTITIONS
from hypervisor.runtime.paths import Home
from parent.host_control import hv_client


def kvp(host, name) -> dict:
    """The guest pool of VM `name`'s key-value items (what its guest program published)."""
    return host.call("get-vmkvp", vm=name)


def hv_partitions(host) -> list[dict]:
    """Every partition with its ledger figures, from the hypervisor (list-partitions)."""
    c = hv_client(Home.resolve(host.home))
    try:
        return c.call(LIST_PARTITIONS)
    finally:
        c.close()


def driver(host, name) -> dict:
    """get-vmhostdriver's row for driver `name`."""
    return next(d for d in host.call("get-vmhostdriver") if d["Name"] == name)


def summary(host, name) -> dict | None:
    """The device-stream program's final report, parsed; None while it still runs."""
    text = kvp(host, name).get("device-stream")
    if not text:
        return None
    if text.startswith("error"):
        return {"error": text}
    return {k: float(v) for k, v in (item.split("=") for item in text.split()[1:])}


def progress(host, name) -> int:
    """How many requests the device-stream program of VM `name` has had answered so far."""
    return int(kvp(host, name).get("device-stream-progress", "0"))

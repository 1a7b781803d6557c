"""Integration-service definitions shared by the host side (vmwp), the guest side (the guest
runtime) and vmms (validation): names as Get-VMIntegrationService shows them, VMBus class ids
(Hyper-V's GUIDs), message kinds, and the key-value exchange's limits.

Message kinds on each service's channel:

    Heartbeat  guest -> host one-way  heartbeat {seq}
    Shutdown   host -> guest request  shutdown {reason}  -> completion {accepted}
    KVP        host -> guest request  sync {items, replace} / set {items} / remove {keys}
               guest -> host one-way  guest-set {items} / guest-remove {keys}
    TimeSync   host -> guest request  sample {host_time}  -> completion {guest_time, offset}
"""
from __future__ import annotations

from hypervisor.runtime.errors import HvError

HEARTBEAT = "Heartbeat"
SHUTDOWN = "Shutdown"
KVP = "Key-Value Pair Exchange"
TIMESYNC = "Time Synchronization"

# name -> VMBus class id (the GUIDs Hyper-V uses for these devices)
CLASS_IDS: dict[str, str] = {
    HEARTBEAT: "57164f39-9115-4e78-ab55-382f3bd5422d",
    SHUTDOWN: "0e0b6031-5213-4934-818b-38d90ced39db",
    KVP: "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6",
    TIMESYNC: "9527e630-d0ae-497b-adce-e80ab0175caf",
}
NAMES = tuple(CLASS_IDS)
IC_VERSION = 0x00030000          # major 3, minor 0 (major << 16 | minor)
IC_RING_SIZE = 16 * 1024
KVP_RING_SIZE = 256 * 1024

# Hyper-V's heartbeat cadence (Msvm_HeartbeatComponentSettingData defaults): a beat every
# Interval, LostCommunication after ErrorThreshold missed beats plus Latency, i.e. 5 s of silence.
HEARTBEAT_INTERVAL = 2.0         # Interval = 2000 ms
HEARTBEAT_ERROR_THRESHOLD = 2    # ErrorThreshold = 2
HEARTBEAT_LATENCY = 1.0          # Latency = 1000 ms
HEARTBEAT_LOST_AFTER = HEARTBEAT_ERROR_THRESHOLD * HEARTBEAT_INTERVAL + HEARTBEAT_LATENCY


def heartbeat_lost_at(last_beat: float) -> float:
    """The monotonic moment a guest last heard at `last_beat` counts as lost: just past
    HEARTBEAT_LOST_AFTER, so a deadline (or the shared watchdog timer) set to it finds the
    silence strictly longer than the bound."""
    return last_beat + HEARTBEAT_LOST_AFTER + 0.001
TIMESYNC_RETRY = 5.0              # s; a sample still unanswered is retried after this (no periodic sample)

# Key-value exchange limits (Hyper-V: 512-byte keys, 2048-byte values)
KVP_MAX_KEY_BYTES = 512
KVP_MAX_VALUE_BYTES = 2048
KVP_MAX_ITEMS = 1024
KVP_BATCH_BYTES = 48 * 1024      # items per message stay well inside one ring packet


def enabled_services(wanted: dict | None) -> dict[str, bool]:
    """Every service by name: enabled unless the VM's configuration (`integration_services`
    {name: enabled}) turns it off. vmms and the worker both read the configuration through this."""
    wanted = wanted or {}
    return {name: bool(wanted.get(name, True)) for name in NAMES}


def service_name(name) -> str:
    """The canonical service name for `name` (case-insensitive), or BadRequest listing them."""
    if isinstance(name, str):
        for known in NAMES:
            if known.lower() == name.lower():
                return known
    raise HvError("BadRequest", f"unknown integration service {name!r}: use one of "
                                f"{', '.join(repr(n) for n in NAMES)}")


def check_key(key) -> str:
    if not isinstance(key, str) or not key:
        raise HvError("BadRequest", "a KVP key must be a non-empty string")
    n = len(key.encode("utf-8", "surrogatepass"))
    if n > KVP_MAX_KEY_BYTES or "\x00" in key:
        raise HvError("BadRequest", f"KVP key of {n} bytes exceeds the {KVP_MAX_KEY_BYTES}-byte "
                                    "limit" if n > KVP_MAX_KEY_BYTES else "a KVP key may not hold NUL")
    return key


def check_value(value) -> str:
    if not isinstance(value, str):
        raise HvError("BadRequest", "a KVP value must be a string")
    n = len(value.encode("utf-8", "surrogatepass"))
    if n > KVP_MAX_VALUE_BYTES or "\x00" in value:
        raise HvError("BadRequest", f"KVP value of {n} bytes exceeds the {KVP_MAX_VALUE_BYTES}-byte "
                                    "limit" if n > KVP_MAX_VALUE_BYTES else "a KVP value may not hold NUL")
    return value


def valid_item(key, value) -> bool:
    try:
        check_key(key)
        check_value(value)
        return True
    except HvError:
        return False


def batches(items: dict[str, str]) -> list[dict[str, str]]:
    """Split items into maps of at most KVP_BATCH_BYTES each (one message each)."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    size = 0
    for k, v in items.items():
        n = len(k.encode()) + len(v.encode()) + 8
        if cur and size + n > KVP_BATCH_BYTES:
            out.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += n
    if cur:
        out.append(cur)
    return out

"""Hostile frames for hvemu's sockets, shared by scripts/chaos and scripts/fuzz.

`frames(rng, kind)` makes one multipart message for a socket kind ("ctl", "hv", "worker", "ev"):
about half structure-aware (the right tag and a msgpack envelope, with wrong types, huge or
non-finite numbers, unknown ops, real op names with hostile args, deep nesting, long strings),
the rest garbage (wrong tags, random bytes, truncated msgpack, extra frames). `well_formed(kind)`
is a request every daemon must answer. `ring_packets(rng)` are VMBus ring writes (raw bytes at
a random index, or packets with hostile headers) for a channel of a driver host. Seeded by the
caller's `random.Random`, so a run is reproducible from its seed.
"""
from __future__ import annotations

import random
import struct

import msgpack

TAG = b"HVEMU/1"

CTL_OPS = ["get-vm", "start-vm", "resume-vm", "set-vm", "set-vmprocessor", "set-vmmemory", "measure-vm", "new-vhd",
           "get-vhd", "add-vmharddiskdrive", "add-vmdevice", "get-vmdevice", "get-vmkvp",
           "add-vmkvp", "get-vmhost", "get-vmhostdriver",
           "ping", "get-vmworkerprocess", "get-vmprocessor", "get-vmmemory"]
HV_OPS = ["ping", "get-host-info", "list-partitions", "check-processor", "set-memory",
          "set-processor", "report-memory-demand", "get-own-stats", "attach-guest",
          "suspend-partition", "resume-partition", "delete-partition"]
# worker ops with hostile values; stop/reset/suspend are not input errors but power actions
WORKER_OPS = ["attach", "set-guest", "set-processor", "set-memory", "add-device", "remove-device",
              "get-devices", "driver-state", "kvp-get", "kvp-set", "resume"]
# ops a fuzzer must never send: they end the run by design, not by a bug
NEVER = {"host-shutdown", "shutdown", "stop", "reset", "suspend", "create-partition", "remove-vm",
         "stop-vm", "restart-vm", "suspend-vm", "new-vm", "new-vhd"}
ARG_KEYS = ["vm", "name", "timeout", "memory_startup_bytes", "processor_count", "guest", "force",
            "turn_off", "path", "size_bytes", "block_size_bytes", "driver", "settings", "vms",
            "count", "reserve", "maximum", "relative_weight", "startup_bytes", "minimum_bytes",
            "maximum_bytes", "buffer", "priority", "partition_id", "memory", "processor", "mode",
            "instance_id", "key", "value", "pool", "controller_location", "demand"]


def hostile_value(rng: random.Random, depth: int = 0):
    pick = rng.randrange(16)
    if pick == 0:
        return float("nan")
    if pick == 1:
        return rng.choice([float("inf"), float("-inf"), 1e308, -1e308])
    if pick == 2:
        return rng.choice([2**64 - 1, -(2**63), 2**63 - 1, 0, -1])
    if pick == 3:
        return "x" * rng.choice([0, 1, 100, 5000, 70000])
    if pick == 4:
        return rng.choice(["99999999999999999999999998MB", "1e400GB", "-5MB", "NaN", "512MB", "nan"])
    if pick == 5:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
    if pick == 6 and depth < 3:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if pick == 7 and depth < 3:
        return {rng.choice(ARG_KEYS): hostile_value(rng, depth + 1) for _ in range(rng.randrange(5))}
    if pick == 8:
        return None
    if pick == 9:
        return rng.choice([True, False])
    if pick == 10:
        return rng.choice(["fuzz-nope", "../../etc/passwd", "/tmp/x.vhdx", "\x00", "ü" * 50])
    if pick == 11:
        nest = 0
        for _ in range(rng.randrange(1, 200)):
            nest = [nest]
        return nest
    return rng.randrange(-1000, 100000)


def envelope(rng: random.Random, ops: list[str], auth=None) -> dict:
    env: dict = {"id": rng.choice([f"f{rng.getrandbits(32)}", "", 5, None, "i" * 200]),
                 "op": rng.choice(ops + ["", "nope", 7, None]),
                 "args": {rng.choice(ARG_KEYS): hostile_value(rng) for _ in range(rng.randrange(6))}}
    if env["op"] in NEVER:
        env["op"] = "get-vm"
    if rng.random() < 0.3:
        env["deadline_ms"] = hostile_value(rng)
    if rng.random() < 0.2:
        env["args"] = hostile_value(rng)
    if auth is not None and rng.random() < 0.5:
        env["auth"] = rng.choice([auth, "bad", 5, None])
    elif rng.random() < 0.3:
        env["auth"] = hostile_value(rng)
    return env


def pack(obj) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return msgpack.packb({"id": "f", "op": "ping", "args": {}}, use_bin_type=True)


def frames(rng: random.Random, kind: str, auth=None) -> list[bytes]:
    """One hostile multipart message for a socket of `kind`."""
    if kind == "ev":  # an XSUB writes subscription frames to vmms's XPUB
        first = rng.choice([b"\x01", b"\x00", b"\x02", b""])
        return [first + bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 8, 60, 900, 3000])))]
    ops = {"ctl": CTL_OPS, "hv": HV_OPS, "worker": WORKER_OPS}[kind]
    roll = rng.random()
    if roll < 0.5:
        return [TAG, pack(envelope(rng, ops, auth))]
    if roll < 0.6:
        body = pack(envelope(rng, ops, auth))
        return [TAG, body[:rng.randrange(len(body) + 1)]]           # truncated msgpack
    if roll < 0.7:
        return [bytes(rng.getrandbits(8) for _ in range(rng.randrange(16))), pack({"id": "x"})]
    if roll < 0.8:
        return [TAG] + [bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
                        for _ in range(rng.randrange(0, 4))]            # 1..4 frames
    if roll < 0.9:
        return [TAG, pack(rng.choice([[], 5, "s", None, {1: 2}, {"id": "x", "op": "get-vm", "args": []}]))]
    return [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 2000)))]


def well_formed(kind: str, req_id: str, auth=None) -> list[bytes]:
    op = {"ctl": "get-vm", "hv": "ping", "worker": "attach"}[kind]
    env = {"id": req_id, "op": op, "args": {}}
    if auth is not None:
        env["auth"] = auth
    return [TAG, msgpack.packb(env, use_bin_type=True)]


def ring_packets(rng: random.Random) -> list[tuple[int, bytes, int, int]]:
    """Packets (type, payload, transaction id, flags) with hostile headers for a VMBus ring."""
    types = [1, 2, 3, 0, 7, 99, 0xFFFF]
    return [(rng.choice(types), bytes(rng.getrandbits(8) for _ in range(rng.randrange(300))),
             rng.getrandbits(64), rng.randrange(4)) for _ in range(rng.randrange(1, 5))]


def raw_ring_bytes(rng: random.Random) -> tuple[bytes, int]:
    return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 400))), rng.getrandbits(32)


def packet_header(type_: int, flags: int, length: int, txid: int) -> bytes:
    return struct.pack("<HHIQ", type_ & 0xFFFF, flags, length, txid)

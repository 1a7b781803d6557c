"""Guest program state kept in guest RAM, so a saved VM resumes exactly where it stopped.

The first `STATE_AREA_SIZE` bytes of guest RAM belong to the guest runtime (GuestRam commits a
program's memory above them). Layout, little-endian:

| offset | size | field |
|---|---|---|
| 0 | 8 | `HVGSTATE` (only once a save has written the area) |
| 8 | 4 | version (1) |
| 12 | 4 | payload length |
| 16 | 4 | CRC-32 of the payload |
| 24 | 8 | the `counter` program's counter — live: the program increments it in place |
| 64 | … | msgpack payload: the runtime's state at the last save request |

The payload is what the runtime cannot recompute: the program SPEC, the program's own state
(`save_state()` of a device program: how far it got, once every request in flight completed),
the guest KVP pool and the guest clock's offset. The worker copies the whole of guest RAM into
the saved-state file, so nothing here ever touches a disk itself.

Key names: `write_state(buf, payload)`, `read_state(buf)` (None when absent or damaged),
`Counter` (the `counter` guest program).
"""
from __future__ import annotations

import struct
import time
import zlib

STATE_AREA_SIZE = 64 * 1024
MAGIC = b"HVGSTATE"
VERSION = 1
_HEAD = struct.Struct("<8sIII")
COUNTER_OFFSET = 24
PAYLOAD_OFFSET = 64
COUNTER_INTERVAL = 0.1


def write_state(buf, payload: dict) -> None:
    """Put `payload` (msgpack-able) into the state area of `buf` (guest RAM)."""
    from hypervisor.runtime import wire
    body = wire.pack(payload)
    if PAYLOAD_OFFSET + len(body) > STATE_AREA_SIZE:
        raise ValueError(f"guest program state is {len(body)} bytes, more than the state area")
    buf[PAYLOAD_OFFSET:PAYLOAD_OFFSET + len(body)] = body
    buf[0:_HEAD.size] = _HEAD.pack(MAGIC, VERSION, len(body), zlib.crc32(body))


def read_state(buf) -> dict | None:
    """The payload of the state area, or None when there is none or it does not check out."""
    from hypervisor.runtime import wire
    magic, version, length, crc = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION or PAYLOAD_OFFSET + length > STATE_AREA_SIZE:
        return None
    body = bytes(buf[PAYLOAD_OFFSET:PAYLOAD_OFFSET + length])
    if zlib.crc32(body) != crc:
        return None
    try:
        payload = wire.unpack(body)
    except Exception:
        return None
    return payload if isinstance(payload, dict) else None


def clear_state(buf) -> None:
    buf[0:8] = bytes(8)


class Counter:
    """The `counter` guest program: a u64 in guest RAM, +1 about every 100 ms, published as KVP
    `counter`. It lives in RAM, so a restored VM continues from the saved value."""

    def __init__(self, services, ram, restored: bool):
        self.services, self.ram = services, ram
        if not restored:
            struct.pack_into("<Q", ram, COUNTER_OFFSET, 0)
        self.next_step = time.monotonic() + COUNTER_INTERVAL
        self.frozen = False
        self._publish()

    @property
    def value(self) -> int:
        return struct.unpack_from("<Q", self.ram, COUNTER_OFFSET)[0]

    def _publish(self) -> None:
        self.services.publish("counter", str(self.value))

    def tick(self, now: float) -> None:
        if self.frozen or now < self.next_step:
            return
        steps = 1 + int((now - self.next_step) // COUNTER_INTERVAL)
        struct.pack_into("<Q", self.ram, COUNTER_OFFSET, self.value + min(steps, 1))
        self.next_step += steps * COUNTER_INTERVAL
        self._publish()

    def next_deadline(self) -> float:
        return float("inf") if self.frozen else self.next_step

    # the save protocol every program follows (see worker.guest.runtime)
    def quiesce(self) -> None:
        self.frozen = True

    def unquiesce(self) -> None:
        self.frozen = False
        self.next_step = time.monotonic() + COUNTER_INTERVAL

    def quiet(self) -> bool:
        return True

    def save_state(self) -> dict:
        return {}

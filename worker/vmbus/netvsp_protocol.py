"""The netvsp channel protocol: Ethernet frames between a guest's network adapter (the VSC,
worker/guest/net_adapter.py) and the virtual switch (the VSP, parent/drivers/netvsp.py).

Definitions only, pure, shared by both sides. A channel carries DATA packets in both
directions, no completions (Ethernet needs none: a frame that finds no room is dropped, as on
a wire). A packet's payload is a batch of one or more frames, each `u32 length` + the frame;
each frame begins with the 10-byte virtio-net header (worker/tap_device.py) and then the
Ethernet header. Batching lets one ring write and one doorbell carry every frame a TAP or the
switch had ready, which is what makes small-packet rates tolerable in Python.

One request exists, as RNDIS's OID queries: after opening, the guest sends a DATA packet with
COMPLETION_REQUESTED and an empty payload (QUERY); the switch answers a COMPLETION of the same
transaction id with ADAPTER_INFO (the adapter's permanent MAC and its index: the guest names
the interface eth<index>). The device settings vmms hands the driver per channel (strings):
`mac` (12 hex digits), `index`, `name`.
"""
from __future__ import annotations

import struct

from worker.vmbus.ring import RingProtocolError

CLASS_ID = "netvsp"
DRIVER = "netvsp"
RING_SIZE = 2 << 20
BATCH_BYTES = 256 << 10          # a batch stays well inside one ring
MAX_FRAME_BYTES = 65536 + 128
_LEN = struct.Struct("<I")
ADAPTER_INFO = struct.Struct("<6sH")      # MAC, index
QUERY_TXID = 1


def encode_batch(frames: list[bytes]) -> bytes:
    pack = _LEN.pack
    return b"".join(b for f in frames for b in (pack(len(f)), f))


def frame_length(frame) -> bytes:
    """A frame's length prefix in a batch."""
    return _LEN.pack(len(frame))


pack_length = _LEN.pack
"""`pack_length(len(frame))` is `frame_length(frame)` with no Python frame (the data path)."""


def gather_batches(frames: list, limit: int = BATCH_BYTES) -> list[tuple[list, int]]:
    """Frames as as few batches as fit `limit` bytes each, each batch as the pieces of its
    payload (length prefix, frame, ...) and its size: what `ChannelEndpoint.send_gather`
    copies into the ring with no join beforehand. Same bytes as `split_batches`."""
    pack = _LEN.pack
    if not frames:
        return []
    if len(frames) == 1:                     # the common case (one frame per wake-up)
        f = frames[0]
        return [([pack(len(f)), f], len(f) + 4)]
    out, cur, size = [], [], 0
    for f in frames:
        n = len(f) + 4
        if cur and size + n > limit:
            out.append((cur, size))
            cur, size = [], 0
        cur += (pack(len(f)), f)
        size += n
    if cur:
        out.append((cur, size))
    return out


def split_batches(frames: list[bytes], limit: int = BATCH_BYTES) -> list[bytes]:
    """Frames as as few batch payloads as fit `limit` bytes each."""
    out, cur, size = [], [], 0
    for f in frames:
        n = len(f) + 4
        if cur and size + n > limit:
            out.append(encode_batch(cur))
            cur, size = [], 0
        cur.append(f)
        size += n
    if cur:
        out.append(encode_batch(cur))
    return out


def decode_batch(payload: bytes) -> list[memoryview]:
    """The frames of one packet, as views of it (no copy); RingProtocolError if the batch is
    malformed."""
    view = memoryview(payload)
    pos, end = 0, len(payload)
    unpack = _LEN.unpack_from
    if end > 4 and unpack(payload, 0)[0] == end - 4 <= MAX_FRAME_BYTES:
        return [view[4:]]                    # the common case: one frame
    out = []
    while pos < end:
        if end - pos < 4:
            raise RingProtocolError(f"netvsp: {end - pos} stray bytes at the end of a batch")
        (n,) = unpack(payload, pos)
        pos += 4
        if n == 0 or n > MAX_FRAME_BYTES or pos + n > end:
            raise RingProtocolError(f"netvsp: bad frame length {n} at offset {pos - 4}")
        out.append(view[pos:pos + n])
        pos += n
    return out


def mac_bytes(text: str) -> bytes:
    """12 hex digits (separators ':' or '-' allowed) -> 6 bytes; ValueError otherwise."""
    digits = text.replace(":", "").replace("-", "")
    if len(digits) != 12 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"{text!r} is not a MAC address (12 hex digits)")
    return bytes.fromhex(digits)


def mac_text(mac: bytes) -> str:
    return mac.hex().upper()


def encode_info(mac: bytes, index: int) -> bytes:
    return ADAPTER_INFO.pack(mac, index)


def decode_info(payload: bytes) -> tuple[bytes, int]:
    if len(payload) != ADAPTER_INFO.size:
        raise RingProtocolError(f"netvsp: adapter info of {len(payload)} bytes")
    mac, index = ADAPTER_INFO.unpack(payload)
    if index > 63:
        raise RingProtocolError(f"netvsp: adapter index {index} out of range")
    return mac, index

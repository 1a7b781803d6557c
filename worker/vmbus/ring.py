"""One VMBus ring buffer in shared memory, and the two endpoints of a channel.

What: a single-producer single-consumer byte ring living in any writable buffer (a bytearray in
tests, an mmap of a shared-memory file in the worker, guest and driver host). A channel uses two
rings in one region, one each way (`ring_pair`, `attach`). Like OpenVMM's `vmbus_ring`, this
module does no I/O: it never signals or waits itself, it only says when the caller must.

Layout of one ring (`total_size` bytes, a multiple of 8):

    header (64 bytes)  u32 write_index, u32 read_index, u32 interrupt_mask,
                       u32 pending_send_size, u32 data_size, 44 bytes reserved
    data (data_size = total_size - 64 bytes)

Indices are byte offsets into the data area, always multiples of 8. read_index == write_index
means empty, so the writer never fills the ring completely: a full ring leaves one 8-byte slot
unused. Each packet is a 16-byte header (u16 type, u16 flags, u32 payload length, u64
transaction id), then the payload, zero-padded to 8 bytes; a packet may wrap around the end.

Signalling (as in Hyper-V): the writer must interrupt the reader only when the ring goes from
empty to non-empty and the reader has not masked interrupts (`write()` returns True then). A
writer that finds no room sets pending_send_size; the reader that frees that much space must
signal the writer back (`RingReader.take_writer_signal()`).

Trust: the other side may be hostile. Each side keeps its own index privately and only reads
the peer's index from shared memory; every index and length it reads is checked, and anything
malformed raises `RingProtocolError` — never IndexError or struct.error, never a loop that does
not end, never an allocation larger than the ring. Header and payload are copied out of shared
memory once, so the peer cannot change them between the check and the use.

Memory ordering: the writer copies the packet, then publishes write_index; the reader copies the
packet out, then publishes read_index. Each index is one aligned 4-byte store. Store order holds
on x86-64 (TSO); on weakly ordered CPUs a reader may see an index before the data, which shows
up as a RingProtocolError, not as wrong data being accepted silently — except for payload
bytes, which the checks cannot vouch for. Signalling needs more: each side stores its index (or
the interrupt mask, or pending_send_size) and then loads the other's, and even x86 lets a load
pass an earlier store. Without a fence both sides could read the other's old index — the writer
sees a reader still busy and does not signal, the reader sees an empty ring and sleeps — a lost
wake-up. `full_fence()` sits between each such store and load.

Performance: bytes move with memoryview slice assignment and `bytes()`/`join` of slices (one
memcpy each, at most two pieces for a wrapped packet); there is no per-byte Python loop.
`write_gather` copies a payload given as pieces (a batch's length prefixes and frames) without
joining them first; headers are packed/unpacked in place unless they wrap. A read batch
publishes read_index once. Packets are NamedTuples, made with `tuple.__new__` (no Python-level
`__new__` frame). On a network frame's path every call here runs right after a context switch,
with the caches cold (measured on this nested VM: ~10× its warm time, so each Python call and
each object touched costs microseconds): the data-path methods (`write_gather`, `read_all`) read
and store the header words directly, with no helper calls, and an empty ring costs one load.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import NamedTuple

HEADER_SIZE = 64
PACKET_HEADER_SIZE = 16
ALIGN = 8
MIN_DATA_SIZE = 32
MAX_RING_SIZE = 1 << 30

# Header field offsets.
_WRITE_INDEX, _READ_INDEX, _INTERRUPT_MASK, _PENDING_SEND_SIZE, _DATA_SIZE = 0, 4, 8, 12, 16

_FENCE = threading.Lock()
_fence_acquire, _fence_release = _FENCE.acquire, _FENCE.release


def full_fence() -> None:
    """Order this process's earlier stores before its later loads. CPython offers no fence; an
    uncontended lock's acquire is an atomic read-modify-write (a full barrier on x86-64), for
    ~0.1 µs. The lock is never held across anything, so a fork can never inherit it held.
    (The data-path methods below call `_fence_acquire(); _fence_release()` inline: the same.)"""
    _fence_acquire()
    _fence_release()


_PACKET_HEADER = struct.Struct("<HHIQ")
_ZEROS = bytes(ALIGN)
_U64_MAX = (1 << 64) - 1


class PacketType(IntEnum):
    """Packet types, numbered as Hyper-V's VM_PKT_* values."""

    DATA = 6          # in-band data: a request or a one-way message
    CANCEL = 10       # cancel the request with this transaction id
    COMPLETION = 11   # the response to a request, same transaction id


class PacketFlags(IntFlag):
    COMPLETION_REQUESTED = 1   # the sender expects a COMPLETION with the same txid


_PACKET_TYPES = frozenset(int(t) for t in PacketType)
_KNOWN_FLAGS = int(PacketFlags.COMPLETION_REQUESTED)
_new_tuple = tuple.__new__        # Packet's own __new__ is a Python function (one frame more)
_pack_header_into = _PACKET_HEADER.pack_into


class RingError(Exception):
    """Base of the ring's errors."""


class RingFull(RingError):
    """No room for this packet now; wait for the reader's signal and retry."""

    def __init__(self, needed: int, free: int):
        super().__init__(f"ring full: packet needs {needed} bytes, {free} free")
        self.needed = needed
        self.free = free


class RingProtocolError(RingError):
    """The ring's contents break the protocol (or a packet can never fit): fail the channel."""


def check_peer_index(value: int, size: int, who: str) -> int:
    """An index the peer wrote (read from shared memory), checked before any use: a multiple of
    8 inside the data area. Shared by `RingReader`, `RingWriter` and the netvsp frame port."""
    if value >= size or value % ALIGN:
        raise RingProtocolError(f"{who} index {value} invalid for a {size}-byte ring")
    return value


def check_packet(type_: int, flags: int, n: int, left: int, pos: int) -> int:
    """A packet header read at `pos` with `left` bytes written from there, checked: a known
    type and flags, and a payload that lies inside what the writer published. Answers the
    bytes the packet occupies. Shared by `RingReader` and the netvsp frame port."""
    if left < PACKET_HEADER_SIZE:
        raise RingProtocolError(f"{left} bytes left at {pos}, less than a packet header")
    if type_ not in _PACKET_TYPES:
        raise RingProtocolError(f"bad packet type {type_} at {pos}")
    if flags & ~_KNOWN_FLAGS:
        raise RingProtocolError(f"bad packet flags {flags:#x} at {pos}")
    total = PACKET_HEADER_SIZE + ((n + ALIGN - 1) & ~(ALIGN - 1))
    if total > left:
        raise RingProtocolError(f"packet at {pos} claims {n} payload bytes, "
                                f"only {left - PACKET_HEADER_SIZE} present")
    return total


class Packet(NamedTuple):
    """One packet read from a ring (a tuple: cheap to make, one per packet on the data path)."""
    type: int
    payload: bytes
    txid: int = 0
    flags: int = 0

    @property
    def size(self) -> int:
        """Bytes this packet occupies in a ring."""
        return packet_size(len(self.payload))


def packet_size(payload_len: int) -> int:
    return PACKET_HEADER_SIZE + ((payload_len + ALIGN - 1) & ~(ALIGN - 1))


class Ring:
    """The shared view of one ring: `total_size` bytes of `buf` starting at `offset`.

    `init=True` formats the header (the side that creates the region); `init=False` attaches to
    a formatted ring and checks that its data_size matches `total_size`.
    """

    def __init__(self, buf, offset: int, total_size: int, init: bool):
        mv = memoryview(buf)
        if mv.readonly:
            raise ValueError("ring buffer must be writable")
        if mv.format != "B" or mv.itemsize != 1:
            mv = mv.cast("B")
        if offset < 0 or offset % ALIGN or total_size % ALIGN:
            raise ValueError(f"ring offset {offset} and size {total_size} must be multiples of {ALIGN}")
        if not HEADER_SIZE + MIN_DATA_SIZE <= total_size <= MAX_RING_SIZE:
            raise ValueError(f"ring size {total_size} outside "
                             f"{HEADER_SIZE + MIN_DATA_SIZE}..{MAX_RING_SIZE}")
        if offset + total_size > len(mv):
            raise ValueError(f"ring at {offset}+{total_size} overruns a {len(mv)}-byte buffer")
        self.total_size = total_size
        self.data_size = total_size - HEADER_SIZE
        # the largest payload that fits in this ring when it is empty
        self.max_payload = self.data_size - ALIGN - PACKET_HEADER_SIZE
        self._view = mv
        self._header = mv[offset:offset + HEADER_SIZE]
        # The header as u32 words: one item access is one 4-byte load/store, so a peer on
        # another CPU never sees a torn index (struct.pack_into/unpack_from move byte by byte).
        self._words = self._header.cast("I")
        self._data = mv[offset + HEADER_SIZE:offset + total_size]
        if init:
            self._header[:] = bytes(HEADER_SIZE)
            self.store(_DATA_SIZE, self.data_size)
        elif self.load(_DATA_SIZE) != self.data_size:
            raise RingProtocolError(f"ring header says data_size {self.load(_DATA_SIZE)}, "
                                    f"expected {self.data_size}")

    def release(self) -> None:
        """Drop this ring's views of the buffer (an mmap cannot close while views exist)."""
        for view in (self._words, self._header, self._data, self._view):
            view.release()

    def load(self, field: int) -> int:
        return self._words[field >> 2]

    def store(self, field: int, value: int) -> None:
        self._words[field >> 2] = value

    def checked_index(self, field: int, who: str) -> int:
        """An index written by the peer, checked before use."""
        return check_peer_index(self.load(field), self.data_size, who)

    def used(self, write: int, read: int) -> int:
        return (write - read) % self.data_size

    def copy_in(self, pos: int, src) -> None:
        n = len(src)
        first = self.data_size - pos
        if n <= first:
            self._data[pos:pos + n] = src
        else:
            self._data[pos:] = src[:first]
            self._data[:n - first] = src[first:]

    def copy_out(self, pos: int, n: int) -> bytes:
        first = self.data_size - pos
        if n <= first:
            return bytes(self._data[pos:pos + n])
        return b"".join((self._data[pos:], self._data[:n - first]))


class RingWriter:
    """The producer side of a ring. Keeps write_index privately; trusts read_index only after
    checking it."""

    def __init__(self, ring: Ring):
        self.ring = ring
        self._write = ring.checked_index(_WRITE_INDEX, "own write")
        self._pending = False   # we asked the reader to signal us when space frees up
        # the ring's views and sizes, here: the data path touches this object only
        self._words, self._data, self._size = ring._words, ring._data, ring.data_size
        self._max_payload = ring.max_payload

    def interrupts_masked(self) -> bool:
        """The reader masked interrupts (it polls this ring: a write will not be signalled)."""
        return bool(self.ring.load(_INTERRUPT_MASK))

    def free_bytes(self) -> int:
        """Bytes a new packet may use now (a full ring keeps one 8-byte slot unused)."""
        r = self.ring
        return r.data_size - r.used(self._write, r.checked_index(_READ_INDEX, "read")) - ALIGN

    def _copy_wrapping(self, old: int, total: int, type: int, flags: int, n: int, txid: int,
                       pieces) -> int:
        """`write_gather`'s copy of a packet that reaches the end of the data area (it may
        wrap anywhere, even inside its header); answers the new write index."""
        ring, size, data = self.ring, self._size, self._data
        if old + PACKET_HEADER_SIZE <= size:
            _pack_header_into(data, old, type, flags, n, txid)
        else:
            ring.copy_in(old, _PACKET_HEADER.pack(type, flags, n, txid))
        pos = (old + PACKET_HEADER_SIZE) % size
        for piece in pieces:
            k = len(piece)
            if pos + k <= size:
                data[pos:pos + k] = piece
                pos += k
            else:
                ring.copy_in(pos, piece)
                pos = (pos + k) % size
        pad = total - PACKET_HEADER_SIZE - n
        if pad:
            ring.copy_in(pos % size, _ZEROS[:pad])
        return (old + total) % size

    def write(self, type: int, payload=b"", txid: int = 0, flags: int = 0) -> bool:
        """Append one packet. Returns True when the caller must signal the reader.

        Raises RingFull (after asking the reader to signal when there is room) or
        RingProtocolError for a packet larger than this ring can ever hold.
        """
        src = memoryview(payload)
        if src.format != "B" or src.itemsize != 1:
            src = src.cast("B")
        return self.write_gather(type, (src,), len(src), txid, flags)

    def write_gather(self, type: int, pieces, n: int, txid: int = 0, flags: int = 0) -> bool:
        """`write` of a payload given as byte-like `pieces` (bytes, bytearray or byte
        memoryviews) of `n` bytes in all: each piece is copied into the ring once, with no join
        beforehand (a batch of frames goes in without being assembled first)."""
        if type not in _PACKET_TYPES or flags & ~_KNOWN_FLAGS or flags < 0 \
                or not 0 <= txid <= _U64_MAX:
            raise ValueError(f"bad packet header: type {type}, flags {flags:#x}, txid {txid}")
        if n > self._max_payload:
            raise RingProtocolError(f"payload of {n} bytes can never fit: ring holds at most "
                                    f"{self._max_payload}")
        size = self._size
        total = PACKET_HEADER_SIZE + ((n + ALIGN - 1) & ~(ALIGN - 1))
        old = self._write
        words = self._words
        read = check_peer_index(words[1], size, "read")   # _READ_INDEX
        if total > size - (old - read) % size - ALIGN:
            # Ask for a signal, then look again: the reader may have freed space meanwhile
            # without seeing our request.
            words[3] = total                                # _PENDING_SEND_SIZE
            self._pending = True
            full_fence()                                    # the request, then the read index
            free = self.free_bytes()
            if total > free:
                raise RingFull(total, free)
        data = self._data
        new = old + total
        if new < size:                                      # the common case: no wrap
            _pack_header_into(data, old, type, flags, n, txid)
            pos = old + PACKET_HEADER_SIZE
            for piece in pieces:
                k = pos + len(piece)
                data[pos:k] = piece
                pos = k
            if pos != new:
                data[pos:new] = _ZEROS[:new - pos]
        else:
            new = self._copy_wrapping(old, total, type, flags, n, txid, pieces)
        self._write = new
        words[0] = new                                      # publish after the packet is in place
        if self._pending:
            words[3] = 0                                    # _PENDING_SEND_SIZE
            self._pending = False
        _fence_acquire()                                    # full_fence(): publish, then look
        _fence_release()                                    # at the reader
        if words[2]:                                        # _INTERRUPT_MASK
            return False
        # The reader had consumed everything up to where this packet starts: it may be asleep.
        return words[1] == old


class RingReader:
    """The consumer side of a ring. Keeps read_index privately; trusts write_index only after
    checking it."""

    def __init__(self, ring: Ring):
        self.ring = ring
        self._read = ring.checked_index(_READ_INDEX, "own read")
        self._signal_writer = False
        # the ring's views and size, here: the data path touches this object only
        self._words, self._data, self._size = ring._words, ring._data, ring.data_size

    def is_empty(self) -> bool:
        write = self._words[0]                        # _WRITE_INDEX
        if write == self._read:
            return True
        self.ring.checked_index(_WRITE_INDEX, "write")     # raises if the peer wrote garbage
        return False

    def read_one(self) -> Packet | None:
        """The next packet, or None when the ring is empty."""
        packets = self._read_batch(1)
        return packets[0] if packets else None

    def read_all(self) -> list[Packet]:
        """Every packet present now, in order (packets written meanwhile wait for the next call).
        (Replaced below by `_read_batch` itself: the same call, one Python frame fewer.)"""
        return self._read_batch()
    def take_writer_signal(self) -> bool:
        """True (once) when a read freed the space a blocked writer asked for: signal it."""
        signal, self._signal_writer = self._signal_writer, False
        return signal

    def state(self) -> dict:
        """The indices as this reader and the shared header see them (for diagnostics)."""
        r = self.ring
        return {"private_read": self._read, "read_index": r.load(_READ_INDEX),
                "write_index": r.load(_WRITE_INDEX), "pending_send_size": r.load(_PENDING_SEND_SIZE),
                "data_size": r.data_size}

    def mask_interrupts(self) -> None:
        """Tell the writer not to signal: we are polling (Hyper-V's interrupt_mask)."""
        self.ring.store(_INTERRUPT_MASK, 1)

    def unmask_interrupts(self) -> bool:
        """Re-enable signals; True if packets arrived meanwhile, so the caller must drain again."""
        self.ring.store(_INTERRUPT_MASK, 0)
        full_fence()
        return not self.is_empty()

    def _read_batch(self, limit: int | None = None) -> list[Packet]:
        words = self._words
        pos = self._read
        write = words[0]                                   # _WRITE_INDEX, checked below
        if write == pos:
            return []                                      # empty: the tick's common case
        size = self._size
        check_peer_index(write, size, "write")
        ring, data = self.ring, self._data
        left = (write - pos) % size
        packets: list[Packet] = []
        unpack_from = _PACKET_HEADER.unpack_from
        while left and (limit is None or len(packets) < limit):
            if left < PACKET_HEADER_SIZE:
                type_ = flags = n = txid = 0                         # check_packet raises
            elif pos + PACKET_HEADER_SIZE <= size:
                type_, flags, n, txid = unpack_from(data, pos)
            else:
                head = ring.copy_out(pos, PACKET_HEADER_SIZE)       # a header that wraps
                type_, flags, n, txid = _PACKET_HEADER.unpack(head)
            total = check_packet(type_, flags, n, left, pos)
            start = pos + PACKET_HEADER_SIZE
            if start >= size:
                start -= size
            payload = bytes(data[start:start + n]) if start + n <= size else ring.copy_out(start, n)
            packets.append(_new_tuple(Packet, (type_, payload, txid, flags)))
            pos += total
            if pos >= size:
                pos -= size
            left -= total
        self._read = pos
        words[1] = pos                                 # publish after the packets are copied out
        _fence_acquire()   # full_fence(): before pending_send_size here and the write index in
        _fence_release()   # the caller's check
        if words[3]:                                   # _PENDING_SEND_SIZE
            self.note_pending(write)
        return packets

    def note_pending(self, write: int) -> None:
        """After publishing read_index (and the fence), with a writer waiting for room: note
        whether it now has the room it asked for (`take_writer_signal`). `write` is the write
        index the read started from (used if the peer's index is now malformed: a spurious
        signal is harmless)."""
        words, size, pos = self._words, self._size, self._read
        pending = words[3]
        now = words[0]
        if now >= size or now % ALIGN:
            now = write
        if pending and size - self.ring.used(now, pos) - ALIGN >= pending:
            self._signal_writer = True

    # read_all(): every packet present now, in order (packets written meanwhile wait for the
    # next call) — `_read_batch` with no limit, bound directly (no wrapper frame on the data path)
    read_all = _read_batch


@dataclass
class RingEndpoint:
    """One side of a channel: writes its outgoing ring, reads its incoming ring."""

    out: RingWriter
    inp: RingReader

    def send(self, type: int, payload=b"", txid: int = 0, flags: int = 0) -> bool:
        return self.out.write(type, payload, txid, flags)

    def send_gather(self, type: int, pieces, n: int, txid: int = 0, flags: int = 0) -> bool:
        return self.out.write_gather(type, pieces, n, txid, flags)

    def receive_all(self) -> list[Packet]:
        return self.inp.read_all()

    def release(self) -> None:
        self.out.ring.release()
        self.inp.ring.release()


def region_size(ring_size: int) -> int:
    """Bytes of shared memory one channel needs: two rings of `ring_size` bytes."""
    return 2 * ring_size


def attach(buf, ring_size: int, side: str, init: bool, offset: int = 0) -> RingEndpoint:
    """The `side` ("guest" or "host") endpoint of the channel region at `offset` in `buf`.

    The guest -> host ring comes first, then the host -> guest ring. Exactly one side (the one
    that creates the region) passes init=True, before the other attaches.
    """
    if side not in ("guest", "host"):
        raise ValueError(f"side must be 'guest' or 'host', not {side!r}")
    to_host = Ring(buf, offset, ring_size, init)
    to_guest = Ring(buf, offset + ring_size, ring_size, init)
    if side == "guest":
        return RingEndpoint(RingWriter(to_host), RingReader(to_guest))
    return RingEndpoint(RingWriter(to_guest), RingReader(to_host))


def ring_pair(ring_size: int = 4096) -> tuple[RingEndpoint, RingEndpoint]:
    """A connected (guest, host) pair of endpoints over one fresh in-memory region."""
    buf = bytearray(region_size(ring_size))
    guest = attach(buf, ring_size, "guest", init=True)
    host = attach(buf, ring_size, "host", init=False)
    return guest, host

"""The VHDX metadata log: finding and replaying the active sequence, and writing new entries.

MS-VHDX 2.3. The log is a circular buffer of 4 KiB sectors at the header's LogOffset/LogLength.
An entry is a 64-byte header plus descriptors (`desc`: one 4 KiB sector image; `zero`: a range
to zero), padded to whole descriptor sectors, followed by one `data` sector per `desc`
descriptor. Entries carry the header's LogGuid, a sequence number and a Tail (the log offset of
the first entry of the sequence that ends with this one). Metadata changes (here: BAT sectors)
go through the log; payload data never does. A header whose LogGuid is non-zero has a log that
must be replayed before any other I/O.

Key types and functions:
- `LogEntry` / `parse_entry()` — one entry, or None when the bytes at that position are not a
  valid entry of this log (signature, CRC-32C over EntryLength, GUID, lengths, descriptors).
- `find_replay()` — the active sequence (the newest valid entry whose Tail chain reaches it,
  sequence numbers +1 each) as a `LogReplay`: the writes in order, Flushed/LastFileOffset.
- `patch()` — overlays a replay's writes on bytes read from the file (read-only opens replay in
  memory this way; writable opens write the same ops into the file).
- `LogWriter` — appends entries for one writable session. Each entry's Tail is itself: the
  writer applies and fsyncs every entry before writing the next, so older entries never need
  replaying again. Entries are capped at a quarter of the log, which guarantees that a new entry
  never overwrites the newest durable one (a torn write then leaves it intact).

Performance: a dirty log is read in one pread (at most `MAX_LOG_LENGTH`); parsed entries are
cached by position and the search walks each Tail chain once, with a step budget so a hostile
log cannot make it quadratic. Clean logs (LogGuid zero) are never read.
"""
from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass, field

from .checksum import checksum_ok, seal
from .layout import MIB, TIB, bad

LOG_SECTOR = 4096
ENTRY_HEADER_FMT = "<4sIIIQII16sQQ"  # 64 bytes
DESCRIPTOR_FMT = "<4s4s8sQQ"  # signature, trailing/reserved, leading/zero length, offset, seq
DESCRIPTORS_PER_SECTOR = LOG_SECTOR // 32
DATA_PAYLOAD = 4084
MAX_FILE_OFFSET = 64 * TIB + 64 * 1024 * MIB  # beyond any valid VHDX's size
PROTECTED_PREFIX = 192 * 1024  # file identifier and headers: never written through the log


@dataclass
class LogEntry:
    position: int
    length: int
    tail: int
    sequence: int
    flushed_file_offset: int
    last_file_offset: int
    ops: list[tuple[int, bytes | int]] = field(default_factory=list)  # (offset, image | zeros)


@dataclass
class LogReplay:
    """What replaying the active sequence does: `ops` in order, then extend to `last`."""

    ops: list[tuple[int, bytes | int]]
    flushed_file_offset: int
    last_file_offset: int
    head_sequence: int
    entries: int


def _ring(log: bytes, pos: int, n: int) -> bytes:
    if pos + n <= len(log):
        return log[pos:pos + n]
    first = log[pos:]
    return first + log[:n - len(first)]


def descriptor_sectors(count: int) -> int:
    return -(-(count + 2) // DESCRIPTORS_PER_SECTOR)


def parse_entry(log: bytes, pos: int, log_guid: uuid.UUID) -> LogEntry | None:
    """The entry at `pos` of the log buffer `log`, or None if there is no valid one."""
    size = len(log)
    head = _ring(log, pos, 64)
    if head[:4] != b"loge":
        return None
    (_sig, _crc, length, tail, seq, count, _res, guid, flushed,
     last) = struct.unpack(ENTRY_HEADER_FMT, head)
    if (length < LOG_SECTOR or length % LOG_SECTOR or length > size or tail % LOG_SECTOR
            or tail >= size or seq == 0 or guid != log_guid.bytes_le):
        return None
    desc_sectors = descriptor_sectors(count)
    if desc_sectors * LOG_SECTOR > length:
        return None
    raw = _ring(log, pos, length)
    if not checksum_ok(raw, 4):
        return None
    entry = LogEntry(pos, length, tail, seq, flushed, last)
    data_at = desc_sectors * LOG_SECTOR
    for i in range(count):
        sig, trailing, leading, offset, dseq = struct.unpack_from(DESCRIPTOR_FMT, raw, 64 + 32 * i)
        if dseq != seq:
            return None
        if sig == b"zero":
            (zero_length,) = struct.unpack("<Q", leading)
            entry.ops.append((offset, zero_length))
        elif sig == b"desc":
            if data_at + LOG_SECTOR > length:
                return None
            sector = raw[data_at:data_at + LOG_SECTOR]
            dsig, high, payload, low = struct.unpack("<4sI4084sI", sector)
            if dsig != b"data" or (high << 32 | low) != seq:
                return None
            entry.ops.append((offset, leading + payload + trailing))
            data_at += LOG_SECTOR
        else:
            return None
    if data_at != length:
        return None
    return entry


def find_replay(path: str, log: bytes, log_guid: uuid.UUID) -> LogReplay:
    """The active sequence of a dirty log; refuses a log that has none."""
    size = len(log)
    cache: dict[int, LogEntry | None] = {}

    def at(pos: int) -> LogEntry | None:
        if pos not in cache:
            cache[pos] = parse_entry(log, pos, log_guid)
        return cache[pos]

    candidates = [e for e in (at(p) for p in range(0, size, LOG_SECTOR)) if e is not None]
    candidates.sort(key=lambda e: e.sequence, reverse=True)
    budget = 8 * (size // LOG_SECTOR) + 1024
    for head in candidates:
        chain = []
        entry = at(head.tail)
        while entry is not None and budget > 0:
            budget -= 1
            chain.append(entry)
            if entry is head:
                break
            nxt = at((entry.position + entry.length) % size)
            if nxt is None or nxt.sequence != entry.sequence + 1 or nxt.sequence > head.sequence:
                entry = None
            else:
                entry = nxt
        if budget <= 0:
            raise bad(path, "the log has too many tangled entries to search")
        if entry is head:
            return LogReplay([op for e in chain for op in e.ops], head.flushed_file_offset,
                             head.last_file_offset, head.sequence, len(chain))
    raise bad(path, "the header says the log must be replayed (LogGuid is set) but the log "
                    "holds no valid entry sequence")


def check_replay(path: str, replay: LogReplay, file_size: int, log_span: tuple[int, int]) -> None:
    """Refuse a replay that would write outside the places a log may write."""
    flushed, last = replay.flushed_file_offset, replay.last_file_offset
    if flushed % MIB or last % MIB:
        raise bad(path, f"log FlushedFileOffset {flushed} / LastFileOffset {last} are not "
                        "multiples of 1 MiB")
    if file_size < flushed:
        raise bad(path, f"file is truncated: {file_size} bytes but the log says "
                        f"{flushed} bytes were flushed")
    if last < flushed or last > MAX_FILE_OFFSET:
        raise bad(path, f"log LastFileOffset {last} is absurd")
    for offset, image in replay.ops:
        length = len(image) if isinstance(image, bytes) else image
        if offset % LOG_SECTOR or length % LOG_SECTOR or length == 0:
            raise bad(path, f"log descriptor at file offset {offset} length {length} is not "
                            "4 KiB aligned")
        end = offset + length
        if offset < PROTECTED_PREFIX or end > last:
            raise bad(path, f"log descriptor writes {offset}..{end}, outside "
                            f"{PROTECTED_PREFIX}..{last}")
        if offset < log_span[1] and log_span[0] < end:
            raise bad(path, f"log descriptor writes {offset}..{end}, into the log itself")


def patch(ops: list[tuple[int, bytes | int]], offset: int, buf: bytearray) -> bytearray:
    """Apply replay `ops` in order to `buf`, which holds the file's bytes from `offset`."""
    end = offset + len(buf)
    for target, image in ops:
        length = len(image) if isinstance(image, bytes) else image
        lo, hi = max(target, offset), min(target + length, end)
        if lo >= hi:
            continue
        if isinstance(image, bytes):
            buf[lo - offset:hi - offset] = image[lo - target:hi - target]
        else:
            buf[lo - offset:hi - offset] = bytes(hi - lo)
    return buf


def apply_replay(fd: int, replay: LogReplay) -> None:
    """Write a checked replay into the file and fsync. The file is first extended to
    LastFileOffset (the one step that can fail on a hostile value, so it fails before anything
    is written); zero ranges past the old end of file are already zero and are skipped."""
    old_size = os.fstat(fd).st_size
    if old_size < replay.last_file_offset:
        os.ftruncate(fd, replay.last_file_offset)
    for target, image in replay.ops:
        if isinstance(image, bytes):
            os.pwrite(fd, image, target)
        else:
            for start in range(target, min(target + image, old_size), MIB):
                os.pwrite(fd, bytes(min(MIB, target + image - start, old_size - start)), start)
    os.fsync(fd)


def build_entry(*, sequence: int, tail: int, log_guid: uuid.UUID, flushed_file_offset: int,
                last_file_offset: int, writes: list[tuple[int, bytes]],
                zeros: list[tuple[int, int]] = ()) -> bytes:
    """One sealed log entry: `writes` are (file offset, 4 KiB image), `zeros` (offset, length)."""
    count = len(writes) + len(zeros)
    desc_sectors = descriptor_sectors(count)
    length = (desc_sectors + len(writes)) * LOG_SECTOR
    buf = bytearray(length)
    struct.pack_into(ENTRY_HEADER_FMT, buf, 0, b"loge", 0, length, tail, sequence, count, 0,
                     log_guid.bytes_le, flushed_file_offset, last_file_offset)
    slot = 64
    for offset, zero_length in zeros:
        struct.pack_into(DESCRIPTOR_FMT, buf, slot, b"zero", bytes(4),
                         struct.pack("<Q", zero_length), offset, sequence)
        slot += 32
    data_at = desc_sectors * LOG_SECTOR
    for offset, image in writes:
        if len(image) != LOG_SECTOR:
            raise ValueError("log data descriptors carry exactly one 4 KiB sector")
        struct.pack_into(DESCRIPTOR_FMT, buf, slot, b"desc", image[4092:], image[:8], offset,
                         sequence)
        struct.pack_into("<4sI4084sI", buf, data_at, b"data", sequence >> 32, image[8:4092],
                         sequence & 0xFFFFFFFF)
        slot += 32
        data_at += LOG_SECTOR
    return bytes(seal(buf, 4))


class LogWriter:
    """Appends self-contained entries (Tail = own position) to the log of one session."""

    def __init__(self, log_offset: int, log_length: int, log_guid: uuid.UUID):
        self.log_offset = log_offset
        self.log_length = log_length
        self.log_guid = log_guid
        self.position = 0
        self.sequence = 1
        max_sectors = log_length // 4 // LOG_SECTOR
        data = max_sectors - 1
        while data > 0 and data + descriptor_sectors(data) > max_sectors:
            data -= 1
        self.max_writes = data

    def batches(self, writes: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
        """`writes` cut into pieces small enough for one entry each."""
        if self.max_writes < 1:
            raise ValueError("log is too small to hold an entry")
        return [writes[i:i + self.max_writes] for i in range(0, len(writes), self.max_writes)]

    def write_entry(self, fd: int, writes: list[tuple[int, bytes]], file_size: int) -> bytes:
        """Write one entry for `writes` (at most `max_writes`) into the log; the caller fsyncs,
        then applies the writes and fsyncs again before the next entry."""
        if not 1 <= len(writes) <= self.max_writes:
            raise ValueError("log entry must hold 1..max_writes sector images")
        length = (descriptor_sectors(len(writes)) + len(writes)) * LOG_SECTOR
        if self.position + length > self.log_length:
            self.position = 0
        raw = build_entry(sequence=self.sequence, tail=self.position, log_guid=self.log_guid,
                          flushed_file_offset=file_size // MIB * MIB,
                          last_file_offset=-(-file_size // MIB) * MIB, writes=writes)
        os.pwrite(fd, raw, self.log_offset + self.position)
        self.position += length
        self.sequence += 1
        return raw

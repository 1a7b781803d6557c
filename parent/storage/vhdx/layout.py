"""The VHDX header section: file identifier, the two headers and the two region tables.

MS-VHDX 2.2. The first 1 MiB of every VHDX file holds five 64 KiB slots: the file identifier
(`vhdxfile` + a UTF-16LE creator string), header 1, header 2, region table 1 and region table 2.
Everything else in the file is located through the current header (the log) and the region table
(the BAT and the metadata region); all of it is 1 MiB aligned and overlaps nothing else.

Key types and functions:
- `Header` — one 4 KiB header; `pack()` seals it with its CRC-32C, `parse()` returns None for a
  copy that is not valid (bad signature, bad CRC or Version != 1).
- `choose_header()` — the current header: the only valid copy, or the valid copy with the larger
  SequenceNumber. Refuses the file when neither is valid or when both carry the same number but
  differ.
- `Region` / `parse_region_table()` / `pack_region_table()` — the region table, validated
  strictly: signature, CRC, both copies identical, entry count, alignment, unique GUIDs, no
  overlap with each other, the header section or the log, known required regions only, BAT and
  metadata present, everything inside the file.

Everything here is pure: functions take and return bytes, and raise `HvError("BadRequest", ...)`
naming the file and the problem. The caller does the I/O.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, replace

from hypervisor.runtime.errors import HvError

from .checksum import checksum_ok, seal

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

FILE_ID_SIGNATURE = b"vhdxfile"
HEADER_SIGNATURE = b"head"
REGION_SIGNATURE = b"regi"

HEADER_SECTION_SIZE = 1 * MIB
FILE_ID_OFFSET = 0
HEADER_OFFSETS = (64 * KIB, 128 * KIB)
REGION_TABLE_OFFSETS = (192 * KIB, 256 * KIB)
HEADER_SIZE = 4 * KIB
REGION_TABLE_SIZE = 64 * KIB
REGION_ENTRY_SIZE = 32
MAX_REGION_ENTRIES = 2047
MAX_LOG_LENGTH = 256 * MIB  # Windows and qemu write 1 MiB; anything far larger is hostile.

BAT_REGION_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
KNOWN_REGIONS = {BAT_REGION_GUID: "BAT", METADATA_REGION_GUID: "metadata"}

ZERO_GUID = uuid.UUID(int=0)
_HEADER_FMT = "<4sIQ16s16s16sHHIQ"  # signature .. LogOffset: 80 bytes
_REGION_HEADER_FMT = "<4sIII"
_REGION_ENTRY_FMT = "<16sQII"


def bad(path: str, problem: str) -> HvError:
    """The one error a corrupt or hostile file produces."""
    return HvError("BadRequest", f"{path}: {problem}")


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_file_identifier(creator: str) -> bytes:
    """The 64 KiB file-identifier slot: signature, creator (UTF-16LE, at most 256 units), zeros."""
    text = creator.encode("utf-16-le")[:512]
    return (FILE_ID_SIGNATURE + text).ljust(64 * KIB, b"\0")


def parse_file_identifier(path: str, data: bytes) -> str:
    """Check the `vhdxfile` signature and return the creator string (diagnostics only)."""
    if len(data) < 8 or data[:8] != FILE_ID_SIGNATURE:
        raise bad(path, f"not a VHDX file (file identifier signature is {bytes(data[:8])!r}, "
                        f"expected b'vhdxfile')")
    raw = bytes(data[8:520])
    units = [raw[i:i + 2] for i in range(0, len(raw) - 1, 2)]
    end = units.index(b"\0\0") if b"\0\0" in units else len(units)
    return b"".join(units[:end]).decode("utf-16-le", errors="replace")


@dataclass(frozen=True)
class Header:
    """One VHDX header (MS-VHDX 2.2.2). GUIDs are `uuid.UUID`s, stored mixed-endian (bytes_le)."""

    sequence_number: int
    file_write_guid: uuid.UUID
    data_write_guid: uuid.UUID
    log_guid: uuid.UUID
    log_length: int
    log_offset: int
    log_version: int = 0
    version: int = 1

    def pack(self) -> bytes:
        buf = bytearray(HEADER_SIZE)
        struct.pack_into(_HEADER_FMT, buf, 0, HEADER_SIGNATURE, 0, self.sequence_number,
                         self.file_write_guid.bytes_le, self.data_write_guid.bytes_le,
                         self.log_guid.bytes_le, self.log_version, self.version,
                         self.log_length, self.log_offset)
        return bytes(seal(buf, 4))

    @classmethod
    def parse(cls, data: bytes) -> "Header | None":
        """The header in `data`, or None when this copy is not valid (signature, CRC, Version)."""
        if len(data) < HEADER_SIZE or data[:4] != HEADER_SIGNATURE:
            return None
        data = bytes(data[:HEADER_SIZE])
        if not checksum_ok(data, 4):
            return None
        (_sig, _crc, seq, fwg, dwg, lg, log_version, version, log_length,
         log_offset) = struct.unpack_from(_HEADER_FMT, data, 0)
        if version != 1:
            return None
        return cls(seq, uuid.UUID(bytes_le=fwg), uuid.UUID(bytes_le=dwg), uuid.UUID(bytes_le=lg),
                   log_length, log_offset, log_version, version)

    def next(self, **changes) -> "Header":
        """This header with SequenceNumber + 1 and the given fields changed."""
        return replace(self, sequence_number=self.sequence_number + 1, **changes)

    @property
    def log_is_empty(self) -> bool:
        return self.log_guid == ZERO_GUID


def choose_header(path: str, first: bytes, second: bytes) -> tuple[Header, int]:
    """The current header and the index (0 or 1) of the slot holding it, validated."""
    h1, h2 = Header.parse(first), Header.parse(second)
    if h1 is None and h2 is None:
        raise bad(path, "no valid VHDX header (both copies have a bad signature, checksum or "
                        "version)")
    if h1 is not None and h2 is not None and h1.sequence_number == h2.sequence_number:
        if h1 != h2:
            raise bad(path, "both headers carry sequence number "
                            f"{h1.sequence_number} but differ")
        current, index = h1, 0
    elif h2 is None or (h1 is not None and h1.sequence_number > h2.sequence_number):
        current, index = h1, 0
    else:
        current, index = h2, 1
    assert current is not None
    if current.log_version != 0:
        raise bad(path, f"unsupported log version {current.log_version} (expected 0)")
    if current.log_offset % MIB or current.log_length % MIB:
        raise bad(path, f"log offset {current.log_offset} / length {current.log_length} "
                        "are not multiples of 1 MiB")
    if current.log_length and current.log_offset < HEADER_SECTION_SIZE:
        raise bad(path, f"log offset {current.log_offset} lies inside the header section")
    if current.log_length > MAX_LOG_LENGTH:
        raise bad(path, f"log length {current.log_length} is absurd (limit {MAX_LOG_LENGTH})")
    if current.sequence_number >= 2**64 - 16:
        raise bad(path, "header sequence number is exhausted")
    return current, index


@dataclass(frozen=True)
class Region:
    """One region-table entry: a GUID-named, 1 MiB aligned range of the file."""

    guid: uuid.UUID
    offset: int
    length: int
    required: bool

    @property
    def end(self) -> int:
        return self.offset + self.length


def pack_region_table(regions: list[Region]) -> bytes:
    buf = bytearray(REGION_TABLE_SIZE)
    struct.pack_into(_REGION_HEADER_FMT, buf, 0, REGION_SIGNATURE, 0, len(regions), 0)
    for i, region in enumerate(regions):
        struct.pack_into(_REGION_ENTRY_FMT, buf, 16 + i * REGION_ENTRY_SIZE, region.guid.bytes_le,
                         region.offset, region.length, int(region.required))
    return bytes(seal(buf, 4))


def _check_region_table_bytes(path: str, data: bytes, which: int) -> None:
    if len(data) < REGION_TABLE_SIZE:
        raise bad(path, f"file is truncated inside region table {which}")
    if data[:4] != REGION_SIGNATURE:
        raise bad(path, f"region table {which} has a bad signature {bytes(data[:4])!r}")
    if not checksum_ok(data, 4):
        raise bad(path, f"region table {which} has a bad checksum")


def parse_region_table(path: str, first: bytes, second: bytes, header: Header,
                       file_size: int) -> dict[uuid.UUID, Region]:
    """The regions of a file, keyed by GUID. Both tables must be valid and identical."""
    _check_region_table_bytes(path, first, 1)
    _check_region_table_bytes(path, second, 2)
    if bytes(first[:REGION_TABLE_SIZE]) != bytes(second[:REGION_TABLE_SIZE]):
        raise bad(path, "region table 2 does not match region table 1")
    _sig, _crc, count, _reserved = struct.unpack_from(_REGION_HEADER_FMT, first, 0)
    if count > MAX_REGION_ENTRIES:
        raise bad(path, f"region table has {count} entries (at most {MAX_REGION_ENTRIES})")
    regions: dict[uuid.UUID, Region] = {}
    for i in range(count):
        raw_guid, offset, length, flags = struct.unpack_from(
            _REGION_ENTRY_FMT, first, 16 + i * REGION_ENTRY_SIZE)
        guid = uuid.UUID(bytes_le=raw_guid)
        name = KNOWN_REGIONS.get(guid, f"region {guid}")
        if guid in regions:
            raise bad(path, f"region table lists {name} twice")
        if flags & ~1:
            raise bad(path, f"{name} has reserved region flags set ({flags:#x})")
        if guid not in KNOWN_REGIONS and flags & 1:
            raise bad(path, f"unknown required region {guid}")
        if offset % MIB or length % MIB or offset < HEADER_SECTION_SIZE or length == 0:
            raise bad(path, f"{name} at {offset} length {length} is not a non-empty, 1 MiB "
                            "aligned range after the header section")
        if offset + length > file_size:
            raise bad(path, f"file is truncated: {name} ends at {offset + length} but the file "
                            f"is {file_size} bytes")
        regions[guid] = Region(guid, offset, length, bool(flags & 1))
    for guid, name in KNOWN_REGIONS.items():
        if guid not in regions:
            raise bad(path, f"region table has no {name} region")
    spans = [(r.offset, r.end, KNOWN_REGIONS.get(r.guid, f"region {r.guid}"))
             for r in regions.values()]
    if header.log_length:
        spans.append((header.log_offset, header.log_offset + header.log_length, "log"))
        if header.log_offset + header.log_length > file_size:
            raise bad(path, f"file is truncated: the log ends at "
                            f"{header.log_offset + header.log_length} but the file is "
                            f"{file_size} bytes")
    spans.sort()
    for (_s1, e1, n1), (s2, _e2, n2) in zip(spans, spans[1:]):
        if s2 < e1:
            raise bad(path, f"{n1} overlaps {n2}")
    return regions

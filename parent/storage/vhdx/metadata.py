"""The VHDX metadata region and the disk geometry it implies.

MS-VHDX 2.6. The metadata region starts with a 64 KiB table (`metadata` signature, up to 2047
32-byte entries); each entry names an item by GUID and points at its bytes further inside the
region. Five items are required in every disk: File Parameters (block size, LeaveBlockAllocated
= fixed, HasParent = differencing), Virtual Disk Size, Virtual Disk ID (page 83), Logical Sector
Size and Physical Sector Size. Differencing disks add a Parent Locator.

Key types and functions:
- `DiskParameters` — the validated values of those items.
- `parse_metadata()` / `pack_metadata()` — the region's bytes <-> `DiskParameters`; parsing
  refuses a bad signature, overlapping or out-of-range items, duplicate or unknown required
  items, missing items and values out of range.
- Geometry: `chunk_ratio()`, `payload_blocks()`, `bat_entry_count()`, `bat_index()` and
  `auto_block_size()` — the BAT interleaves one sector-bitmap entry after every chunk of
  `chunk_ratio` payload entries, so payload block b lives at BAT index b + b // chunk_ratio.

Pure functions over bytes; errors are `HvError("BadRequest", "<path>: <problem>")`.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Callable

from .layout import GIB, KIB, MIB, TIB, bad
from .parent_locator import ParentLocator, pack_locator, parse_locator

METADATA_SIGNATURE = b"metadata"
METADATA_TABLE_SIZE = 64 * KIB
METADATA_ENTRY_SIZE = 32
MAX_METADATA_ENTRIES = 2047
MAX_ITEM_LENGTH = 1 * MIB

FILE_PARAMETERS_GUID = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_GUID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_GUID = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_GUID = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_GUID = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")

FLAG_IS_USER = 1
FLAG_IS_VIRTUAL_DISK = 2
FLAG_IS_REQUIRED = 4

# item -> (name, length of its value, flags written on create); None length = variable.
KNOWN_ITEMS: dict[uuid.UUID, tuple[str, int | None, int]] = {
    FILE_PARAMETERS_GUID: ("File Parameters", 8, FLAG_IS_REQUIRED),
    VIRTUAL_DISK_SIZE_GUID: ("Virtual Disk Size", 8, FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK),
    PAGE83_GUID: ("Virtual Disk ID", 16, FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK),
    LOGICAL_SECTOR_GUID: ("Logical Sector Size", 4, FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK),
    PHYSICAL_SECTOR_GUID: ("Physical Sector Size", 4, FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK),
    PARENT_LOCATOR_GUID: ("Parent Locator", None, FLAG_IS_REQUIRED),
}

MIN_BLOCK_SIZE = 1 * MIB
MAX_BLOCK_SIZE = 256 * MIB
MAX_VIRTUAL_SIZE = 64 * TIB
SECTOR_SIZES = (512, 4096)

FP_LEAVE_BLOCK_ALLOCATED = 1
FP_HAS_PARENT = 2


@dataclass(frozen=True)
class DiskParameters:
    """What the metadata region says about the virtual disk."""

    size: int
    block_size: int
    logical_sector_size: int
    physical_sector_size: int
    disk_id: uuid.UUID
    leave_block_allocated: bool = False
    has_parent: bool = False
    parent_locator: ParentLocator | None = None

    @property
    def chunk_ratio(self) -> int:
        return chunk_ratio(self.block_size, self.logical_sector_size)

    @property
    def payload_blocks(self) -> int:
        return payload_blocks(self.size, self.block_size)

    @property
    def bat_entries(self) -> int:
        return bat_entry_count(self.size, self.block_size, self.logical_sector_size,
                               self.has_parent)


def chunk_ratio(block_size: int, logical_sector_size: int) -> int:
    """Payload blocks per chunk: 2^23 sectors × sector size / block size."""
    return (1 << 23) * logical_sector_size // block_size


def payload_blocks(size: int, block_size: int) -> int:
    return -(-size // block_size)


def bat_entry_count(size: int, block_size: int, logical_sector_size: int,
                    has_parent: bool = False) -> int:
    """BAT entries needed: payload entries plus one sector-bitmap entry per chunk boundary."""
    ratio = chunk_ratio(block_size, logical_sector_size)
    n = payload_blocks(size, block_size)
    if has_parent:
        return -(-n // ratio) * (ratio + 1)
    return n + (n - 1) // ratio if n else 0


def bat_index(block: int, ratio: int) -> int:
    """BAT index of payload block `block` (skipping the interleaved sector-bitmap entries)."""
    return block + block // ratio


def auto_block_size(size: int) -> int:
    """qemu's automatic block size: 8 MiB up to 1 GiB, 16 MiB above, 32 MiB above 100 GiB,
    64 MiB above 32 TiB."""
    if size > 32 * TIB:
        return 64 * MIB
    if size > 100 * GIB:
        return 32 * MIB
    if size > 1 * GIB:
        return 16 * MIB
    return 8 * MIB


def check_geometry(path: str, size: int, block_size: int, logical: int, physical: int) -> None:
    """Refuse block sizes, sector sizes and virtual sizes outside MS-VHDX's limits."""
    if not (MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE) or block_size & (block_size - 1):
        raise bad(path, f"block size {block_size} is not a power of two from 1 MiB to 256 MiB")
    if logical not in SECTOR_SIZES:
        raise bad(path, f"logical sector size {logical} is not 512 or 4096")
    if physical not in SECTOR_SIZES:
        raise bad(path, f"physical sector size {physical} is not 512 or 4096")
    if size <= 0 or size > MAX_VIRTUAL_SIZE:
        raise bad(path, f"virtual size {size} is not between 1 byte and 64 TiB")
    if size % logical:
        raise bad(path, f"virtual size {size} is not a multiple of the logical sector size "
                        f"{logical}")


def pack_metadata(params: DiskParameters, region_length: int = MIB) -> bytes:
    """The whole metadata region as qemu lays it out: five entries, items packed at 64 KiB."""
    flags = (FP_LEAVE_BLOCK_ALLOCATED if params.leave_block_allocated else 0) | \
            (FP_HAS_PARENT if params.has_parent else 0)
    values = [
        (FILE_PARAMETERS_GUID, struct.pack("<II", params.block_size, flags)),
        (VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", params.size)),
        (PAGE83_GUID, params.disk_id.bytes_le),
        (LOGICAL_SECTOR_GUID, struct.pack("<I", params.logical_sector_size)),
        (PHYSICAL_SECTOR_GUID, struct.pack("<I", params.physical_sector_size)),
    ]
    if params.has_parent:  # last, so a merge can grow it in place
        values.append((PARENT_LOCATOR_GUID, pack_locator(params.parent_locator)))
    buf = bytearray(region_length)
    struct.pack_into("<8sHH20x", buf, 0, METADATA_SIGNATURE, 0, len(values))
    item_offset = METADATA_TABLE_SIZE
    for i, (guid, value) in enumerate(values):
        struct.pack_into("<16sIII4x", buf, 32 + i * METADATA_ENTRY_SIZE, guid.bytes_le,
                         item_offset, len(value), KNOWN_ITEMS[guid][2])
        buf[item_offset:item_offset + len(value)] = value
        item_offset += len(value)
    return bytes(buf)


def _read_items(path: str, table: bytes, region_length: int,
                read: Callable[[int, int], bytes]) -> dict[uuid.UUID, bytes]:
    """The known items' values, after checking the table's structure."""
    if len(table) < METADATA_TABLE_SIZE or table[:8] != METADATA_SIGNATURE:
        raise bad(path, f"metadata table has a bad signature {bytes(table[:8])!r}")
    _sig, _reserved, count = struct.unpack_from("<8sHH", table, 0)
    if count > MAX_METADATA_ENTRIES:
        raise bad(path, f"metadata table has {count} entries (at most {MAX_METADATA_ENTRIES})")
    items: dict[uuid.UUID, bytes] = {}
    seen: set[tuple[bytes, bool]] = set()
    spans = []
    for i in range(count):
        raw_guid, offset, length, flags = struct.unpack_from(
            "<16sIII", table, 32 + i * METADATA_ENTRY_SIZE)
        guid = uuid.UUID(bytes_le=raw_guid)
        is_user = bool(flags & FLAG_IS_USER)
        known = None if is_user else KNOWN_ITEMS.get(guid)
        name = known[0] if known else f"metadata item {guid}"
        if (raw_guid, is_user) in seen:
            raise bad(path, f"metadata table lists {name} twice")
        seen.add((raw_guid, is_user))
        if flags & ~7:
            raise bad(path, f"{name} has reserved flags set ({flags:#x})")
        if length > MAX_ITEM_LENGTH:
            raise bad(path, f"{name} is {length} bytes long (at most 1 MiB)")
        if length == 0:
            if offset != 0:
                raise bad(path, f"{name} is empty but has offset {offset}")
        elif offset < METADATA_TABLE_SIZE or offset + length > region_length:
            raise bad(path, f"{name} at offset {offset} length {length} lies outside the "
                            "metadata region's item area")
        else:
            spans.append((offset, offset + length, name))
        if known is None:
            if flags & FLAG_IS_REQUIRED:
                raise bad(path, f"unknown required {name}")
            continue
        if known[1] is not None and length != known[1]:
            raise bad(path, f"{name} is {length} bytes long (expected {known[1]})")
        items[guid] = bytes(read(offset, length)) if length else b""
    spans.sort()
    for (_s1, e1, n1), (s2, _e2, n2) in zip(spans, spans[1:]):
        if s2 < e1:
            raise bad(path, f"{n1} overlaps {n2} in the metadata region")
    return items


def parse_metadata(path: str, table: bytes, region_length: int,
                   read: Callable[[int, int], bytes]) -> DiskParameters:
    """Validated disk parameters. `table` is the region's first 64 KiB; `read(offset, length)`
    reads items at offsets relative to the region (only known items are read)."""
    items = _read_items(path, table, region_length, read)
    for guid, (name, _length, _flags) in KNOWN_ITEMS.items():
        if guid != PARENT_LOCATOR_GUID and guid not in items:
            raise bad(path, f"metadata has no {name} item")
    block_size, fp_flags = struct.unpack("<II", items[FILE_PARAMETERS_GUID])
    if fp_flags & ~(FP_LEAVE_BLOCK_ALLOCATED | FP_HAS_PARENT):
        raise bad(path, f"File Parameters has reserved flags set ({fp_flags:#x})")
    (size,) = struct.unpack("<Q", items[VIRTUAL_DISK_SIZE_GUID])
    (logical,) = struct.unpack("<I", items[LOGICAL_SECTOR_GUID])
    (physical,) = struct.unpack("<I", items[PHYSICAL_SECTOR_GUID])
    check_geometry(path, size, block_size, logical, physical)
    has_parent = bool(fp_flags & FP_HAS_PARENT)
    if has_parent and PARENT_LOCATOR_GUID not in items:
        raise bad(path, "differencing disk (HasParent) has no Parent Locator item")
    if PARENT_LOCATOR_GUID in items and not has_parent:
        raise bad(path, "Parent Locator item present but HasParent is not set")
    return DiskParameters(
        size=size, block_size=block_size, logical_sector_size=logical,
        physical_sector_size=physical, disk_id=uuid.UUID(bytes_le=items[PAGE83_GUID]),
        leave_block_allocated=bool(fp_flags & FP_LEAVE_BLOCK_ALLOCATED) and not has_parent,
        has_parent=has_parent,
        parent_locator=parse_locator(path, items[PARENT_LOCATOR_GUID]) if has_parent else None)


def item_spans(table: bytes) -> dict[uuid.UUID, tuple[int, int]]:
    """{item GUID: (offset, length)} of the non-user items of an already validated table."""
    _sig, _reserved, count = struct.unpack_from("<8sHH", table, 0)
    spans = {}
    for i in range(count):
        raw_guid, offset, length, flags = struct.unpack_from(
            "<16sIII", table, 32 + i * METADATA_ENTRY_SIZE)
        if not flags & FLAG_IS_USER:
            spans[uuid.UUID(bytes_le=raw_guid)] = (offset, length)
    return spans


def relocate_item(table: bytes, region_length: int, guid: uuid.UUID, value: bytes
                  ) -> tuple[bytes, int]:
    """A new table (first 64 KiB) with item `guid` given `value`'s length, and the offset where
    `value` goes: in place when nothing follows the item, else after the last item. Raises
    ValueError when the region has no room."""
    spans = item_spans(table)
    offset, _length = spans[guid]
    if any(o > offset for g, (o, n) in spans.items() if g != guid and n):
        offset = -(-max(o + n for o, n in spans.values()) // 8) * 8
    if offset + len(value) > region_length:
        raise ValueError("no room in the metadata region for the item")
    out = bytearray(table[:METADATA_TABLE_SIZE])
    _sig, _reserved, count = struct.unpack_from("<8sHH", out, 0)
    for i in range(count):
        at = 32 + i * METADATA_ENTRY_SIZE
        raw_guid, _o, _n, flags = struct.unpack_from("<16sIII", out, at)
        if uuid.UUID(bytes_le=raw_guid) == guid and not flags & FLAG_IS_USER:
            struct.pack_into("<16sIII", out, at, raw_guid, offset, len(value), flags)
    return bytes(out), offset

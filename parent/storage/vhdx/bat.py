"""The block allocation table (BAT): where each payload block of a VHDX lives in the file.

MS-VHDX 2.4/2.5. Each 64-bit entry is `file_offset | state` (offset a multiple of 1 MiB in bits
20-63, state in bits 0-2, bits 3-19 reserved). Payload entries and sector-bitmap entries are
interleaved: after every `chunk_ratio` payload entries comes one sector-bitmap entry, so payload
block b sits at index b + b // chunk_ratio (see `metadata.bat_index`).

Key type: `BlockAllocationTable`, loaded once at open and kept in memory as an `array('Q')`
(8 bytes per entry: a 127 GiB disk with 32 MiB blocks needs 32 KiB). `lookup()` is one array
index, so reads and writes never touch the on-disk BAT. Changes are staged with `sectors_for()`
(the 4 KiB BAT sectors that must be written — through the log — to make them durable) and only
`commit()`ed to memory once the file holds them.

Differencing disks: payload blocks may also be PARTIALLY_PRESENT (data here for the sectors
whose bit is set in the chunk's sector bitmap block, the parent's otherwise) and each chunk's
sector-bitmap entry is NOT_PRESENT or PRESENT (a 1 MiB bitmap block in the file).

Validation at load is stricter than qemu's: reserved bits and reserved states (4, 5; 7 outside
differencing disks) are refused, NOT_PRESENT/ZERO entries must carry offset 0, sector-bitmap
entries of fixed and dynamic disks must be 0, and every FULLY_PRESENT block must start at
>= 1 MiB, end inside the file, avoid the header section, log, BAT and metadata (and any other
region), and overlap no other block. The check is one Python loop over the entries — about
0.3 s per million entries; entries that carry no offset take a fast path.
"""
from __future__ import annotations

import sys
from array import array

from .layout import MIB, bad
from .metadata import DiskParameters, bat_index

NOT_PRESENT = 0
UNDEFINED = 1
ZERO = 2
UNMAPPED = 3
FULLY_PRESENT = 6
PARTIALLY_PRESENT = 7
SB_PRESENT = 6          # a sector bitmap block's state when it is in the file
STATE_NAMES = {0: "NOT_PRESENT", 1: "UNDEFINED", 2: "ZERO", 3: "UNMAPPED", 4: "reserved state 4",
               5: "reserved state 5", 6: "FULLY_PRESENT", 7: "PARTIALLY_PRESENT"}

STATE_MASK = 0x7
RESERVED_MASK = 0xFFFF8
OFFSET_MASK = ~0xFFFFF & 0xFFFFFFFFFFFFFFFF
ENTRY_SIZE = 8
SECTOR_SIZE = 4096
ENTRIES_PER_SECTOR = SECTOR_SIZE // ENTRY_SIZE


def entry(file_offset: int, state: int) -> int:
    """A BAT entry value; `file_offset` must be a multiple of 1 MiB."""
    return file_offset | state


def _to_array(data: bytes) -> array:
    table = array("Q")
    table.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover - VHDX is little-endian on disk
        table.byteswap()
    return table


def _to_bytes(table: array) -> bytes:
    if sys.byteorder != "little":  # pragma: no cover
        table = array("Q", table)
        table.byteswap()
    return table.tobytes()


def pack_bat(params: DiskParameters, region_length: int, first_block_offset: int | None) -> bytes:
    """A fresh BAT region. With `first_block_offset` every payload block is FULLY_PRESENT and
    laid out contiguously from there (a provisioned fixed disk); otherwise every payload entry is
    ZERO (reads return zeros) and sector-bitmap entries are NOT_PRESENT, as qemu writes."""
    table = array("Q", bytes(region_length))
    ratio = params.chunk_ratio
    for block in range(params.payload_blocks):
        if first_block_offset is None:
            table[bat_index(block, ratio)] = ZERO
        else:
            table[bat_index(block, ratio)] = entry(
                first_block_offset + block * params.block_size, FULLY_PRESENT)
    return _to_bytes(table)


class BlockAllocationTable:
    """The in-memory BAT of one open disk. `region_offset` is where the BAT region starts."""

    def __init__(self, params: DiskParameters, region_offset: int, data: bytes):
        self.params = params
        self.region_offset = region_offset
        self.ratio = params.chunk_ratio
        self.count = params.bat_entries
        self._table = _to_array(data)

    @classmethod
    def load(cls, path: str, params: DiskParameters, region_offset: int, region_length: int,
             data: bytes, file_size: int,
             reserved_spans: list[tuple[int, int, str]]) -> "BlockAllocationTable":
        """Load and validate the BAT. `data` is the region's first `sectors × 4 KiB` bytes,
        enough to cover every entry; `reserved_spans` are (start, end, name) ranges no block may
        touch (header section, log, regions)."""
        need = params.bat_entries * ENTRY_SIZE
        if need > region_length:
            raise bad(path, f"BAT region is {region_length} bytes but {params.bat_entries} "
                            f"entries need {need}")
        size = -(-need // SECTOR_SIZE) * SECTOR_SIZE
        if len(data) < size:
            raise bad(path, "file is truncated inside the BAT")
        bat = cls(params, region_offset, bytes(data[:size]))
        bat._validate(path, file_size, reserved_spans)
        return bat

    def _validate(self, path: str, file_size: int,
                  reserved_spans: list[tuple[int, int, str]]) -> None:
        params, stride = self.params, self.ratio + 1
        block_size, size = params.block_size, params.size
        differencing = params.has_parent
        present: list[tuple[int, int, int]] = []
        table = self._table
        for index in range(self.count):
            value = table[index]
            if value <= UNMAPPED:  # states 0-3 with offset 0 and no reserved bits
                if value and index % stride == self.ratio and not differencing:
                    raise bad(path, f"sector bitmap BAT entry {index} is {value:#x}; fixed and "
                                    "dynamic disks must leave it NOT_PRESENT (0)")
                continue
            state, offset = value & STATE_MASK, value & OFFSET_MASK
            if value & RESERVED_MASK:
                raise bad(path, f"BAT entry {index} has reserved bits set ({value:#x})")
            if index % stride == self.ratio:
                if not differencing:
                    raise bad(path, f"sector bitmap BAT entry {index} is {value:#x}; fixed and "
                                    "dynamic disks must leave it NOT_PRESENT (0)")
                what = f"sector bitmap BAT entry {index} (chunk {index // stride})"
                if state != SB_PRESENT:
                    raise bad(path, f"{what} has state {state}; only NOT_PRESENT (0) and "
                                    "PRESENT (6) are allowed")
                self._check_span(path, what, offset, MIB, file_size, reserved_spans)
                present.append((offset, offset + MIB, f"the sector bitmap of chunk "
                                                      f"{index // stride}"))
                continue
            block = index - index // stride
            what = f"BAT entry {index} (block {block})"
            if state in (4, 5) or (state == PARTIALLY_PRESENT and not differencing):
                raise bad(path, f"{what} has {STATE_NAMES[state]}, which is not allowed here")
            if state in (NOT_PRESENT, ZERO):
                raise bad(path, f"{what} is {STATE_NAMES[state]} but has a non-zero file "
                                f"offset {offset}")
            if state in (UNDEFINED, UNMAPPED):
                continue  # the offset may remember where the block used to be
            if state == PARTIALLY_PRESENT:
                chunk = block // self.ratio
                if table[chunk * stride + self.ratio] & STATE_MASK != SB_PRESENT:
                    raise bad(path, f"{what} is PARTIALLY_PRESENT but chunk {chunk} has no "
                                    "sector bitmap")
            length = min(block_size, size - block * block_size)
            self._check_span(path, what, offset, length, file_size, reserved_spans)
            present.append((offset, offset + length, f"block {block}"))
        present.sort()
        for (o1, e1, b1), (o2, _e2, b2) in zip(present, present[1:]):
            if o2 < e1:
                kind = "the same" if o1 == o2 else "overlapping"
                raise bad(path, f"{b1} and {b2} point at {kind} file offsets ({o1} and {o2})")

    @staticmethod
    def _check_span(path: str, what: str, offset: int, length: int, file_size: int,
                    reserved_spans: list[tuple[int, int, str]]) -> None:
        end = offset + length
        if offset < MIB:
            raise bad(path, f"{what} points at offset {offset}, inside the header section")
        if end > file_size:
            raise bad(path, f"{what} points at {offset}..{end}, past the end of the file "
                            f"({file_size} bytes)")
        for start, stop, name in reserved_spans:
            if offset < stop and start < end:
                raise bad(path, f"{what} at {offset} overlaps the {name}")

    # -- lookups ------------------------------------------------------------------------------

    def lookup(self, block: int) -> tuple[int, int]:
        """(state, file_offset) of payload block `block`."""
        value = self._table[block + block // self.ratio]
        return value & STATE_MASK, value & OFFSET_MASK

    def bitmap_entry(self, chunk: int) -> tuple[int, int]:
        """(state, file_offset) of chunk `chunk`'s sector bitmap block (differencing disks)."""
        value = self._table[chunk * (self.ratio + 1) + self.ratio]
        return value & STATE_MASK, value & OFFSET_MASK

    def bitmap_index(self, chunk: int) -> int:
        return chunk * (self.ratio + 1) + self.ratio

    # -- changes ------------------------------------------------------------------------------

    def sectors_for(self, updates: dict[int, int],
                    raw: dict[int, int] | None = None) -> list[tuple[int, bytes]]:
        """The BAT sectors (file offset, 4 KiB image) that hold `updates` {block: entry} and
        `raw` {BAT index: entry} (sector bitmap entries), in file order, with the updates
        applied to the images but not yet to memory."""
        staged: dict[int, array] = {}
        pairs = [(bat_index(b, self.ratio), v) for b, v in updates.items()]
        for index, value in pairs + list((raw or {}).items()):
            sector = index // ENTRIES_PER_SECTOR
            if sector not in staged:
                start = sector * ENTRIES_PER_SECTOR
                staged[sector] = self._table[start:start + ENTRIES_PER_SECTOR]
            staged[sector][index % ENTRIES_PER_SECTOR] = value
        return [(self.region_offset + sector * SECTOR_SIZE, _to_bytes(images))
                for sector, images in sorted(staged.items())]

    def commit(self, updates: dict[int, int], raw: dict[int, int] | None = None) -> None:
        """Make staged `updates` {block: entry} and `raw` {BAT index: entry} visible to lookups
        (after they are durable)."""
        for block, value in updates.items():
            self._table[bat_index(block, self.ratio)] = value
        for index, value in (raw or {}).items():
            self._table[index] = value

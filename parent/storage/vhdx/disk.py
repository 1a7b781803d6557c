"""An open VHDX file: validated open, log replay, reads, writes with block allocation, close.

Key names:
- `open_vhdx(path, writable)` — validates the whole file before returning (header section,
  log, region tables, metadata, BAT) and refuses anything corrupt or hostile with
  `HvError("BadRequest", "<path>: <problem>")`, writing nothing to the file. A dirty log is
  replayed into the file on a writable open and in memory (an overlay patched onto every read)
  on a read-only open. Differencing disks are refused for now.
- `VhdxDisk` — the disk-backend object (see `parent.storage.disk_backend`): `read`, `write`,
  `flush`, `close`, `info()` plus `size`, `block_size`, sector sizes, `vhd_type`, `file_size`.

Write path and crash consistency. The first write of a session updates both headers with a new
FileWriteGuid and DataWriteGuid (and a new LogGuid when it allocates). A write into a
FULLY_PRESENT block is one pwrite. A write into any other block allocates: the file is extended
to a 1 MiB boundary plus whole blocks, the data is written and fsync'd, then the BAT sectors are
written through the log exactly as MS-VHDX requires (log entry, fsync, BAT sector, fsync) and
only then does the in-memory BAT point at the block. A crash at any point leaves either the old
BAT (the new block is leaked, never exposed half-written) or a log that the next open replays.
LogGuid is set at the session's first allocation and cleared on close (qemu instead sets and
clears it around every allocation: four more header writes each). The consequence: while a
writer that has allocated holds the file, other readers see a log to replay — harmless, since
the file is locked against other hvemu openers and every entry is already applied, so a replay
after a crash is idempotent.

Performance: payload I/O is `os.pread`/`os.preadv`/`os.pwrite` at computed offsets — a read
inside one block is a single pread, a longer one preadv's each block straight into one buffer;
the BAT lives in memory, so no read or overwrite touches metadata on disk. Writes into allocated
blocks are not synced until `flush()`; an allocation costs three fsyncs (data, log, BAT) once
per block. Measured here with 64 KiB requests against the page cache: about 400 MiB/s writing
new blocks (8 MiB), 1.7 GiB/s overwriting, 11 GiB/s reading. The file is locked with flock
(exclusive for writers, shared for readers) so two hvemu openers cannot corrupt each other.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading
import uuid

from hypervisor.runtime.errors import HvError

from .bat import (FULLY_PRESENT, NOT_PRESENT, PARTIALLY_PRESENT, SB_PRESENT, UNDEFINED,
                  BlockAllocationTable, entry)
from .layout import (HEADER_OFFSETS, HEADER_SECTION_SIZE, MIB, REGION_TABLE_OFFSETS,
                     REGION_TABLE_SIZE, ZERO_GUID, BAT_REGION_GUID, KNOWN_REGIONS,
                     METADATA_REGION_GUID, Header, bad, choose_header, parse_file_identifier,
                     parse_region_table, round_up)
from .log import LogReplay, LogWriter, apply_replay, check_replay, find_replay, patch
from .metadata import METADATA_TABLE_SIZE, PARENT_LOCATOR_GUID, parse_metadata, relocate_item
from .parent_locator import ParentLocator, pack_locator

FALL_THROUGH = (NOT_PRESENT, UNDEFINED)  # differencing: these blocks read from the parent


def os_error(path: str, exc: OSError) -> HvError:
    """An HvError for an operating-system failure on `path`."""
    if isinstance(exc, FileNotFoundError):
        return HvError("NotFound", f"{path}: no such file")
    if isinstance(exc, PermissionError):
        return HvError("Unauthorized", f"{path}: permission denied")
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EFBIG, errno.EINVAL):
        return HvError("BadRequest", f"{path}: {exc.strerror or exc}")
    return HvError("Internal", f"{path}: {exc.strerror or exc}")


class _Reader:
    """Reads file bytes with the replay overlay applied (zeros past EOF up to `size`)."""

    def __init__(self, path: str, fd: int, size: int, replay: LogReplay | None):
        self.path, self.fd, self.size = path, fd, size
        self.ops = replay.ops if replay else []

    def __call__(self, offset: int, length: int, what: str) -> bytes:
        if offset + length > self.size:
            raise bad(self.path, f"file is truncated inside the {what}")
        data = os.pread(self.fd, length, offset)
        buf = bytearray(data)
        if len(buf) < length:
            buf.extend(bytes(length - len(buf)))
        return bytes(patch(self.ops, offset, buf)) if self.ops else bytes(buf)


class VhdxDisk:
    """One open VHDX (fixed or dynamic). Create with `open_vhdx`; use as a context manager."""

    def __init__(self, path: str, fd: int, writable: bool):
        self.path = path
        self.writable = writable
        self._fd: int | None = fd
        self._lock = threading.Lock()
        self._overlay: list = []
        self._min_file_size = 0
        self._in_memory_replay = False
        self._log_writer: LogWriter | None = None
        self._file_guid_changed = False
        self._data_guid_changed = False
        self.parent: "VhdxDisk | None" = None   # differencing disks, once the chain is opened
        self._bits: dict[int, int] = {}          # block -> its sector bits (PARTIALLY_PRESENT)
        self._next_data_write_guid: uuid.UUID | None = None

    # -- open ---------------------------------------------------------------------------------

    def _load(self) -> None:
        path, fd = self.path, self._fd
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise bad(path, "not a regular file")
        file_size = st.st_size
        section = os.pread(fd, HEADER_SECTION_SIZE, 0)
        self.creator = parse_file_identifier(path, section)
        if len(section) < HEADER_SECTION_SIZE:
            raise bad(path, f"file is truncated: {file_size} bytes, smaller than the 1 MiB "
                            "header section")
        header, slot = choose_header(path, section[HEADER_OFFSETS[0]:HEADER_OFFSETS[0] + 4096],
                                     section[HEADER_OFFSETS[1]:HEADER_OFFSETS[1] + 4096])
        log_span = (header.log_offset, header.log_offset + header.log_length)
        replay = None
        if not header.log_is_empty:
            if log_span[1] > file_size:
                raise bad(path, f"file is truncated: the log ends at {log_span[1]} but the file "
                                f"is {file_size} bytes")
            log = os.pread(fd, header.log_length, header.log_offset)
            replay = find_replay(path, log, header.log_guid)
            check_replay(path, replay, file_size, log_span)
        effective_size = max(file_size, replay.last_file_offset if replay else 0)
        read = _Reader(path, fd, effective_size, replay)
        regions = parse_region_table(
            path, read(REGION_TABLE_OFFSETS[0], REGION_TABLE_SIZE, "region table 1"),
            read(REGION_TABLE_OFFSETS[1], REGION_TABLE_SIZE, "region table 2"),
            header, effective_size)
        meta, bat_region = regions[METADATA_REGION_GUID], regions[BAT_REGION_GUID]
        params = parse_metadata(
            path, read(meta.offset, METADATA_TABLE_SIZE, "metadata table"), meta.length,
            lambda off, n: read(meta.offset + off, n, "metadata region"))
        self._metadata_table = read(meta.offset, METADATA_TABLE_SIZE, "metadata table")
        self._metadata_region = (meta.offset, meta.length)
        bat_bytes = min(bat_region.length, round_up(params.bat_entries * 8, 4096))
        spans = [(0, HEADER_SECTION_SIZE, "header section")]
        if header.log_length:
            spans.append((log_span[0], log_span[1], "log"))
        spans += [(r.offset, r.end, f"{KNOWN_REGIONS.get(r.guid, 'region ' + str(r.guid))} "
                                    "region") for r in regions.values()]
        self._bat = BlockAllocationTable.load(
            path, params, bat_region.offset, bat_region.length,
            read(bat_region.offset, bat_bytes, "BAT"), effective_size, spans)
        if replay is not None:
            limit = max([file_size] + [end for _s, end, _n in spans]) + \
                (params.payload_blocks + 1) * params.block_size
            if replay.last_file_offset > limit:
                raise bad(path, f"log LastFileOffset {replay.last_file_offset} is beyond any "
                                f"size this disk can reach ({limit})")
        self.params, self._header, self._header_slot = params, header, slot
        self._log_span = log_span
        if replay is not None and self.writable:
            apply_replay(fd, replay)
            self._update_header(file_write_guid=uuid.uuid4(), log_guid=ZERO_GUID)
            self._file_guid_changed = True
        elif replay is not None:
            self._overlay = replay.ops
            self._min_file_size = replay.last_file_offset
            self._in_memory_replay = True
        self.replayed_log_entries = replay.entries if replay else 0

    # -- properties ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.params.size

    @property
    def block_size(self) -> int:
        return self.params.block_size

    @property
    def logical_sector_size(self) -> int:
        return self.params.logical_sector_size

    @property
    def physical_sector_size(self) -> int:
        return self.params.physical_sector_size

    @property
    def disk_id(self) -> uuid.UUID:
        return self.params.disk_id

    @property
    def vhd_type(self) -> str:
        if self.params.has_parent:
            return "Differencing"
        return "Fixed" if self.params.leave_block_allocated else "Dynamic"

    @property
    def parent_locator(self) -> ParentLocator | None:
        return self.params.parent_locator

    @property
    def parent_path(self) -> str | None:
        """The parent's path: the opened parent's, else the locator's first candidate."""
        if self.parent is not None:
            return self.parent.path
        if self.params.parent_locator is None:
            return None
        found = self.params.parent_locator.candidates(self.path)
        return found[0] if found else None

    @property
    def header(self) -> Header:
        return self._header

    @property
    def file_size(self) -> int:
        try:
            return max(os.fstat(self._live_fd()).st_size, self._min_file_size)
        except OSError as exc:
            raise os_error(self.path, exc) from exc

    def info(self) -> dict:
        return {"Path": self.path, "VhdFormat": "VHDX", "VhdType": self.vhd_type,
                "Size": self.size, "FileSize": self.file_size, "BlockSize": self.block_size,
                "LogicalSectorSize": self.logical_sector_size,
                "PhysicalSectorSize": self.physical_sector_size, "ParentPath": self.parent_path}

    # -- I/O ----------------------------------------------------------------------------------

    def _live_fd(self) -> int:
        if self._fd is None:
            raise HvError("InvalidState", f"{self.path}: disk is closed")
        return self._fd

    def _check_range(self, offset: int, length: int) -> None:
        if not isinstance(offset, int) or not isinstance(length, int):
            raise HvError("BadRequest", f"{self.path}: offset and length must be integers")
        if offset < 0 or length < 0 or offset + length > self.params.size:
            raise HvError("BadRequest", f"{self.path}: range {offset}+{length} is outside the "
                                        f"virtual disk ({self.params.size} bytes)")

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes of the virtual disk from `offset` (any alignment)."""
        fd = self._live_fd()
        self._check_range(offset, length)
        if self.params.has_parent:
            buf = bytearray(length)
            self._read_chain_into(offset, memoryview(buf))
            return bytes(buf)
        block, within = divmod(offset, self.params.block_size)
        if within + length <= self.params.block_size and not self._in_memory_replay:
            state, file_offset = self._bat.lookup(block)  # fast path: one block, one pread
            if state != FULLY_PRESENT:
                return bytes(length)
            try:
                data = os.pread(fd, length, file_offset + within)
            except OSError as exc:
                raise os_error(self.path, exc) from exc
            if len(data) < length:
                raise bad(self.path, f"file is truncated: block {block} at {file_offset} is "
                                     "cut short")
            return data
        buf = bytearray(length)
        view = memoryview(buf)
        block_size, pos = self.params.block_size, 0
        try:
            while pos < length:
                block, within = divmod(offset + pos, block_size)
                n = min(length - pos, block_size - within)
                state, file_offset = self._bat.lookup(block)
                if state == FULLY_PRESENT:
                    got = os.preadv(fd, [view[pos:pos + n]], file_offset + within)
                    if got < n and file_offset + within + n > self._min_file_size:
                        raise bad(self.path, f"file is truncated: block {block} at "
                                             f"{file_offset} is cut short")
                pos += n
        except OSError as exc:
            raise os_error(self.path, exc) from exc
        finally:
            view.release()
        if self._overlay:
            buf = self._patch_payload(offset, buf)
        return bytes(buf)

    def read_into(self, offset: int, view: memoryview) -> None:
        """Read `len(view)` bytes of the virtual disk from `offset` straight into `view` (a
        writable buffer, e.g. a channel's shared data buffer): preadv per block, no bytes
        object and no copy. Same checks and errors as `read`."""
        fd = self._live_fd()
        length = len(view)
        self._check_range(offset, length)
        if self.params.has_parent:
            self._read_chain_into(offset, view)
            return
        if self._in_memory_replay:
            view[:] = self.read(offset, length)
            return
        block_size, pos = self.params.block_size, 0
        lookup = self._bat.lookup
        try:
            while pos < length:
                block, within = divmod(offset + pos, block_size)
                n = min(length - pos, block_size - within)
                state, file_offset = lookup(block)
                if state == FULLY_PRESENT:
                    got = os.preadv(fd, [view[pos:pos + n]], file_offset + within)
                    if got < n:
                        raise bad(self.path, f"file is truncated: block {block} at "
                                             f"{file_offset} is cut short")
                else:
                    view[pos:pos + n] = bytes(n)
                pos += n
        except OSError as exc:
            raise os_error(self.path, exc) from exc

    # -- differencing: reads fall through to the parent, sector bitmaps -----------------------

    def _read_chain_into(self, offset: int, view: memoryview) -> None:
        """Read a differencing disk: own blocks from this file, the rest from the parent."""
        fd, block_size, pos, length = self._live_fd(), self.params.block_size, 0, len(view)
        try:
            while pos < length:
                block, within = divmod(offset + pos, block_size)
                n = min(length - pos, block_size - within)
                state, file_offset = self._bat.lookup(block)
                sub = view[pos:pos + n]
                if state == FULLY_PRESENT:
                    self._pread_into(fd, sub, file_offset + within, block)
                elif state == PARTIALLY_PRESENT:
                    self._parent_read_into(offset + pos, sub)
                    for start, count in self.own_runs(block, within, n):
                        self._pread_into(fd, sub[start:start + count],
                                         file_offset + within + start, block)
                elif state in FALL_THROUGH:
                    self._parent_read_into(offset + pos, sub)
                else:  # ZERO, UNMAPPED
                    sub[:] = bytes(n)
                pos += n
        except OSError as exc:
            raise os_error(self.path, exc) from exc

    def _pread_into(self, fd: int, sub: memoryview, file_offset: int, block: int) -> None:
        got = os.preadv(fd, [sub], file_offset)
        if got < len(sub) and file_offset + len(sub) > self._min_file_size:
            raise bad(self.path, f"file is truncated: block {block} is cut short")
        if self._overlay:
            sub[:] = patch(self._overlay, file_offset, bytearray(sub))

    def _parent_read_into(self, offset: int, sub: memoryview) -> None:
        if self.parent is None:
            raise HvError("InvalidState", f"{self.path}: opened without its parent disk")
        self.parent.read_into(offset, sub)

    @property
    def _sectors_per_block(self) -> int:
        return self.params.block_size // self.params.logical_sector_size

    def block_bits(self, block: int) -> int:
        """The sector bits of a PARTIALLY_PRESENT block as an int (bit i = sector i of the
        block is in this file); loaded from the chunk's sector bitmap block and cached."""
        bits = self._bits.get(block)
        if bits is None:
            chunk, j = divmod(block, self._bat.ratio)
            state, offset = self._bat.bitmap_entry(chunk)
            if state != SB_PRESENT:
                return 0
            per_block = self._sectors_per_block // 8
            where = offset + j * per_block
            raw = bytearray(os.pread(self._live_fd(), per_block, where).ljust(per_block, b"\0"))
            if self._overlay:
                raw = patch(self._overlay, where, raw)
            bits = self._bits[block] = int.from_bytes(raw, "little")
        return bits

    def own_runs(self, block: int, within: int, n: int) -> list[tuple[int, int]]:
        """(start, length) byte runs, relative to `within`, of the range [within, within + n)
        of a PARTIALLY_PRESENT block whose sectors are in this file."""
        lss = self.params.logical_sector_size
        s0, s1 = within // lss, -(-(within + n) // lss)
        mask = (1 << (s1 - s0)) - 1
        x = (self.block_bits(block) >> s0) & mask
        if x == 0:
            return []
        if x == mask:
            return [(0, n)]
        runs, base = [], s0
        while x:
            skip = (x & -x).bit_length() - 1
            x >>= skip
            base += skip
            ones = (x ^ (x + 1)).bit_length() - 1
            start = max(base * lss, within)
            end = min((base + ones) * lss, within + n)
            runs.append((start - within, end - start))
            x >>= ones
            base += ones
        return runs

    def own_extents(self):
        """Yield (virtual offset, length, file offset or None for zeros) for every range this
        differencing disk itself defines (what a merge copies into the parent), in order."""
        block_size = self.params.block_size
        for block in range(self.params.payload_blocks):
            state, file_offset = self._bat.lookup(block)
            start = block * block_size
            length = min(block_size, self.params.size - start)
            if state == FULLY_PRESENT:
                yield start, length, file_offset
            elif state == PARTIALLY_PRESENT:
                for s, n in self.own_runs(block, 0, length):
                    yield start + s, n, file_offset + s
            elif state not in FALL_THROUGH:
                yield start, length, None

    def read_own(self, file_offset: int, length: int) -> bytes:
        """Raw payload bytes of this file (for extents from `own_extents`)."""
        data = os.pread(self._live_fd(), length, file_offset)
        if len(data) < length:
            raise bad(self.path, f"file is truncated at {file_offset}")
        return bytes(patch(self._overlay, file_offset, bytearray(data))) if self._overlay \
            else data

    def read_own_into(self, file_offset: int, view: memoryview) -> None:
        """`read_own` into a caller's buffer (a merge's copy buffer)."""
        got = os.preadv(self._live_fd(), [view], file_offset)
        if got < len(view):
            raise bad(self.path, f"file is truncated at {file_offset}")
        if self._overlay:
            view[:] = patch(self._overlay, file_offset, bytearray(view))

    def set_parent_locator(self, locator: ParentLocator) -> None:
        """Rewrite the Parent Locator item atomically (table and item in one log entry).
        Only the parent link changes, not the data this disk reads, so DataWriteGuid is kept
        (a grandchild stays linked)."""
        if not self.writable or not self.params.has_parent:
            raise HvError("InvalidState", f"{self.path}: not a differencing disk open for writing")
        from dataclasses import replace
        value = pack_locator(locator)
        region_offset, region_length = self._metadata_region
        try:
            table, item_offset = relocate_item(self._metadata_table, region_length,
                                               PARENT_LOCATOR_GUID, value)
        except ValueError:
            raise HvError("BadRequest", f"{self.path}: no room for the parent locator") from None
        fd = self._live_fd()
        with self._lock:
            try:
                keep = self._data_guid_changed
                self._data_guid_changed = True
                self._prepare_write(allocating=True)
                self._data_guid_changed = keep
                writes = {region_offset + o: bytearray(os.pread(fd, 4096, region_offset + o))
                          for o in range(0, METADATA_TABLE_SIZE, 4096)
                          if table[o:o + 4096] != self._metadata_table[o:o + 4096]}
                for o in writes:
                    writes[o][:] = table[o - region_offset:o - region_offset + 4096]
                first = (item_offset // 4096) * 4096
                last = -(-(item_offset + len(value)) // 4096) * 4096
                item_area = bytearray(os.pread(fd, last - first, region_offset + first))
                item_area[item_offset - first:item_offset - first + len(value)] = value
                for o in range(first, last, 4096):
                    writes[region_offset + o] = item_area[o - first:o - first + 4096]
                sectors = sorted((o, bytes(b)) for o, b in writes.items())
                size = os.fstat(fd).st_size
                for batch in self._log_writer.batches(sectors):
                    self._log_writer.write_entry(fd, batch, size)
                    os.fsync(fd)
                    for sector_offset, image in batch:
                        os.pwrite(fd, image, sector_offset)
                    os.fsync(fd)
            except OSError as exc:
                raise os_error(self.path, exc) from exc
            self._metadata_table = table
            self.params = replace(self.params, parent_locator=locator)

    def _patch_payload(self, offset: int, buf: bytearray) -> bytearray:
        """Apply the in-memory replay to payload bytes (a read-only open of a dirty log)."""
        block_size, pos = self.params.block_size, 0
        while pos < len(buf):
            block, within = divmod(offset + pos, block_size)
            n = min(len(buf) - pos, block_size - within)
            state, file_offset = self._bat.lookup(block)
            if state == FULLY_PRESENT:
                buf[pos:pos + n] = patch(self._overlay, file_offset + within, buf[pos:pos + n])
            pos += n
        return buf

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `offset` (any alignment), allocating blocks as needed."""
        fd = self._live_fd()
        if not self.writable:
            raise HvError("InvalidState", f"{self.path}: disk is open read-only")
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        if not view:
            return
        lss = self.params.logical_sector_size
        if self.params.has_parent and (offset % lss or len(view) % lss):
            # whole sectors only: a sector is either this file's or the parent's
            start = offset - offset % lss
            end = -(-(offset + len(view)) // lss) * lss
            merged = bytearray(self.read(start, end - start))
            merged[offset - start:offset - start + len(view)] = view
            offset, view = start, memoryview(merged)
        block_size, pos = self.params.block_size, 0
        block, within = divmod(offset, block_size)
        if within + len(view) <= block_size and self._file_guid_changed and \
                self._data_guid_changed:   # fast path: headers done, one block; one pwrite
            try:
                with self._lock:
                    state, file_offset = self._bat.lookup(block)
                    if state == FULLY_PRESENT:
                        os.pwrite(fd, view, file_offset + within)
                        return
            except OSError as exc:
                raise os_error(self.path, exc) from exc
        pieces: list[tuple[int, int, memoryview]] = []
        while pos < len(view):
            block, within = divmod(offset + pos, block_size)
            n = min(len(view) - pos, block_size - within)
            pieces.append((block, within, view[pos:pos + n]))
            pos += n
        try:
            with self._lock:
                kept = (FULLY_PRESENT, PARTIALLY_PRESENT)
                new = [b for b, _w, _v in pieces if self._bat.lookup(b)[0] not in kept]
                self._prepare_write(allocating=bool(new))
                if new:
                    self._allocate(fd, list(dict.fromkeys(new)), pieces)
                partial = []
                for block, within, chunk in pieces:
                    if block not in new:
                        state, file_offset = self._bat.lookup(block)
                        os.pwrite(fd, chunk, file_offset + within)
                        if state == PARTIALLY_PRESENT:
                            partial.append((block, within, len(chunk)))
                if partial:
                    self._mark_own(fd, partial)
        except OSError as exc:
            raise os_error(self.path, exc) from exc

    def _prepare_write(self, allocating: bool) -> None:
        changes: dict = {}
        if not self._file_guid_changed:
            changes["file_write_guid"] = uuid.uuid4()
        if not self._data_guid_changed:
            wanted = self._next_data_write_guid or uuid.uuid4()
            if wanted != self._header.data_write_guid:
                changes["data_write_guid"] = wanted
        if allocating and self._log_writer is None:
            if self._header.log_length == 0:
                raise HvError("BadRequest", f"{self.path}: the log region is too small "
                                            f"({self._header.log_length} bytes) to allocate "
                                            "blocks")
            changes["log_guid"] = uuid.uuid4()
        self._data_guid_changed = True
        if "log_guid" in changes:
            # A header naming a LogGuid must never meet a log without an entry of that GUID
            # (a crash right after the header update would leave a file nobody may open): a
            # no-op entry — the first BAT sector as it is — goes into the log first.
            writer = LogWriter(self._header.log_offset, self._header.log_length,
                               changes["log_guid"])
            fd = self._live_fd()
            first = self._bat.region_offset
            writer.write_entry(fd, [(first, os.pread(fd, 4096, first))], os.fstat(fd).st_size)
            os.fsync(fd)
        if changes:
            self._update_header(**changes)
            self._file_guid_changed = True
            if "log_guid" in changes:
                self._log_writer = writer

    def _piece_bits(self, within: int, length: int) -> int:
        lss = self.params.logical_sector_size
        s0, s1 = within // lss, -(-(within + length) // lss)
        return ((1 << (s1 - s0)) - 1) << s0

    def _bitmap_where(self, block: int) -> int:
        chunk, j = divmod(block, self._bat.ratio)
        return self._bat.bitmap_entry(chunk)[1] + j * (self._sectors_per_block // 8)

    def _mark_own(self, fd: int, pieces: list[tuple[int, int, int]]) -> None:
        """Set the sector bits of writes into PARTIALLY_PRESENT blocks: data durable first,
        then the bits, so a set bit never names data that is not there."""
        changed: dict[int, int] = {}
        for block, within, length in pieces:
            old = changed.get(block, self.block_bits(block))
            new = old | self._piece_bits(within, length)
            if new != old:
                changed[block] = new
        if not changed:
            return
        os.fdatasync(fd)
        per_block = self._sectors_per_block // 8
        for block, bits in changed.items():
            os.pwrite(fd, bits.to_bytes(per_block, "little"), self._bitmap_where(block))
            self._bits[block] = bits

    def _allocate(self, fd: int, blocks: list[int], pieces) -> None:
        """Append `blocks` at the end of the file, write their data, then log + apply the BAT.
        In a differencing disk a block only partly written over a NOT_PRESENT entry becomes
        PARTIALLY_PRESENT: its bits (the whole block's, so stale bits of an earlier leaked
        attempt are cleared) go into the chunk's sector bitmap block — appended too when the
        chunk has none — before the BAT entries name them."""
        block_size, ratio = self.params.block_size, self._bat.ratio
        partial: dict[int, int] = {}
        if self.params.has_parent:
            for block, within, chunk in pieces:
                length = min(block_size, self.params.size - block * block_size)
                if block in blocks and self._bat.lookup(block)[0] in FALL_THROUGH and \
                        not (within == 0 and len(chunk) == length):
                    partial[block] = partial.get(block, 0) | self._piece_bits(within, len(chunk))
        chunks = sorted({b // ratio for b in partial
                         if self._bat.bitmap_entry(b // ratio)[0] != SB_PRESENT})
        start = round_up(os.fstat(fd).st_size, MIB)
        raw = {self._bat.bitmap_index(c): entry(start + i * MIB, SB_PRESENT)
               for i, c in enumerate(chunks)}
        data_start = start + len(chunks) * MIB
        where = {b: data_start + i * block_size for i, b in enumerate(blocks)}
        new_size = data_start + len(blocks) * block_size
        os.ftruncate(fd, new_size)
        for block, within, chunk in pieces:
            if block in where:
                os.pwrite(fd, chunk, where[block] + within)
        per_block = self._sectors_per_block // 8
        bitmap_at: dict[int, int] = {}
        for index, value in raw.items():
            bitmap_at[index // (ratio + 1)] = value & ~0xFFFFF
        for block, bits in partial.items():
            chunk, j = divmod(block, ratio)
            base = bitmap_at.get(chunk, self._bat.bitmap_entry(chunk)[1])
            os.pwrite(fd, bits.to_bytes(per_block, "little"), base + j * per_block)
        os.fsync(fd)  # the data and the new size are durable before any BAT entry names them
        updates = {b: entry(off, PARTIALLY_PRESENT if b in partial else FULLY_PRESENT)
                   for b, off in where.items()}
        sectors = self._bat.sectors_for(updates, raw)
        for batch in self._log_writer.batches(sectors):
            self._log_writer.write_entry(fd, batch, new_size)
            os.fsync(fd)
            for sector_offset, image in batch:
                os.pwrite(fd, image, sector_offset)
            os.fsync(fd)
        self._bat.commit(updates, raw)
        self._bits.update(partial)

    def _update_header(self, **changes) -> None:
        """MS-VHDX header update: write the non-current copy with sequence + 1, flush, then the
        other copy, flush, so both are current."""
        fd = self._live_fd()
        first = self._header.next(**changes)
        other = 1 - self._header_slot
        os.pwrite(fd, first.pack(), HEADER_OFFSETS[other])
        os.fsync(fd)
        second = first.next()
        os.pwrite(fd, second.pack(), HEADER_OFFSETS[self._header_slot])
        os.fsync(fd)
        self._header = second

    def flush(self) -> None:
        """Make every completed write durable."""
        fd = self._live_fd()
        if self.writable:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise os_error(self.path, exc) from exc

    def close(self) -> None:
        """Flush, clear LogGuid (so other readers need no replay) and release the file."""
        if self._fd is None:
            return
        fd = self._fd
        try:
            if self.writable:
                with self._lock:
                    os.fsync(fd)
                    if not self._header.log_is_empty:
                        self._update_header(log_guid=ZERO_GUID)
                    self._log_writer = None
        except OSError as exc:
            raise os_error(self.path, exc) from exc
        finally:
            self._fd = None
            os.close(fd)
            if self.parent is not None:
                self.parent.close()

    def __enter__(self) -> "VhdxDisk":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VhdxDisk({self.path!r}, {self.vhd_type}, size={self.size}, "
                f"block_size={self.block_size}, writable={self.writable})")


MAX_CHAIN_DEPTH = 256


def open_vhdx(path: str | os.PathLike, writable: bool = False, lock: bool = True,
              fd: int | None = None, *, with_parent: bool = True,
              parents: list | None = None, _chain: tuple = ()) -> VhdxDisk:
    """Open and validate a VHDX file. Corrupt or hostile files raise HvError("BadRequest").
    `lock=False` (read-only) skips the shared lock: for reading the metadata of a disk a
    running VM holds; a log the writer has not replayed yet is replayed in memory only.
    `fd`: the file already open (handed over by a parent; this disk owns it from now on).
    A differencing disk opens its parent chain read-only too (with the same `lock`;
    `with_parent=False`: only this file, for a merge); a missing parent is NotFound, a parent
    whose DataWriteGuid no longer matches the child's parent_linkage is ChainBroken.
    `parents`: the chain already open, [(path, fd), ...] nearest parent first (a sandboxed
    driver host cannot open paths: the worker hands every file of the chain over); the disks
    own those descriptors from now on (unused ones are closed)."""
    path = os.path.abspath(os.fspath(path))
    try:
        disk = _open_one(path, writable, lock, fd)
    except BaseException:
        _close_all(parents)
        raise
    if disk.params.has_parent and with_parent:
        try:
            disk.parent = _open_parent(disk, _chain + (path,), lock, parents)
        except BaseException:
            disk.close()
            raise
    else:
        _close_all(parents)
    return disk


def _close_all(parents) -> None:
    for _path, pfd in parents or ():
        try:
            os.close(pfd)
        except OSError:
            pass


def chain_paths(path: str | os.PathLike, lock: bool = False) -> list[str]:
    """The files of `path`'s differencing chain, nearest parent first (empty for a disk with
    no parent): what the worker opens and hands to a sandboxed driver host."""
    disk = open_vhdx(path, False, lock)
    try:
        out, d = [], disk.parent
        while d is not None:
            out.append(d.path)
            d = d.parent
        return out
    finally:
        disk.close()


def _open_parent(child: VhdxDisk, chain: tuple, lock: bool = True,
                 parents: list | None = None) -> VhdxDisk:
    """Find, open (read-only) and check the parent of differencing disk `child`."""
    locator = child.params.parent_locator
    if parents is not None:
        if not parents:
            raise HvError("NotFound", f"{child.path}: the chain of virtual hard disks is broken: "
                                      "its parent disk was not handed over")
        (found, pfd), rest = parents[0], list(parents[1:])
        if len(chain) >= MAX_CHAIN_DEPTH:
            os.close(pfd)
            _close_all(rest)
            raise bad(child.path, f"the chain of differencing disks is deeper than "
                                  f"{MAX_CHAIN_DEPTH}")
        parent = open_vhdx(found, False, lock, pfd, parents=rest, _chain=chain)
    else:
        candidates = locator.candidates(child.path)
        found = next((c for c in candidates if os.path.exists(c)), None)
        if found is None:
            tried = ", ".join(candidates) or "no path hvemu can resolve"
            raise HvError("NotFound", f"{child.path}: the chain of virtual hard disks is broken: "
                                      f"the parent disk cannot be found (tried {tried})")
        if len(chain) >= MAX_CHAIN_DEPTH:
            raise bad(child.path, f"the chain of differencing disks is deeper than "
                                  f"{MAX_CHAIN_DEPTH}")
        if any(os.path.samefile(found, c) for c in chain if os.path.exists(c)):
            raise bad(child.path, f"the chain of differencing disks loops back to {found}")
        parent = open_vhdx(found, False, lock, _chain=chain)
    try:
        problem = None
        if parent.header.data_write_guid not in locator.linkages:
            problem = (f"its DataWriteGuid {{{parent.header.data_write_guid}}} is not the "
                       f"child's parent_linkage {locator.get('parent_linkage')} (the parent "
                       "was changed after the child was made)")
        elif parent.size != child.size:
            problem = f"its virtual size {parent.size} differs from the child's {child.size}"
        elif parent.logical_sector_size != child.logical_sector_size:
            problem = (f"its logical sector size {parent.logical_sector_size} differs from "
                       f"the child's {child.logical_sector_size}")
        if problem:
            raise HvError("ChainBroken", f"{child.path}: the chain of virtual hard disks is "
                                         f"corrupted: parent {found}: {problem}")
    except BaseException:
        parent.close()
        raise
    return parent


def _open_one(path: str, writable: bool, lock: bool = True, fd: int | None = None) -> VhdxDisk:
    if fd is None:
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as exc:
            raise os_error(path, exc) from exc
    disk = VhdxDisk(path, fd, writable)
    try:
        try:
            if lock or writable:
                fcntl.flock(fd, (fcntl.LOCK_EX if writable else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HvError("Busy", f"{path}: the disk is open in another process") from None
        disk._load()
    except HvError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise os_error(path, exc) from exc
    except (struct.error, ValueError, OverflowError, IndexError, UnicodeError) as exc:
        # Belt and braces: every check above should already have named the problem.
        os.close(fd)
        raise bad(path, f"malformed VHDX structure ({type(exc).__name__}: {exc})") from exc
    return disk

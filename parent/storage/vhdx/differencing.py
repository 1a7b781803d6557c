"""Differencing disks (AVHDX): creating one over a parent, and merging one into its parent.

Reading and writing a differencing disk is the open disk's job (`disk.VhdxDisk`: blocks that are
NOT_PRESENT read from the parent, PARTIALLY_PRESENT blocks mix this file's sectors — by the
chunk's sector bitmap — with the parent's). This module adds:

- `create_differencing(path, parent_path, block_size=2 MiB)` — New-VHD -Differencing: the
  parent's geometry, HasParent, a Parent Locator (`parent_linkage` = the parent's current
  DataWriteGuid, `relative_path`, `absolute_win32_path`) and a BAT of NOT_PRESENT entries.
- `merge_into_parent(child_path, reparent=(), progress=None)` — Merge-VHD of one level: copies
  every range the child defines into its parent, re-points the child's own children (if any)
  at the parent, then deletes the child.

Crash safety of a merge (kill -9 at any instant leaves a chain that reads the same data, and
running the merge again completes it). Writing the parent must change its DataWriteGuid, which
would break the child's `parent_linkage`. So before the first write the merge picks the GUID
the parent will carry, G, and records it in the child's locator as `parent_linkage2` (MS-VHDX's
second linkage; one atomic log entry in the child). From then on the child accepts the parent
with either GUID, and the copy — writes of the child's own data into the parent, under the
child's identical data — never changes what the chain reads. The parent is opened with G as the
DataWriteGuid its first write sets. Grandchildren are re-pointed (locator rewritten through
their log, their data untouched) only after the parent holds everything, and the child is
deleted last. A repeated merge finds `parent_linkage2` and reuses G; each step is idempotent.

Performance: the copy reads runs of up to 32 MiB of the child and writes them to the parent
with one `write` each (one BAT log entry per run of new parent blocks); it is bounded by the
file system, see scripts/bench/saved-state.
"""
from __future__ import annotations

import os
import uuid
from typing import Callable

from hypervisor.runtime.errors import HvError

from .create import LOG_LENGTH, _fsync_directory, header_section, plan_layout, write_new_file
from .disk import open_vhdx
from .layout import MIB
from .metadata import DiskParameters, check_geometry, pack_metadata
from .parent_locator import guid_text, locator_for

DIFFERENCING_BLOCK_SIZE = 2 * MIB   # Hyper-V's default for differencing disks
COPY_RUN = 32 * MIB


def create_differencing(path: str | os.PathLike, parent_path: str | os.PathLike, *,
                        block_size: int | None = None) -> None:
    """Create a differencing disk at `path` over `parent_path` (which must open cleanly)."""
    path, parent_path = os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(parent_path))
    block_size = block_size or DIFFERENCING_BLOCK_SIZE
    with open_vhdx(parent_path, writable=False) as parent:
        size, logical, physical = (parent.size, parent.logical_sector_size,
                                   parent.physical_sector_size)
        linkage = parent.header.data_write_guid
    check_geometry(path, size, block_size, logical, physical)
    params = DiskParameters(size=size, block_size=block_size, logical_sector_size=logical,
                            physical_sector_size=physical, disk_id=uuid.uuid4(),
                            has_parent=True,
                            parent_locator=locator_for(parent_path, path, linkage))
    layout = plan_layout(params)
    assert layout["log_length"] == LOG_LENGTH
    # the BAT region stays zero: every payload and sector-bitmap entry NOT_PRESENT
    write_new_file(path, layout["data_offset"],
                   [(0, header_section(layout)),
                    (layout["metadata_offset"], pack_metadata(params, layout["metadata_length"]))])


def _runs(extents, limit: int):
    """Coalesce (offset, length, file offset|None) extents into virtually contiguous runs of at
    most `limit` bytes: lists of extents."""
    run: list = []
    end = None
    for offset, length, where in extents:
        while length:
            room = limit - sum(n for _o, n, _w in run)
            if run and (offset != end or room == 0):
                yield run
                run, room = [], limit
            n = min(length, room)
            run.append((offset, n, where))
            offset, length, end = offset + n, length - n, offset + n
            where = where + n if where is not None else None
    if run:
        yield run


def merge_into_parent(child_path: str | os.PathLike, *, reparent: tuple = (),
                      progress: Callable[[int, int], None] | None = None,
                      delete: bool = True) -> str:
    """Merge differencing disk `child_path` into its parent, re-point each disk in `reparent`
    (children of the child) at the parent, delete the child (unless `delete` is False: a caller
    that must first re-point its own references deletes it after); answer the parent's path.
    See the module doc for why a crash at any point is harmless."""
    child_path = os.path.abspath(os.fspath(child_path))
    child = open_vhdx(child_path, writable=True, with_parent=False)
    try:
        locator = child.parent_locator
        if locator is None:
            raise HvError("BadRequest", f"{child_path}: not a differencing disk")
        candidates = locator.candidates(child_path)
        parent_path = next((c for c in candidates if os.path.exists(c)), None)
        if parent_path is None:
            raise HvError("NotFound", f"{child_path}: the chain of virtual hard disks is broken: "
                                      f"the parent disk cannot be found (tried "
                                      f"{', '.join(candidates)})")
        with open_vhdx(parent_path, writable=True) as parent:
            if parent.header.data_write_guid not in locator.linkages:
                raise HvError("ChainBroken", f"{child_path}: the chain of virtual hard disks is "
                                             f"corrupted: parent {parent_path} was changed after "
                                             "the child was made; nothing merged")
            target = locator.linkage2
            if target is None:
                target = uuid.uuid4()
                child.set_parent_locator(locator.with_entry("parent_linkage2",
                                                            guid_text(target)))
            parent._next_data_write_guid = target
            extents = list(child.own_extents())
            total, done = sum(n for _o, n, _w in extents), 0
            if progress:
                progress(0, total)
            buf = bytearray(COPY_RUN)
            for run in _runs(extents, COPY_RUN):
                length = sum(n for _o, n, _w in run)
                view, pos = memoryview(buf)[:length], 0
                for _offset, n, where in run:   # read straight into one buffer, no joins
                    if where is None:
                        view[pos:pos + n] = bytes(n)
                    else:
                        child.read_own_into(where, view[pos:pos + n])
                    pos += n
                parent.write(run[0][0], view)
                view.release()
                done += length
                if progress:
                    progress(done, total)
            parent.flush()
            final = parent.header.data_write_guid
        for grandchild in reparent:
            _reparent(os.path.abspath(os.fspath(grandchild)), child_path, child.header,
                      parent_path, final)
    finally:
        child.close()
    if not delete:
        return parent_path
    try:
        os.unlink(child_path)
    except FileNotFoundError:
        pass
    _fsync_directory(child_path)
    return parent_path


def _reparent(path: str, child_path: str, child_header, parent_path: str,
              parent_guid: uuid.UUID) -> None:
    """Point differencing disk `path` (a child of `child_path`) at `parent_path` instead."""
    with open_vhdx(path, writable=True, with_parent=False) as disk:
        locator = disk.parent_locator
        if locator is None:
            raise HvError("BadRequest", f"{path}: not a differencing disk")
        wanted = locator_for(parent_path, path, parent_guid)
        if locator.linkage == parent_guid and parent_path in locator.candidates(path):
            return  # done by an earlier, interrupted merge
        if child_header.data_write_guid not in locator.linkages or \
                child_path not in locator.candidates(path):
            raise HvError("ChainBroken", f"{path}: is not a child of {child_path}; not "
                                         "re-pointed")
        disk.set_parent_locator(wanted)

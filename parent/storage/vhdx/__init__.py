"""VHDX, Hyper-V's virtual hard disk format: a pure file-format backend (MS-VHDX v1.0).

Public API:
- `create(path, size, *, fixed=False, block_size=None, logical_sector=512,
  physical_sector=4096)` — a new dynamic or (truly provisioned) fixed VHDX.
- `open(path, writable=False) -> VhdxDisk` — validates the whole file, replays a dirty log
  (into the file when writable, in memory when not) and returns the disk object: `read`,
  `write`, `flush`, `close`, `info()`, `size`, `block_size`, `logical_sector_size`,
  `physical_sector_size`, `vhd_type`, `file_size`.

Modules, bottom up: `checksum` (CRC-32C), `layout` (file identifier, headers, region tables),
`metadata` (metadata items, geometry), `bat` (block allocation table), `log` (log replay and
writing), `disk` (the open disk), `create`. Each is pure over bytes except `disk` and `create`,
which do the I/O with os.pread/os.pwrite. Every corrupt or hostile file is refused with
`HvError("BadRequest", "<path>: <problem>")` and nothing is written to it.

Differencing disks (AVHDX): `create_differencing(path, parent_path)` and
`merge_into_parent(child_path)` (module `differencing`, crash-safe); `open` opens a child's
whole parent chain read-only, refusing a parent whose DataWriteGuid no longer matches the
child's `parent_linkage` (ChainBroken). The locator is in `parent_locator`.
"""
from __future__ import annotations

from .create import create_vhdx
from .differencing import create_differencing, merge_into_parent
from .disk import VhdxDisk, open_vhdx
from .metadata import DiskParameters, auto_block_size

create = create_vhdx
open = open_vhdx  # noqa: A001 - the module's verb, as in `vhdx.open(path)`

__all__ = ["create", "open", "create_vhdx", "open_vhdx", "VhdxDisk", "DiskParameters",
           "auto_block_size", "create_differencing", "merge_into_parent"]

"""The disk-backend interface that storage drivers (storvsp-like VSPs) serve over VMBus.

As OpenVMM's `disk_backend::DiskIo`, a backend is a flat array of bytes with a sector geometry:
the storage VSP in a `drvhost` turns a guest's SCSI/storvsc requests into `read`/`write`/`flush`
calls and never needs to know the file format underneath. VHDX is the first backend; raw images
or a network block device can be added as further entries of `DISK_FORMATS`, the one table of
formats, without touching the VSP.

Key names:
- `DiskBackend` — the structural protocol every backend satisfies (`isinstance` works on it).
- `DiskFormat` / `DISK_FORMATS` — format name -> file extensions, opener and creator.
- `format_for_path()` / `open_disk()` / `create_disk()` — pick the format by file extension.

Contract for implementers: offsets and lengths are bytes (any alignment; the VSP keeps guests
to whole logical sectors); reads past `size` are errors, not short reads; `write` returns once
the data is in the file (durable only after `flush`); errors are always `HvError` — `BadRequest`
for bad ranges or corrupt images, `InvalidState` for a closed or read-only disk, `Busy` when
another process holds the image. Each call is synchronous and thread-safe; performance notes
live with each backend.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from hypervisor.runtime.errors import HvError


@runtime_checkable
class DiskBackend(Protocol):
    """What a storage driver needs from a virtual disk."""

    path: str
    writable: bool

    @property
    def size(self) -> int: ...

    @property
    def logical_sector_size(self) -> int: ...

    @property
    def physical_sector_size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from byte `offset` of the virtual disk."""

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at byte `offset` of the virtual disk."""

    def flush(self) -> None:
        """Make every completed write durable."""

    def close(self) -> None:
        """Flush and release the image; further calls raise InvalidState. Idempotent."""

    def info(self) -> dict:
        """Get-VHD-style description: Path, VhdFormat, VhdType, Size, FileSize, BlockSize,
        LogicalSectorSize, PhysicalSectorSize, ParentPath."""


@dataclass(frozen=True)
class DiskFormat:
    """One image format: how to recognise, open and create it."""

    name: str
    extensions: tuple[str, ...]
    open: Callable[..., DiskBackend]
    create: Callable[..., None]
    summary: str


def _vhdx_open(path: str, writable: bool = False, lock: bool = True,
               fd: int | None = None, parents: list | None = None) -> DiskBackend:
    from .vhdx import open_vhdx
    return open_vhdx(path, writable, lock=lock, fd=fd, parents=parents)


def _vhdx_create(path: str, size: int, **options) -> None:
    from .vhdx import create_vhdx
    create_vhdx(path, size, **options)


# The one table of disk formats. Openers are imported lazily so the table costs nothing to load.
DISK_FORMATS: dict[str, DiskFormat] = {
    "VHDX": DiskFormat("VHDX", (".vhdx", ".avhdx"), _vhdx_open, _vhdx_create,
                       "Hyper-V virtual hard disk v2 (dynamic or fixed)"),
}


def format_for_path(path: str | os.PathLike) -> DiskFormat:
    """The format a file name implies, or BadRequest naming the supported extensions."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    for fmt in DISK_FORMATS.values():
        if ext in fmt.extensions:
            return fmt
    known = ", ".join(e for f in DISK_FORMATS.values() for e in f.extensions)
    raise HvError("BadRequest", f"{os.fspath(path)}: unsupported disk format {ext or '(none)'!r} "
                                f"(supported: {known})")


def open_disk(path: str | os.PathLike, writable: bool = False, lock: bool = True,
              fd: int | None = None, parents: list | None = None) -> DiskBackend:
    """Open an image with the backend its extension names. `lock=False` (read-only only) reads
    the metadata of a disk another process holds, as Get-VHD does for an attached disk. `fd`:
    an open descriptor of that file handed over by a parent (the backend owns it then);
    `parents`: a differencing disk's chain, handed over too ([(path, fd)], nearest first)."""
    if writable and not lock:
        raise ValueError("a writable open always locks")
    if fd is None and parents is None:
        return format_for_path(path).open(os.fspath(path), writable, lock=lock)
    if parents is None:
        return format_for_path(path).open(os.fspath(path), writable, lock=lock, fd=fd)
    return format_for_path(path).open(os.fspath(path), writable, lock=lock, fd=fd,
                                      parents=parents)


def chain_paths(path: str | os.PathLike) -> list[str]:
    """The parent chain of a differencing disk (nearest first; [] for any other disk)."""
    if format_for_path(path).name != "VHDX":
        return []
    from .vhdx.disk import chain_paths as vhdx_chain
    return vhdx_chain(path)


def create_disk(path: str | os.PathLike, size: int, **options) -> None:
    """Create an image with the backend its extension names (options are the format's)."""
    format_for_path(path).create(os.fspath(path), size, **options)

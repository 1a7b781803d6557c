"""Differencing-disk control ops (New-VHD -Differencing), kept apart from disk_ops.py.

`new-vhd` with `differencing` / `parent_path` lands here: the parent (and its whole chain) is
opened read-only and checked — a missing parent is NotFound, a chain whose links no longer
match is ChainBroken — then `parent.storage.vhdx.create_differencing` writes the child with the
parent's geometry and a locator (`parent_linkage`, `relative_path`, `absolute_win32_path`).
Merging (Merge-VHD) is not an op: `hvctl merge-vhd` does it in its own process, as the
cmdlet does, so a long merge never holds vmms's loop; the disks' locks keep it off disks in use.
"""
from __future__ import annotations

import os

from hypervisor.runtime.errors import HvError


def new_differencing(vmms, req, path: str) -> dict:
    """Create the differencing disk `path` over args `parent_path` (absolute); optional
    `block_size_bytes` (default 2 MiB, as Hyper-V) and `size_bytes` (must be the parent's).
    Answers Get-VHD's object."""
    from parent.control.disk_ops import bytes_arg, inspect, path_arg
    from parent.storage.vhdx import create_differencing
    if req.args.get("parent_path") is None:
        raise HvError("BadRequest", "a differencing disk needs 'parent_path'")
    parent = path_arg(req.args, "parent_path")
    if req.args.get("fixed"):
        raise HvError("BadRequest", "a disk is either differencing or fixed: choose one")
    parent_info = inspect(vmms, parent)   # NotFound / ChainBroken / BadRequest as get-vhd
    size = bytes_arg(req.args, "size_bytes")
    if size is not None and size != parent_info["Size"]:
        raise HvError("BadRequest", f"a differencing disk has its parent's size "
                                    f"({parent_info['Size']} bytes), not {size}")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise HvError("NotFound", f"{folder}: no such directory")
    create_differencing(path, parent, block_size=bytes_arg(req.args, "block_size_bytes"))
    vmms.log.info("vhd_created", path=path, parent=parent, differencing=True)
    return inspect(vmms, path)

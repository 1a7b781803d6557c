"""hvctl virtual hard disk commands: new-vhd, get-vhd, add-/get-/remove-vmharddiskdrive.

Paths may be relative: they are made absolute here, against hvctl's working directory, before
they go to vmms (which only takes absolute paths)."""
from __future__ import annotations

import os

import click

from parent.cli.main import cli
from parent.cli.output import print_json, print_object
from parent.cli.param_types import SIZE

DRIVE_COLUMNS = [("VMName", "VMName"), ("ControllerType", "ControllerType"),
                 ("ControllerNumber", "ControllerNumber"),
                 ("ControllerLocation", "ControllerLocation"), ("Path", "Path")]


def absolute(path: str) -> str:
    return os.path.abspath(path) if path else path


def show_drives(g, drives: list[dict]) -> None:
    """A table like PowerShell's; paths are never folded (people copy them)."""
    if g.json:
        print_json(drives)
        return
    rows = [[h for h, _ in DRIVE_COLUMNS]] + [[str(d[k]) for _, k in DRIVE_COLUMNS]
                                               for d in drives]
    widths = [max(len(r[i]) for r in rows) for i in range(len(DRIVE_COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@cli.command("new-vhd")
@click.argument("path")
@click.option("--size-bytes", type=SIZE, help="virtual size, e.g. 10GB or bytes (not for --differencing)")
@click.option("--dynamic/--fixed", "dynamic", default=True, show_default=True,
              help="grow as written (dynamic) or allocate every block now (fixed)")
@click.option("--differencing", is_flag=True, help="a differencing disk (AVHDX) over --parent-path")
@click.option("--parent-path", help="the parent of a differencing disk")
@click.option("--block-size-bytes", type=SIZE, help="1MB-256MB, a power of two (default by size, as qemu)")
@click.option("--logical-sector-size-bytes", type=click.Choice(["512", "4096"]),
              help="default 512 (qemu cannot open 4096)")
@click.option("--physical-sector-size-bytes", type=click.Choice(["512", "4096"]),
              help="default 4096")
@click.pass_obj
def new_vhd(g, path, size_bytes, dynamic, differencing, parent_path, block_size_bytes,
            logical_sector_size_bytes, physical_sector_size_bytes):
    """Create a VHDX file (dynamic by default, or differencing over --parent-path)."""
    from parent.cli import progress
    if differencing or parent_path:
        if not (differencing and parent_path):
            raise click.UsageError("--differencing and --parent-path go together")
        info = g.client.call("new-vhd", path=absolute(path), differencing=True,
                             parent_path=absolute(parent_path),
                             size_bytes=size_bytes, block_size_bytes=block_size_bytes)
        print_json(info) if g.json else print_object(info)
        return
    if size_bytes is None:
        raise click.UsageError("Missing option '--size-bytes'.")
    args = dict(path=absolute(path), size_bytes=size_bytes,
                fixed=not dynamic, dynamic=dynamic, block_size_bytes=block_size_bytes,
                logical_sector_size_bytes=int(logical_sector_size_bytes) if logical_sector_size_bytes
                else None,
                physical_sector_size_bytes=int(physical_sector_size_bytes) if physical_sector_size_bytes
                else None)
    info = progress.call_watching_file(g, "new-vhd", args, args["path"],
                                       size_bytes if not dynamic else None,
                                       f"new-vhd {os.path.basename(path)} (fixed)")
    print_json(info) if g.json else print_object(info)


@cli.command("get-vhd")
@click.argument("path")
@click.pass_obj
def get_vhd(g, path):
    """A disk image's properties (the file is validated, never written). A disk a running VM
    has open is read too: Attached is true and VMName names the VM."""
    info = g.client.call("get-vhd", path=absolute(path))
    print_json(info) if g.json else print_object(info)


@cli.command("add-vmharddiskdrive")
@click.argument("name")
@click.option("--path", required=True, help="the disk image (.vhdx)")
@click.option("--controller-location", type=click.IntRange(0, 63),
              help="SCSI location 0-63 (default: the lowest free)")
@click.pass_obj
def add_vmharddiskdrive(g, name, path, controller_location):
    """Attach a disk to a VM (while the VM is Off)."""
    drive = g.client.call("add-vmharddiskdrive", vm=name, path=absolute(path),
                          controller_location=controller_location)
    print_json(drive) if g.json else show_drives(g, [drive])


@cli.command("get-vmharddiskdrive")
@click.argument("name")
@click.pass_obj
def get_vmharddiskdrive(g, name):
    """A VM's hard disk drives."""
    show_drives(g, g.client.call("get-vmharddiskdrive", vm=name))


@cli.command("remove-vmharddiskdrive")
@click.argument("name")
@click.option("--controller-location", type=click.IntRange(0, 63), required=True)
@click.pass_obj
def remove_vmharddiskdrive(g, name, controller_location):
    """Detach a disk from a VM (while the VM is Off); the file is kept."""
    drive = g.client.call("remove-vmharddiskdrive", vm=name,
                          controller_location=controller_location)
    if g.json:
        print_json(drive)
    else:
        print(f"removed {drive['Path']} from VM '{drive['VMName']}' "
              f"({drive['ControllerType']} {drive['ControllerNumber']}:"
              f"{drive['ControllerLocation']})")

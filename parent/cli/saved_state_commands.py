"""hvctl commands for disk chains, saved state and checkpoints (CLI.md "Saved state and
checkpoints", "Virtual hard disks"): merge-vhd here, the VM-state commands beside it.

`merge-vhd PATH [--destination-path P]` merges a differencing disk into its parent in hvctl's own
process (as Merge-VHD does), with a progress bar on stderr once the merge has run longer than a
moment; the disks' locks keep it off any disk a running VM holds. A merge killed at any point
leaves a chain that reads the same data, and running the command again completes it."""
from __future__ import annotations

import os
import sys
import time

import click

from parent.cli.main import cli
from parent.cli.output import print_json

PROGRESS_AFTER = 0.5   # seconds before a bar is worth showing


class MergeProgress:
    """A rich progress bar on stderr that appears only when the work takes a while."""

    def __init__(self, description: str, quiet: bool):
        self.description, self.quiet = description, quiet
        self.started = time.monotonic()
        self._bar = self._task = None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self._bar is None:
            if time.monotonic() - self.started < PROGRESS_AFTER or not total:
                return
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=Console(file=sys.stderr), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@cli.command("merge-vhd")
@click.argument("path")
@click.option("--destination-path", help="the parent to merge into (default and only choice: "
                                         "the disk's own parent)")
@click.pass_obj
def merge_vhd(g, path, destination_path):
    """Merge a differencing disk into its parent, then delete it (Merge-VHD)."""
    from parent.storage.vhdx import merge_into_parent, open as open_vhdx
    path = os.path.abspath(path)
    if destination_path:
        with open_vhdx(path, writable=False, with_parent=False) as disk:
            parent = disk.parent_path
        if parent is None or not os.path.exists(destination_path) or \
                not os.path.samefile(parent, destination_path):
            from hypervisor.runtime.errors import HvError
            raise HvError("BadRequest", f"{path}: its parent is {parent}, not "
                                        f"{os.path.abspath(destination_path)} (merge one level)")
    bar = MergeProgress(f"merging {os.path.basename(path)}", quiet=g.json)
    started = time.monotonic()
    try:
        parent = merge_into_parent(path, progress=bar)
    finally:
        bar.close()
    result = {"Path": parent, "MergedPath": path, "Seconds": round(time.monotonic() - started, 3)}
    print_json(result) if g.json else print(f"merged {path} into {parent}")


@cli.command("save-vm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def save_vm(g, names):
    """Running/Paused → Saved: guest memory and device state to disk; the worker exits."""
    from parent.cli.vm_commands import for_each_vm
    for_each_vm(g, "save-vm", names)


@cli.command("remove-vmsavedstate")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def remove_vmsavedstate(g, names):
    """Discard a Saved VM's state (→ Off)."""
    from parent.cli.vm_commands import for_each_vm
    for_each_vm(g, "remove-vmsavedstate", names)

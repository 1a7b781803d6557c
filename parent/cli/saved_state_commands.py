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


SNAPSHOT_COLUMNS = [("VMName", "VMName"), ("Name", "Name"), ("SnapshotType", "SnapshotType"),
                    ("CreationTime", "CreationTime"), ("ParentSnapshotName", "ParentSnapshotName")]


def show_snapshots(g, snaps: list[dict]) -> None:
    from parent.cli.output import print_table
    print_json(snaps) if g.json else print_table(SNAPSHOT_COLUMNS, snaps)


@cli.command("checkpoint-vm")
@click.argument("name")
@click.option("--snapshot-name", help="default: the VM's name and the time")
@click.option("--snapshot-type", type=click.Choice(["Standard", "Production"]),
              default="Standard", show_default=True,
              help="Standard: memory and disks; Production: disks only, after the guest quiesced")
@click.pass_obj
def checkpoint_vm(g, name, snapshot_name, snapshot_type):
    """Create a checkpoint of a VM (its disks continue on new differencing disks)."""
    snap = g.client.call("checkpoint-vm", vm=name, snapshot_name=snapshot_name,
                         snapshot_type=snapshot_type, timeout=700)
    show_snapshots(g, [snap]) if not g.json else print_json(snap)


@cli.command("get-vmsnapshot")
@click.argument("name")
@click.pass_obj
def get_vmsnapshot(g, name):
    """A VM's checkpoints (the tree: ParentSnapshotName)."""
    show_snapshots(g, g.client.call("get-vmsnapshot", vm=name))


@cli.command("restore-vmsnapshot")
@click.argument("name")
@click.option("--name", "snapshot", required=True, help="the checkpoint")
@click.pass_obj
def restore_vmsnapshot(g, name, snapshot):
    """Return a VM (Off or Saved) to a checkpoint: Saved with its memory, or Off."""
    vm = g.client.call("restore-vmsnapshot", vm=name, name=snapshot)
    print_json(vm) if g.json else print(f"VM '{vm['Name']}' is {vm['State']} at checkpoint "
                                        f"'{snapshot}'")


@cli.command("remove-vmsnapshot")
@click.argument("name")
@click.option("--name", "snapshot", required=True, help="the checkpoint")
@click.option("--include-all-child-snapshots", is_flag=True, help="its whole subtree too")
@click.pass_obj
def remove_vmsnapshot(g, name, snapshot, include_all_child_snapshots):
    """Delete a checkpoint, merging its differencing disks (a progress bar for a long merge)."""
    import threading

    from hypervisor.runtime.errors import HvError
    from parent.client import Client
    vm = g.client.call("get-vm", vms=[name])[0]
    stream = g.client.events(vm["Id"])
    outcome: dict = {}

    def work():
        worker_client = Client(g.home)
        try:
            outcome["result"] = worker_client.call(
                "remove-vmsnapshot", vm=name, name=snapshot, timeout=3600,
                include_all_child_snapshots=include_all_child_snapshots)
        except HvError as err:
            outcome["error"] = err
        finally:
            worker_client.close()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    bar = MergeProgress("merging disks", quiet=g.json)
    from hypervisor.runtime.paths import Home
    from hypervisor.runtime.pidfile import holder_pid
    pidfile, next_check = Home.resolve(g.home).pidfile("vmms"), time.monotonic() + 1.0
    try:
        while thread.is_alive():
            item = stream._receive(0.1)
            if item and item[1].get("Event") == "merge-progress":
                bar(int(item[1].get("Done", 0)), int(item[1].get("Total", 0)))
            if time.monotonic() > next_check:
                next_check = time.monotonic() + 1.0
                if not holder_pid(pidfile):
                    raise HvError("Unavailable", "vmms stopped during the remove; the disks "
                                                 "still read the same: run remove-vmsnapshot "
                                                 "again (after host up) to complete it")
        thread.join()
    finally:
        bar.close()
        stream.close()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    print_json(result) if g.json else print("removed " + ", ".join(result["removed"]))

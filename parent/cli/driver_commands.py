"""hvctl parent-hosted drivers and the VMBus devices they serve: get-vmhostdriver,
restart-vmhostdriver, add-/get-/remove-vmdevice."""
from __future__ import annotations

import click

from hypervisor.runtime.errors import HvError
from parent.cli.main import cli
from parent.cli.output import print_json, print_object, print_table

DRIVER_COLUMNS = [("Name", "Name"), ("Version", "Version"), ("ProcessId", "ProcessId"),
                  ("State", "State"), ("Restarts", "Restarts"), ("Channels", "Channels"),
                  ("Package", "Package")]
DEVICE_COLUMNS = [("VMName", "VMName"), ("Driver", "Driver"), ("InstanceId", "InstanceId"),
                  ("ChannelState", "ChannelState")]


@cli.command("get-vmhostdriver")
@click.pass_obj
def get_vmhostdriver(g):
    """Installed drivers and their driver host processes."""
    rows = g.client.call("get-vmhostdriver")
    print_json(rows) if g.json else print_table(DRIVER_COLUMNS, rows)


@cli.command("restart-vmhostdriver")
@click.argument("name")
@click.pass_obj
def restart_vmhostdriver(g, name):
    """Replace a driver's process (e.g. after an upgrade) without stopping any VM."""
    row = g.client.call("restart-vmhostdriver", name=name)
    print_json(row) if g.json else print_object(row)


@cli.command("add-vmdevice")
@click.argument("name")
@click.argument("driver")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="a setting handed to the driver (repeatable)")
@click.pass_obj
def add_vmdevice(g, name, driver, settings):
    """Give a VM a VMBus device served by DRIVER (works while it runs)."""
    parsed = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HvError("BadRequest", f"--setting needs KEY=VALUE, got {item!r}")
        parsed[key] = value
    dev = g.client.call("add-vmdevice", vm=name, driver=driver, settings=parsed)
    print_json(dev) if g.json else print_object(dev)


@cli.command("get-vmdevice")
@click.argument("name")
@click.pass_obj
def get_vmdevice(g, name):
    """A VM's VMBus devices and their channels' state."""
    rows = g.client.call("get-vmdevice", vm=name)
    print_json(rows) if g.json else print_table(DEVICE_COLUMNS, rows)


@cli.command("remove-vmdevice")
@click.argument("name")
@click.option("--instance-id", required=True)
@click.pass_obj
def remove_vmdevice(g, name, instance_id):
    """Remove a VM's VMBus device."""
    out = g.client.call("remove-vmdevice", vm=name, instance_id=instance_id)
    print_json(out) if g.json else None

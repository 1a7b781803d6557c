"""hvctl integration services, key-value pair exchange and COM ports:
get-/enable-/disable-vmintegrationservice, get-/set-/remove-vmkvp, set-/get-vmcomport."""
from __future__ import annotations

import click

from parent.cli.main import cli
from parent.cli.output import print_json, print_object, print_table

IC_COLUMNS = [("VMName", "VMName"), ("Name", "Name"), ("Enabled", "Enabled"),
              ("PrimaryStatusDescription", "PrimaryStatusDescription"),
              ("SecondaryStatusDescription", "SecondaryStatusDescription")]
COM_COLUMNS = [("VMName", "VMName"), ("Name", "Name"), ("Path", "Path")]


def show(g, rows, columns) -> None:
    print_json(rows) if g.json else print_table(columns, rows)


@cli.command("get-vmintegrationservice")
@click.argument("name")
@click.pass_obj
def get_vmintegrationservice(g, name):
    """The VM's integration services and their status."""
    show(g, g.client.call("get-vmintegrationservice", vm=name), IC_COLUMNS)


@cli.command("enable-vmintegrationservice")
@click.argument("name")
@click.argument("service")
@click.pass_obj
def enable_vmintegrationservice(g, name, service):
    """Turn an integration service on (e.g. 'Key-Value Pair Exchange')."""
    show(g, g.client.call("enable-vmintegrationservice", vm=name, name=service), IC_COLUMNS)


@cli.command("disable-vmintegrationservice")
@click.argument("name")
@click.argument("service")
@click.pass_obj
def disable_vmintegrationservice(g, name, service):
    """Turn an integration service off."""
    show(g, g.client.call("disable-vmintegrationservice", vm=name, name=service), IC_COLUMNS)


@cli.command("get-vmkvp")
@click.argument("name")
@click.option("--pool", type=click.Choice(["guest", "host"]), default="guest", show_default=True,
              help="what the guest published, or what the host set")
@click.pass_obj
def get_vmkvp(g, name, pool):
    """Key-value items of a VM's pool (a JSON object with --json)."""
    items = g.client.call("get-vmkvp", vm=name, pool=pool)
    if g.json:
        print_json(items)
    elif items:
        print_object(dict(sorted(items.items())))


@cli.command("set-vmkvp")
@click.argument("name")
@click.argument("key")
@click.argument("value")
@click.pass_obj
def set_vmkvp(g, name, key, value):
    """Set a host → guest item (kept in the VM's configuration)."""
    out = g.client.call("set-vmkvp", vm=name, key=key, value=value)
    print_json(out) if g.json else None


@cli.command("remove-vmkvp")
@click.argument("name")
@click.argument("key")
@click.pass_obj
def remove_vmkvp(g, name, key):
    """Remove a host → guest item."""
    out = g.client.call("remove-vmkvp", vm=name, key=key)
    print_json(out) if g.json else None


@cli.command("set-vmcomport")
@click.argument("name")
@click.option("--number", type=click.IntRange(1, 2), required=True, help="1 (the guest console) or 2")
@click.option("--path", required=True, help="a Unix socket path the worker serves; '' disconnects")
@click.pass_obj
def set_vmcomport(g, name, number, path):
    """Connect a COM port to a Unix stream socket (socat - UNIX-CONNECT:PATH)."""
    import os
    path = os.path.abspath(path) if path else ""
    show(g, g.client.call("set-vmcomport", vm=name, number=number, path=path), COM_COLUMNS)


@cli.command("get-vmcomport")
@click.argument("name")
@click.pass_obj
def get_vmcomport(g, name):
    """The VM's COM ports."""
    show(g, g.client.call("get-vmcomport", vm=name), COM_COLUMNS)

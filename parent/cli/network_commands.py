"""hvctl networking commands (../shared/CLI.md, Networking): new-/get-/remove-vmswitch,
add-/connect-/disconnect-/remove-/get-/set-vmnetworkadapter, set-vmnetworkadaptervlan. Each is
one control op of parent/network_ops.py; the docstrings are the help."""
from __future__ import annotations

import click

from parent.cli.main import cli
from parent.cli.output import print_json, print_table

SWITCH_COLUMNS = [("Name", "Name"), ("SwitchType", "SwitchType"),
                  ("NetAdapterName", "NetAdapterName"), ("HostInterfaceName", "HostInterfaceName")]
ADAPTER_COLUMNS = [("VMName", "VMName"), ("Name", "Name"), ("MacAddress", "MacAddress"),
                   ("SwitchName", "SwitchName"), ("Status", "Status"),
                   ("IPAddresses", "IPAddresses"), ("VlanId", "VlanId")]


def show(g, rows, columns) -> None:
    if g.json:
        print_json(rows)
        return
    rows = rows if isinstance(rows, list) else [rows]
    print_table(columns, rows, {"IPAddresses": lambda v: ",".join(v or []) or "-"})


@cli.command("new-vmswitch")
@click.argument("name")
@click.option("--switch-type", type=click.Choice(["Private", "Internal"], case_sensitive=False),
              help="Private (VMs only) or Internal (VMs and the host)")
@click.option("--net-adapter-name", metavar="IFACE",
              help="External: bridge the switch onto this host interface")
@click.pass_obj
def new_vmswitch(g, name, switch_type, net_adapter_name):
    """Create a virtual switch."""
    sw = g.client.call("new-vmswitch", name=name, switch_type=switch_type,
                       net_adapter_name=net_adapter_name)
    show(g, sw, SWITCH_COLUMNS)


@cli.command("get-vmswitch")
@click.argument("name", required=False)
@click.pass_obj
def get_vmswitch(g, name):
    """The host's virtual switches."""
    show(g, g.client.call("get-vmswitch", name=name), SWITCH_COLUMNS)


@cli.command("remove-vmswitch")
@click.argument("name")
@click.option("--force", is_flag=True, help="disconnect connected adapters first")
@click.pass_obj
def remove_vmswitch(g, name, force):
    """Delete a virtual switch (refused while adapters are connected, unless --force)."""
    out = g.client.call("remove-vmswitch", name=name, force=force)
    print_json(out) if g.json else None


@cli.command("add-vmnetworkadapter")
@click.argument("vm")
@click.option("--switch-name", help="connect it to this switch")
@click.option("--name", help="adapter name (default 'Network Adapter')")
@click.option("--static-mac-address", metavar="MAC", help="12 hex digits (default: dynamic, 00:15:5D)")
@click.pass_obj
def add_vmnetworkadapter(g, vm, switch_name, name, static_mac_address):
    """Add a network adapter to a VM (VM Off)."""
    row = g.client.call("add-vmnetworkadapter", vm=vm, switch_name=switch_name, name=name,
                        static_mac_address=static_mac_address)
    show(g, row, ADAPTER_COLUMNS)


@cli.command("connect-vmnetworkadapter")
@click.argument("vm")
@click.option("--switch-name", required=True)
@click.option("--name", help="the adapter (default: every adapter of the VM)")
@click.pass_obj
def connect_vmnetworkadapter(g, vm, switch_name, name):
    """Connect a VM's adapter to a switch (also while the VM runs)."""
    show(g, g.client.call("connect-vmnetworkadapter", vm=vm, switch_name=switch_name, name=name),
         ADAPTER_COLUMNS)


@cli.command("disconnect-vmnetworkadapter")
@click.argument("vm")
@click.option("--name", help="the adapter (default: every adapter of the VM)")
@click.pass_obj
def disconnect_vmnetworkadapter(g, vm, name):
    """Disconnect a VM's adapter from its switch."""
    show(g, g.client.call("disconnect-vmnetworkadapter", vm=vm, name=name), ADAPTER_COLUMNS)


@cli.command("remove-vmnetworkadapter")
@click.argument("vm")
@click.option("--name", help="the adapter (default: every adapter of the VM)")
@click.pass_obj
def remove_vmnetworkadapter(g, vm, name):
    """Remove a VM's network adapter (VM Off)."""
    show(g, g.client.call("remove-vmnetworkadapter", vm=vm, name=name), ADAPTER_COLUMNS)


@cli.command("get-vmnetworkadapter")
@click.argument("vm")
@click.pass_obj
def get_vmnetworkadapter(g, vm):
    """A VM's network adapters, their addresses (as the guest reports them) and counters."""
    show(g, g.client.call("get-vmnetworkadapter", vm=vm), ADAPTER_COLUMNS)


@cli.command("set-vmnetworkadapter")
@click.argument("vm")
@click.option("--name", help="the adapter (default: every adapter of the VM)")
@click.option("--ip-address", "ip_addresses", multiple=True, metavar="CIDR",
              help="address/prefix, applied in the guest through KVP (repeatable)")
@click.option("--gateway", metavar="IP", help="default gateway, applied in the guest")
@click.option("--maximum-bandwidth", type=int, metavar="BITS", help="bits per second, 0 = none")
@click.option("--port-mirroring", type=click.Choice(["None", "Source", "Destination"], case_sensitive=False))
@click.option("--mac-address-spoofing", type=click.Choice(["On", "Off"], case_sensitive=False))
@click.pass_obj
def set_vmnetworkadapter(g, vm, name, ip_addresses, gateway, maximum_bandwidth, port_mirroring,
                         mac_address_spoofing):
    """Change a VM's network adapter: addresses, bandwidth limit, mirroring, MAC spoofing."""
    rows = g.client.call("set-vmnetworkadapter", vm=vm, name=name,
                         ip_address=list(ip_addresses) or None, gateway=gateway,
                         maximum_bandwidth=maximum_bandwidth, port_mirroring=port_mirroring,
                         mac_address_spoofing=mac_address_spoofing)
    show(g, rows, ADAPTER_COLUMNS)


@cli.command("set-vmnetworkadaptervlan")
@click.argument("vm")
@click.option("--name", help="the adapter (default: every adapter of the VM)")
@click.option("--access", is_flag=True, help="access mode (with --vlan-id)")
@click.option("--vlan-id", type=int, help="1-4094")
@click.option("--untagged", is_flag=True, help="no VLAN")
@click.pass_obj
def set_vmnetworkadaptervlan(g, vm, name, access, vlan_id, untagged):
    """VLAN access mode for a VM's adapter."""
    rows = g.client.call("set-vmnetworkadaptervlan", vm=vm, name=name, access=access,
                         vlan_id=vlan_id, untagged=untagged)
    show(g, rows, ADAPTER_COLUMNS)

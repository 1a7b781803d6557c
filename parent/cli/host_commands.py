"""hvctl host up / host down / get-vmhost / events."""
from __future__ import annotations

import json

import click

from hypervisor.runtime.errors import HvError
from parent.cli.main import cli
from parent.cli.output import print_json, print_object


@cli.group("host")
def host():
    """Start or stop this home's hypervisor and vmms daemons."""


@host.command("up")
@click.option("--host-memory", help="memory pool for partitions, e.g. 8GB (default: half the RAM)")
@click.option("--root-reserve", help="memory kept for the root partition, e.g. 512MB")
@click.pass_obj
def host_up(g, host_memory, root_reserve):
    """Start the hypervisor and vmms if they are not running; return when both answer."""
    from hypervisor.runtime.paths import Home
    from hypervisor.runtime.sizes import parse_size
    from parent.host_control import host_up as up
    mem = parse_size(host_memory) if host_memory else None
    reserve = parse_size(root_reserve) if root_reserve else None
    for label, n in (("--host-memory", mem), ("--root-reserve", reserve)):
        if n is not None and (n % (2 << 20) or (label == "--host-memory" and n <= 0)):
            raise HvError("BadRequest", f"{label} must be a positive multiple of 2 MiB (2MB), got {n} bytes")
    result = up(Home.resolve(g.home), mem, reserve)
    if g.json:
        print_json(result)
    else:
        what = ", ".join(result["started"]) or "nothing (already running)"
        print(f"host up at {result['Home']}: started {what}; hypervisor pid "
              f"{result['HypervisorProcessId']}, vmms pid {result['VmmsProcessId']}")


@host.command("down")
@click.pass_obj
def host_down(g):
    """Turn off running VMs, stop vmms and the hypervisor; return when all are gone."""
    from hypervisor.runtime.paths import Home
    from parent.host_control import host_down as down
    result = down(Home.resolve(g.home))
    if g.json:
        print_json(result)
    else:
        print("host down" + (f": stopped {', '.join(result['stopped'])}" if result["stopped"] else " (was not running)"))


@cli.command("get-vmhost")
@click.pass_obj
def get_vmhost(g):
    """The host: processors, memory pool and what is free, daemon pids."""
    info = g.client.call("get-vmhost")
    print_json(info) if g.json else print_object(info)


@cli.command("events")
@click.option("--vm", "vm", help="only this VM's events (name or Id)")
@click.pass_obj
def events(g, vm):
    """Stream lifecycle events until interrupted (JSON lines with --json)."""
    vm_id = None
    if vm:
        vm_id = g.client.call("get-vm", vms=[vm])[0]["Id"]
    for topic, body in g.client.events(vm_id):
        if g.json:
            print(json.dumps(body), flush=True)
        else:
            extra = f" ({body['Reason']})" if body.get("Reason") else ""
            print(f"{topic}  {body.get('VMName')}  {body.get('State')}{extra}", flush=True)

"""hvctl host up / host down / get-vmhost / events.

`host up` says which VMs the host's boot started by themselves (AutomaticStartAction);
`events` prints ISO 8601 times (its JSON lines too) and the event's name, not the raw topic.
"""
from __future__ import annotations

import json

import click

from hypervisor.runtime.errors import HvError
from parent.cli.main import cli
from parent.cli.output import iso_time, print_json, print_object
from parent.cli.param_types import SIZE


@cli.group("host")
def host():
    """Start or stop this home's hypervisor and vmms daemons."""


@host.command("up")
@click.option("--host-memory", type=SIZE,
              help="memory pool for partitions, e.g. 8GB (default: half the RAM)")
@click.option("--root-reserve", type=SIZE, help="memory kept for the root partition, e.g. 512MB")
@click.option("--driver-model", type=click.Choice(["microkernel", "monolithic"], case_sensitive=False),
              help="microkernel (default): each driver in its own drvhost process; monolithic: "
                   "drivers inside the hypervisor process. Kept in the home; changing it needs host down")
@click.pass_obj
def host_up(g, host_memory, root_reserve, driver_model):
    """Start the hypervisor and vmms if they are not running; return when both answer. A host
    that boots starts the VMs whose AutomaticStartAction says so (Start; StartIfRunning when
    they were running at host down) and says which."""
    from hypervisor.runtime.paths import Home
    from parent.host_control import host_up as up
    mem, reserve = host_memory, root_reserve
    for label, n in (("--host-memory", mem), ("--root-reserve", reserve)):
        if n is not None and (n % (2 << 20) or (label == "--host-memory" and n <= 0)):
            raise HvError("BadRequest", f"{label} must be a positive multiple of 2 MiB (2MB), got {n} bytes")
    result = up(Home.resolve(g.home), mem, reserve, driver_model)
    if g.json:
        print_json(result)
    else:
        what = ", ".join(result["Started"]) or "nothing (already running)"
        print(f"host up at {result['Home']}: started {what}; hypervisor pid "
              f"{result['HypervisorProcessId']}, vmms pid {result['VmmsProcessId']}; "
              f"driver model {result['DriverModel']}")
        if result["AutoStarted"]:
            print(f"started automatically (AutomaticStartAction): {', '.join(result['AutoStarted'])}")
    for line in result.get("NotIsolated") or ():   # said once, when the host boots
        click.echo(f"warning: isolation {result['IsolationMode']}: {line}", err=True)


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
        print("host down" + (f": stopped {', '.join(result['Stopped'])}" if result["Stopped"] else " (was not running)"))


@cli.command("get-vmhost")
@click.pass_obj
def get_vmhost(g):
    """The host: processors, memory pool and what is free, daemon pids."""
    info = g.client.call("get-vmhost")
    print_json(info) if g.json else print_object(info)


def event_line(body: dict) -> str:
    """`2026-11-27T16:20:01.123Z  web1  state  Running (guest shut down)`. Pure."""
    extra = f" ({body['Reason']})" if body.get("Reason") else ""
    return f"{iso_time(body.get('Time'))}  {body.get('VMName')}  {body.get('Event')}  " \
           f"{body.get('State')}{extra}"


@cli.command("events")
@click.option("--vm", "vms", multiple=True, metavar="NAME",
              help="only these VMs' events: names, Ids, a,b lists or patterns (repeatable)")
@click.pass_obj
def events(g, vms):
    """Stream lifecycle events until interrupted (JSON lines with --json; Time in ISO 8601).
    In a script, bound it: `timeout 5 hvctl events`."""
    from parent.cli.vm_selection import expand
    ids = None
    if vms:
        names = expand(g, vms)
        if not names:
            raise HvError("NotFound", f"no VM matches {', '.join(vms)}")
        ids = {vm["Id"] for vm in g.client.call("get-vm", vms=names)}
    stream = g.client.events(next(iter(ids)) if ids and len(ids) == 1 else None)
    for _topic, body in stream:
        if ids is not None and body.get("VMId") not in ids:
            continue
        if g.json:
            print(json.dumps({**body, "Time": iso_time(body.get("Time"))}), flush=True)
        else:
            print(event_line(body), flush=True)

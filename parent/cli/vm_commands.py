"""hvctl VM commands: new-vm, get-vm, start/stop/suspend/resume/restart/remove-vm, set-vm,
get-vmworkerprocess. Commands taking NAME… send every request at once (pipelined)."""
from __future__ import annotations

import click

from hypervisor.runtime.errors import HvError
from parent.cli.main import cli
from parent.cli.output import format_uptime, print_error, print_json, print_object, print_table

GET_VM_COLUMNS = [("Name", "Name"), ("State", "State"), ("CPUUsage(%)", "CPUUsage"),
                  ("MemoryAssigned(M)", "MemoryAssigned"), ("Uptime", "Uptime"), ("Status", "Status")]
GET_VM_FORMATS = {"MemoryAssigned": lambda v: (v or 0) // (1 << 20), "Uptime": format_uptime}


def show_vms(g, vms: list[dict]) -> None:
    if g.json:
        print_json(vms)
    else:
        print_table(GET_VM_COLUMNS, vms, GET_VM_FORMATS)


def for_each_vm(g, op: str, names, **args) -> None:
    """Run `op` on every VM at once; print the successes; exit 1 if any failed."""
    results = g.client.call_many([(op, {"vm": n, **args}) for n in names])
    ok, failed = [], []
    for res in results:
        (failed if isinstance(res, HvError) else ok).append(res)
    for err in failed:
        if err.code == "Unavailable":
            raise err
        print_error(err, as_json=False)
    if g.json:
        if failed and not ok:
            print_json({"error": {"code": failed[0].code, "message": failed[0].message}})
        else:
            print_json([r for r in ok if isinstance(r, dict)])
    elif ok and isinstance(ok[0], dict) and "Name" in ok[0]:
        print_table(GET_VM_COLUMNS, ok, GET_VM_FORMATS)
    if failed:
        g.exit_status = 1


@cli.command("new-vm")
@click.argument("name")
@click.option("--memory-startup-bytes", default="512MB", show_default=True)
@click.option("--processor-count", type=int, default=1, show_default=True)
@click.option("--guest", default="idle", show_default=True, help="guest program SPEC")
@click.pass_obj
def new_vm(g, name, memory_startup_bytes, processor_count, guest):
    """Create a VM (Off)."""
    from hypervisor.runtime.sizes import parse_size
    vm = g.client.call("new-vm", name=name, memory_startup_bytes=parse_size(memory_startup_bytes),
                       processor_count=processor_count, guest=guest)
    show_vms(g, [vm]) if not g.json else print_json(vm)


@cli.command("get-vm")
@click.argument("names", nargs=-1)
@click.pass_obj
def get_vm(g, names):
    """List VMs (all, or the ones named)."""
    show_vms(g, g.client.call("get-vm", vms=list(names) or None))


@cli.command("start-vm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def start_vm(g, names):
    """Off or Saved → Running; returns when Running."""
    for_each_vm(g, "start-vm", names)


@cli.command("stop-vm")
@click.argument("names", nargs=-1, required=True)
@click.option("--turn-off", is_flag=True, help="pull the power instead of asking the guest")
@click.option("--force", is_flag=True, help="turn off a guest that does not shut down in time")
@click.option("--save", is_flag=True, help="save instead of stopping (not available yet)")
@click.option("--timeout", type=float, default=None, help="seconds the guest gets to shut down")
@click.pass_obj
def stop_vm(g, names, turn_off, force, save, timeout):
    """Shut the guest down (shutdown integration service) and wait; --turn-off pulls the power."""
    if save:
        raise HvError("BadRequest", "stop-vm --save is not available yet (saved states are not implemented)")
    for_each_vm(g, "stop-vm", names, turn_off=turn_off, force=force, timeout=timeout)


@cli.command("suspend-vm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def suspend_vm(g, names):
    """Running → Paused (the partition's processes get no CPU)."""
    for_each_vm(g, "suspend-vm", names)


@cli.command("resume-vm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def resume_vm(g, names):
    """Paused → Running."""
    for_each_vm(g, "resume-vm", names)


@cli.command("restart-vm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def restart_vm(g, names):
    """Hard reset."""
    for_each_vm(g, "restart-vm", names)


@cli.command("remove-vm")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="turn a running VM off first")
@click.pass_obj
def remove_vm(g, names, force):
    """Delete VMs' configuration (files of attached disks are kept)."""
    for_each_vm(g, "remove-vm", names, force=force)
    if not g.json and not getattr(g, "exit_status", 0):
        print(f"removed {', '.join(names)}")


@cli.command("set-vm")
@click.argument("name")
@click.option("--guest", help="guest program SPEC")
@click.option("--automatic-start-action", type=click.Choice(["Nothing", "StartIfRunning", "Start"]))
@click.option("--automatic-stop-action", type=click.Choice(["TurnOff", "Save", "ShutDown"]))
@click.pass_obj
def set_vm(g, name, guest, automatic_start_action, automatic_stop_action):
    """Change a VM's configuration."""
    vm = g.client.call("set-vm", vm=name, guest=guest, automatic_start_action=automatic_start_action,
                       automatic_stop_action=automatic_stop_action)
    print_json(vm) if g.json else print_object(vm)


@cli.command("get-vmworkerprocess")
@click.argument("name")
@click.pass_obj
def get_vmworkerprocess(g, name):
    """The VM's vmwp pid (--json adds VMName, VMId, GuestProcessId)."""
    info = g.client.call("get-vmworkerprocess", vm=name)
    print_json(info) if g.json else print(info["ProcessId"])

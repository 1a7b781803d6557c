"""hvctl VM commands: new-vm, get-vm, start/stop/suspend/resume/restart/remove-vm, set-vm,
get-vmworkerprocess. Commands taking NAME… send every request at once (pipelined).

Lifecycle commands print the VMs as they are when the command returns (one get-vm after the
operation, so MemoryAssigned and CPUUsage are the ledgers' figures, not a view from before
they arrived); `--json` prints the same objects. What get-vm prints is parent/cli/vm_listing.py.
"""
from __future__ import annotations

import click

from hypervisor.runtime.errors import HvError
from parent.build_features import DEFAULT_STOP_ACTION, SAVE_MISSING, SAVED_STATE, START_ACTIONS, STOP_ACTIONS
from parent.cli.main import cli
from parent.cli.output import print_error, print_json, print_object, print_table
from parent.cli.param_types import SIZE, choice
from parent.cli.vm_listing import GET_VM_COLUMNS, GET_VM_FORMATS, list_vms, show_vms
from worker.guest.programs import spec_list


def current(g, vms: list[dict]) -> list[dict]:
    """The VMs as they are now (fresh ledger figures); a VM removed meanwhile is left out."""
    if not vms:
        return vms
    fresh = g.client.call_many([("get-vm", {"vms": [vm["Id"]]}) for vm in vms])
    return [r[0] for r in fresh if isinstance(r, list) and r]


def for_each_vm(g, op: str, names, **args) -> None:
    """Run `op` on every VM at once; print the VMs as they are now; exit 1 if any failed."""
    from parent.cli import progress
    results = progress.call_many(g, [(op, {"vm": n, **args}) for n in names], f"{op} {len(names)} VMs")
    ok, failed = [], []
    for res in results:
        (failed if isinstance(res, HvError) else ok).append(res)
    for err in failed:
        if err.code == "Unavailable":
            raise err
        print_error(err, as_json=False)
    if ok and isinstance(ok[0], dict) and "Id" in ok[0] and "State" in ok[0]:
        ok = current(g, ok)
    if g.json:
        if failed and not ok:
            print_json({"error": {"code": failed[0].code, "message": failed[0].message}})
        else:
            print_json([r for r in ok if isinstance(r, dict)])
    elif ok and isinstance(ok[0], dict) and "Name" in ok[0]:
        print_table(GET_VM_COLUMNS, ok, GET_VM_FORMATS)
    if failed:
        g.exit_status = 1


GUEST_HELP = f"the guest program: {spec_list()} (docs/cli.md says what each does)"


@cli.command("new-vm")
@click.argument("name")
@click.option("--memory-startup-bytes", type=SIZE, default="512MB", show_default=True,
              help="memory at start, e.g. 512MB, 1GB, 1GiB")
@click.option("--processor-count", type=int, default=1, show_default=True,
              help="virtual processors (1..host logical CPUs)")
@click.option("--guest", default="idle", show_default=True, metavar="SPEC", help=GUEST_HELP)
@click.pass_obj
def new_vm(g, name, memory_startup_bytes, processor_count, guest):
    """Create a VM (Off)."""
    vm = g.client.call("new-vm", name=name, memory_startup_bytes=memory_startup_bytes,
                       processor_count=processor_count, guest=guest)
    show_vms(g, [vm]) if not g.json else print_json(vm)


@cli.command("get-vm")
@click.argument("names", nargs=-1)
@click.pass_obj
def get_vm(g, names):
    """List VMs: all, or the ones named (names, Ids or patterns like 'web*'). A name that is
    not found is reported and the others are still listed (exit 1)."""
    list_vms(g, names)


@cli.command("start-vm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def start_vm(g, names):
    """Off → Running; returns when Running and prints the VMs as they are then."""
    for_each_vm(g, "start-vm", names)


@cli.command("stop-vm")
@click.argument("names", nargs=-1, required=True)
@click.option("--turn-off", is_flag=True, help="pull the power instead of asking the guest")
@click.option("--force", is_flag=True, help="turn off a guest that does not shut down in time")
@click.option("--save", is_flag=True,
              help="save the VM (= save-vm)" if SAVED_STATE else "save the VM (not in this build)")
@click.option("--timeout", type=float, default=None, help="seconds the guest gets to shut down")
@click.pass_obj
def stop_vm(g, names, turn_off, force, save, timeout):
    """Shut the guest down (shutdown integration service) and wait; --turn-off pulls the power."""
    if save:
        if not SAVED_STATE:
            raise HvError("NotSupported", f"stop-vm --save: {SAVE_MISSING}.")
        if turn_off or force:
            raise click.UsageError("--save does not go with --turn-off or --force")
        for_each_vm(g, "save-vm", names)
        return
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
@click.option("--guest", metavar="SPEC", help=GUEST_HELP)
@click.option("--automatic-start-action", type=choice(START_ACTIONS),
              help="at host up: Nothing, StartIfRunning (if it was running), Start")
@click.option("--automatic-stop-action", type=choice(("TurnOff", "Save", "ShutDown")),
              metavar="|".join(STOP_ACTIONS),
              help="at host down: " + ", ".join(STOP_ACTIONS) + f" (default {DEFAULT_STOP_ACTION})")
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

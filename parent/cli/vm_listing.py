"""What `hvctl get-vm` prints: the Get-VM table (`Name State CPUUsage(%) MemoryAssigned(M)
Uptime Status`) or, with `--json`, the list of Get-VM objects; `list_vms` is the command's body.

Imports no click: `hvctl get-vm` runs through parent/cli/launch.py's fast path without the click
command tree (issue 16: hvctl's start-up is its cost), and the click command in
parent/cli/vm_commands.py calls the same `list_vms`, so the two cannot print differently.
"""
from __future__ import annotations

from hypervisor.runtime.errors import HvError
from parent.cli.output import format_uptime, print_error, print_json, print_table

GET_VM_COLUMNS = [("Name", "Name"), ("State", "State"), ("CPUUsage(%)", "CPUUsage"),
                  ("MemoryAssigned(M)", "MemoryAssigned"), ("Uptime", "Uptime"), ("Status", "Status")]
GET_VM_FORMATS = {"MemoryAssigned": lambda v: "?" if v is None else v // (1 << 20),  # None: unknown
                  "Uptime": format_uptime}


def show_vms(g, vms: list[dict]) -> None:
    if g.json:
        print_json(vms)
    else:
        print_table(GET_VM_COLUMNS, vms, GET_VM_FORMATS)


def list_vms(g, names) -> None:
    """All VMs, or the ones named (names or Ids, already expanded from patterns). A name that
    is not found is reported and the others are still listed (exit status 1)."""
    if not names:
        show_vms(g, g.client.call("get-vm"))
        return
    found, failed = [], []
    for res in g.client.call_many([("get-vm", {"vms": [n]}) for n in names]):
        if isinstance(res, HvError):
            if res.code == "Unavailable":
                raise res
            failed.append(res)
            print_error(res, as_json=False)
        else:
            found.extend(vm for vm in res if vm["Id"] not in {f["Id"] for f in found})
    if g.json and failed and not found:
        print_json({"error": {"code": failed[0].code, "message": failed[0].message}})
    elif found or g.json:
        show_vms(g, found)
    if failed:
        g.exit_status = 1

"""vmms's control plane: the one table of control ops (`CONTROL_OPS`, parent/control/op_table.py)
and the groups of ops that register into it, one module per group:

- `host_ops` — ping, get-vmhost, host-shutdown;
- `vm_ops` — a VM's life: new-, get-, start-, stop-, suspend-, resume-, restart-, remove-, set-vm,
  get-vmworkerprocess;
- `resource_ops` — what the hypervisor's ledgers govern: get-/set-vmprocessor,
  get-/set-vmmemory, measure-vm;
- `disk_ops` — new-vhd, get-vhd, add-/get-/remove-vmharddiskdrive;
- `driver_ops` — get-/restart-vmhostdriver, add-/get-/remove-vmdevice;
- `integration_ops` — integration services, key-value pairs, COM ports;
- `monitor_ops` — get-vmhistory (the ledgers' last 15 min, what top and the web manager poll);
- `network_ops` — virtual switches and network adapters;
- `saved_state_ops` — save-vm, remove-vmsavedstate;
- `checkpoint_ops` — checkpoint-vm, get-, restore-, remove-vmsnapshot.

Importing this package loads every group, so `CONTROL_OPS` is complete. A new op goes into the
module of its group (or a new module listed here) with `@control_op("name")`; nothing else lists
it. Ops act on vmms only through its methods (parent/vmms.py); none of these modules imports vmms.
"""
from parent.control.op_table import CONTROL_OPS, ControlOp, control_op
from parent.control import (disk_ops, driver_ops, host_ops, integration_ops,  # noqa: F401 (they register)
                            monitor_ops, network_ops, resource_ops, saved_state_ops,
                            checkpoint_ops, vm_ops)

__all__ = ["CONTROL_OPS", "ControlOp", "control_op"]

"""What vmms may ask a worker, and what a worker tells vmms (definitions apart from the worker,
so vmms imports this small module, never the worker's implementation).

Requests go to the worker's ROUTER (`run/w/<VMId>.sock`) as ordinary wire requests. The worker
pushes `status` notifications to the vmms that attached last.
"""
from __future__ import annotations

from typing import Any, Callable

# op -> when it is allowed and what it does. The worker's handlers are bound from this table
# (`bind_worker_ops`), so an op cannot be listed without a handler or handled without a listing.
WORKER_OPS: dict[str, str] = {
    "attach": "vmms (re)attaches after launching or after its own restart; answers `status`",
    "stop": "args {mode: 'shutdown'|'turn-off', timeout: s, force: bool}; shutdown asks the guest "
            "and waits; on timeout answers Timeout unless force, which turns it off; the worker "
            "exits once the VM is Off",
    "suspend": "Running -> Paused: the hypervisor stops the partition's processes",
    "resume": "Paused -> Running",
    "save": "args {path}: Running/Paused -> Saving -> Saved: the guest quiesces and puts its "
            "program state in RAM, the partition is suspended, RAM (data pages) and device "
            "state go to the .vmrs at path (atomically); then the partition ends and the worker "
            "exits with final state Saved",
    "reset": "hard reset: a new guest in a new partition, same worker",
    "set-guest": "args {guest: SPEC}: the guest program changes live where it can",
    "set-processor": "args {processor: {...}}: live CPU settings through the hypervisor",
    "set-memory": "args {memory: {...}}: live memory settings through the hypervisor",
    # VMBus devices, integration services and COM ports (worker/virtual_devices.py)
    "kvp-get": "args {pool: guest|host}: the KVP items of that pool",
    "kvp-set": "args {items: {key: value}}: host items, pushed to the guest",
    "kvp-remove": "args {keys: [key]}: host items removed, in the guest too",
    "set-integration-service": "args {name, enabled}: offer or rescind the service's channel",
    "get-integration-services": "the services with Enabled and status descriptions",
    "set-comport": "args {number: 1|2, path}: serve COM<number> at a Unix socket ('' stops)",
    "add-device": "args {driver, instance_id, settings}: a driver device, offered hot",
    "remove-device": "args {instance_id}: rescind a driver device",
    "get-devices": "the VM's driver devices with their channel states",
    "driver-state": "args {driver, state: Running|Restarting|Failed, reason}: from vmms's supervisor",
}



def handler_name(op: str) -> str:
    """The method that handles worker op `op`: "set-guest" -> `op_set_guest`."""
    return "op_" + op.replace("-", "_")


def worker_op_table(*owners: Any) -> dict[str, tuple[int, str]]:
    """{op: (index of its owner in `owners`, method name)} for every op of WORKER_OPS, from the
    first owner with its `op_*` method. Raises LookupError for an op without a handler, or an
    `op_*` method of an owner that WORKER_OPS does not list (a handler nobody can call). The
    worker checks its classes once, at import (in the fork-server's image; issue 16)."""
    table: dict[str, tuple[int, str]] = {}
    for op in WORKER_OPS:
        name = handler_name(op)
        index = next((i for i, o in enumerate(owners) if hasattr(o, name)), None)
        if index is None:
            raise LookupError(f"worker op {op!r} has no handler {name}")
        table[op] = (index, name)
    listed = {handler_name(op) for op in WORKER_OPS}
    extra = sorted({n for o in owners for n in dir(o) if n.startswith("op_")} - listed)
    if extra:
        raise LookupError(f"handlers not listed in WORKER_OPS: {', '.join(extra)}")
    return table


def bind_worker_ops(*owners: Any, table: dict[str, tuple[int, str]] | None = None
                    ) -> dict[str, Callable]:
    """{op: bound handler}: `table` (from worker_op_table) resolved on these owners."""
    table = worker_op_table(*owners) if table is None else table
    return {op: getattr(owners[i], name) for op, (i, name) in table.items()}


NOTIFY_STATUS = "status"

# status keys (a worker's answer to attach and the payload of every notification; vmwp builds
# its status from them)
STATUS_KEYS = ("vm_id", "state", "worker_pid", "guest_pid", "partition_id", "running_since",
               "paused_total", "paused_since", "heartbeat", "exit_reason", "error",
               "sandbox_uid", "sandbox_slot", "isolation_mode")

# what the fork-server is asked to launch (vmms sends exactly these; the fork-server checks)
LAUNCH_KEYS = ("vm_id", "name", "home", "sandbox", "config")
# config["restore"] = path of a .vmrs: the worker boots the VM from that saved state

STOP_TIMEOUT_DEFAULT = 10.0

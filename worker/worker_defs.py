"""What vmms may ask a worker, and what a worker tells vmms (definitions apart from the worker,
so vmms imports this small module, never the worker's implementation).

Requests go to the worker's ROUTER (`run/w/<VMId>.sock`) as ordinary wire requests. The worker
pushes `status` notifications to the vmms that attached last.
"""
from __future__ import annotations

# op -> when it is allowed and what it does. The worker registers exactly these handlers.
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
    # VMBus devices, integration services and COM ports (worker/vm_services.py)
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

NOTIFY_STATUS = "status"

# status keys (a worker's answer to attach and the payload of every notification)
STATUS_KEYS = ("vm_id", "state", "worker_pid", "guest_pid", "partition_id", "running_since",
               "paused_total", "paused_since", "heartbeat", "exit_reason", "error")

# what the fork-server is asked to launch
LAUNCH_KEYS = ("vm_id", "name", "home", "config")
# config["restore"] = path of a .vmrs: the worker boots the VM from that saved state

STOP_TIMEOUT_DEFAULT = 10.0

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
    "reset": "hard reset: a new guest in a new partition, same worker",
    "set-guest": "args {guest: SPEC}: the guest program changes live where it can",
    "set-processor": "args {processor: {...}}: live CPU settings through the hypervisor",
    "set-memory": "args {memory: {...}}: live memory settings through the hypervisor",
}

NOTIFY_STATUS = "status"

# status keys (a worker's answer to attach and the payload of every notification)
STATUS_KEYS = ("vm_id", "state", "worker_pid", "guest_pid", "partition_id", "running_since",
               "paused_total", "paused_since", "heartbeat", "exit_reason", "error")

# what the fork-server is asked to launch
LAUNCH_KEYS = ("vm_id", "name", "home", "config")

STOP_TIMEOUT_DEFAULT = 10.0

"""`VmRecord`: what vmms holds for one VM — its durable configuration (the dict saved as
`vms/<Id>/config.json`), its state, its worker while one exists, the operation holding its
lock, and the callbacks waiting for it to reach Running or to turn off.

vmms (parent/vmms.py) owns the records and changes their state, worker and lock; control ops
(parent/control/) read them and change their configuration, then save it through vmms.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from worker.vm_state import VmState


@dataclass
class VmRecord:
    config: dict
    state: VmState = VmState.Off
    worker: object | None = None          # WorkerHandle while a worker exists
    busy: str | None = None               # the operation holding this VM's lock (Vmms.lock)
    # (callback, deadline): callback(err) with err None on success
    start_waiters: list = field(default_factory=list)   # called at Running (or failure)
    exit_waiters: list = field(default_factory=list)    # called when the worker has exited
    broken: str | None = None             # why the stored config cannot be served (config_checks)

    @property
    def id(self) -> str:
        return self.config["id"]

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.config["id"])

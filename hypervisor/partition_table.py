"""The hypervisor's partition table: which child partitions exist and who owns them.

A partition belongs to one VM, is created by that VM's worker (the root partition acting for
it) and runs one guest process, a child of that worker. Lookups by id, VM id, credential and
watched pidfd are all O(1) because the daemon does them on every message and every death.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from hypervisor.runtime.errors import HvError


@dataclass
class Partition:
    id: str
    vm_id: str
    name: str
    worker_pid: int
    credential: str
    created: float = field(default_factory=time.time)
    guest_pid: int | None = None
    suspended: bool = False
    fds: dict[int, str] = field(default_factory=dict)  # pidfd -> "worker" | "guest"
    memory: object | None = None  # GuestMemory, when the memory ledger assigned RAM

    def describe(self) -> dict:
        return {"partition_id": self.id, "vm_id": self.vm_id, "name": self.name,
                "worker_pid": self.worker_pid, "guest_pid": self.guest_pid,
                "suspended": self.suspended, "created": self.created}


class PartitionTable:
    def __init__(self) -> None:
        self._next = 1
        self.by_id: dict[str, Partition] = {}
        self.by_vm: dict[str, Partition] = {}
        self.by_credential: dict[str, Partition] = {}
        self.by_fd: dict[int, Partition] = {}

    def __iter__(self):
        return iter(list(self.by_id.values()))

    def __len__(self) -> int:
        return len(self.by_id)

    def create(self, vm_id: str, name: str, worker_pid: int) -> Partition:
        if vm_id in self.by_vm:
            raise HvError("AlreadyExists", f"VM {vm_id} already has partition {self.by_vm[vm_id].id}")
        part = Partition(id=f"p{self._next}", vm_id=vm_id, name=name, worker_pid=worker_pid,
                         credential=secrets.token_hex(16))
        self._next += 1
        self.by_id[part.id] = part
        self.by_vm[vm_id] = part
        self.by_credential[part.credential] = part
        return part

    def get(self, partition_id) -> Partition:
        part = self.by_id.get(partition_id) if isinstance(partition_id, str) else None
        if part is None:
            raise HvError("NotFound", f"no partition {partition_id!r}")
        return part

    def watch(self, part: Partition, fd: int, role: str) -> None:
        part.fds[fd] = role
        self.by_fd[fd] = part

    def remove(self, part: Partition) -> list[int]:
        """Forget the partition; returns its pidfds (the caller unregisters and closes them)."""
        self.by_id.pop(part.id, None)
        self.by_vm.pop(part.vm_id, None)
        self.by_credential.pop(part.credential, None)
        for fd in part.fds:
            self.by_fd.pop(fd, None)
        fds, part.fds = list(part.fds), {}
        return fds

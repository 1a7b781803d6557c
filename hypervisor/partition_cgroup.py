"""Resource bounds per partition: one cgroup per child partition, owned by the hypervisor.

What it bounds (DESIGN.md §9): the number of processes (`pids.max` = `PIDS_MAX`: a fork bomb
stays inside its VM), memory (the ledger's assignment + `MEMORY_OVERHEAD`, the guest runtime's
own heap and its programs' — guest RAM pages are charged to the partition that touches them),
and stop/continue (the freezer: `freezer.state` in v1, `cgroup.freeze` in v2) for suspend.

A lower memory bound waits `SHRINK_GRACE`: the balloon-down punches the released pages at once,
but the guest learns its new size only from its next demand report, and every page it touches
meanwhile in the released range is charged again. Lowered at once, the bound turned that
write into an OOM kill of the whole VM (seen under load with two Dynamic Memory VMs in
contention). After the grace the released range is punched again (the guest reads zeros
there, as it would right after the first punch) and only then the bound is lowered.

Layout: v1 (this CI machine): `/sys/fs/cgroup/{pids,memory,freezer,cpuacct}/hvemu-<home>/<pid>`;
v2: `/sys/fs/cgroup/hvemu-<home>/<pid>` with `+pids +memory` delegated to the home's group.
`CgroupLayout` is the pure part (paths and values, unit-tested); `PartitionCgroup` writes them.
A group whose processes are still exiting cannot be removed yet: `sweep()` retries.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PIDS_MAX = 512
MEMORY_OVERHEAD = 96 << 20            # the guest runtime (~15 MiB private) and its programs
V1_CONTROLLERS = ("pids", "memory", "freezer", "cpuacct")
FREEZE_WAIT = 1.0
SHRINK_GRACE = 2.0                    # s a lower memory bound waits for the guest to catch up


@dataclass(frozen=True)
class CgroupLayout:
    """Paths as plain strings: a partition's start writes a dozen of them (issue 16: pathlib's
    joins cost the hypervisor more than the writes)."""
    version: str                       # "v1" | "v2"
    group: str                         # hvemu-<home hash>
    root: str = "/sys/fs/cgroup"

    def home_dirs(self) -> list[str]:
        if self.version == "v1":
            return [f"{self.root}/{c}/{self.group}" for c in V1_CONTROLLERS]
        return [f"{self.root}/{self.group}"]

    def dirs(self, partition_id: str) -> list[str]:
        return [f"{d}/{partition_id}" for d in self.home_dirs()]

    def file(self, partition_id: str, controller: str, name: str) -> str:
        if self.version == "v1":
            return f"{self.root}/{controller}/{self.group}/{partition_id}/{name}"
        return f"{self.root}/{self.group}/{partition_id}/{name}"

    def memory_file(self, partition_id: str) -> str:
        return self.file(partition_id, "memory",
                         "memory.limit_in_bytes" if self.version == "v1" else "memory.max")

    def freeze_write(self, frozen: bool) -> tuple[str, str]:
        if self.version == "v1":
            return "freezer.state", "FROZEN" if frozen else "THAWED"
        return "cgroup.freeze", "1" if frozen else "0"


def memory_limit(assigned: int) -> int:
    """The memory a partition's processes may hold: its assignment plus the stated overhead."""
    return int(assigned) + MEMORY_OVERHEAD


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class PartitionCgroups:
    """The hypervisor's cgroups (one per partition) for one home."""

    def __init__(self, version: str | None, home_tag: str, log):
        self.log = log
        self.layout = CgroupLayout(version, f"hvemu-{home_tag}") if version else None
        self._removing: set[str] = set()     # removed partitions whose group is still busy
        # partition -> (lower assignment, when to apply it, what releases its pages again)
        self._lowering: dict[str, tuple[int, float, Callable[[], None]]] = {}
        self._limits: dict[str, int] = {}     # the assignment each group's bound was set for
        self._tasks: dict[str, int] = {}      # partition -> open pids.current (task_count)
        if self.layout is None:
            return
        try:
            for d in self.layout.home_dirs():
                os.makedirs(d, exist_ok=True)
            if version == "v2":
                _write(f"{self.layout.root}/{self.layout.group}/cgroup.subtree_control",
                       "+pids +memory")
        except OSError as exc:
            log.warning("cgroups_unavailable", error=str(exc))
            self.layout = None
            return
        for d in self.layout.home_dirs():        # left by a hypervisor that crashed
            for child in Path(d).iterdir() if os.path.isdir(d) else ():
                if child.is_dir():
                    self._removing.add(child.name)
        self.sweep()

    @property
    def pending(self) -> bool:
        """Work for sweep(): groups to remove, or memory bounds still to lower."""
        return bool(self._removing or self._lowering)

    @property
    def version(self) -> str | None:
        return self.layout.version if self.layout else None

    def create(self, partition_id: str, pid: int, assigned: int) -> None:
        """A group for the partition with its bounds, and its guest (pid) moved in — before the
        guest is told to boot, so all it ever forks is inside."""
        if self.layout is None:
            return
        dirs = self.layout.dirs(partition_id)
        for d in dirs:
            try:
                os.mkdir(d)
            except FileExistsError:
                pass
        _write(self.layout.file(partition_id, "pids", "pids.max"), str(PIDS_MAX))
        self.set_memory(partition_id, assigned)
        for d in dirs:
            _write(f"{d}/cgroup.procs", str(pid))
        try:
            self._tasks[partition_id] = os.open(self.layout.file(partition_id, "pids", "pids.current"),
                                                os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass

    def task_count(self, partition_id: str) -> int | None:
        """How many tasks the partition has now (one pread of a kept-open pids.current), or
        None without one. The hypervisor re-walks an idle partition's tree only when this
        changes (issue 16)."""
        fd = self._tasks.get(partition_id)
        if fd is None:
            return None
        try:
            return int(os.pread(fd, 32, 0))
        except (OSError, ValueError):
            return None

    def set_memory(self, partition_id: str, assigned: int,
                   reclaim: Callable[[], None] | None = None, now: float | None = None) -> None:
        """Bound the partition's memory to `assigned` + overhead: at once when it grows (or
        without `reclaim`), after SHRINK_GRACE when it shrinks (see the module's docstring)."""
        if self.layout is None:
            return
        current = self._limits.get(partition_id)
        if reclaim is not None and current is not None and assigned < current:
            now = time.monotonic() if now is None else now
            _, due, _ = self._lowering.get(partition_id, (0, now + SHRINK_GRACE, None))
            self._lowering[partition_id] = (assigned, due, reclaim)
            return
        self._lowering.pop(partition_id, None)
        self._write_limit(partition_id, assigned)

    def _write_limit(self, partition_id: str, assigned: int) -> None:
        try:
            _write(self.layout.memory_file(partition_id), str(memory_limit(assigned)))
            self._limits[partition_id] = assigned
        except OSError as exc:  # EBUSY: usage above the new limit could not be reclaimed yet
            self.log.info("memory_limit_not_lowered", partition=partition_id, error=str(exc))

    def _lower_due(self, now: float) -> None:
        for partition_id, (assigned, due, reclaim) in list(self._lowering.items()):
            if now < due:
                continue
            del self._lowering[partition_id]
            try:
                reclaim()           # what the guest touched in the released range since
            except OSError as exc:
                self.log.warning("memory_reclaim_failed", partition=partition_id, error=str(exc))
            self._write_limit(partition_id, assigned)

    def freeze(self, partition_id: str, frozen: bool) -> bool:
        """Freeze (or thaw) every process of the partition; True once the kernel says so."""
        if self.layout is None:
            return False
        name, value = self.layout.freeze_write(frozen)
        path = self.layout.file(partition_id, "freezer", name)
        _write(path, value)
        if self.layout.version == "v2":
            events = os.path.join(os.path.dirname(path), "cgroup.events")
            want = f"frozen {1 if frozen else 0}"
            check = lambda: want in _read(events)  # noqa: E731
        else:
            check = lambda: _read(path).strip() == value  # noqa: E731
        deadline = time.monotonic() + FREEZE_WAIT
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.001)
        return False

    def stats(self, partition_id: str) -> dict:
        if self.layout is None:
            return {}
        out = {}
        for key, controller, name in (("pids", "pids", "pids.current"),
                                      ("memory", "memory", "memory.usage_in_bytes"
                                       if self.layout.version == "v1" else "memory.current")):
            try:
                out[key] = int(_read(self.layout.file(partition_id, controller, name)))
            except (OSError, ValueError):
                pass
        return out

    def remove(self, partition_id: str) -> None:
        if self.layout is None:
            return
        self._lowering.pop(partition_id, None)
        self._limits.pop(partition_id, None)
        fd = self._tasks.pop(partition_id, None)
        if fd is not None:
            os.close(fd)
        self._removing.add(partition_id)
        self.sweep()

    def sweep(self, now: float | None = None) -> None:
        """Lower the memory bounds that are due; remove every removed group that has no process
        left (bounded: one rmdir each)."""
        if self.layout is None:
            return
        self._lower_due(time.monotonic() if now is None else now)
        for pid in list(self._removing):
            busy = False
            name, value = self.layout.freeze_write(False)
            try:   # a frozen group's processes could never exit
                _write(self.layout.file(pid, "freezer", name), value)
            except OSError:
                pass
            for d in self.layout.dirs(pid):
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        busy = True
            if not busy:
                self._removing.discard(pid)

    def close(self, wait: float = 1.0) -> None:
        """Remove every group (bounded wait for the last processes to finish exiting)."""
        deadline = time.monotonic() + wait
        for fd in self._tasks.values():
            os.close(fd)
        self._tasks.clear()
        self.sweep()
        self._lowering.clear()
        while self._removing and time.monotonic() < deadline:
            time.sleep(0.01)
            self.sweep()
        if self.layout is None:
            return
        for d in self.layout.home_dirs():
            try:
                os.rmdir(d)
            except OSError:
                pass

"""Resource bounds per partition: one cgroup per child partition, owned by the hypervisor.

What it bounds (DESIGN.md §9): the number of processes (`pids.max` = `PIDS_MAX`: a fork bomb
stays inside its VM), memory (the ledger's assignment + `MEMORY_OVERHEAD`, the guest runtime's
own heap and its programs' — guest RAM pages are charged to the partition that touches them),
and stop/continue (the freezer: `freezer.state` in v1, `cgroup.freeze` in v2) for suspend.

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

PIDS_MAX = 512
MEMORY_OVERHEAD = 96 << 20            # the guest runtime (~15 MiB private) and its programs
V1_CONTROLLERS = ("pids", "memory", "freezer", "cpuacct")
FREEZE_WAIT = 1.0


@dataclass(frozen=True)
class CgroupLayout:
    version: str                       # "v1" | "v2"
    group: str                         # hvemu-<home hash>
    root: Path = Path("/sys/fs/cgroup")

    def home_dirs(self) -> list[Path]:
        if self.version == "v1":
            return [self.root / c / self.group for c in V1_CONTROLLERS]
        return [self.root / self.group]

    def dirs(self, partition_id: str) -> list[Path]:
        return [d / partition_id for d in self.home_dirs()]

    def file(self, partition_id: str, controller: str, name: str) -> Path:
        if self.version == "v1":
            return self.root / controller / self.group / partition_id / name
        return self.root / self.group / partition_id / name

    def memory_file(self, partition_id: str) -> Path:
        return self.file(partition_id, "memory",
                         "memory.limit_in_bytes" if self.version == "v1" else "memory.max")

    def freeze_write(self, frozen: bool) -> tuple[str, str]:
        if self.version == "v1":
            return "freezer.state", "FROZEN" if frozen else "THAWED"
        return "cgroup.freeze", "1" if frozen else "0"


def memory_limit(assigned: int) -> int:
    """The memory a partition's processes may hold: its assignment plus the stated overhead."""
    return int(assigned) + MEMORY_OVERHEAD


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class PartitionCgroups:
    """The hypervisor's cgroups (one per partition) for one home."""

    def __init__(self, version: str | None, home_tag: str, log):
        self.log = log
        self.layout = CgroupLayout(version, f"hvemu-{home_tag}") if version else None
        self.pending: set[str] = set()      # removed partitions whose group is still busy
        if self.layout is None:
            return
        try:
            for d in self.layout.home_dirs():
                d.mkdir(exist_ok=True)
            if version == "v2":
                _write(self.layout.root / self.layout.group / "cgroup.subtree_control",
                       "+pids +memory")
        except OSError as exc:
            log.warning("cgroups_unavailable", error=str(exc))
            self.layout = None
            return
        for d in self.layout.home_dirs():        # left by a hypervisor that crashed
            for child in d.iterdir() if d.is_dir() else ():
                if child.is_dir():
                    self.pending.add(child.name)
        self.sweep()

    @property
    def version(self) -> str | None:
        return self.layout.version if self.layout else None

    def create(self, partition_id: str, pid: int, assigned: int) -> None:
        """A group for the partition with its bounds, and its guest (pid) moved in — before the
        guest is told to boot, so all it ever forks is inside."""
        if self.layout is None:
            return
        for d in self.layout.dirs(partition_id):
            d.mkdir(exist_ok=True)
        _write(self.layout.file(partition_id, "pids", "pids.max"), str(PIDS_MAX))
        self.set_memory(partition_id, assigned)
        for d in self.layout.dirs(partition_id):
            _write(d / "cgroup.procs", str(pid))

    def set_memory(self, partition_id: str, assigned: int) -> None:
        if self.layout is None:
            return
        try:
            _write(self.layout.memory_file(partition_id), str(memory_limit(assigned)))
        except OSError as exc:  # EBUSY: usage above the new limit could not be reclaimed yet
            self.log.info("memory_limit_not_lowered", partition=partition_id, error=str(exc))

    def freeze(self, partition_id: str, frozen: bool) -> bool:
        """Freeze (or thaw) every process of the partition; True once the kernel says so."""
        if self.layout is None:
            return False
        name, value = self.layout.freeze_write(frozen)
        path = self.layout.file(partition_id, "freezer", name)
        _write(path, value)
        if self.layout.version == "v2":
            events = path.with_name("cgroup.events")
            want = f"frozen {1 if frozen else 0}"
            check = lambda: want in events.read_text()  # noqa: E731
        else:
            check = lambda: path.read_text().strip() == value  # noqa: E731
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
                out[key] = int(self.layout.file(partition_id, controller, name).read_text())
            except (OSError, ValueError):
                pass
        return out

    def remove(self, partition_id: str) -> None:
        if self.layout is None:
            return
        self.pending.add(partition_id)
        self.sweep()

    def sweep(self) -> None:
        """Remove every pending group that has no process left (bounded: one rmdir each)."""
        if self.layout is None:
            return
        for pid in list(self.pending):
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
                self.pending.discard(pid)

    def close(self, wait: float = 1.0) -> None:
        """Remove every group (bounded wait for the last processes to finish exiting)."""
        deadline = time.monotonic() + wait
        self.sweep()
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
            self.sweep()
        if self.layout is None:
            return
        for d in self.layout.home_dirs():
            try:
                os.rmdir(d)
            except OSError:
                pass

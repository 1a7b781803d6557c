"""Measuring one partition's process tree cheaply, many times a second.

A `PartitionProbe` knows the members of a partition (its guest and every descendant) and keeps
each member's `/proc/<pid>/schedstat` open, so a tick costs one `pread` per member (no open,
no path lookup) and a dead member's descriptor fails instead of reading a reused pid. `rescan()`
walks the tree from the guest down through `/proc/<pid>/task/<tid>/children` — cost grows with
the partition, not with the machine's process count. The time a member used before it exited is
kept, so a guest cannot hide CPU in short-lived children.
"""
from __future__ import annotations

import os

from hypervisor.process_tree import tree


class PartitionProbe:
    def __init__(self, root: int):
        self.root = root
        self._fds: dict[int, int] = {}                 # member pid -> open schedstat fd
        self._last: dict[int, tuple[float, float]] = {}  # every member ever seen -> last reading
        self.rescan()

    @property
    def members(self) -> list[int]:
        return list(self._fds)

    def rescan(self) -> list[int]:
        """Refresh membership; returns the members that are new since the last scan."""
        seen = tree(self.root)
        new = [pid for pid in seen if pid not in self._fds]
        for pid in new:
            try:
                self._fds[pid] = os.open(f"/proc/{pid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
        for pid in set(self._fds) - set(seen):
            os.close(self._fds.pop(pid))
        return new

    def read(self) -> tuple[float, float]:
        """Cumulative (CPU seconds, run-queue wait seconds) of every member ever seen."""
        for pid, fd in list(self._fds.items()):
            try:
                fields = os.pread(fd, 128, 0).split()
                self._last[pid] = (int(fields[0]) / 1e9, int(fields[1]) / 1e9)
            except (OSError, ValueError, IndexError):  # exited: keep its last reading
                os.close(self._fds.pop(pid))
        run = sum(r for r, _ in self._last.values())
        wait = sum(w for _, w in self._last.values())
        return run, wait

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

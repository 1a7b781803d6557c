"""Measuring one partition's process tree cheaply, many times a second.

A `PartitionProbe` knows the members of a partition (its guest and every descendant) and keeps
each member's `/proc/<pid>/schedstat` open, so a tick costs one `pread` per member (no open,
no path lookup) and a dead member's descriptor fails instead of reading a reused pid. `rescan()`
walks the tree from the guest down through `/proc/<pid>/task/<tid>/children` — cost grows with
the partition, not with the machine's process count. The walk keeps descriptors open too (each
member's `task` directory and each thread's `children` file), so a rescan of a known tree is a
`listdir` and a `pread` per member with no path lookup and no file object. The time a member
used before it exited is kept, so a guest cannot hide CPU in short-lived children.
"""
from __future__ import annotations

import os

from hypervisor.runtime.process_tree import children as children_by_path

_RO = os.O_RDONLY | os.O_CLOEXEC
_CHUNK = 65536


def _pread_all(fd: int) -> bytes:
    data = os.pread(fd, _CHUNK, 0)
    if len(data) < _CHUNK:
        return data
    parts = [data]
    while len(data) == _CHUNK:
        data = os.pread(fd, _CHUNK, sum(map(len, parts)))
        parts.append(data)
    return b"".join(parts)


class _Walk:
    """Kept-open descriptors to list one member's children: its task dir, each thread's file."""
    __slots__ = ("pid", "task", "kids")

    def __init__(self, pid: int):
        self.pid = pid
        self.task = os.open(f"/proc/{pid}/task", _RO | os.O_DIRECTORY)
        self.kids: dict[str, int] = {}   # tid -> open children fd

    def children(self) -> list[int]:
        tids = os.listdir(self.task)
        if not tids:  # a live process has a thread: this one is gone (its pid may be reused)
            raise ProcessLookupError(self.pid)
        kids = self.kids
        if len(tids) != len(kids) or not all(t in kids for t in tids):
            keep = set(tids)
            for tid in [t for t in kids if t not in keep]:
                os.close(kids.pop(tid))
            for tid in tids:
                if tid not in kids:
                    try:
                        kids[tid] = os.open(f"/proc/{self.pid}/task/{tid}/children", _RO)
                    except OSError:
                        continue
        out: list[int] = []
        for fd in kids.values():
            try:
                data = _pread_all(fd)
            except OSError:
                continue
            if data:
                out.extend(map(int, data.split()))
        return out

    def close(self) -> None:
        os.close(self.task)
        for fd in self.kids.values():
            os.close(fd)
        self.kids.clear()


class PartitionProbe:
    def __init__(self, root: int):
        self.root = root
        self._fds: dict[int, int] = {}                 # member pid -> open schedstat fd
        self._walks: dict[int, _Walk] = {}             # member pid -> its children listing
        self._last: dict[int, tuple[float, float]] = {}  # live member -> last reading
        self._gone = [0.0, 0.0]                        # run, wait of members that exited
        self.lost_member = False                       # a member exited since the last rescan
        self.rescan()

    @property
    def members(self) -> list[int]:
        return list(self._fds)

    def _children(self, pid: int) -> list[int]:
        walk = self._walks.get(pid)
        if walk is None and pid in self._fds:
            try:
                walk = self._walks[pid] = _Walk(pid)
            except OSError:
                walk = None
        if walk is not None:
            try:
                return walk.children()
            except OSError:  # gone (or its pid reused): forget the cache, ask by path
                self._walks.pop(pid).close()
        return children_by_path(pid)

    def _drop(self, pid: int) -> None:
        os.close(self._fds.pop(pid))
        walk = self._walks.pop(pid, None)
        if walk is not None:
            walk.close()
        last = self._last.pop(pid, None)
        if last is not None:
            self._gone[0] += last[0]
            self._gone[1] += last[1]

    def rescan(self) -> list[int]:
        """Refresh membership; returns the members that are new since the last scan."""
        seen: set[int] = set()
        new: list[int] = []
        stack = [self.root]
        while stack:
            pid = stack.pop()
            seen.add(pid)
            if pid not in self._fds:
                new.append(pid)
                try:
                    self._fds[pid] = os.open(f"/proc/{pid}/schedstat", _RO)
                except OSError:
                    pass
            stack.extend(self._children(pid))
        for pid in [p for p in self._fds if p not in seen]:
            self._drop(pid)
        self.lost_member = False
        return new

    def read(self) -> tuple[float, float]:
        """Cumulative (CPU seconds, run-queue wait seconds) of every member ever seen."""
        last = self._last
        dead = None
        for pid, fd in self._fds.items():
            try:
                fields = os.pread(fd, 128, 0).split()
                last[pid] = (int(fields[0]) / 1e9, int(fields[1]) / 1e9)
            except (OSError, ValueError, IndexError):  # exited: keep its last reading
                (dead := dead or []).append(pid)
        if dead:
            self.lost_member = True
            for pid in dead:
                self._drop(pid)
        run, wait = self._gone
        for r, w in last.values():
            run += r
            wait += w
        return run, wait

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for walk in self._walks.values():
            walk.close()
        self._walks.clear()

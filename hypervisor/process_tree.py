"""Real processes as the hypervisor sees them: process trees, CPU time, stop/continue, deaths.

Performance: one `/proc` scan builds the parent→children map for every partition at once
(`ChildrenMap`), so the scheduler rescans the whole tree once per period, not once per
partition; per-tick CPU reads touch only `/proc/<pid>/schedstat` of known members.
Deaths are noticed through pidfds (DESIGN.md §8), never by polling `ps`.
"""
from __future__ import annotations

import os
import signal


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces or parentheses: the fields after the last ')' are fixed
    return int(data[data.rindex(b")") + 2:].split()[1])


def is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True
    return data[data.rindex(b")") + 2:].split()[0] in (b"Z", b"X")


def children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process on the machine (one /proc scan)."""
    cmap: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ppid = ppid_of(int(entry))
        if ppid is not None:
            cmap.setdefault(ppid, []).append(int(entry))
    return cmap


def tree(root: int, cmap: dict[int, list[int]]) -> list[int]:
    """root and all its descendants in `cmap`."""
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(cmap.get(pid, ()))
    return out


def cpu_seconds(pid: int) -> float | None:
    """CPU time the process has run, from /proc/<pid>/schedstat (nanoseconds)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds run on a CPU, seconds spent runnable waiting on a run queue)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            fields = f.read().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def signal_pids(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(root: int) -> list[int]:
    """SIGSTOP root's whole tree; repeat until no new member appears (a fork race)."""
    stopped: set[int] = set()
    for _ in range(5):
        members = [p for p in tree(root, children_map()) if p not in stopped]
        if not members:
            break
        signal_pids(members, signal.SIGSTOP)
        stopped.update(members)
    return sorted(stopped)


def continue_pids(pids) -> None:
    signal_pids(pids, signal.SIGCONT)


def pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None

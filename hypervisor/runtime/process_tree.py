"""Real processes as the hypervisor sees them: process trees, CPU time, stop/continue, deaths.

The scheduler's per-tick measurement lives in partition_probe.py; this module holds the
one-off operations (a worker killing its guest's whole tree, the hypervisor freezing one).
Deaths are noticed through pidfds (DESIGN.md §8), never by polling `ps`.
"""
from __future__ import annotations

import os
import signal


def reap_children() -> list[tuple[int, int]]:
    """Reap every child of this process that has exited, never blocking: [(pid, wait status)].
    The fork-servers call it on each turn of their loops."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


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


def children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/<pid>/task/<tid>/children (a fork from any thread)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def tree(root: int) -> list[int]:
    """root and all its descendants; the cost grows with the tree, not the machine."""
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children(pid))
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def host_busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (all CPUs), from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def signal_pids(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def continue_pids(pids) -> None:
    signal_pids(pids, signal.SIGCONT)


def pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None

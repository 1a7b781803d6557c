"""The partition's own network namespace, entered by the guest runtime itself.

A VM with network adapters gets a fresh network namespace before its program starts, so its
`eth0`, `eth1`, … (TAPs, worker/guest/net_adapter.py) and everything its program runs (`ping`,
`iperf3`, `tcpdump`, …) live apart from the host's interfaces. As root the guest unshares only
the network namespace; without root it first makes a user namespace in which it is root (the
guest is root of its VM), which is what Private switches need.

This is a stop-gap hook: the partition sandbox (a user/PID/mount/IPC/UTS/NET namespace set per
VM, made by the worker) subsumes it; `enter()` does nothing when the guest already runs in a
network namespace of its own (`already_isolated`).

Python 3.11 has no os.unshare: libc's unshare(2) through ctypes.
"""
from __future__ import annotations

import ctypes
import os

from worker import tap_device

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def already_isolated() -> bool:
    """True when this process's network namespace is not its parent's (a sandbox made it)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino != os.stat(f"/proc/{os.getppid()}/ns/net").st_ino
    except OSError:
        return False


def enter() -> str:
    """Enter a fresh network namespace (and a user namespace first without root); bring `lo`
    up. Answers how ("net", "user+net", "sandbox")."""
    if already_isolated():
        how = "sandbox"
    elif os.geteuid() == 0:
        _unshare(CLONE_NEWNET)
        how = "net"
    else:
        uid, gid = os.geteuid(), os.getegid()
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
        how = "user+net"
    tap_device.set_up("lo")
    return how

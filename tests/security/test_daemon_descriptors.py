"""The descriptor the daemons' poller adds to vmms and the hypervisor (an epoll set over their
sockets, pidfds and eventfds; hypervisor/runtime/event_poller.py) and who may reach it
(DESIGN.md §9): nobody but its daemon. The OS enforces it by close-on-exec, so a process vmms
or the hypervisor starts — a driver host, the fork-server — cannot hold it, even one started
with close_fds=False, and so cannot watch or steer what its parent waits on."""
from __future__ import annotations

import fcntl
import subprocess
import sys

from hypervisor.runtime.event_poller import EventPoller


LIST_FDS = """
import os
for n in os.listdir("/proc/self/fd"):
    try:
        print(os.readlink(f"/proc/self/fd/{n}"))
    except OSError:   # the listing's own descriptor, closed by now
        pass
"""


def test_a_child_started_with_close_fds_false_finds_no_epoll_set_of_its_parent():
    poller = EventPoller()
    try:
        fd = poller._epoll.fileno()
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        listing = subprocess.run(
            [sys.executable, "-c", LIST_FDS],
            capture_output=True, text=True, timeout=30, close_fds=False)
        assert "eventpoll" not in listing.stdout and listing.returncode == 0
    finally:
        poller.close()

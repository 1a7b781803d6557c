"""The hypervisor's partition probe against real processes (it spawns CPU burners, so it is
not a unit test): a child forked by a non-main thread is a member of the partition, and the CPU
of a member that exited stays counted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from hypervisor.partition_probe import PartitionProbe
from hypervisor.runtime.process_tree import tree

pytestmark = pytest.mark.integration


def test_partition_probe_follows_forks_from_threads_and_keeps_exited_cpu():
    """The probe behind the shell's measurement (kept-open descriptors): a child forked by a
    non-main thread is a member, and CPU of a member that exited stays counted."""
    code = ("import subprocess, sys, threading, time\n"
            "burn = 'import time\\ne = time.process_time() + 0.2\\n"
            "while time.process_time() < e: pass'\n"
            "kids = []\n"
            "t = threading.Thread(target=lambda: kids.append(subprocess.Popen("
            "[sys.executable, '-c', burn + '\\ntime.sleep(30)'])))\n"
            "t.start(); t.join()\n"
            "subprocess.run([sys.executable, '-c', burn])\n"
            "time.sleep(30)\n")
    root = subprocess.Popen([sys.executable, "-c", code])
    try:
        probe = PartitionProbe(root.pid)
        deadline = time.monotonic() + 20
        run = 0.0
        while time.monotonic() < deadline:
            probe.rescan()
            run, _ = probe.read()
            members = sorted(probe.members)
            if len(members) == 2 and run >= 0.35:  # root + the thread's child; both burns seen
                break
            time.sleep(0.02)
        assert sorted(probe.members) == sorted(tree(root.pid)) and len(probe.members) == 2
        assert run >= 0.35  # two 0.2 s burns, one by a process that has exited
        before = run
        probe.rescan()
        assert probe.rescan() == [] and probe.read()[0] >= before  # never goes backwards
        probe.close()
    finally:
        for pid in tree(root.pid)[::-1]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        root.wait()

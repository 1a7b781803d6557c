"""vmms's asynchronous fork-server client (parent/worker_supervisor.ForkServer): launches in
flight answered in order; a fork-server that dies or hangs mid-flight is replaced and what was
in flight tried once more; twice fails with Unavailable. Real processes speaking the real
framing (a small stand-in for worker/forkserver.py that answers, dies or hangs); every wait
bounded."""
from __future__ import annotations

import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from parent.worker_supervisor import ForkServer
from worker.worker_defs import LAUNCH_KEYS

STAND_IN = r"""
import os, select, socket, sys, time
from hypervisor.runtime.packet_socket import receive_messages, send_message
sock = socket.socket(fileno=int(sys.argv[1]))
sock.setblocking(False)
mode, answered = sys.argv[2], 0
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    if not select.select([sock], [], [], 1.0)[0]:
        continue
    msgs, closed = receive_messages(sock, accept_fds=False, max_bytes=4 << 20)
    for msg in msgs:
        if mode == "die":
            os._exit(1)
        if mode == "answer":
            answered += 1
            send_message(sock, {"pid": 100000 + answered})
    if closed:
        break
"""


class StandInForkServer(ForkServer):
    """ForkServer whose n-th fork-server behaves as `modes[n]` (then "answer")."""

    def __init__(self, home, modes):
        self.modes, self.spawned = list(modes), []
        super().__init__(home)

    def _spawn(self):
        mode = self.modes.pop(0) if self.modes else "answer"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(theirs.fileno()), mode],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        ours.setblocking(False)
        self.sock, self.fresh = ours, True
        self.spawned.append(mode)
        if self._watch is not None:
            self._watch(ours.fileno(), self.on_readable)


@pytest.fixture
def home():
    root = tempfile.mkdtemp(prefix="hvfs", dir="/tmp")
    yield Home.resolve(root)
    shutil.rmtree(root, ignore_errors=True)


def launch_args(i: int) -> dict:
    return {k: (f"vm{i}" if k == "vm_id" else {}) for k in LAUNCH_KEYS}


def run(fs: StandInForkServer, n: int, timeout: float = 10.0, hung_after: float | None = None):
    """Launch n, then pump the loop's side until every callback ran: [(i, pid, err)]."""
    results = []
    for i in range(n):
        fs.launch(launch_args(i), lambda pid, err, i=i: results.append((i, pid, err)))
    deadline = time.monotonic() + timeout
    while len(results) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(results)} of {n} launches answered: {results}"
        if select.select([fs.sock], [], [], min(left, 0.2))[0]:
            fs.on_readable()
        elif hung_after is not None and fs.pending:
            fs.expire(time.monotonic() + hung_after)   # as vmms's timer, once that much later
        fs.ensure()
    return results


def test_launches_in_flight_are_answered_in_order(home):
    fs = StandInForkServer(home, ["answer"])
    try:
        assert run(fs, 5) == [(i, 100001 + i, None) for i in range(5)]
        assert not fs.pending and fs.spawned == ["answer"]
    finally:
        fs.close()


def test_a_fork_server_that_dies_mid_flight_is_replaced_and_the_launches_retried(home):
    fs = StandInForkServer(home, ["die"])
    try:
        results = run(fs, 3)
        assert [(i, err) for i, _, err in results] == [(0, None), (1, None), (2, None)]
        assert fs.spawned == ["die", "answer"]
    finally:
        fs.close()


def test_a_hung_fork_server_is_replaced_after_its_timeout(home):
    fs = StandInForkServer(home, ["hang"])
    try:
        results = run(fs, 2, hung_after=ForkServer.FRESH_TIMEOUT + 1)
        assert [(i, err) for i, _, err in results] == [(0, None), (1, None)]
        assert fs.spawned == ["hang", "answer"]
    finally:
        fs.close()


def test_launches_fail_with_a_clear_error_when_the_fork_server_fails_twice(home):
    fs = StandInForkServer(home, ["die", "die"])
    try:
        (result,) = run(fs, 1)
        err = result[2]
        assert result[1] is None and isinstance(err, HvError) and err.code == "Unavailable", result
        assert "failed twice" in err.message and fs.spawned == ["die", "die", "answer"]
        assert not fs.pending
        assert run(fs, 1)[0][2] is None    # the next fork-server serves the next start
    finally:
        fs.close()

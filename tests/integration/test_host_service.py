"""`hvctl host serve` as systemd runs it (scripts/systemd/hvemu-host.service): READY=1 on
$NOTIFY_SOCKET once both daemons answer, a killed daemon started again, `host down` on SIGTERM."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess

import pytest

from tests.conftest import HVCTL, ROOT, Host, kill_home, short_home, wait_until

pytestmark = pytest.mark.integration


def test_serve_notifies_ready_restarts_a_dead_daemon_and_stops_the_host_on_sigterm():
    home = short_home()
    host = Host(home)
    notify_path = home / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    proc = subprocess.Popen([*HVCTL, "--home", str(home), "host", "serve", "--host-memory", "1GB",
                             "--root-reserve", "128MB"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message and f"MAINPID={proc.pid}" in message
        hv, vmms = host.pid_of("hypervisor"), host.pid_of("vmms")
        assert hv and vmms
        assert host.hvctl("get-vmhost")[1]["MemoryCapacity"] == 1 << 30
        os.kill(vmms, signal.SIGKILL)
        wait_until(lambda: host.pid_of("vmms") not in (None, vmms), 15, 0.1, what="vmms started again")
        assert host.pid_of("hypervisor") == hv
        assert "STATUS=restarted vmms" in sock.recv(4096).decode()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "host down: stopped vmms, hypervisor" in out and "Traceback" not in out
        assert "STOPPING=1" in sock.recv(4096).decode()
        assert host.pid_of("vmms") is None and host.pid_of("hypervisor") is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sock.close()
        host.close()
        kill_home(host)
        shutil.rmtree(home, ignore_errors=True)

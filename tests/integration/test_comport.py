"""COM ports (issue 5): a Unix stream socket served by the worker reaches the guest's console —
a `command:` program's stdin/stdout, or the guest runtime's own console — and no client (one
that leaves, a second one, one that never reads) ever blocks the guest."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def host(vm_host):
    """These tests need only a running host: they share the module's (tests/conftest.py)."""
    return vm_host


def connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def read_until(sock, needle: bytes, timeout: float = 5.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    assert needle in buf, f"{needle!r} not in {buf[-300:]!r}"
    return buf


def test_com1_is_the_command_programs_stdin_and_stdout(host, tmp_path):
    path = tmp_path / "com1.sock"
    host.new_vm("c1", guest="command:cat")
    rc, out, _ = host.hvctl("set-vmcomport", "c1", "--number", "1", "--path", str(path))
    assert out[0] == {"VMName": "c1", "Name": "COM 1", "Number": 1, "Path": str(path)}
    host.start("c1")
    first = connect(path)
    first.sendall(b"hello through COM1\n")
    read_until(first, b"hello through COM1")
    second = connect(path)                       # a second client: told, closed, harmless
    assert b"in use" in read_until(second, b"in use")
    try:
        rest = second.recv(100)
    except ConnectionResetError:
        rest = b""
    assert rest == b""                            # closed by the worker
    first.sendall(b"still mine\n")
    read_until(first, b"still mine")
    first.close()                                 # a client leaving does not disturb the guest
    third = connect(path)
    third.sendall(b"again\n")
    read_until(third, b"again")
    third.close()
    assert host.vm("c1")["State"] == "Running"
    if shutil.which("socat"):
        done = subprocess.run(["socat", "-t", "1", "-", f"UNIX-CONNECT:{path}"], input=b"via socat\n",
                              capture_output=True, timeout=10)
        assert b"via socat" in done.stdout
    host.hvctl("set-vmcomport", "c1", "--number", "1", "--path", "")
    assert not path.exists()
    assert host.call("get-vmcomport", vm="c1")[0]["Path"] == ""


def test_a_client_that_never_reads_does_not_block_the_guest(host, tmp_path):
    path = tmp_path / "flood.sock"
    host.new_vm("c2", guest="command:yes hvemu-flood")
    host.call("set-vmcomport", vm="c2", number=1, path=str(path))
    host.start("c2")
    lazy = connect(path)                          # connected, never reads
    log = host.home / "vms" / host.vm("c2")["Id"] / "console.log"

    def now():
        """(inode, size) of console.log; None in the instant a rotation renamed it away (at
        ~60 MB/s console.log rotates every ~60 ms: sizes sampled every 20 ms can alias, so
        "keeps writing" is any change, a rotation included, not a larger size)."""
        try:
            st = log.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size
    # the guest has written far more than any socket buffer between it and the client holds
    before = wait_until(lambda: (n := now()) and n[1] > 1 << 20 and n, 10,
                        what="1 MiB of console output")
    wait_until(lambda: (n := now()) and n != before, 5, what="the guest keeps writing")
    assert host.vm("c2")["Heartbeat"] == "OkApplicationsUnknown"
    lazy.close()
    rc, out, _ = host.hvctl("stop-vm", "c2")
    assert out[0]["State"] == "Off"


def test_com1_without_a_command_is_the_runtime_console(host, tmp_path):
    path = tmp_path / "console.sock"
    host.new_vm("c3")
    host.start("c3")
    host.call("set-vmcomport", vm="c3", number=1, path=str(path))   # attached while running
    host.call("set-vmkvp", vm="c3", key="site", value="lab")
    console = connect(path)
    console.sendall(b"help\r\n")
    read_until(console, b"commands: help")
    console.sendall(b"kvp\n")
    read_until(console, b"site=lab")
    console.sendall(b"time\n")
    read_until(console, b"synchronized")
    console.close()
    rc, out, _ = host.hvctl("set-vmcomport", "c3", "--number", "2", "--path", str(path), check=False)
    assert rc == 1 and out["error"]["code"] == "AlreadyExists"
    rc, out, _ = host.hvctl("set-vmcomport", "c3", "--number", "3", "--path", str(path), check=False)
    assert rc == 2
    rc, out, _ = host.hvctl("set-vmcomport", "c3", "--number", "2", "--path", "relative.sock", check=False)
    assert rc == 1 or out[1]["Path"].endswith("relative.sock")   # the CLI makes it absolute

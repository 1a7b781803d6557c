"""Hostile and wrong input to the control and hypercall sockets: clear errors, no crash, no
writes (issue 2, behaviour 8)."""
from __future__ import annotations

import os

import msgpack
import pytest
import zmq

from hypervisor.runtime import wire
from tests.conftest import wait_until
from hypervisor.runtime.rpc_client import RpcClient

pytestmark = pytest.mark.integration


def snapshot(home):
    out = {}
    for p in (home / "vms").rglob("*"):
        if p.is_file():
            out[str(p)] = p.read_bytes()
    return out


@pytest.fixture
def raw(shared_host):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{shared_host.home}/run/ctl.sock")
    yield sock
    sock.close(0)


def exchange(sock, frames, expect_reply=True):
    sock.send_multipart(frames)
    if not expect_reply:
        return None if not sock.poll(300) else sock.recv_multipart()
    assert sock.poll(5000), "no reply"
    return wire.parse_reply(sock.recv_multipart())


def assert_serving(host):
    assert host.call("ping")["pid"] == host.pid_of("vmms")


@pytest.mark.parametrize("op,args,code,needle", [
    ("no-such-op", {}, "BadRequest", "unknown op"),
    ("new-vm", {"name": 42}, "BadRequest", "invalid VM name"),
    ("new-vm", {"name": "x/y"}, "BadRequest", "invalid VM name"),
    ("new-vm", {"name": "ok", "processor_count": "two"}, "BadRequest", "processor_count"),
    ("new-vm", {"name": "ok", "processor_count": 999}, "BadRequest", "processor_count"),
    ("new-vm", {"name": "ok", "memory_startup_bytes": 3 << 20}, "BadRequest", "2 MiB"),
    ("new-vm", {"name": "ok", "guest": "fly"}, "BadRequest", "unknown guest SPEC"),
    ("start-vm", {"vm": "missing"}, "NotFound", "missing"),
    ("start-vm", {}, "BadRequest", "'vm'"),
    ("get-vm", {"vms": "notalist"}, "BadRequest", "list"),
    ("stop-vm", {"vm": "missing", "turn_off": "yes"}, "NotFound", "missing"),
])
def test_bad_requests_get_named_errors_and_change_nothing(shared_host, raw, op, args, code, needle):
    before = snapshot(shared_host.home)
    reply = exchange(raw, wire.request_frames("t1", op, args))
    assert reply["id"] == "t1" and reply["ok"] is False
    assert reply["error"]["code"] == code and needle in reply["error"]["message"]
    assert set(reply["error"]) == {"code", "message", "retryable"}
    assert snapshot(shared_host.home) == before
    assert_serving(shared_host)


def test_duplicate_name_and_start_of_running_vm(shared_host):
    shared_host.new_vm("dup")
    with pytest.raises(Exception) as exc:
        shared_host.new_vm("dup")
    assert exc.value.code == "AlreadyExists"
    shared_host.start("dup")
    rc, out, err = shared_host.hvctl("start-vm", "dup", check=False)
    assert rc == 1 and out["error"]["code"] == "InvalidState" and "Running" in out["error"]["message"]
    assert err.startswith("hvctl: InvalidState: ")
    shared_host.hvctl("stop-vm", "dup", "--turn-off")


@pytest.mark.parametrize("frames", [
    [b"NOT-HVEMU", wire.pack({"id": "x", "op": "ping", "args": {}})],
    [wire.TAG, b"\xc1\xff\x00garbage"],
    [wire.TAG, wire.pack(["a", "list"])],
    [wire.TAG, wire.pack({"id": "x", "op": "ping", "args": []})],
    [wire.TAG, msgpack.packb({1: 2})],
    [os.urandom(64)],
    [wire.TAG, wire.pack({"id": "x", "op": "ping"}), b"extra"],
])
def test_malformed_frames_are_refused_or_dropped(shared_host, raw, frames):
    before = snapshot(shared_host.home)
    reply = exchange(raw, frames, expect_reply=False)
    if reply is not None:
        env = wire.parse_reply(reply)
        assert env["ok"] is False and env["error"]["code"] == "BadRequest"
    assert snapshot(shared_host.home) == before
    assert_serving(shared_host)


def test_oversized_message_is_dropped_and_daemon_keeps_serving(shared_host, raw):
    raw.send_multipart([wire.TAG, b"\x00" * (wire.MAX_MESSAGE_BYTES + 1024)])
    assert not raw.poll(300)
    assert_serving(shared_host)


def test_hypercall_socket_refuses_callers_without_the_root_credential(shared_host):
    for auth in (None, "0" * 64, 12345):
        c = RpcClient(f"ipc://{shared_host.home}/run/hv.sock", auth=auth, timeout=5)
        with pytest.raises(Exception) as exc:
            c.call("list-partitions")
        assert exc.value.code == "Unauthorized"
        c.close()
    mode = (shared_host.home / "run" / "root.cred").stat().st_mode & 0o777
    assert mode == 0o600
    assert ((shared_host.home / "run").stat().st_mode & 0o777) == 0o700


def test_cli_usage_errors_exit_2_and_bad_sizes_exit_1(shared_host):
    rc, out, err = shared_host.hvctl("start-vm", check=False)
    assert rc == 2
    rc, out, err = shared_host.hvctl("no-such-command", check=False)
    assert rc == 2
    rc, out, err = shared_host.hvctl("new-vm", "s", "--memory-startup-bytes", "lots", check=False)
    assert rc == 1 and out["error"]["code"] == "BadRequest"
    wait_until(lambda: shared_host.call("ping"), 2, what="vmms still serving")

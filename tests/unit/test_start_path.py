"""Pieces of the VM start path (issue 16) that run without a host: a call sent now and
answered later (`RpcClient.begin`), a client speaking over another's socket with its own
credential (`RpcClient.sharing`), and a log set up before a fork and inherited after it
(`logging_setup.inherited`)."""
from __future__ import annotations

import json
import os
import threading

import pytest
import structlog
import zmq

from hypervisor.runtime import logging_setup, wire
from hypervisor.runtime.rpc_client import RpcClient
from hypervisor.runtime.rpc_server import bind_router


def _echo_auth(router: zmq.Socket, n: int) -> None:
    """Answer n requests with the credential each presented (bounded waits)."""
    for _ in range(n):
        if not router.poll(5000):
            return
        frames = router.recv_multipart()
        env = wire.unpack(frames[-1])
        router.send_multipart([frames[0], wire.TAG,
                               wire.pack({"id": env["id"], "ok": True,
                                          "result": {"op": env["op"], "auth": env.get("auth")}})])


def test_begin_sends_now_and_a_sharing_client_uses_the_owners_socket(tmp_path):
    ctx = zmq.Context()
    try:
        endpoint = f"ipc://{tmp_path}/s.sock"
        router = bind_router(ctx, endpoint)
        server = threading.Thread(target=_echo_auth, args=(router, 3), daemon=True)
        server.start()
        root = RpcClient(endpoint, auth="root-cred", ctx=ctx, timeout=5.0)
        pending = root.begin("create", {"x": 1})         # sent; the answer is read later
        child = root.sharing("child-cred")
        assert pending() == {"op": "create", "auth": "root-cred"}
        assert child.call("report") == {"op": "report", "auth": "child-cred"}
        assert child.sock is None and root.sock is not None   # one connection, two credentials
        child.close()                                     # leaves the owner's socket alone
        assert root.call("ping") == {"op": "ping", "auth": "root-cred"}
        server.join(5)
        root.close()
        router.close(0)
    finally:
        ctx.destroy(0)


@pytest.fixture
def own_log_config():
    """structlog's configuration is global: put the defaults back for the tests after."""
    yield
    structlog.reset_defaults()
    logging_setup._stream = None


def test_an_inherited_log_writes_the_same_file_with_its_own_pid_and_follows_rotation(tmp_path, own_log_config):
    log = logging_setup.configure(tmp_path, "w", warm="warmed")
    log.info("before")
    path = tmp_path / "w.log"
    os.rename(path, tmp_path / "w.log.1")       # another writer rotated it
    child = logging_setup.inherited(tmp_path, "w")
    child.info("after", vm_id="x")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["after"] and lines[0]["pid"] == os.getpid()
    old = [json.loads(line)["event"] for line in (tmp_path / "w.log.1").read_text().splitlines()]
    assert old == ["warmed", "before"]
    other = logging_setup.inherited(tmp_path / "elsewhere", "w")   # nothing set up there: configured
    other.info("x")
    assert (tmp_path / "elsewhere" / "w.log").exists()

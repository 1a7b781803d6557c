"""The hvemu client library: what `hvctl` uses, for scripting a host from Python.

    from parent.client import Client
    c = Client(home="/tmp/hv1")
    c.call("new-vm", name="web1", memory_startup_bytes="1GB")
    c.call("start-vm", vm="web1")
    [vm["State"] for vm in c.call("get-vm")]

Ops and their arguments are vmms's control ops (parent/control/). Errors raise
`HvError` with a stable `.code`; `Unavailable` means the host is not running.
"""
from __future__ import annotations

from typing import Any

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import holder_pid

DEFAULT_TIMEOUT = 60.0


class Client:
    def __init__(self, home=None, timeout: float = DEFAULT_TIMEOUT):
        self.home = home if isinstance(home, Home) else Home.resolve(home)
        self.timeout = timeout
        self._rpc = None

    def _client(self):
        if self._rpc is None:
            if not holder_pid(self.home.pidfile("vmms")):
                raise HvError("Unavailable", f"the host at {self.home.root} is not running "
                                             "(start it with: hvctl host up)")
            from hypervisor.runtime.rpc_client import RpcClient  # hvctl start time: pyzmq only once a daemon is called
            self._rpc = RpcClient(self.home.control_endpoint, timeout=self.timeout, name="vmms")
        return self._rpc

    def call(self, op: str, timeout: float | None = None, **args) -> Any:
        args = {k: v for k, v in args.items() if v is not None}
        return self._client().call(op, args, timeout=timeout)

    def call_many(self, calls: list[tuple[str, dict]], timeout: float | None = None,
                  on_reply=None) -> list:
        """Pipelined: every request is sent at once; HvErrors come back in their slots.
        `on_reply(index)` is called as each reply arrives (progress bars)."""
        calls = [(op, {k: v for k, v in a.items() if v is not None}) for op, a in calls]
        return self._client().call_many(calls, timeout=timeout, return_errors=True, on_reply=on_reply)

    def events(self, vm_id: str | None = None, timeout: float | None = None) -> "EventStream":
        """Subscribe to vmms's event stream now; iterate for (topic, payload). Iteration stops
        after `timeout` s of silence (never, when None)."""
        self._client()
        return EventStream(self.home, vm_id, timeout)

    def close(self) -> None:
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None


class EventStream:
    """A live subscription. It is confirmed before the constructor returns: vmms answers every
    new subscription with a `subscribed` event, so no event published afterwards is missed."""

    SUBSCRIBE_WAIT = 5.0

    def __init__(self, home: Home, vm_id: str | None, timeout: float | None):
        import time

        import zmq
        self.timeout = timeout
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        from hypervisor.runtime import wire
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.SUBSCRIBE, f"vm.{vm_id}.".encode() if vm_id else b"vm.")
        self.sock.connect(home.events_endpoint)
        self.backlog: list = []
        deadline = time.monotonic() + self.SUBSCRIBE_WAIT
        while time.monotonic() < deadline:
            item = self._receive(deadline - time.monotonic())
            if item is None:
                break
            if item[1].get("Event") == "subscribed":
                return
            self.backlog.append(item)
        self.sock.close(0)
        raise HvError("Timeout", "vmms did not confirm the event subscription")

    def _receive(self, timeout: float):
        from hypervisor.runtime import wire  # hvctl start time: msgpack only for an event stream
        if not self.sock.poll(max(1, int(timeout * 1000))):
            return None
        frames = self.sock.recv_multipart()
        return frames[0].decode(errors="replace"), wire.unpack(frames[1])

    def __iter__(self):
        try:
            yield from self.backlog
            while True:
                item = self._receive(self.timeout if self.timeout is not None else 3600)
                if item is None:
                    if self.timeout is not None:
                        return
                    continue
                if item[1].get("Event") != "subscribed":
                    yield item
        finally:
            self.sock.close(0)

    def close(self) -> None:
        self.sock.close(0)

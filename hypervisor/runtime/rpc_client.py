"""The calling side of the wire protocol: a DEALER with LINGER 0 and bounded waits.

`dealer_socket` makes every client DEALER (this one, and vmms's asynchronous worker handles in
parent/worker_supervisor.py); envelopes are built and parsed by wire.py. A call that times out
throws its socket away (a late reply must never be read as the answer to the next call).
`call_many` pipelines several requests on one socket.
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Any

import zmq

from hypervisor.runtime import wire
from hypervisor.runtime.errors import HvError

_ids = itertools.count(1)


def dealer_socket(ctx: zmq.Context, endpoint: str, reconnect_ms: int = 10,
                  reconnect_max_ms: int = 200) -> zmq.Socket:
    """A client DEALER: LINGER 0, MAXMSGSIZE pinned, connected to `endpoint`."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
    s.setsockopt(zmq.RECONNECT_IVL, reconnect_ms)
    s.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_max_ms)
    s.connect(endpoint)
    return s


class RpcClient:
    def __init__(self, endpoint: str, *, timeout: float = 10.0, auth: Any = None,
                 ctx: zmq.Context | None = None, name: str = "peer"):
        self.endpoint = endpoint
        self.timeout = timeout
        self.auth = auth
        self.name = name
        self.ctx = ctx or zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self._owner: RpcClient | None = None   # whose socket this client speaks over (sharing)

    def sharing(self, auth: Any, name: str | None = None) -> "RpcClient":
        """A client of the same peer that presents another credential over THIS client's socket
        (credentials go with each request): a worker speaks for itself and for its guest to the
        hypervisor over one connection, not two. Calls stay sequential (one thread)."""
        other = RpcClient(self.endpoint, timeout=self.timeout, auth=auth, ctx=self.ctx,
                          name=name or self.name)
        other._owner = self
        return other

    def _socket(self) -> zmq.Socket:
        if self._owner is not None:
            return self._owner._socket()
        if self.sock is None:
            self.sock = dealer_socket(self.ctx, self.endpoint)
        return self.sock

    def close(self) -> None:
        """Close the socket (a sharing client leaves its owner's socket alone)."""
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def _discard(self) -> None:
        """After a timeout: no late reply may be read as the next call's answer."""
        (self._owner or self).close()

    def call(self, op: str, args: dict | None = None, timeout: float | None = None) -> Any:
        return self.call_many([(op, args or {})], timeout=timeout)[0]

    def call_many(self, calls: list[tuple[str, dict]], timeout: float | None = None,
                  return_errors: bool = False, on_reply=None) -> list[Any]:
        """Send every call at once, gather replies in order. With return_errors, an HvError is
        returned in its slot instead of raised. `on_reply(index)` is called as each arrives."""
        timeout = self.timeout if timeout is None else timeout
        pending = self._send(calls, timeout)
        return self._gather(calls, pending, time.monotonic() + timeout, timeout, return_errors,
                            on_reply)

    def begin(self, op: str, args: dict | None = None, timeout: float | None = None):
        """Send one call now and return a function that waits for its answer (or raises), so
        the caller can do other work while the peer answers. Bounded like `call`; one call in
        flight per client at a time."""
        timeout = self.timeout if timeout is None else timeout
        calls = [(op, args or {})]
        pending = self._send(calls, timeout)
        deadline = time.monotonic() + timeout
        return lambda: self._gather(calls, pending, deadline, timeout, False, None)[0]

    def _send(self, calls: list[tuple[str, dict]], timeout: float) -> dict[str, int]:
        sock = self._socket()
        pending: dict[str, int] = {}
        for index, (op, args) in enumerate(calls):
            req_id = f"{os.getpid()}-{next(_ids)}"
            pending[req_id] = index
            sock.send_multipart(wire.request_frames(req_id, op, args, max(1, int(timeout * 1000)),
                                                    self.auth))
        return pending

    def _gather(self, calls, pending: dict[str, int], deadline: float, timeout: float,
                return_errors: bool, on_reply) -> list[Any]:
        sock = self._socket()
        results: list[Any] = [None] * len(calls)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                if time.monotonic() < deadline:
                    continue
                self._discard()  # a late reply must not be taken for the next call's answer
                op = calls[next(iter(pending.values()))][0]
                raise HvError("Timeout", f"{self.name} did not answer {op} within {timeout:g} s")
            env = wire.parse_reply(sock.recv_multipart())
            index = pending.pop(env.get("id"), None)
            if index is None:
                continue  # a stale reply or an unsolicited notification
            if env["ok"]:
                results[index] = env.get("result")
            else:
                err = HvError.from_wire(env.get("error"))
                if not return_errors:
                    self._discard() if pending else None
                    raise err
                results[index] = err
            if on_reply is not None:
                on_reply(index)
        return results

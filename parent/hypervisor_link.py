"""vmms's asynchronous connection to the hypervisor's hypercall socket.

vmms has one loop; a hung hypervisor (stopped with SIGSTOP, or just slow) must never stall it.
So hypercalls from vmms are sent on a DEALER the loop polls, each with a deadline, and answered
through a callback: `call(op, args, callback, timeout)`, `on_readable()` when the socket is
readable, `expire(now)` from the loop's timer. Nothing here blocks.

The root credential is read from the home at connect time. A restarted hypervisor has a new
one: an `Unauthorized` answer re-reads the file and resends the call once (a stale credential
is a reconnect, never an answer). A timeout throws the socket away, so a late reply is never
taken for another call's answer. `state` says how the hypervisor looked at the last answer:
"Running", "NotResponding" (a call timed out) or "Stopped" (no pid-file holder).
"""
from __future__ import annotations

import itertools
import time
from typing import Callable

import zmq

from hypervisor.runtime import wire
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import holder_pid

Callback = Callable[[bool, object], None]
_ids = itertools.count(1)


class HypervisorLink:
    def __init__(self, ctx: zmq.Context, home: Home, register: Callable, unregister: Callable):
        self.ctx, self.home = ctx, home
        self._register, self._unregister = register, unregister
        self.sock: zmq.Socket | None = None
        self.cred: str | None = None
        # id -> (op, args, callback, deadline, retried)
        self.pending: dict[str, tuple[str, dict, Callback, float, bool]] = {}
        self.state = "Running"
        self.last_ok = 0.0

    def _connect(self) -> zmq.Socket:
        if self.sock is None:
            try:
                self.cred = self.home.root_credential_file.read_text().strip()
            except OSError:
                raise HvError("Unavailable", "the hypervisor is not running") from None
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
            s.setsockopt(zmq.RECONNECT_IVL, 10)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
            s.setsockopt(zmq.SNDHWM, 1000)
            s.connect(self.home.hypercall_endpoint)
            self.sock = s
            self._register(s, self.on_readable)
        return self.sock

    def _drop_socket(self) -> None:
        if self.sock is not None:
            self._unregister(self.sock)
            self.sock.close(0)
            self.sock = None

    def call(self, op: str, args: dict, callback: Callback, timeout: float = 1.0,
             _retried: bool = False) -> None:
        """Send a hypercall; `callback(ok, result_or_HvError)` runs exactly once, from the loop
        (or at once, for a hypervisor that is not running)."""
        if not holder_pid(self.home.pidfile("hypervisor")):
            self.state = "Stopped"
            self._drop_socket()
            callback(False, HvError("Unavailable", "the hypervisor is not running"))
            return
        try:
            sock = self._connect()
        except HvError as err:
            callback(False, err)
            return
        req_id = f"hv{next(_ids)}"
        env = {"id": req_id, "op": op, "args": args, "deadline_ms": max(1, int(timeout * 1000)),
               "auth": self.cred}
        try:
            sock.send_multipart([wire.TAG, wire.pack(env)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            callback(False, HvError("Unavailable", f"the hypervisor cannot be reached: {exc}"))
            return
        self.pending[req_id] = (op, args, callback, time.monotonic() + timeout, _retried)

    def on_readable(self) -> None:
        while self.sock is not None:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                env = wire.parse_reply(frames)
            except HvError:
                continue
            entry = self.pending.pop(env.get("id"), None)
            if entry is None:
                continue
            op, args, callback, deadline, retried = entry
            self.state, self.last_ok = "Running", time.monotonic()
            if env["ok"]:
                callback(True, env.get("result"))
                continue
            err = HvError.from_wire(env.get("error"))
            if err.code == "Unauthorized" and not retried:
                # a restarted hypervisor: fresh credential, fresh socket, the same call once more
                self._restart_socket()
                self.call(op, args, callback, max(0.05, deadline - time.monotonic()), _retried=True)
                return
            callback(False, err)

    def _restart_socket(self) -> None:
        """Drop the socket; calls still waiting on it are resent on the new one."""
        waiting, self.pending = self.pending, {}
        self._drop_socket()
        for op, args, callback, deadline, retried in waiting.values():
            self.call(op, args, callback, max(0.05, deadline - time.monotonic()), _retried=retried)

    def expire(self, now: float) -> None:
        late = [k for k, v in self.pending.items() if v[3] <= now]
        if not late:
            return
        self.state = "NotResponding" if holder_pid(self.home.pidfile("hypervisor")) else "Stopped"
        entries = [self.pending.pop(k) for k in late]
        if not self.pending:
            self._drop_socket()  # a late reply must not answer a later call
        for op, _args, callback, _deadline, _retried in entries:
            callback(False, HvError("Timeout", f"the hypervisor did not answer {op} in time"))

    def close(self) -> None:
        self._drop_socket()

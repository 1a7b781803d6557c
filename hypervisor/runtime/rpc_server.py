"""The serving side of the wire protocol: a ROUTER socket and a table of handlers.

Used by the hypervisor (hypercalls), vmms (control ops) and vmwp (worker ops). A handler gets a
`Request` and returns a result, raises `HvError`, or returns `DEFERRED` and answers later with
`server.reply()` (long operations never block the loop). Malformed input gets `BadRequest` or
is dropped; no traceback ever reaches a client (it goes to the log).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from hypervisor.runtime import wire
from hypervisor.runtime.errors import HvError

DEFERRED = object()


@dataclass
class Request:
    peer: bytes
    id: str
    op: str
    args: dict
    auth: Any = None
    deadline_ms: int | None = None
    context: dict = field(default_factory=dict)


def bind_router(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # replies to vanished peers are dropped silently
    sock.bind(endpoint)
    return sock


class RpcServer:
    def __init__(self, sock: zmq.Socket, handlers: dict[str, Callable[[Request], Any]], log,
                 authorize: Callable[[Request], None] | None = None):
        self.sock = sock
        self.handlers = handlers
        self.log = log
        self.authorize = authorize

    def drain(self, budget: int = 256) -> None:
        """Serve every message waiting on the socket (bounded per call so timers still run)."""
        for _ in range(budget):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._serve(frames)

    def _serve(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return  # not even an identity plus one frame: nothing to answer
        peer, body = frames[0], frames[1:]
        try:
            env = wire.parse_request(body)
        except HvError as err:
            self.log.warning("bad_request", error=err.message)
            self._send(peer, wire.error_frames(wire.request_id_of(body) if body[0] == wire.TAG else "", err))
            return
        req = Request(peer=peer, id=env["id"], op=env["op"], args=env["args"],
                      auth=env.get("auth"), deadline_ms=env["deadline_ms"])
        handler = self.handlers.get(req.op)
        try:
            if handler is None:
                raise HvError("BadRequest", f"unknown op {req.op!r}")
            if self.authorize is not None:
                self.authorize(req)
            result = handler(req)
            if result is DEFERRED:
                return
            frames = wire.ok_frames(req.id, result)  # packing is part of answering: inside the try
        except HvError as err:
            if err.code in ("Internal", "Unauthorized"):
                self.log.warning("op_refused", op=req.op, code=err.code, error=err.message)
            self.reply_error(req, err)
            return
        except Exception:
            self.log.exception("op_failed", op=req.op)
            self.reply_error(req, HvError("Internal", f"{req.op} failed unexpectedly; see the daemon log"))
            return
        self._send(req.peer, frames)

    def reply(self, req: Request, result: Any) -> None:
        """A (deferred) answer. A result that cannot be packed answers Internal, never raises."""
        try:
            frames = wire.ok_frames(req.id, result)
        except Exception:
            self.log.exception("reply_unpackable", op=req.op)
            frames = wire.error_frames(req.id, HvError("Internal", f"{req.op}: the answer could not be "
                                                                   "encoded; see the daemon log"))
        self._send(req.peer, frames)

    def reply_error(self, req: Request, err: HvError) -> None:
        self._send(req.peer, wire.error_frames(req.id, err))

    def notify(self, peer: bytes, op: str, args: dict) -> None:
        """An unsolicited message to a connected peer (worker -> vmms state reports)."""
        self._send(peer, wire.request_frames("", op, args))

    def _send(self, peer: bytes, frames: list[bytes]) -> None:
        try:
            self.sock.send_multipart([peer, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # peer gone or its queue full: never block the daemon
            self.log.info("reply_dropped", error=str(exc))

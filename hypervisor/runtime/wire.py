"""The wire envelope shared by every hvemu socket (DESIGN.md §3), pure and socket-free.

Frames are `[TAG, msgpack(envelope)]`. msgpack options are pinned here and nowhere else.
Requests: {"id", "op", "args", "deadline_ms"?}; replies: {"id", "ok", "result"|"error"}.
"""
from __future__ import annotations

from typing import Any

import msgpack

from hypervisor.runtime.errors import HvError

TAG = b"HVEMU/1"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    if len(data) > MAX_MESSAGE_BYTES:
        raise HvError("BadRequest", f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for hostile input
        raise HvError("BadRequest", f"undecodable msgpack: {type(exc).__name__}") from None


def request_frames(req_id: str, op: str, args: dict, deadline_ms: int | None = None,
                   auth: Any = None) -> list[bytes]:
    """The one place a request envelope is built (every client: rpc_client, vmms's workers)."""
    env: dict = {"id": req_id, "op": op, "args": args}
    if deadline_ms is not None:
        env["deadline_ms"] = deadline_ms
    if auth is not None:
        env["auth"] = auth
    return [TAG, pack(env)]


def ok_frames(req_id: str, result: Any) -> list[bytes]:
    return [TAG, pack({"id": req_id, "ok": True, "result": result})]


def error_frames(req_id: str, err: HvError) -> list[bytes]:
    return [TAG, pack({"id": req_id, "ok": False, "error": err.to_wire()})]


def parse_request(frames: list[bytes]) -> dict:
    """Validate the frames of a request; raise BadRequest naming the problem.

    Returns {"id", "op", "args", "deadline_ms"}. The id is returned even on some failures via
    the `request_id_of` helper so replies can be correlated.
    """
    if len(frames) != 2 or frames[0] != TAG:
        raise HvError("BadRequest", f"first frame must be the protocol tag {TAG.decode()}")
    env = unpack(frames[1])
    if not isinstance(env, dict):
        raise HvError("BadRequest", "envelope must be a map")
    req_id, op, args = env.get("id"), env.get("op"), env.get("args", {})
    if not isinstance(req_id, str) or not req_id or len(req_id) > 128:
        raise HvError("BadRequest", "envelope field 'id' must be a non-empty string")
    if not isinstance(op, str) or not op:
        raise HvError("BadRequest", "envelope field 'op' must be a non-empty string")
    if not isinstance(args, dict):
        raise HvError("BadRequest", "envelope field 'args' must be a map")
    deadline = env.get("deadline_ms")
    if deadline is not None and (not isinstance(deadline, int) or isinstance(deadline, bool)
                                 or deadline <= 0):
        raise HvError("BadRequest", "envelope field 'deadline_ms' must be a positive integer")
    return {"id": req_id, "op": op, "args": args, "deadline_ms": deadline, "auth": env.get("auth")}


def request_id_of(frames: list[bytes]) -> str:
    """Best-effort id of a (possibly malformed) request, for the error reply."""
    try:
        env = unpack(frames[-1])
        if isinstance(env, dict) and isinstance(env.get("id"), str):
            return env["id"][:128]
    except HvError:
        pass
    return ""


def parse_reply(frames: list[bytes]) -> dict:
    if len(frames) != 2 or frames[0] != TAG:
        raise HvError("Internal", "reply without the protocol tag")
    env = unpack(frames[1])
    if not isinstance(env, dict) or "ok" not in env:
        raise HvError("Internal", "malformed reply envelope")
    return env

"""Control messages over a VMBus ring: msgpack maps in ring packets, matched by transaction id.

What: a message is `{"kind": str, "body": map}` packed with the project's pinned msgpack options
(hypervisor.runtime.wire.pack; decoded with the same options). It travels as a DATA packet — a request when COMPLETION_REQUESTED is set
(txid != 0), one-way otherwise (txid 0) — or as a COMPLETION packet answering the request with
the same txid. `Transactions` is the requester's table of requests in flight: it allocates
txids, matches completions to them, and hands back what was in flight when a channel is
rescinded so a reconnecting VSC can re-issue it.

Why: the VMBus control conversation (offer, open, open_result, close, rescind) and the simple
integration services (heartbeat, shutdown, KVP, time sync) need small structured messages, not a
byte protocol each. Bulk device data (storage, network) may use raw packets instead.

Trust: `decode` treats a packet as hostile — anything that is not a well-formed message raises
RingProtocolError, which fails the channel. The ring already bounds a packet's size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from hypervisor.runtime import wire
from hypervisor.runtime.errors import HvError
from worker.vmbus.ring import PacketFlags, PacketType, Packet, RingProtocolError, RingWriter

# The VMBus control conversation between the worker (host) and the guest's VMBus driver.
OFFER = "offer"                    # host -> guest, one-way: {"channel_id", "offer"}
OPEN = "open"                      # guest -> host, request: {"channel_id", "versions"}
OPEN_RESULT = "open_result"        # host -> guest, completion: {"channel_id", "version", "reason"}
CLOSE = "close"                    # guest -> host, request: {"channel_id"}
CLOSE_RESPONSE = "close_response"  # host -> guest, completion: {"channel_id"}
RESCIND = "rescind"                # host -> guest, one-way: {"channel_id"}
RELEASED = "released"              # guest -> host, one-way: {"channel_id"}

MAX_KIND_LENGTH = 64
_TXID_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class Message:
    kind: str
    body: dict = field(default_factory=dict)
    txid: int = 0                 # 0 for one-way messages
    is_completion: bool = False   # an answer to the request with this txid

    @property
    def expects_reply(self) -> bool:
        return not self.is_completion and self.txid != 0


def encode(kind: str, body: dict) -> bytes:
    if not isinstance(kind, str) or not 1 <= len(kind) <= MAX_KIND_LENGTH:
        raise ValueError(f"message kind must be a string of 1..{MAX_KIND_LENGTH} characters")
    if not isinstance(body, dict):
        raise ValueError("message body must be a dict")
    return wire.pack({"kind": kind, "body": body})


def _unpack(payload: bytes) -> Any:
    try:
        return wire.unpack(payload)  # the pinned msgpack options
    except HvError as exc:
        raise RingProtocolError(exc.message) from None


def send_oneway(writer: RingWriter, kind: str, body: dict) -> bool:
    """Returns True when the caller must signal the reader (see RingWriter.write)."""
    return writer.write(PacketType.DATA, encode(kind, body))


def send_request(writer: RingWriter, txid: int, kind: str, body: dict) -> bool:
    if not 1 <= txid <= _TXID_MAX:
        raise ValueError("a request needs a non-zero transaction id")
    return writer.write(PacketType.DATA, encode(kind, body), txid,
                        PacketFlags.COMPLETION_REQUESTED)


def send_completion(writer: RingWriter, txid: int, kind: str, body: dict) -> bool:
    return writer.write(PacketType.COMPLETION, encode(kind, body), txid)


def decode(packet: Packet) -> Message:
    """The message in a DATA or COMPLETION packet; RingProtocolError for anything else."""
    if packet.type not in (PacketType.DATA, PacketType.COMPLETION):
        raise RingProtocolError(f"packet type {packet.type} carries no message")
    env = _unpack(packet.payload)
    if not isinstance(env, dict) or set(env) != {"kind", "body"}:
        raise RingProtocolError(f"message txid {packet.txid} is not a {{kind, body}} map")
    kind, body = env["kind"], env["body"]
    if not isinstance(kind, str) or not 1 <= len(kind) <= MAX_KIND_LENGTH:
        raise RingProtocolError(f"message txid {packet.txid} has a bad kind")
    if not isinstance(body, dict):
        raise RingProtocolError(f"message {kind!r} body is not a map")
    completion = packet.type == PacketType.COMPLETION
    requested = bool(packet.flags & PacketFlags.COMPLETION_REQUESTED)
    if completion and (requested or packet.txid == 0):
        raise RingProtocolError(f"completion {kind!r} has txid {packet.txid}, "
                                f"flags {packet.flags:#x}")
    if not completion and requested != (packet.txid != 0):
        raise RingProtocolError(f"message {kind!r}: txid {packet.txid} disagrees with flags "
                                f"{packet.flags:#x}")
    return Message(kind, body, packet.txid, completion)


class Transactions:
    """The requests one side has in flight on a channel, by txid."""

    def __init__(self, limit: int = 1024):
        self.limit = limit
        self._in_flight: dict[int, tuple[str, dict]] = {}
        self._next = 1

    def begin(self, kind: str, body: dict) -> int:
        """A fresh txid for a request; Busy when `limit` requests are already in flight."""
        if len(self._in_flight) >= self.limit:
            raise HvError("Busy", f"{len(self._in_flight)} requests already in flight")
        txid = self._next
        self._next = self._next % _TXID_MAX + 1
        self._in_flight[txid] = (kind, body)
        return txid

    def complete(self, message: Message) -> tuple[str, dict]:
        """The (kind, body) of the request `message` completes; RingProtocolError if none."""
        if not message.is_completion:
            raise RingProtocolError(f"message {message.kind!r} is not a completion")
        request = self._in_flight.pop(message.txid, None)
        if request is None:
            raise RingProtocolError(f"completion {message.kind!r} for unknown txid {message.txid}")
        return request

    def in_flight(self) -> dict[int, tuple[str, dict]]:
        return dict(self._in_flight)

    def abandon_all(self) -> list[tuple[str, dict]]:
        """Forget every request in flight and return them, oldest first, to re-issue elsewhere."""
        requests = list(self._in_flight.values())
        self._in_flight.clear()
        return requests

"""The lifecycle of VMBus channels as a pure state machine (after OpenVMM vmbus_server/channels.rs).

What: the worker offers one channel per device; the guest's VSC opens it, naming the protocol
versions it speaks; the driver's VSP accepts or refuses; either side closes; the host may rescind
the offer at any time; a peer that breaks the protocol fails the channel. `Channel` holds one
channel's state, `ChannelTable` the channels of one VM.

How: inputs are method calls, outputs are returned lists of actions (frozen dataclasses naming
the channel) that the caller carries out — send a message to the guest, tell the device to open
or close. Nothing here does I/O, so every transition can be tested synchronously.

    Offered --open_request--> Opening --accept--> Open --close--> Closing --close_complete--> Closed
       ^   (no common version:  |  refuse                                                     |
       |    stays, refused)     v                                                             |
       +---------------------- back ------------------- open_request (reopen) <---------------+
    any state but Rescinded --rescind--> Rescinded (final; the guest then releases the id)
    any state but Failed/Rescinded --protocol_error--> Failed (only rescind leaves it)

Any other input raises HvError("InvalidState"), leaving the channel unchanged; a malformed open
request raises HvError("BadRequest"). Answers the device gives after a rescind or failure (a
late accept, close_complete) therefore raise InvalidState, and the caller drops them.

Versions are u32 numbers (Hyper-V packs major << 16 | minor); open picks the highest version
both the offer and the request list, or refuses with a reason naming both lists.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from hypervisor.runtime.errors import HvError
from worker.vmbus.ring import ALIGN, HEADER_SIZE, MAX_RING_SIZE, MIN_DATA_SIZE

MAX_VERSIONS = 32
MAX_ID_LENGTH = 128
_U32_MAX = (1 << 32) - 1


class ChannelState(enum.Enum):
    OFFERED = "Offered"
    OPENING = "Opening"
    OPEN = "Open"
    CLOSING = "Closing"
    CLOSED = "Closed"
    RESCINDED = "Rescinded"
    FAILED = "Failed"


def check_versions(versions, who: str) -> tuple[int, ...]:
    """A non-empty list of distinct u32 versions as a tuple, or BadRequest."""
    if not isinstance(versions, (list, tuple)) or not 1 <= len(versions) <= MAX_VERSIONS:
        raise HvError("BadRequest", f"{who} versions must be a list of 1..{MAX_VERSIONS} numbers")
    for v in versions:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _U32_MAX:
            raise HvError("BadRequest", f"{who} version {v!r} is not a u32")
    if len(set(versions)) != len(versions):
        raise HvError("BadRequest", f"{who} versions {list(versions)} repeat a version")
    return tuple(versions)


def _check_id(value, what: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LENGTH:
        raise HvError("BadRequest", f"offer {what} must be a string of 1..{MAX_ID_LENGTH} characters")
    return value


@dataclass(frozen=True)
class Offer:
    """What the host offers the guest for one device."""

    class_id: str              # the device type, e.g. "storvsp" or a class GUID
    instance_id: str           # this device, e.g. a GUID
    ring_size: int             # bytes of each of the channel's two rings
    versions: tuple[int, ...]  # protocol versions the host side (the VSP) supports

    def __post_init__(self):
        _check_id(self.class_id, "class_id")
        _check_id(self.instance_id, "instance_id")
        size = self.ring_size
        if (not isinstance(size, int) or isinstance(size, bool) or size % ALIGN
                or not HEADER_SIZE + MIN_DATA_SIZE <= size <= MAX_RING_SIZE):
            raise HvError("BadRequest", f"offer ring_size {size!r} must be a multiple of {ALIGN} "
                                        f"in {HEADER_SIZE + MIN_DATA_SIZE}..{MAX_RING_SIZE}")
        object.__setattr__(self, "versions", check_versions(self.versions, "host"))

    def to_wire(self) -> dict:
        return {"class_id": self.class_id, "instance_id": self.instance_id,
                "ring_size": self.ring_size, "versions": list(self.versions)}

    @classmethod
    def from_wire(cls, d) -> "Offer":
        if not isinstance(d, dict):
            raise HvError("BadRequest", "offer must be a map")
        try:
            return cls(d["class_id"], d["instance_id"], d["ring_size"], d["versions"])
        except KeyError as exc:
            raise HvError("BadRequest", f"offer lacks {exc.args[0]!r}") from None


# Actions: what the caller must do after an input.
@dataclass(frozen=True)
class Action:
    channel_id: int


@dataclass(frozen=True)
class SendOffer(Action):
    """Tell the guest about the channel."""
    offer: Offer


@dataclass(frozen=True)
class OpenDevice(Action):
    """Ask the VSP to serve the channel at `version`; it answers accept() or refuse()."""
    version: int


@dataclass(frozen=True)
class SendOpenResult(Action):
    """Answer the guest's open: `version` on success, None and a reason when refused."""
    version: int | None
    reason: str = ""


@dataclass(frozen=True)
class CloseDevice(Action):
    """The VSP must stop using the channel's rings (on close it answers close_complete())."""


@dataclass(frozen=True)
class SendCloseResponse(Action):
    """Tell the guest the close is done: it may reuse or free the ring memory."""


@dataclass(frozen=True)
class SendRescind(Action):
    """Tell the guest the offer is withdrawn."""


@dataclass(frozen=True)
class ChannelFailed(Action):
    """Record a protocol error (log, event); the caller may then rescind the channel."""
    reason: str


S = ChannelState


class Channel:
    """One offered channel. Created by ChannelTable.offer(); starts Offered."""

    def __init__(self, channel_id: int, offer: Offer):
        self.channel_id = channel_id
        self.offer = offer
        self.state = S.OFFERED
        self.version: int | None = None        # negotiated; set while Opening/Open/Closing
        self.failure: str | None = None        # the protocol error, once Failed
        self._idle_state = S.OFFERED           # where a refused open returns to

    def __repr__(self) -> str:
        return (f"Channel({self.channel_id}, {self.offer.class_id}/{self.offer.instance_id}, "
                f"{self.state.value})")

    def _require(self, what: str, *allowed: ChannelState) -> None:
        if self.state not in allowed:
            raise HvError("InvalidState", f"channel {self.channel_id} ({self.offer.class_id}): "
                                          f"cannot {what} while {self.state.value}")

    def open_request(self, versions) -> list[Action]:
        """The guest asks to open, listing the versions it speaks."""
        self._require("open", S.OFFERED, S.CLOSED)
        guest = check_versions(versions, "guest")
        common = set(self.offer.versions) & set(guest)
        if not common:
            reason = (f"no common protocol version: host supports {list(self.offer.versions)}, "
                      f"guest requested {list(guest)}")
            return [SendOpenResult(self.channel_id, None, reason)]
        self._idle_state, self.state, self.version = self.state, S.OPENING, max(common)
        return [OpenDevice(self.channel_id, self.version)]

    def accept(self) -> list[Action]:
        """The VSP serves the channel."""
        self._require("accept", S.OPENING)
        self.state = S.OPEN
        return [SendOpenResult(self.channel_id, self.version)]

    def refuse(self, reason: str) -> list[Action]:
        """The VSP declines to serve the channel."""
        self._require("refuse", S.OPENING)
        self.state, self.version = self._idle_state, None
        return [SendOpenResult(self.channel_id, None, f"device refused: {reason}")]

    def close(self) -> list[Action]:
        """The guest closes the channel."""
        self._require("close", S.OPEN)
        self.state = S.CLOSING
        return [CloseDevice(self.channel_id)]

    def close_complete(self) -> list[Action]:
        """The VSP no longer touches the rings."""
        self._require("complete a close", S.CLOSING)
        self.state, self.version = S.CLOSED, None
        return [SendCloseResponse(self.channel_id)]

    def rescind(self) -> list[Action]:
        """The host withdraws the offer (device removed, driver host gone)."""
        self._require("rescind", S.OFFERED, S.OPENING, S.OPEN, S.CLOSING, S.CLOSED, S.FAILED)
        actions: list[Action] = []
        if self.state in (S.OPENING, S.OPEN):
            actions.append(CloseDevice(self.channel_id))
        self.state, self.version = S.RESCINDED, None
        return actions + [SendRescind(self.channel_id)]

    def protocol_error(self, reason: str) -> list[Action]:
        """A peer broke the ring or message protocol: fail the channel."""
        self._require("fail", S.OFFERED, S.OPENING, S.OPEN, S.CLOSING, S.CLOSED)
        actions: list[Action] = []
        if self.state in (S.OPENING, S.OPEN):
            actions.append(CloseDevice(self.channel_id))
        self.state, self.version, self.failure = S.FAILED, None, reason
        return actions + [ChannelFailed(self.channel_id, reason)]


class ChannelTable:
    """The channels of one VM, by channel id. Ids are never reused, so a late message for a
    rescinded channel cannot reach its re-offer."""

    def __init__(self, first_id: int = 1):
        self._channels: dict[int, Channel] = {}
        self._next_id = first_id

    @property
    def next_id(self) -> int:
        """The id the next offer gets (a table that replaces this one starts there)."""
        return self._next_id

    def offer(self, offer: Offer) -> tuple[Channel, list[Action]]:
        """Offer a device to the guest. AlreadyExists if its instance is already offered."""
        for ch in self._channels.values():
            if ch.offer.instance_id == offer.instance_id and ch.state is not S.RESCINDED:
                raise HvError("AlreadyExists",
                              f"instance {offer.instance_id} is already channel {ch.channel_id}")
        ch = Channel(self._next_id, offer)
        self._channels[ch.channel_id] = ch
        self._next_id += 1
        return ch, [SendOffer(ch.channel_id, offer)]

    def get(self, channel_id: int) -> Channel:
        ch = self._channels.get(channel_id)
        if ch is None:
            raise HvError("NotFound", f"no channel {channel_id}")
        return ch

    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    def release(self, channel_id: int) -> None:
        """The guest has let go of a rescinded channel: forget it."""
        ch = self.get(channel_id)
        if ch.state is not S.RESCINDED:
            raise HvError("InvalidState", f"channel {channel_id} is {ch.state.value}, not Rescinded")
        del self._channels[channel_id]

    def reoffer(self, channel_id: int) -> tuple[Channel, list[Action]]:
        """Rescind a channel and offer its device again under a new id (a driver host restarted)."""
        ch = self.get(channel_id)
        actions = ch.rescind() if ch.state is not S.RESCINDED else []
        new, offer_actions = self.offer(ch.offer)
        return new, actions + offer_actions

    def rescind_all(self) -> list[Action]:
        """Rescind every channel not yet rescinded (the VM is stopping)."""
        actions: list[Action] = []
        for ch in self._channels.values():
            if ch.state is not S.RESCINDED:
                actions += ch.rescind()
        return actions

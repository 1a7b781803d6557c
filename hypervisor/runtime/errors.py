"""The one table of error codes every hvemu socket may answer with (DESIGN.md §3).

`HvError` carries a stable code name, a message for people and whether the caller may retry.
Codes are names, never numbers; clients compare them by name.
"""
from __future__ import annotations

# code -> (retryable, what it means). The only list of codes in the project.
ERROR_CODES: dict[str, tuple[bool, str]] = {
    "BadRequest": (False, "the request is malformed or a value is out of range"),
    "Unauthorized": (False, "the caller may not do this"),
    "NotFound": (False, "no such VM, partition, disk or driver"),
    "AlreadyExists": (False, "the name or id is taken"),
    "InvalidState": (False, "not allowed in the object's current state"),
    "InsufficientMemory": (False, "the memory pool cannot hold this"),
    "InsufficientCpu": (False, "the host's CPU reserve cannot hold this"),
    "Busy": (True, "another operation on the same object is in progress"),
    "Timeout": (True, "the operation did not finish in its bounded time"),
    "DriverFault": (False, "a parent-hosted driver failed"),
    "ChainBroken": (False, "a differencing disk's parent has changed since the child was made"),
    "SavedStateInvalid": (False, "a saved state or checkpoint is missing, corrupt, of another "
                                 "VM or of another version"),
    "Unavailable": (True, "the daemon or worker is not reachable"),
    "NotSupported": (False, "this build does not have the feature (yet)"),
    "Internal": (False, "an unexpected failure; details are in the daemon's log"),
}


class HvError(Exception):
    """An error with a stable code from ERROR_CODES."""

    def __init__(self, code: str, message: str):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return ERROR_CODES[self.code][0]

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}

    @classmethod
    def from_wire(cls, err: dict) -> "HvError":
        code = err.get("code") if isinstance(err, dict) else None
        if code not in ERROR_CODES:
            return cls("Internal", f"unrecognised error from peer: {err!r}")
        return cls(code, str(err.get("message", "")))

    def __repr__(self) -> str:
        return f"HvError({self.code!r}, {self.message!r})"


def bad_request(message: str) -> HvError:
    return HvError("BadRequest", message)

"""The VM state machine: Hyper-V's state names and the one table of allowed transitions.

Pure. vmwp drives it for a running VM; vmms uses the same table to refuse an operation in the
wrong state before it bothers a worker. An action moves a VM from a stable state through a
transitional one (`Starting`, `Stopping`, …) to its result.
"""
from __future__ import annotations

from enum import Enum

from hypervisor.runtime.errors import HvError


class VmState(str, Enum):
    Off = "Off"
    Starting = "Starting"
    Running = "Running"
    Stopping = "Stopping"
    Saving = "Saving"
    Saved = "Saved"
    Pausing = "Pausing"
    Paused = "Paused"
    Resuming = "Resuming"
    Reset = "Reset"

    def __str__(self) -> str:
        return self.value


S = VmState
# action -> (states it is allowed from, transitional state, resulting state)
TRANSITIONS: dict[str, tuple[frozenset[VmState], VmState, VmState]] = {
    "start": (frozenset({S.Off, S.Saved}), S.Starting, S.Running),
    "stop": (frozenset({S.Running, S.Paused}), S.Stopping, S.Off),
    "turn-off": (frozenset({S.Starting, S.Running, S.Paused, S.Stopping, S.Pausing, S.Resuming,
                            S.Reset, S.Saving}), S.Stopping, S.Off),
    "suspend": (frozenset({S.Running}), S.Pausing, S.Paused),
    "resume": (frozenset({S.Paused}), S.Resuming, S.Running),
    "reset": (frozenset({S.Running, S.Paused}), S.Reset, S.Running),
    "save": (frozenset({S.Running, S.Paused}), S.Saving, S.Saved),
}

STABLE = frozenset({S.Off, S.Running, S.Paused, S.Saved})
ACTIVE = frozenset(S) - {S.Off, S.Saved}  # a worker exists in these states


def begin(state: VmState, action: str, vm_name: str = "") -> VmState:
    """The transitional state `action` enters from `state`, or InvalidState naming both."""
    allowed, transitional, _ = TRANSITIONS[action]
    if state not in allowed:
        who = f"'{vm_name}' " if vm_name else ""
        raise HvError("InvalidState", f"cannot {action} VM {who}while it is {state.value}")
    return transitional


def result(action: str) -> VmState:
    return TRANSITIONS[action][2]


def parse(name: str) -> VmState:
    try:
        return VmState(name)
    except ValueError:
        raise HvError("BadRequest", f"unknown VM state {name!r}") from None

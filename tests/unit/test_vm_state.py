"""The VM state machine table (pure)."""
from __future__ import annotations

import pytest

from hypervisor.runtime.errors import HvError
from worker.vm_state import ACTIVE, STABLE, TRANSITIONS, VmState, begin, parse, result


@pytest.mark.parametrize("action,state,transitional,final", [
    ("start", VmState.Off, VmState.Starting, VmState.Running),
    ("start", VmState.Saved, VmState.Starting, VmState.Running),
    ("stop", VmState.Running, VmState.Stopping, VmState.Off),
    ("stop", VmState.Paused, VmState.Stopping, VmState.Off),
    ("suspend", VmState.Running, VmState.Pausing, VmState.Paused),
    ("resume", VmState.Paused, VmState.Resuming, VmState.Running),
    ("reset", VmState.Running, VmState.Reset, VmState.Running),
    ("turn-off", VmState.Starting, VmState.Stopping, VmState.Off),
])
def test_allowed_transitions(action, state, transitional, final):
    assert begin(state, action) == transitional and result(action) == final


def test_every_refusal_names_the_vm_action_and_state():
    for action, (allowed, _, _) in TRANSITIONS.items():
        for state in VmState:
            if state in allowed:
                continue
            with pytest.raises(HvError) as exc:
                begin(state, action, "web1")
            assert exc.value.code == "InvalidState"
            assert "'web1'" in exc.value.message and state.value in exc.value.message and action in exc.value.message


def test_names_are_hyper_v_names():
    assert {s.value for s in VmState} == {"Off", "Starting", "Running", "Stopping", "Saving", "Saved",
                                          "Pausing", "Paused", "Resuming", "Reset"}
    assert STABLE <= set(VmState) and VmState.Off not in ACTIVE and VmState.Running in ACTIVE
    assert parse("Paused") is VmState.Paused
    with pytest.raises(HvError):
        parse("Sleeping")

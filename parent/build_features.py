"""What this build can do of what the CLI contract names. The one place to flip when a feature
lands: defaults, help texts and refusals (vmms's and hvctl's) follow these constants.

    SAVED_STATE   save-vm, stop-vm --save, remove-vmsavedstate, AutomaticStopAction Save.
                  INTEGRATOR: set True when saved state (issue 13) is merged.

`UNAVAILABLE` says in one sentence why a contract command is missing from this build; hvctl
answers it (error `NotSupported`) for every contract command no module registered.
"""
from __future__ import annotations

SAVED_STATE = True    # saved state landed (issue 13)

START_ACTIONS = ("Nothing", "StartIfRunning", "Start")
STOP_ACTIONS = ("TurnOff", "Save", "ShutDown") if SAVED_STATE else ("TurnOff", "ShutDown")
# Hyper-V's default is Save. hvemu's stays TurnOff even with saved state: `host down` would
# otherwise write every running VM's RAM to disk (and every test's teardown would); choose Save
# per VM with `set-vm --automatic-stop-action Save` (docs/cli-extensions.md).
DEFAULT_STOP_ACTION = "TurnOff"
SAVE_MISSING = "saved state is not in this build yet (save-vm, stop-vm --save and " \
               "AutomaticStopAction Save arrive with it)"

UNAVAILABLE: dict[str, str] = {
    "top": "the live view (hvctl top) is not in this build yet",
    "web": "the web manager (hvctl web) is not in this build yet",
}

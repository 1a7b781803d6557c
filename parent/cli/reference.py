"""docs/cli.md, the command reference that ships with hvemu, made from the commands themselves:
every registered click command with its usage, help and options; the JSON keys each prints
(`JSON_KEYS`, the one hand-kept list, checked against the commands); exit status; error codes
(hypervisor/runtime/errors.py); guest programs (worker/guest/programs.py); and the contract
commands this build does not have (parent/build_features.py).

    python -m parent.cli.reference > docs/cli.md      # regenerate after changing a command

tests/unit/test_cli_reference.py fails when docs/cli.md is not what this prints, so a command
or option cannot be added without its reference.
"""
from __future__ import annotations

import inspect

import click

JSON_KEYS: dict[str, str] = {
    "host up": "`Started` (daemons started now), `AutoStarted` (VMs the host's boot started by "
               "their AutomaticStartAction), `HypervisorProcessId`, `VmmsProcessId`, `Home`",
    "host down": "`Stopped` (daemons stopped)",
    "get-vmhost": "`LogicalProcessorCount`, `MemoryCapacity` (pool), `RootMemoryReserve`, "
                  "`MemoryAvailable` (what a starting VM can get: the free pool plus what "
                  "dynamic-memory VMs can give back; a refused start names the same figure), "
                  "`MemoryFree` (assigned to no partition), `CpuReserveAvailable` (percent of "
                  "host), `HypervisorProcessId`, `VmmsProcessId`, `Home`",
    "events": "one JSON line per event: `VMId`, `VMName`, `Event` (`created`, `state`, "
              "`crashed`, `removed`, …), `State`, `Time` (ISO 8601, UTC), and per event "
              "`Reason`, `Heartbeat`",
    "new-vm": "a Get-VM object (see get-vm)",
    "get-vm": "a list of Get-VM objects: `Name`, `Id`, `State`, `Status`, `CPUUsage` (percent "
              "of the whole host), `MemoryAssigned`, `MemoryDemand`, `MemoryStartup`, "
              "`DynamicMemoryEnabled`, `ProcessorCount`, `Uptime` (seconds), `Heartbeat`, "
              "`WorkerProcessId`, `GuestProcessId` (null when not running), `Guest`, "
              "`AutomaticStartAction`, `AutomaticStopAction`, `LastExitReason`",
    "start-vm": "a list of Get-VM objects, as they are when the command returns",
    "stop-vm": "a list of Get-VM objects, as they are when the command returns",
    "suspend-vm": "a list of Get-VM objects, as they are when the command returns",
    "resume-vm": "a list of Get-VM objects, as they are when the command returns",
    "restart-vm": "a list of Get-VM objects, as they are when the command returns",
    "remove-vm": "a list of `{\"removed\": Id}`",
    "set-vm": "a Get-VM object",
    "get-vmworkerprocess": "`VMName`, `VMId`, `ProcessId` (vmwp), `GuestProcessId` (vmmem)",
    "get-vmprocessor": "`VMName`, `Count`, `Reserve`, `Maximum`, `RelativeWeight`",
    "set-vmprocessor": "as get-vmprocessor",
    "get-vmmemory": "`VMName`, `DynamicMemoryEnabled`, `Startup`, `Minimum`, `Maximum`, "
                    "`Buffer`, `Priority`",
    "set-vmmemory": "as get-vmmemory",
    "measure-vm": "`VMName`, `AvgCPU` (percent of the whole host since start), `CPUTime` "
                  "(seconds consumed), `ThrottledTime` (seconds held back), `AvgRAM`, `MinRAM`, "
                  "`MaxRAM` (bytes assigned), `TotalDiskRead`, `TotalDiskWrite` (bytes), "
                  "`MeteringDuration` (seconds metered). The table shows RAM and disk in MB, as "
                  "Hyper-V's Measure-VM does",
    "get-vmintegrationservice": "a list: `VMName`, `Name` (`Heartbeat`, `Shutdown`, "
                                "`Key-Value Pair Exchange`, `Time Synchronization`), `Enabled`, "
                                "`PrimaryStatusDescription`, `SecondaryStatusDescription`",
    "enable-vmintegrationservice": "as get-vmintegrationservice",
    "disable-vmintegrationservice": "as get-vmintegrationservice",
    "get-vmkvp": "an object of key → value (strings)",
    "set-vmcomport": "a list: `VMName`, `Name`, `Path`",
    "get-vmcomport": "a list: `VMName`, `Name`, `Path`",
    "get-vmhostdriver": "a list: `Name`, `Version`, `ProcessId`, `State` (`Running`, "
                        "`Restarting`, `Failed`, `Stopped`), `Restarts`, `Channels`, `Package`",
    "restart-vmhostdriver": "one get-vmhostdriver object",
    "add-vmdevice": "`VMName`, `Driver`, `InstanceId`, `Settings`, `ClassId`, `ChannelState`, "
                    "`ChannelId`, `Error`",
    "get-vmdevice": "a list of add-vmdevice objects",
    "new-vhd": "as get-vhd",
    "get-vhd": "`Path`, `VhdFormat` (`VHDX`), `VhdType` (`Dynamic`, `Fixed`, `Differencing`), "
               "`Size`, `FileSize`, `BlockSize`, `LogicalSectorSize`, `PhysicalSectorSize`, "
               "`ParentPath`, `Attached` (a running VM has it open), `VMName` (the VM whose drive "
               "it is, or null)",
    "add-vmharddiskdrive": "`VMName`, `VMId`, `ControllerType` (`SCSI`), `ControllerNumber`, "
                           "`ControllerLocation`, `Path`, `Name`",
    "get-vmharddiskdrive": "a list of add-vmharddiskdrive objects",
    "remove-vmharddiskdrive": "the removed drive (an add-vmharddiskdrive object)",
}

PREAMBLE = """\
# `hvctl` command reference

Made from the commands themselves by `python -m parent.cli.reference` (a test fails when this
page and the commands disagree); `hvctl COMMAND --help` says the same.

## Conventions

- **Getting `hvctl`:** `bash scripts/bootstrap.sh` creates `.venv` and installs hvemu into it;
  `. .venv/bin/activate` puts `hvctl` on PATH (or run `.venv/bin/hvctl`).
- **Which host:** `--home PATH` or the environment variable `HVEMU_HOME` (default: the user's data
  directory). Several hosts may run side by side with different homes.
- **Global options** stand anywhere on the line: `--home PATH`, `--json`; and `hvctl --version`.
- **Command and option names are case-insensitive**, so PowerShell's spelling works:
  `hvctl Get-VM`, `hvctl Set-VMMemory web1 --Maximum-Bytes 2GB`. An unknown command gets a
  suggestion.
- **VM arguments** take a name or an Id, and wherever a command takes a VM it takes several:
  `NAME…` is any number of names, comma lists (`web1,web2`) or patterns (`'web*'`, `?`, `[ab]`,
  case-insensitive, quoted so the shell leaves them alone). A name that does not exist is
  reported on stderr (`hvctl: NotFound: …`), the other VMs are still done, and the exit status
  is 1; a pattern that matches nothing selects nothing. With several VMs a one-VM command prints
  one table (or one JSON list).
- **Output:** without `--json`, a table or `Key : Value` lines like PowerShell's default view.
  Tables never wrap: piped, they are full width; on a terminal, the longest cells are shortened
  with `…` (headers never are). With `--json`, one JSON document on stdout (`events`: one JSON
  object per line). Keys are PowerShell's property names; sizes are integers in bytes;
  durations are seconds; points in time are ISO 8601 strings in UTC.
- **Sizes** accept `512MB`, `1GB`, `1.5GB`, `512MiB`, `2GiB` or plain bytes, in binary units as
  PowerShell reads them (1MB = 1MiB = 1,048,576 bytes). Memory sizes are multiples of 2 MiB.
- **Lifecycle commands** (`start-vm`, `stop-vm`, `suspend-vm`, `resume-vm`, `restart-vm`) return
  when the operation is done and print the VMs as they are then.
- **Errors** name the option as you typed it (`--minimum-bytes must be …`).
- **Long-running commands:** `events` streams until interrupted; in a script bound it
  (`timeout 5 hvctl events`, which then exits 124).

## Exit status

| status | meaning |
|---|---|
| 0 | success |
| 1 | the operation was refused or failed, or some of the VMs named were not found (stderr: `hvctl: <ErrorCode>: <message>`; with `--json`, stdout holds `{"error": {"code", "message"}}` when nothing succeeded) |
| 2 | usage error (unknown command or option, a missing argument, a number or choice that does not parse; a size that does not parse is a `BadRequest`, exit 1) |
| 3 | the host is not running / cannot be reached (start it with `hvctl host up`) |
| 124 | (from `timeout`, not hvctl) a bounded `events` ran out its time |

## VM states and status

`State` is one of Hyper-V's names: `Off`, `Starting`, `Running`, `Stopping`, `Saving`, `Saved`,
`Pausing`, `Paused`, `Resuming`, `Reset`, and the `…Critical` forms when the VM's configuration
storage is unreachable. `Heartbeat` is one of `OkApplicationsUnknown`, `NoContact`,
`LostCommunication`, `Paused`, `Disabled`. `Status` is a sentence for people.
`AutomaticStartAction` (at host up): `Nothing`, `StartIfRunning` (default: start it if it was
running at host down), `Start`; `host up` says which VMs it started so.
`AutomaticStopAction` (at host down): `TurnOff` (default in this build: the power is pulled),
`ShutDown` (the guest is asked through the shutdown integration service and turned off if it
has not gone within 5 s); `Save` arrives with saved state.
"""


def _options_table(cmd: click.Command) -> list[str]:
    rows = []
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            names = ", ".join(f"`{o}`" for o in (p.opts + p.secondary_opts))
            kind = "flag" if p.is_flag else f"`{p.make_metavar(click.Context(cmd))}`"
            default = ""
            if p.show_default and p.default is not None and not p.is_flag:
                default = f" (default {p.default})"
            help_text = (p.help or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| {names} | {kind} | {help_text}{default} |")
    if not rows:
        return []
    return ["| option | value | does |", "|---|---|---|", *rows, ""]


def walk(group: click.Group, prefix: str = ""):
    """(full name, command) of every command, subcommands included, in name order."""
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if isinstance(cmd, click.Group):
            yield from walk(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def usage(full: str, cmd: click.Command) -> str:
    ctx = click.Context(cmd, info_name=f"hvctl {full}")
    return " ".join(cmd.collect_usage_pieces(ctx)).join([f"hvctl {full} ", ""]).strip()


def generate() -> str:
    from hypervisor.runtime.errors import ERROR_CODES
    from parent.build_features import UNAVAILABLE
    from parent.cli.main import cli, register_commands
    from worker.guest.programs import GUEST_PROGRAMS
    register_commands()
    out = [PREAMBLE, "## Commands", ""]
    missing = []
    for full, cmd in walk(cli):
        if getattr(cmd, "unavailable", None):
            missing.append((full, cmd.unavailable))
            continue
        help_text = " ".join(inspect.cleandoc(cmd.help or "").split())
        out += [f"### `{full}`", "", f"`{usage(full, cmd)}`", "", help_text, ""]
        out += _options_table(cmd)
        if full in JSON_KEYS:
            out += [f"JSON: {JSON_KEYS[full]}.", ""]
    if missing:
        out += ["## Not in this build", "",
                "These contract commands answer one sentence (`NotSupported`, exit 1):", "",
                "| command | why |", "|---|---|"]
        out += [f"| `{name}` | {why} |" for name, why in missing] + [""]
    out += ["## Guest programs (`--guest SPEC`)", "",
            "Each child partition's guest runtime runs one program:", "",
            "| SPEC | the guest … |", "|---|---|"]
    out += [f"| `{spec}` | {what} |" for spec, what in GUEST_PROGRAMS.items()]
    out += ["", "The disk test pattern: SIZE is a multiple of 4096; the 512-byte sector number `s`"
            " (from 0) holds", "`sha256(f\"{SEED}:{s}\".encode()).digest()` repeated 16 times.",
            "", "## Error codes", "", "| code | meaning | retry? |", "|---|---|---|"]
    out += [f"| `{code}` | {what} | {'yes' if retry else 'no'} |"
            for code, (retry, what) in ERROR_CODES.items()]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(generate(), end="")

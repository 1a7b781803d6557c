"""hvctl's click command tree: global options (`--home`, `--json`) may stand anywhere on the
line, errors map to CLI.md's exit codes, and heavy imports wait until a command needs them.
The console script enters at parent/cli/launch.py, which answers `get-vm` itself and hands every
other line to `main` here.

Commands load lazily (issue 16: start-up is hvctl's cost): `COMMAND_MODULES` says which module
registers each command, and `HvGroup.get_command` imports only the one the line names; help,
suggestions, shell completion and the reference load them all (`register_commands`).
tests/unit/test_cli_startup.py checks the table against what the modules register.

`HvGroup` answers the way PowerShell does: command and option names are case-insensitive
(`Get-VM`, `get-vm --Minimum-Bytes`), an unknown command gets a suggestion, and an error from
vmms that names an argument (`argument 'minimum_bytes'`) is re-worded with the option as it is
typed (`--minimum-bytes`). After every command module registered, `register_commands` gives
VM-taking commands several names and wildcards (parent/cli/vm_selection.py) and adds a
one-sentence answer for every contract command this build lacks (parent/build_features.py).
"""
from __future__ import annotations

import importlib
import os
import sys

import click

from hypervisor.runtime.errors import HvError
from parent.build_features import UNAVAILABLE
from parent.cli import vm_selection
from parent.cli.launch import (Globals, UsageError, globals_or_exit, reword,  # noqa: F401  (tests)
                               split_globals)
from parent.cli.output import EXIT_USAGE, exit_code, print_error

# module → the commands it registers on `cli` (a command in two modules: `host`, whose `serve`
# monitor_commands adds). A new command module or command: add it here (the test says so).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "parent.cli.vm_commands": ("new-vm", "get-vm", "start-vm", "stop-vm", "suspend-vm",
                               "resume-vm", "restart-vm", "remove-vm", "set-vm",
                               "get-vmworkerprocess"),
    "parent.cli.host_commands": ("host", "get-vmhost", "events"),
    "parent.cli.resource_commands": ("get-vmprocessor", "set-vmprocessor", "get-vmmemory",
                                     "set-vmmemory", "measure-vm"),
    "parent.cli.disk_commands": ("new-vhd", "get-vhd", "add-vmharddiskdrive",
                                 "get-vmharddiskdrive", "remove-vmharddiskdrive"),
    "parent.cli.driver_commands": ("get-vmhostdriver", "restart-vmhostdriver", "add-vmdevice",
                                   "get-vmdevice", "remove-vmdevice"),
    "parent.cli.integration_commands": ("get-vmintegrationservice", "enable-vmintegrationservice",
                                        "disable-vmintegrationservice", "get-vmkvp", "set-vmkvp",
                                        "remove-vmkvp", "set-vmcomport", "get-vmcomport"),
    "parent.cli.monitor_commands": ("top", "web", "get-vmhistory", "completion", "host"),
    "parent.cli.network_commands": ("new-vmswitch", "get-vmswitch", "remove-vmswitch",
                                    "add-vmnetworkadapter", "connect-vmnetworkadapter",
                                    "disconnect-vmnetworkadapter", "remove-vmnetworkadapter",
                                    "get-vmnetworkadapter", "set-vmnetworkadapter",
                                    "set-vmnetworkadaptervlan"),
    "parent.cli.saved_state_commands": ("save-vm", "remove-vmsavedstate", "checkpoint-vm",
                                        "get-vmsnapshot", "restore-vmsnapshot",
                                        "remove-vmsnapshot", "merge-vhd"),
}


def modules_for(name: str) -> list[str]:
    return [module for module, names in COMMAND_MODULES.items() if name in names]


class HvGroup(click.Group):
    """Case-insensitive commands (PowerShell spelling accepted) with suggestions."""

    group_class = type   # subgroups (`host`) answer the same way

    def get_command(self, ctx, cmd_name):
        if self is cli and cmd_name not in self.commands:
            load_command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx):
        if self is cli:
            register_commands()
        return super().list_commands(ctx)

    def resolve_command(self, ctx, args):
        typed = args[0] if args else ""
        cmd = self.get_command(ctx, typed) or self.get_command(ctx, typed.lower())
        if cmd is None and not typed.startswith("-"):
            import difflib   # only for a command that does not exist
            close = difflib.get_close_matches(typed.lower(), self.list_commands(ctx), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else " (hvctl --help lists them)"
            ctx.fail(f"No such command '{typed}'.{hint}")
        if cmd is None:
            return super().resolve_command(ctx, args)
        if isinstance(ctx.obj, Globals) and not isinstance(cmd, click.Group):
            ctx.obj.command = cmd
        return cmd.name, cmd, args[1:]


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("hvemu")
    except PackageNotFoundError:
        return "unknown (not installed)"


CONTEXT = {"help_option_names": ["-h", "--help"], "token_normalize_func": str.lower}


@click.group(cls=HvGroup, context_settings=CONTEXT)
@click.version_option(version=None, package_name="hvemu", prog_name="hvctl",
                      message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx):
    """hvctl: drive an hvemu host (Hyper-V's cmdlets in kebab-case).

    Global options, anywhere on the line: --home PATH (or HVEMU_HOME) picks the host,
    --json prints one machine-readable JSON document.
    """


def load_command(name: str) -> None:
    """Import the module(s) registering command `name` (any case), give its VM arguments
    several names and wildcards; a name no module lists loads them all (a command missing
    from the table, a contract command this build lacks, or none: the suggestion needs all)."""
    modules = modules_for(name.lower())
    if not modules:
        register_commands()
        return
    for module in modules:
        importlib.import_module(module)   # by name: only the one this line runs (issue 16)
    vm_selection.apply(cli)


def register_commands() -> None:
    """Every command module, the one-sentence answers for contract commands this build lacks,
    VM selection and VM-name completion: what help, completion and the reference need."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)   # they attach to `cli`
    add_unavailable_commands()
    vm_selection.apply(cli)
    importlib.import_module("parent.cli.monitor_commands").attach_vm_completion(cli)   # after apply: it replaces some VM arguments


def add_unavailable_commands() -> None:
    """A contract command no module registered answers one sentence (NotSupported, exit 1)."""
    for name, why in UNAVAILABLE.items():
        if name in cli.commands:
            continue

        def missing(name=name, why=why, **_):
            raise HvError("NotSupported", f"{name}: {why}.")
        cmd = click.Command(name, callback=missing, help=f"Not in this build: {why}.",
                            context_settings={"ignore_unknown_options": True,
                                              "allow_extra_args": True})
        cmd.takes_vm_names = False
        cmd.unavailable = why
        cli.add_command(cmd)


def option_words(cmd: click.Command | None) -> dict[str, str]:
    """Request argument name → how the user typed it: `minimum_bytes` → `--minimum-bytes`,
    `vm` → `NAME`."""
    words = {"vm": "NAME", "vms": "NAME"}
    for p in (cmd.params if cmd is not None else []):
        if isinstance(p, click.Option):
            longs = [o for o in p.opts if o.startswith("--")] or p.opts
            words[p.name] = max(longs, key=len)
        elif isinstance(p, click.Argument):
            words[p.name] = p.name.upper().rstrip("S") if p.nargs == -1 else p.name.upper()
    return words


def as_typed(message: str, cmd: click.Command | None) -> str:
    """Re-word vmms's `argument 'x_y'` as the option the user typed (`--x-y`). Pure."""
    return reword(message, option_words(cmd))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, home, as_json = globals_or_exit(argv)
    if "_HVCTL_COMPLETE" in os.environ:
        register_commands()   # completion offers every command (and strips the globals first)
    g = Globals(home, as_json)
    try:
        cli.main(args=rest, prog_name="hvctl", obj=g, standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except HvError as err:
        err = HvError(err.code, as_typed(err.message, g.command))
        print_error(err, as_json)
        sys.exit(exit_code(err))
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        g.close()
    sys.exit(g.exit_status)


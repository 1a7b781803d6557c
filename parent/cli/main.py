"""hvctl's entry point: global options (`--home`, `--json`) may stand anywhere on the line,
errors map to CLI.md's exit codes, and heavy imports wait until a command needs them.

`HvGroup` answers the way PowerShell does: command and option names are case-insensitive
(`Get-VM`, `get-vm --Minimum-Bytes`), an unknown command gets a suggestion, and an error from
vmms that names an argument (`argument 'minimum_bytes'`) is re-worded with the option as it is
typed (`--minimum-bytes`). After every command module registered, `register_commands` gives
VM-taking commands several names and wildcards (parent/cli/vm_selection.py) and adds a
one-sentence answer for every contract command this build lacks (parent/build_features.py).
"""
from __future__ import annotations

import difflib
import re
import sys

import click

from hypervisor.runtime.errors import HvError
from parent.cli.output import EXIT_USAGE, exit_code, print_error


class Globals:
    def __init__(self, home: str | None, as_json: bool):
        self.home = home
        self.json = as_json
        self._client = None
        self.command: click.Command | None = None   # the command being run (error wording)
        self.exit_status = 0

    @property
    def client(self):
        if self._client is None:
            from parent.client import Client
            self._client = Client(self.home)
        return self._client


def split_globals(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """Pull `--json` and `--home PATH` out of argv wherever they stand (before `--`)."""
    rest, home, as_json, i = [], None, False, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == "--json":
            as_json = True
        elif arg == "--home":
            if i + 1 >= len(argv):
                raise click.UsageError("--home needs a PATH")
            home = argv[i + 1]
            i += 1
        elif arg.startswith("--home="):
            home = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest, home, as_json


class HvGroup(click.Group):
    """Case-insensitive commands (PowerShell spelling accepted) with suggestions."""

    group_class = type   # subgroups (`host`) answer the same way

    def resolve_command(self, ctx, args):
        typed = args[0] if args else ""
        cmd = self.get_command(ctx, typed) or self.get_command(ctx, typed.lower())
        if cmd is None and not typed.startswith("-"):
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


def register_commands() -> None:
    from parent.cli import host_commands, resource_commands, vm_commands  # noqa: F401  (they attach to `cli`)
    from parent.cli import disk_commands  # noqa: F401
    from parent.cli import driver_commands, integration_commands  # noqa: F401
    from parent.cli import monitor_commands  # noqa: F401  (top, web, get-vmhistory, completion, host serve)
    from parent.cli import network_commands  # noqa: F401
    from parent.cli import saved_state_commands  # noqa: F401
    # (new command modules: import them above this line)
    add_unavailable_commands()
    from parent.cli import vm_selection
    vm_selection.apply(cli)
    monitor_commands.attach_vm_completion(cli)   # after apply: it replaces some VM arguments


def add_unavailable_commands() -> None:
    """A contract command no module registered answers one sentence (NotSupported, exit 1)."""
    from parent.build_features import UNAVAILABLE
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


ARG_RE = re.compile(r"\bargument '([A-Za-z_][A-Za-z0-9_]*)'")


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
    words = option_words(cmd)
    return ARG_RE.sub(lambda m: words.get(m[1], f"'{m[1]}'"), message)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, home, as_json = split_globals(argv)
    except click.UsageError as exc:
        print(f"hvctl: {exc.message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    register_commands()
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
        if g._client is not None:
            g._client.close()
    sys.exit(g.exit_status)


"""hvctl's entry point: global options (`--home`, `--json`) may stand anywhere on the line,
errors map to CLI.md's exit codes, and heavy imports wait until a command needs them."""
from __future__ import annotations

import sys

import click

from hypervisor.runtime.errors import HvError
from parent.cli.output import EXIT_USAGE, exit_code, print_error


class Globals:
    def __init__(self, home: str | None, as_json: bool):
        self.home = home
        self.json = as_json
        self._client = None

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
        print_error(err, as_json)
        sys.exit(exit_code(err))
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if g._client is not None:
            g._client.close()
    sys.exit(getattr(g, "exit_status", 0))


"""hvctl's entry point (the `hvctl` console script and `python -m parent.cli`): pulls the global
options out of argv, runs `get-vm` on a fast path, and hands every other command line to the
click command tree (parent/cli/main.py).

Why a fast path (issue 16): a one-shot `hvctl get-vm` is mostly interpreter start-up, and the
click tree (click itself imports `inspect`, `ast`, `dis`, `uuid`…, then every command module)
costs more than pyzmq and msgpack together. `get-vm` with nothing but VM names (and the global
`--home`/`--json`) is answered here with what the click command runs too (list_vms,
parent/cli/vm_listing.py; name selection, parent/cli/vm_names.py), so output, JSON keys and
exit status are the same. Anything else on the line — an option such as `--help`, `--`, a
shell-completion request — goes to click, which answers as it always did.

What the fast path imports: this module, parent.client (paths, pid file), parent.cli.output,
vm_names, vm_listing, errors; then the client's pyzmq + msgpack when it calls vmms. No click,
rich, psutil, structlog or platformdirs (platformdirs only when no home is given at all):
tests/unit/test_cli_startup.py checks it.
"""
from __future__ import annotations

import gc
import importlib
import os
import re
import sys

from hypervisor.runtime.errors import HvError
from parent.cli.output import EXIT_USAGE, exit_code, print_error
from parent.cli.vm_listing import list_vms
from parent.cli.vm_names import with_names
from parent.client import Client

FULL_CLI = "parent.cli.main"   # the click command tree, loaded only off the fast path
FAST_COMMAND = "get-vm"
# how the get-vm command's request arguments read as typed (main.option_words of the click
# command; tests/unit/test_cli_startup.py checks they agree)
GET_VM_WORDS = {"vm": "NAME", "vms": "NAME", "names": "NAME"}
ARG_RE = re.compile(r"\bargument '([A-Za-z_][A-Za-z0-9_]*)'")


class UsageError(Exception):
    """A global option without its value (exit 2)."""


class Globals:
    """What every command gets (click's `obj`): the home, `--json`, a client made on first use,
    the command being run (for error wording) and the exit status to end with."""

    def __init__(self, home: str | None, as_json: bool):
        self.home = home
        self.json = as_json
        self._client = None
        self.command = None   # the click command being run (error wording)
        self.exit_status = 0

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.home)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


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
                raise UsageError("--home needs a PATH")
            home = argv[i + 1]
            i += 1
        elif arg.startswith("--home="):
            home = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest, home, as_json


def reword(message: str, words: dict[str, str]) -> str:
    """Re-word vmms's `argument 'x_y'` as the user typed it (`words`: `x_y` → `--x-y`). Pure."""
    return ARG_RE.sub(lambda m: words.get(m[1], f"'{m[1]}'"), message)


def is_fast(rest: list[str]) -> bool:
    """`get-vm` (any case, as click accepts it) followed only by VM names; not while the shell
    asks for completions."""
    return bool(rest) and rest[0].lower() == FAST_COMMAND \
        and not any(arg.startswith("-") for arg in rest[1:]) \
        and "_HVCTL_COMPLETE" not in os.environ


def run_get_vm(g: Globals, tokens: list[str]) -> None:
    """What the click `get-vm` runs, vm_selection's name expansion included."""
    if tokens:
        with_names(g, tokens, lambda names: list_vms(g, names))
    else:
        list_vms(g, ())


def run_fast(rest: list[str], home: str | None, as_json: bool) -> int:
    """The exit status of `hvctl get-vm NAME…`, with main.main's error handling."""
    g = Globals(home, as_json)
    try:
        run_get_vm(g, rest[1:])
        sys.stdout.flush()
    except HvError as err:
        print_error(HvError(err.code, reword(err.message, GET_VM_WORDS)), as_json)
        return exit_code(err)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:   # `hvctl get-vm | head`: as click does, quietly exit 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        g.close()
    return g.exit_status


def globals_or_exit(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """`split_globals`, or the usage error printed and exit status 2."""
    try:
        return split_globals(argv)
    except UsageError as exc:
        print(f"hvctl: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> None:
    """hvctl. Without `argv` this is the process's whole life (the console script, `python -m
    parent.cli`): a fast-path run then turns the cyclic garbage collector off and freezes what
    it made before exiting — a one-shot run makes no garbage worth a pass, and the collections
    (during the imports and the reply's unpacking, and the full one at interpreter exit) were
    about a fifth of its CPU time (issue 16). Not for the click tree: `events`, `top` and
    `host serve` run for long."""
    whole_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, home, as_json = globals_or_exit(argv)
    if is_fast(rest):
        if whole_process:
            gc.disable()
        code = run_fast(rest, home, as_json)
        if whole_process:
            gc.freeze()   # the collection at exit skips frozen objects
        sys.exit(code)
    # by name, not a module-level import: the click tree is what the fast path avoids loading,
    # and parent.cli.main imports this module (split_globals, Globals)
    importlib.import_module(FULL_CLI).main(argv)

"""Several VM names and wildcards wherever hvctl takes a VM, for every command, including ones
other modules add later: `apply(cli)` runs after every command module registered.

Which commands take a VM: a command whose noun starts with `vm` (`get-vm`, `measure-vm`,
`set-vmmemory`, `get-vmnetworkadapter`, …) and whose first argument is called `name` or
`names`; not `new-vm` (a new name) nor nouns that name something else (`vmhost`,
`vmhostdriver`, `vmswitch`). A command overrides the rule with `cmd.takes_vm_names = True` or
`False`.

What it does:
- `name` (one VM) becomes `NAME…`: several names, `web1,web2`, or patterns (`'web*'`, `?`,
  `[ab]`, case-insensitive like Get-VM). With exactly one plain name the command runs as it
  was written. Otherwise it runs once per VM and what each run prints is merged
  (output.collecting): one table, or one JSON list. A missing VM is reported on stderr
  (`hvctl: NotFound: …`), the others are still done, and the exit status is 1.
- `names` (already `NAME…`): patterns and comma lists are expanded before the command runs.
- A pattern that matches no VM selects nothing, quietly, as Get-VM does.

The name matching itself is parent/cli/vm_names.py (no click: get-vm's fast path uses it too).
"""
from __future__ import annotations

import functools

import click

from hypervisor.runtime.errors import HvError
from parent.cli import output
from parent.cli.vm_names import expand, is_pattern, match, split_names, with_names  # noqa: F401  (match: tests)

NOT_A_VM = {"vmhost", "vmhostdriver", "vmswitch"}


def vm_param(cmd_name: str, cmd: click.Command) -> click.Argument | None:
    """The argument that holds the VM name(s), or None when the command takes no VM."""
    override = getattr(cmd, "takes_vm_names", None)
    verb, _, noun = cmd_name.partition("-")
    if override is None:
        if not noun.startswith("vm") or noun in NOT_A_VM or (verb, noun) == ("new", "vm"):
            return None
    elif not override:
        return None
    args = [p for p in cmd.params if isinstance(p, click.Argument)]
    if args and args[0].name in ("name", "names"):
        return args[0]
    return None


def run_per_vm(g, callback, param: str, names: list[str], kwargs: dict) -> None:
    """Run a one-VM command for each name; merge its output; report the failures."""
    failed = []
    with output.collecting() as items:
        for name in names:
            try:
                callback(**{**kwargs, param: name})
            except HvError as err:
                if err.code == "Unavailable":
                    raise
                failed.append(err)
                output.print_error(err, as_json=False)
    if g.json and failed and not any(i[0] == "json" for i in items):
        output.print_json({"error": {"code": failed[0].code, "message": failed[0].message}})
    elif items or g.json:
        output.flush(items, g.json)
    if failed:
        g.exit_status = 1


def _wrap_one(cmd: click.Command, arg: click.Argument) -> None:
    callback = cmd.callback
    new_arg = click.Argument([arg.name], nargs=-1, required=True, metavar="NAME…")
    cmd.params[cmd.params.index(arg)] = new_arg

    @functools.wraps(callback)
    def per_vm(**kwargs):
        g = click.get_current_context().obj
        tokens = kwargs.pop(arg.name)
        plain = split_names(tokens)
        if len(plain) == 1 and not is_pattern(plain[0]):
            return callback(**kwargs, **{arg.name: plain[0]})
        run_per_vm(g, callback, arg.name, expand(g, tokens), kwargs)
    cmd.callback = per_vm


def _wrap_many(cmd: click.Command, arg: click.Argument) -> None:
    callback = cmd.callback
    arg.metavar = "NAME…" if arg.required else "[NAME…]"

    @functools.wraps(callback)
    def expanded(**kwargs):
        g = click.get_current_context().obj
        tokens = kwargs[arg.name]
        if tokens:
            return with_names(g, tokens, lambda names: callback(**{**kwargs, arg.name: names}))
        return callback(**kwargs)
    cmd.callback = expanded


def apply(group: click.Group, prefix: str = "") -> None:
    """Give every VM-taking command of `group` (and its subgroups) several names and wildcards."""
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            apply(cmd, f"{prefix}{name} ")
            continue
        if getattr(cmd, "_vm_selection", False):
            continue
        arg = vm_param(name, cmd)
        if arg is None:
            continue
        cmd._vm_selection = True
        (_wrap_many if arg.nargs == -1 else _wrap_one)(cmd, arg)

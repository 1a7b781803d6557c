"""hvctl's watching commands: `top`, `web`, `get-vmhistory`, `completion`, and `host serve`
(the host in the foreground, for systemd); `attach_vm_completion()` gives every VM argument of
every command shell completion of VM names.
"""
from __future__ import annotations

import os
import shlex
import sys

import click

from hypervisor.runtime.errors import HvError
from parent.cli import host_commands  # noqa: F401  (the `host` group `serve` joins; commands load lazily)
from parent.cli.main import cli
from parent.cli.output import print_json, print_table

SHELLS = ("bash", "zsh", "fish")


# --- top -----------------------------------------------------------------------------------------

@cli.command("top")
@click.option("--once", is_flag=True, help="print one frame and exit (no terminal needed)")
@click.option("--sort", "sort_key", type=click.Choice(["cpu", "memory", "name", "state", "uptime", "disk"]),
              default="cpu", show_default=True, help="first sort order (keys change it live)")
@click.pass_obj
def top(g, once, sort_key):
    """Live view of the host and its VMs (Task Manager for hvemu), refreshed every second.

    Keys: c cpu, m memory, n name, s state, u uptime, d disk (sort), r reverse, q quit.
    The CPU bar is the VM's share of its VPs; ▌ marks its Reserve, │ its Maximum, red cells
    the time the hypervisor held it back. --once (or --json) prints one frame."""
    from parent.cli import top_view
    if once or g.json:
        snap = top_view.snapshot_once(g.client)
        if g.json:
            print_json(snap.to_json())
        else:
            from rich.console import Console
            width = None if sys.stdout.isatty() else 160
            Console(width=width, soft_wrap=False).print(top_view.render(snap, sort_key))
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise click.UsageError("hvctl top needs a terminal; use 'hvctl top --once' "
                               "(or --json) for one frame")
    g.client.call("ping")   # a host that is not running: exit 3 before the screen changes
    top_view.run_live(g.client, sort_key)


# --- history -------------------------------------------------------------------------------------

@cli.command("get-vmhistory")
@click.argument("names", nargs=-1)
@click.option("--since", type=float, help="only samples newer than this (seconds since the epoch)")
@click.option("--last", "limit", type=int, help="at most this many samples per VM (newest)")
@click.pass_obj
def get_vmhistory(g, names, since, limit):
    """The hypervisor's ledgers over the last 15 minutes, one sample a second: CPU entitled,
    consumed and throttled (seconds in the sample) and memory assigned and demand (bytes)."""
    if limit is None and since is None and not g.json:
        limit = 10
    rows = g.client.call("get-vmhistory", vms=list(names) or None, since=since, limit=limit)
    if g.json:
        print_json(rows)
        return
    import datetime
    for vm in rows:
        s = vm["Samples"]
        print(f"{vm['VMName']} ({vm['State']}; Count {vm['Count']}, Reserve {vm['Reserve']} %, "
              f"Maximum {vm['Maximum']} %; CPUTime {vm['CPUTime']:.2f} s, "
              f"ThrottledTime {vm['ThrottledTime']:.2f} s)")
        table = []
        for i, t in enumerate(s["Time"]):
            iv = s["Interval"][i] or 1.0
            table.append({"Time": datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S"),
                          "CPU%": f"{s['CPUConsumed'][i] / iv / vm['Count'] * 100:.1f}",
                          "Entitled%": f"{s['CPUEntitled'][i] / iv / vm['Count'] * 100:.1f}",
                          "Throttled(s)": f"{s['CPUThrottled'][i]:.3f}",
                          "Assigned(M)": s["MemoryAssigned"][i] >> 20,
                          "Demand(M)": s["MemoryDemand"][i] >> 20})
        if table:
            print_table([(k, k) for k in table[0]], table)
        print()


# --- web -----------------------------------------------------------------------------------------

@cli.command("web")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="TCP port on 127.0.0.1 (default: a free one)")
@click.option("--bind", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--stop", is_flag=True, help="stop this home's web manager")
@click.option("--foreground", is_flag=True, help="serve in this process until interrupted")
@click.pass_obj
def web(g, port, bind, stop, foreground):
    """Start the web manager (its own process, `hvweb <home>`) and print its URL and the
    action token (kept 0600 in the home). Reading needs no token; start/stop/pause buttons do."""
    from hypervisor.runtime.paths import Home
    from parent.web import web_control
    home = Home.resolve(g.home)
    if stop:
        res = web_control.stop(home)
        print_json(res) if g.json else print("web manager " + ("stopped" if res["Stopped"] else "was not running"))
        return
    if foreground:
        from parent.web.server import main as serve
        serve(["--home", str(home.root), "--port", str(port), "--bind", bind])
        return
    info = web_control.start(home, port, bind)
    if g.json:
        print_json(info)
    else:
        print(f"web manager: {info['Url']}  (pid {info['ProcessId']})")
        print(f"action token: {info['Token']}")


# --- host serve (systemd) ------------------------------------------------------------------------

@click.command("serve")
@click.option("--host-memory", help="memory pool for partitions, e.g. 8GB")
@click.option("--root-reserve", help="memory kept for the root partition, e.g. 512MB")
@click.pass_obj
def host_serve(g, host_memory, root_reserve):
    """Run the host in the foreground (for systemd, Type=notify): start the daemons, send
    READY=1 to $NOTIFY_SOCKET, restart a daemon that dies, and on SIGTERM or SIGINT run
    `host down` and exit."""
    from hypervisor.runtime.paths import Home
    from hypervisor.runtime.sizes import parse_size
    from parent.host_service import serve
    serve(Home.resolve(g.home), parse_size(host_memory) if host_memory else None,
          parse_size(root_reserve) if root_reserve else None)


def _attach_serve_to_host_group() -> None:
    host_group = cli.commands.get("host")
    if isinstance(host_group, click.Group):
        host_group.add_command(host_serve, "serve")


# --- completion ----------------------------------------------------------------------------------

@cli.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell):
    """Print the shell completion script for SHELL (commands, options and VM names).

    bash: eval "$(hvctl completion bash)"   zsh: eval "$(hvctl completion zsh)"
    fish: hvctl completion fish | source"""
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, "hvctl", "_HVCTL_COMPLETE").source())


def strip_globals_from_completion_request() -> None:
    """hvctl's global options (`--home PATH`, `--json`) are not click options (main.py takes
    them out of argv wherever they stand); take them out of a completion request too, so click
    completes the rest of the line, and let `--home` pick the host VM names are asked of."""
    shell = os.environ.get("_HVCTL_COMPLETE", "")
    if not shell or "COMP_WORDS" not in os.environ:
        return
    from click.parser import split_arg_string
    words = split_arg_string(os.environ["COMP_WORDS"])
    index_based = not shell.startswith("fish")    # fish sends the incomplete word instead
    try:
        cword = int(os.environ.get("COMP_CWORD", "0")) if index_based else None
    except ValueError:
        return
    kept, i = [], 0
    while i < len(words):
        w, span = words[i], 1
        if w == "--home" and i + 1 < len(words):
            os.environ["HVEMU_HOME"], span = words[i + 1], 2
        elif w.startswith("--home="):
            os.environ["HVEMU_HOME"] = w.split("=", 1)[1]
        elif w != "--json":
            kept.append(w)
            span = 0
        if span and cword is not None and i < cword:
            cword -= min(span, cword - i)
        i += span or 1
    os.environ["COMP_WORDS"] = shlex.join(kept)
    if cword is not None:
        os.environ["COMP_CWORD"] = str(cword)


def complete_vm_names(ctx, param, incomplete: str):
    """VM names of the host (bounded: half a second; nothing when it is not running)."""
    from click.shell_completion import CompletionItem
    try:
        from parent.client import Client
        c = Client(getattr(ctx.obj, "home", None), timeout=0.5)   # None: HVEMU_HOME / default
        try:
            vms = c.call("get-vm")
        finally:
            c.close()
    except (HvError, OSError):
        return []
    return [CompletionItem(vm["Name"], help=vm["State"]) for vm in vms
            if vm["Name"].lower().startswith(incomplete.lower())]


def attach_vm_completion(group: click.Group) -> None:
    """Every VM argument (the ones parent/cli/vm_selection.py treats as VMs) and every `--vm`
    option completes VM names; main.register_commands calls this last."""
    from parent.cli.vm_selection import vm_param
    for name, cmd in list(group.commands.items()):
        if isinstance(cmd, click.Group):
            attach_vm_completion(cmd)
            continue
        arg = vm_param(name, cmd)
        for param in cmd.params:
            if param is arg or (isinstance(param, click.Option) and param.name in ("vm", "vms")):
                param._custom_shell_complete = complete_vm_names


_attach_serve_to_host_group()
strip_globals_from_completion_request()

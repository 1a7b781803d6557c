"""`hvctl top`: Task Manager for hvemu — a live rich view of the host and its VMs.

The data comes from `parent/monitor_model.py` (one pipelined poll a second); this module only
draws it and reads keys. The CPU bar is the VM's share of its own VPs: `▌` marks its Reserve,
`│` its Maximum (the cap), red cells the VP-time the hypervisor held back in the last second.
Keys: c cpu, m memory, n name, s state, u uptime, d disk (sort), r reverse, q quit.
"""
from __future__ import annotations

import os
import select
import sys
import time

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from parent.cli.output import format_uptime
from parent.monitor_model import Monitor, Snapshot, poll, sort_rows

BAR = 20
REFRESH = 1.0
KEYS = {"c": "cpu", "m": "memory", "n": "name", "s": "state", "u": "uptime", "d": "disk"}


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit in ("B", "K", "M") else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def rate(n: float) -> str:
    return "-" if n <= 0 else human_bytes(n) + "/s"


def cpu_bar(cpu: float, reserve: int, maximum: int, throttled: float) -> Text:
    """A bar of BAR cells for 0-100 % of the VM's VPs, with its reserve and cap marked."""
    filled = min(BAR, round(cpu / 100 * BAR))
    held = min(BAR - filled, round(throttled / 100 * BAR)) if throttled > 0 else 0
    cap_at = min(BAR - 1, round(maximum / 100 * BAR)) if maximum < 100 else None
    res_at = min(BAR - 1, round(reserve / 100 * BAR)) if reserve > 0 else None
    text = Text()
    for i in range(BAR):
        if i == cap_at:
            text.append("│", style="bold red")
        elif i == res_at:
            text.append("▌", style="bold green")
        elif i < filled:
            text.append("█", style="cyan")
        elif i < filled + held:
            text.append("░", style="red")
        else:
            text.append("·", style="grey39")
    return text


def render(snap: Snapshot, sort_key: str = "cpu", reverse: bool = False) -> Group:
    h = snap.host
    cap = h.get("MemoryCapacity") or 0
    head = Text()
    head.append("hvemu ", style="bold")
    head.append(f"{h.get('Home') or ''}  ")
    head.append(f"CPUs {h.get('LogicalProcessorCount')}  ")
    head.append(f"reserve free {h.get('CpuReserveAvailable') or 0:.0f}%  ")
    head.append(f"memory pool {human_bytes(cap)} assigned {human_bytes(h.get('MemoryAssigned'))} "
                f"available {human_bytes(h.get('MemoryAvailable'))}  ")
    head.append(f"VMs {h.get('Running')}/{h.get('VMs')} running")
    drivers = Text("driver hosts: ", style="bold")
    if not snap.drivers:
        drivers.append("none")
    for d in snap.drivers:
        style = "green" if d.get("State") == "Running" else "yellow"
        drivers.append(f"{d.get('Name')} ", style="bold")
        drivers.append(f"pid {d.get('ProcessId') or '-'} ")
        drivers.append(f"{d.get('State')}", style=style)
        drivers.append(f" restarts {d.get('Restarts') or 0}   ")
    table = Table(box=None, header_style="bold reverse", pad_edge=False, expand=False)
    sorted_by = {"name": "Name", "state": "State", "cpu": "CPU%", "memory": "Assigned",
                 "uptime": "Uptime", "disk": "Disk R"}[sort_key]
    for col, just in (("Name", "left"), ("State", "left"), ("Heartbeat", "left"),
                      ("CPU (of VPs)", "left"), ("CPU%", "right"), ("Res/Max", "right"),
                      ("Assigned", "right"), ("Demand", "right"), ("VPs", "right"),
                      ("Uptime", "right"), ("Disk R", "right"), ("Disk W", "right"),
                      ("vmwp", "right"), ("vmmem", "right")):
        mark = (" ▲" if reverse else " ▼") if col == sorted_by else ""
        table.add_column(col + mark, justify=just, no_wrap=True)
    for r in sort_rows(snap.vms, sort_key, reverse):
        running = r.worker_pid is not None
        state_style = {"Running": "green", "Paused": "yellow", "Off": "grey50"}.get(r.state, "magenta")
        table.add_row(
            Text(r.name, style="bold"), Text(r.state, style=state_style),
            r.heartbeat if running else "",
            cpu_bar(r.cpu_percent, r.reserve, r.maximum, r.throttled_percent) if running else Text(""),
            f"{r.cpu_percent:.0f}" if running else "",
            f"{r.reserve}/{r.maximum}",
            human_bytes(r.memory_assigned) if running else "",
            human_bytes(r.memory_demand) if running and r.memory_demand else "",
            str(r.count), format_uptime(r.uptime) if running else "",
            rate(r.disk_read_rate) if running else "", rate(r.disk_write_rate) if running else "",
            str(r.worker_pid or ""), str(r.guest_pid or ""))
    keys = Text(f"sort: {sort_key}{' (reversed)' if reverse else ''}   c cpu  m memory  n name  "
                "s state  u uptime  d disk  r reverse  q quit", style="grey50")
    parts = [head, drivers, Text(""), table]
    if snap.error:
        parts.insert(0, Text(snap.error, style="bold red"))
    return Group(*parts, Text(""), keys)


def snapshot_once(client) -> Snapshot:
    """Two polls half a second apart (so disk rates have a difference), the second returned."""
    monitor = Monitor()
    poll(client, monitor, time.time())
    time.sleep(0.5)
    return poll(client, monitor, time.time())


def read_keys(fd: int, timeout: float) -> str:
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if not ready:
        return ""
    try:
        return os.read(fd, 64).decode(errors="ignore")
    except OSError:
        return ""


def run_live(client, sort_key: str = "cpu") -> None:
    """The live view until q (or Ctrl-C); the terminal is restored on every way out."""
    import termios
    import tty

    from hypervisor.runtime.errors import HvError
    from rich.live import Live
    console = Console()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    monitor = Monitor()
    reverse = False
    snap = None
    try:
        tty.setcbreak(fd)
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                started = time.monotonic()
                try:
                    snap = poll(client, monitor, time.time())
                except HvError as err:
                    if snap is None:
                        raise
                    snap.error = f"{err.code}: {err.message} (retrying)"
                    client.close()
                live.update(render(snap, sort_key, reverse), refresh=True)
                deadline = started + REFRESH
                while (left := deadline - time.monotonic()) > 0:
                    keys = read_keys(fd, left)
                    if "q" in keys or "Q" in keys:
                        return
                    changed = False
                    for k in keys:
                        if k in KEYS:
                            sort_key, changed = KEYS[k], True
                        elif k == "r":
                            reverse, changed = not reverse, True
                    if changed:
                        live.update(render(snap, sort_key, reverse), refresh=True)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

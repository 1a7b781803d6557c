"""Progress bars (rich) for hvctl commands that can take more than about a second.

Shown on stderr, and only when both stdout and stderr are terminals and `--json` is off: a
script or a pipe sees exactly what it saw before. Transient: the bar is erased when the command
ends, so the result printed after it stands alone.

- `call_many(g, calls, label)`: pipelined ops (start-vm/stop-vm of many VMs…), advanced as each
  reply arrives (the client's `on_reply`).
- `call_watching_file(g, op, args, path, total, label)`: one long op that writes a file (a fixed
  `new-vhd`), advanced by the bytes the file has on disk, sampled every 0.1 s.
"""
from __future__ import annotations

import os
import sys
import threading

SHOW_AFTER = 2   # ops: a single-VM command answers fast enough without a bar


def wanted(g) -> bool:
    return not g.json and sys.stdout.isatty() and sys.stderr.isatty() \
        and os.environ.get("TERM") != "dumb"


def _progress(*columns):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), *columns,
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


def call_many(g, calls: list[tuple[str, dict]], label: str) -> list:
    if len(calls) < SHOW_AFTER or not wanted(g):
        return g.client.call_many(calls)
    from rich.progress import MofNCompleteColumn
    with _progress(MofNCompleteColumn()) as bar:
        task = bar.add_task(label, total=len(calls))
        return g.client.call_many(calls, on_reply=lambda _i: bar.advance(task))


def call_watching_file(g, op: str, args: dict, path: str, total: int | None, label: str):
    if not total or not wanted(g):
        return g.client.call(op, **args)
    from rich.progress import DownloadColumn
    done = threading.Event()
    with _progress(DownloadColumn(binary_units=True)) as bar:
        task = bar.add_task(label, total=total)

        def sample():
            while not done.wait(0.1):
                try:
                    bar.update(task, completed=min(total, os.stat(path).st_blocks * 512))
                except OSError:
                    pass
        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        try:
            result = g.client.call(op, **args)
            bar.update(task, completed=total)
            return result
        finally:
            done.set()
            watcher.join(timeout=1.0)

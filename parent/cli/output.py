"""How hvctl prints: one JSON document with --json, a table or short text for people
otherwise; errors as `hvctl: <Code>: <message>` with the CLI.md exit codes."""
from __future__ import annotations

import json
import sys

from hypervisor.runtime.errors import HvError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def exit_code(err: HvError) -> int:
    return EXIT_UNREACHABLE if err.code == "Unavailable" else EXIT_REFUSED


def print_error(err: HvError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": {"code": err.code, "message": err.message}}))
    print(f"hvctl: {err.code}: {err.message}", file=sys.stderr)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def format_uptime(seconds: float) -> str:
    s = int(seconds or 0)
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{days}.{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}")


def print_table(columns: list[tuple[str, str]], rows: list[dict], formats: dict | None = None) -> None:
    """columns: (header, key). Plain fixed-width text like PowerShell's default view."""
    from rich.console import Console
    from rich.table import Table
    formats = formats or {}
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for header, _ in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*[str(formats.get(key, lambda v: "" if v is None else v)(row.get(key)))
                        for _, key in columns])
    Console(soft_wrap=True).print(table)


def print_object(obj: dict) -> None:
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        print(f"{key:<{width}} : {'' if value is None else value}")

"""How hvctl prints: one JSON document with --json, a table or short text for people
otherwise; errors as `hvctl: <Code>: <message>` with the CLI.md exit codes.

Tables never wrap (`format_table`, pure): headers are always whole, and only when stdout is a
terminal narrower than the table are the longest cells shortened with `…`; piped output is
full width. While a command runs once per VM (several names or a wildcard,
parent/cli/vm_selection.py), `collecting()` gathers what each run prints so the VMs come out as
one table or one JSON list.
"""
from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime, timezone

from hypervisor.runtime.errors import HvError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
ELLIPSIS = "…"

_collected: list | None = None   # set while a command runs once per VM


def exit_code(err: HvError) -> int:
    return EXIT_UNREACHABLE if err.code == "Unavailable" else EXIT_REFUSED


def print_error(err: HvError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": {"code": err.code, "message": err.message}}))
    print(f"hvctl: {err.code}: {err.message}", file=sys.stderr)


def iso_time(epoch: float | None) -> str | None:
    """ISO 8601 in UTC with milliseconds (`2026-11-27T16:20:01.123Z`), as JSON and events show
    times."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


_encode_str = json.encoder.encode_basestring_ascii   # what json.dumps uses for strings (C)
_SCALARS = frozenset({str, int, float, bool, type(None)})
_flat_encoders: dict[str, json.JSONEncoder] = {}


def _flat(inner: str) -> json.JSONEncoder:
    """json's C encoder, writing a flat container's items one per line at indent `inner`."""
    enc = _flat_encoders.get(inner)
    if enc is None:
        enc = _flat_encoders[inner] = json.JSONEncoder(separators=("," + inner, ": "), default=str)
    return enc


def _encode(value, out: list, newline: str, depth: int) -> None:
    is_dict = isinstance(value, dict)
    if not value or not (is_dict or isinstance(value, (list, tuple))):
        out.append(json.dumps(value, default=str))   # a scalar, an object, [] or {}
        return
    if depth > 100:
        raise RecursionError("too deep")
    inner = newline + "  "
    children = value.values() if is_dict else value
    if all(type(child) in _SCALARS for child in children):
        text = _flat(inner).encode(value)   # "{" item ",\n  " item … "}" at C speed
        out.append(text[0] + inner + text[1:-1] + newline + text[-1])
        return
    separator = ("{" if is_dict else "[") + inner
    for item in (value.items() if is_dict else value):
        if is_dict:
            key, item = item
            if type(key) is not str:
                raise RecursionError("a key that is not a str: json's own encoder decides")
            out.append(separator + _encode_str(key) + ": ")
        else:
            out.append(separator)
        _encode(item, out, inner, depth + 1)
        separator = "," + inner
    out.append(newline + ("}" if is_dict else "]"))


def dumps_indented(obj) -> str:
    """Exactly `json.dumps(obj, indent=2, default=str)`, several times faster: json's indented
    encoder is pure Python, and hvctl's `get-vm --json` at 200 VMs spent about as long in it as
    in its request (issue 16). A container of scalars (each Get-VM object) is written by json's
    C encoder with ",\n" + indent as its item separator, which is the indented text; anything
    else is walked here, and what is unusual (a key that is not a str, very deep nesting) is
    left to json itself. tests/unit/test_cli_startup.py compares the two on random values."""
    out: list = []
    try:
        _encode(obj, out, "\n", 0)
    except RecursionError:
        return json.dumps(obj, indent=2, default=str)
    return "".join(out)


def print_json(obj) -> None:
    if _collected is not None:
        _collected.append(("json", obj))
        return
    print(dumps_indented(obj))


def format_uptime(seconds: float) -> str:
    s = int(seconds or 0)
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{days}.{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}")


def shorten(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[:max(0, width - 1)] + ELLIPSIS if width > 0 else ""


def format_table(headers: list[str], rows: list[list[str]], width: int | None = None) -> list[str]:
    """Lines of a plain table, two spaces between columns, never wrapped. Headers are never
    shortened; with `width` set and the table wider, the widest columns' cells are cut (with
    `…`) until it fits or every column is down to its header's width. Pure."""
    cols = len(headers)
    widths = [max([len(headers[i])] + [len(r[i]) for r in rows]) for i in range(cols)]
    if width is not None:
        floor = [len(h) for h in headers]
        while sum(widths) + 2 * (cols - 1) > width:
            i = max(range(cols), key=lambda c: widths[c] - floor[c])
            if widths[i] <= floor[i]:
                break
            widths[i] -= 1
    lines = []
    for row in [headers] + rows:
        cells = [shorten(cell, w).ljust(w) for cell, w in zip(row, widths)]
        lines.append("  ".join(cells).rstrip())
    return lines


def terminal_width() -> int | None:
    """The terminal's width when stdout is one; None (no limit) when piped."""
    if not sys.stdout.isatty():
        return None
    import shutil   # here, not at the top: hvctl get-vm piped never needs it (issue 16)
    return shutil.get_terminal_size((120, 24)).columns


def _cell(formats: dict, key: str, value) -> str:
    fmt = formats.get(key)
    if fmt is not None:
        return str(fmt(value))
    return "" if value is None else str(value)


def print_table(columns: list[tuple[str, str]], rows: list[dict], formats: dict | None = None) -> None:
    """columns: (header, key). Plain fixed-width text like PowerShell's default view."""
    if _collected is not None:
        _collected.append(("table", columns, rows, formats))
        return
    formats = formats or {}
    headers = [h for h, _ in columns]
    cells = [[_cell(formats, key, row.get(key)) for _, key in columns] for row in rows]
    for line in format_table(headers, cells, terminal_width()):
        print(line)


def print_object(obj: dict) -> None:
    if _collected is not None:
        _collected.append(("object", obj))
        return
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        print(f"{key:<{width}} : {'' if value is None else value}")


@contextlib.contextmanager
def collecting():
    """Gather what print_json/print_table/print_object are asked to print; `flush` prints it
    as one document (a JSON list, one table per column set, objects one after another)."""
    global _collected
    outer, _collected = _collected, []
    items = _collected
    try:
        yield items
    finally:
        _collected = outer


def flush(items: list, as_json: bool) -> None:
    if as_json:
        merged: list = []
        for item in items:
            if item[0] == "json":
                merged.extend(item[1] if isinstance(item[1], list) else [item[1]])
        print_json(merged)
        return
    i, first = 0, True
    while i < len(items):
        kind = items[i][0]
        if kind == "table":
            columns, formats, rows = items[i][1], items[i][3], list(items[i][2])
            while i + 1 < len(items) and items[i + 1][0] == "table" and items[i + 1][1] == columns:
                i += 1
                rows.extend(items[i][2])
            print_table(columns, rows, formats)
        elif kind == "object":
            if not first:
                print()
            print_object(items[i][1])
        first = False
        i += 1

"""Which VMs a command's NAME… means: several names, comma lists (`web1,web2`) and patterns
(`'web*'`, `?`, `[ab]`, case-insensitive like Get-VM). Pure functions plus `select`, which asks
vmms for the VM names only when a pattern needs them.

Imports no click: `hvctl get-vm`'s fast path (parent/cli/launch.py) uses it as the click
commands do (parent/cli/vm_selection.py).
"""
from __future__ import annotations

import fnmatch

from parent.cli import output

WILDCARD = set("*?[")


def is_pattern(text: str) -> bool:
    return any(ch in WILDCARD for ch in text)


def split_names(tokens) -> list[str]:
    """`web1,web2 db1` → ['web1', 'web2', 'db1'] (VM names never hold a comma)."""
    out = []
    for token in tokens:
        out.extend(part.strip() for part in token.split(",") if part.strip())
    return out


def match(tokens: list[str], existing: list[str]) -> list[str]:
    """Names in the order asked, patterns expanded against `existing` (case-insensitive, each VM
    once). Plain names pass through unchanged: the op itself answers NotFound. Pure."""
    out, seen = [], set()
    for token in tokens:
        found = [n for n in existing if fnmatch.fnmatchcase(n.lower(), token.lower())] \
            if is_pattern(token) else [token]
        for name in found:
            if name.lower() not in seen:
                seen.add(name.lower())
                out.append(name)
    return out


def expand(g, tokens) -> list[str]:
    tokens = split_names(tokens)
    if not any(is_pattern(t) for t in tokens):
        return tokens
    existing = [vm["Name"] for vm in g.client.call("get-vm")]
    return match(tokens, existing)


def with_names(g, tokens, run):
    """`run(names)` with NAME… expanded. Patterns that match no VM select nothing, quietly, as
    Get-VM does: nothing runs and `--json` prints `[]`."""
    names = tuple(expand(g, tokens))
    if not names:
        if g.json:
            output.print_json([])
        return None
    return run(names)

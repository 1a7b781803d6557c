"""Sizes as people type them (CLI.md): `512MB`, `1.5GB`, `2048MB` or plain bytes, in binary
units as PowerShell reads them (1MB = 1,048,576 bytes); the IEC spellings `512MiB`, `1GiB` mean
the same. Pure."""
from __future__ import annotations

import math

from hypervisor.runtime.errors import HvError

MAX_SIZE = (1 << 63) - 1   # nothing bigger fits the wire; ops apply their own, smaller ranges

SIZE_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40,
              "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
              "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(text: str, key: str = "size") -> int:
    """`512MB`, `1.5GB`, `2048MB`, `512MiB` or plain bytes, in binary units as PowerShell reads
    them. Always a finite whole number in 0..MAX_SIZE; BadRequest naming `key` otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        if not 0 <= text <= MAX_SIZE:
            raise HvError("BadRequest", f"argument '{key}' is out of range: {text}")
        return text
    if not isinstance(text, str) or len(text) > 64:
        raise HvError("BadRequest", f"argument '{key}' must be a size like 512MB, got {str(text)[:64]!r}")
    # hvctl's own parsing passes no key (the option is named by its caller); vmms names the field
    what = f"size {text!r}" if key == "size" else f"argument '{key}': {text!r}"
    s = text.strip().upper()
    num = s.rstrip("KMGTIB").rstrip()
    unit = s[len(num):].strip()
    bad = HvError("BadRequest", f"{what} is not a number of bytes or a size "
                                "like 512MB, 1GB, 512MiB")
    if unit not in SIZE_UNITS or not num or not all(c.isdigit() or c == "." for c in num):
        raise bad
    try:
        value = float(num) * SIZE_UNITS[unit] if "." in num else int(num) * SIZE_UNITS[unit]
    except ValueError:
        raise bad from None
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise HvError("BadRequest", f"{what} must be a whole, non-negative number of bytes")
    if value > MAX_SIZE:
        raise HvError("BadRequest", f"{what} is out of range")
    return int(value)


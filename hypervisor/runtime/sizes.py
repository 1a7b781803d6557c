"""Sizes as people type them (CLI.md): `512MB`, `1.5GB`, `2048MB` or plain bytes, in binary
units as PowerShell reads them (1MB = 1,048,576 bytes); the IEC spellings `512MiB`, `1GiB` mean
the same. Pure."""
from __future__ import annotations

from hypervisor.runtime.errors import HvError

SIZE_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40,
              "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
              "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(text: str) -> int:
    """`512MB`, `1.5GB`, `2048MB` or plain bytes, in binary units as PowerShell reads them."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if not isinstance(text, str):
        raise HvError("BadRequest", f"size must be text like 512MB, got {text!r}")
    s = text.strip().upper()
    num = s.rstrip("KMGTIB").rstrip()
    unit = s[len(num):].strip()
    if unit not in SIZE_UNITS or not num:
        raise HvError("BadRequest", f"size {text!r} is not a number of bytes or a size like 512MB, 1GB, 512MiB")
    try:
        value = float(num) * SIZE_UNITS[unit] if "." in num else int(num) * SIZE_UNITS[unit]
    except ValueError:
        raise HvError("BadRequest", f"size {text!r} is not a number of bytes or a size like 512MB, 1GB") from None
    if value < 0 or value != int(value):
        raise HvError("BadRequest", f"size {text!r} must be a whole, non-negative number of bytes")
    return int(value)


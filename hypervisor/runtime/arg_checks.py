"""Typed access to a request's `args` map: every op validates through these, so a wrong type
or range always answers `BadRequest` naming the field, and nothing downstream sees bad data."""
from __future__ import annotations

import math
from typing import Any

from hypervisor.runtime.errors import HvError

INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1   # what msgpack and every consumer can carry

_MISSING = object()


def _get(args: dict, key: str, default: Any) -> Any:
    value = args.get(key, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise HvError("BadRequest", f"missing argument '{key}'")
        return default
    return value


def get_str(args: dict, key: str, default: Any = _MISSING, *, max_len: int = 4096) -> str:
    value = _get(args, key, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, str):
        raise HvError("BadRequest", f"argument '{key}' must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise HvError("BadRequest", f"argument '{key}' is longer than {max_len} characters")
    return value


def get_int(args: dict, key: str, default: Any = _MISSING, *, lo: int | None = None,
            hi: int | None = None) -> int:
    value = _get(args, key, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise HvError("BadRequest", f"argument '{key}' must be an integer, got {type(value).__name__}")
    lo = INT_MIN if lo is None else lo
    hi = INT_MAX if hi is None else hi
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise HvError("BadRequest", f"argument '{key}' must be in {rng}, got {value}")
    return value


def get_bool(args: dict, key: str, default: Any = _MISSING) -> bool:
    value = _get(args, key, default)
    if not isinstance(value, bool):
        raise HvError("BadRequest", f"argument '{key}' must be true or false, got {type(value).__name__}")
    return value


def get_map(args: dict, key: str, default: Any = _MISSING) -> dict:
    value = _get(args, key, default)
    if not isinstance(value, dict):
        raise HvError("BadRequest", f"argument '{key}' must be a map, got {type(value).__name__}")
    return value


def get_float(args: dict, key: str, default: Any = _MISSING, *, lo: float | None = None,
              hi: float | None = None) -> float:
    value = _get(args, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HvError("BadRequest", f"argument '{key}' must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise HvError("BadRequest", f"argument '{key}' must be a finite number, got {value}")
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        raise HvError("BadRequest", f"argument '{key}' is out of range")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise HvError("BadRequest", f"argument '{key}' must be in {lo}..{hi}, got {value}")
    return float(value)

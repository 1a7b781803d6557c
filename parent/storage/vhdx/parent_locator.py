"""The Parent Locator of a differencing VHDX (MS-VHDX 2.6.2.6) and how hvemu finds the parent.

A differencing disk (HasParent set) names its parent in a metadata item: a 20-byte header
(LocatorType GUID, reserved u16, KeyValueCount u16) followed by 12-byte entries (KeyOffset u32,
ValueOffset u32 — both relative to the item start — KeyLength u16, ValueLength u16), the keys and
values themselves UTF-16LE without terminators. For the VHDX locator type the keys are:

| key | value |
|---|---|
| `parent_linkage` (required) | the parent's DataWriteGuid when the child was made, `{…}` |
| `parent_linkage2` (optional) | a second DataWriteGuid the parent may carry (hvemu: set during a merge) |
| `relative_path` | the parent relative to the child's folder, `\\` separators |
| `volume_path` | `\\\\?\\Volume{…}\\…` (Windows only; hvemu cannot resolve it) |
| `absolute_win32_path` | an absolute path (hvemu writes the POSIX path) |

Key names:
- `ParentLocator` — the parsed item (ordered key → value); `linkages` is the set of parent
  DataWriteGuids accepted; `candidates(child_path)` is where to look, in the spec's order.
- `parse_locator()` / `pack_locator()` — bytes <-> `ParentLocator`, pure; parsing refuses a
  wrong locator type, offsets outside the item, overlapping or empty keys/values, duplicate
  keys, NULs, a missing or malformed `parent_linkage`, and a locator with no path at all.
- `locator_for(parent_path, child_path, data_write_guid)` — what `new-vhd --differencing`
  writes: the linkage, `relative_path` and `absolute_win32_path`.
"""
from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass

from .layout import bad

VHDX_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
HEADER = struct.Struct("<16sHH")
ENTRY = struct.Struct("<IIHH")
PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")
MAX_KEYS = 256


def guid_text(value: uuid.UUID) -> str:
    """A GUID as MS-VHDX writes linkages: braces, upper case."""
    return "{" + str(value).upper() + "}"


def parse_guid_text(path: str, key: str, text: str) -> uuid.UUID:
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    try:
        return uuid.UUID(body)
    except ValueError:
        raise bad(path, f"parent locator {key} {text!r} is not a GUID") from None


@dataclass(frozen=True)
class ParentLocator:
    """A parsed VHDX parent locator: its entries in file order."""

    entries: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        for k, v in self.entries:
            if k == key:
                return v
        return None

    @property
    def linkage(self) -> uuid.UUID:
        return uuid.UUID(self.get("parent_linkage").strip("{}"))

    @property
    def linkage2(self) -> uuid.UUID | None:
        text = self.get("parent_linkage2")
        return uuid.UUID(text.strip("{}")) if text else None

    @property
    def linkages(self) -> set[uuid.UUID]:
        return {g for g in (self.linkage, self.linkage2) if g is not None}

    def with_entry(self, key: str, value: str | None) -> "ParentLocator":
        """A copy with `key` set to `value` (kept in place if present, appended if not), or
        removed when `value` is None."""
        entries = [(k, v) for k, v in self.entries if k != key or value is not None]
        if value is not None:
            if any(k == key for k, _ in entries):
                entries = [(k, value if k == key else v) for k, v in entries]
            else:
                entries.append((key, value))
        return ParentLocator(tuple(entries))

    def candidates(self, child_path: str) -> list[str]:
        """Paths where the parent may be, in the order MS-VHDX tries them (relative_path,
        volume_path, absolute_win32_path); Windows-only forms are skipped."""
        folder = os.path.dirname(os.path.abspath(child_path))
        out: list[str] = []
        for key in PATH_KEYS:
            value = self.get(key)
            if not value:
                continue
            if key == "relative_path":
                rel = value.replace("\\", "/")
                if not rel.startswith("/"):
                    out.append(os.path.normpath(os.path.join(folder, rel)))
            elif value.startswith("/"):
                out.append(os.path.normpath(value))
            # volume paths and drive-letter paths name Windows volumes: not resolvable here.
        return list(dict.fromkeys(out))


def parse_locator(path: str, data: bytes) -> ParentLocator:
    """The locator item's bytes -> ParentLocator, or BadRequest naming the problem."""
    if len(data) < HEADER.size:
        raise bad(path, f"parent locator is {len(data)} bytes, shorter than its header")
    raw_type, _reserved, count = HEADER.unpack_from(data, 0)
    if uuid.UUID(bytes_le=raw_type) != VHDX_LOCATOR_TYPE:
        raise bad(path, f"parent locator type {uuid.UUID(bytes_le=raw_type)} is not the VHDX "
                        "locator type")
    if count == 0 or count > MAX_KEYS:
        raise bad(path, f"parent locator has {count} entries (1 to {MAX_KEYS} allowed)")
    if HEADER.size + count * ENTRY.size > len(data):
        raise bad(path, f"parent locator's {count} entries run past the item")
    spans: list[tuple[int, int]] = []
    entries: list[tuple[str, str]] = []

    def text(offset: int, length: int, what: str) -> str:
        if offset == 0 or length == 0 or length % 2:
            raise bad(path, f"parent locator {what} has offset {offset} length {length}")
        if offset < HEADER.size + count * ENTRY.size or offset + length > len(data):
            raise bad(path, f"parent locator {what} lies outside the item")
        spans.append((offset, offset + length))
        try:
            value = data[offset:offset + length].decode("utf-16-le")
        except UnicodeDecodeError:
            raise bad(path, f"parent locator {what} is not UTF-16LE") from None
        if "\0" in value:
            raise bad(path, f"parent locator {what} contains a NUL")
        return value

    for i in range(count):
        k_off, v_off, k_len, v_len = ENTRY.unpack_from(data, HEADER.size + i * ENTRY.size)
        key = text(k_off, k_len, f"entry {i} key")
        value = text(v_off, v_len, f"entry {i} ({key}) value")
        if any(k == key for k, _ in entries):
            raise bad(path, f"parent locator lists the key {key!r} twice")
        entries.append((key, value))
    spans.sort()
    for (_s1, e1), (s2, _e2) in zip(spans, spans[1:]):
        if s2 < e1:
            raise bad(path, "parent locator keys or values overlap")
    locator = ParentLocator(tuple(entries))
    if locator.get("parent_linkage") is None:
        raise bad(path, "parent locator has no parent_linkage")
    parse_guid_text(path, "parent_linkage", locator.get("parent_linkage"))
    if locator.get("parent_linkage2") is not None:
        parse_guid_text(path, "parent_linkage2", locator.get("parent_linkage2"))
    if not any(locator.get(k) for k in PATH_KEYS):
        raise bad(path, "parent locator names no parent path (relative_path, volume_path or "
                        "absolute_win32_path)")
    return locator


def pack_locator(locator: ParentLocator) -> bytes:
    """ParentLocator -> the item's bytes: header, entries, then each key and value."""
    entries = list(locator.entries)
    table = bytearray(HEADER.pack(VHDX_LOCATOR_TYPE.bytes_le, 0, len(entries)))
    blob = bytearray()
    base = HEADER.size + len(entries) * ENTRY.size
    for key, value in entries:
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        table += ENTRY.pack(base + len(blob), base + len(blob) + len(k), len(k), len(v))
        blob += k + v
    return bytes(table + blob)


def locator_for(parent_path: str, child_path: str, data_write_guid: uuid.UUID) -> ParentLocator:
    """The locator a new differencing disk at `child_path` gets for `parent_path`."""
    parent_path = os.path.abspath(parent_path)
    rel = os.path.relpath(parent_path, os.path.dirname(os.path.abspath(child_path)))
    rel = rel.replace("/", "\\")
    if not rel.startswith(".."):
        rel = ".\\" + rel
    return ParentLocator((("parent_linkage", guid_text(data_write_guid)),
                          ("relative_path", rel),
                          ("absolute_win32_path", parent_path)))

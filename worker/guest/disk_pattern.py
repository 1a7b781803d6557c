"""The disk test pattern the guest programs `disk-write`, `disk-verify` and `disk-sha256` use
(CLI.md "Guest programs"), pure: no I/O.

The pattern is defined per 512-byte sector, independent of the disk's own sector size: sector
`s` (counted from byte 0 of the disk) holds `sha256(f"{SEED}:{s}".encode()).digest()` repeated 16
times. A pattern run's SIZE is a positive multiple of 4096 (`check_size`).

Key functions:
- `sector(seed, s)` — the 512 bytes of sector `s`.
- `generate(seed, offset, length)` — the pattern's bytes `[offset, offset + length)`, any
  alignment (the guest writes it chunk by chunk; tests compare whole images with it).
- `first_mismatch(seed, offset, data)` — the disk byte offset of the first byte of `data`
  (which sits at `offset` on the disk) that differs from the pattern, or None.
- `pattern_sha256(seed, size)` — hex SHA-256 of the first `size` bytes of the pattern, what
  `disk-sha256:SIZE` reports for a disk that holds it.

Performance: one SHA-256 of a short string per sector and one join per call — about 170 MiB/s
here (2048 hashes per MiB, the hashing is the cost); no per-byte Python loop. `first_mismatch`
compares 1 MiB chunks as bytes (memcmp; a memoryview `==` is 5x slower) and only narrows down,
by halving, inside the one chunk that differs.
"""
from __future__ import annotations

import hashlib

from hypervisor.runtime.errors import HvError

SECTOR = 512
REPEAT = SECTOR // 32          # a SHA-256 digest is 32 bytes
SIZE_MULTIPLE = 4096
_CHUNK = 1 << 20               # first_mismatch compares this much at a time


def check_size(size: int) -> int:
    """`size` itself if it is a positive multiple of 4096; BadRequest otherwise."""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % SIZE_MULTIPLE:
        raise HvError("BadRequest", f"pattern SIZE must be a positive multiple of "
                                    f"{SIZE_MULTIPLE}, got {size!r}")
    return size


def _check_range(offset: int, length: int) -> None:
    for name, value in (("offset", offset), ("length", length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def sector(seed: str, s: int) -> bytes:
    """The 512 bytes of pattern sector `s`."""
    return hashlib.sha256(f"{seed}:{s}".encode()).digest() * REPEAT


def _sectors(seed: str, first: int, count: int) -> bytes:
    prefix, sha256 = f"{seed}:".encode(), hashlib.sha256
    return b"".join([sha256(b"%s%d" % (prefix, s)).digest() * REPEAT
                     for s in range(first, first + count)])


def generate(seed: str, offset: int, length: int) -> bytes:
    """The pattern's bytes from disk offset `offset`, `length` of them (any alignment)."""
    _check_range(offset, length)
    if length == 0:
        return b""
    first = offset // SECTOR
    last = (offset + length - 1) // SECTOR
    data = _sectors(seed, first, last - first + 1)
    skip = offset - first * SECTOR
    return data if skip == 0 and len(data) == length else data[skip:skip + length]


def first_mismatch(seed: str, offset: int, data: bytes | bytearray | memoryview) -> int | None:
    """The disk offset of the first byte of `data` (found at disk `offset`) that is not the
    pattern's, or None when all of `data` matches."""
    view = memoryview(data).cast("B")
    _check_range(offset, len(view))
    pos = 0
    while pos < len(view):
        n = min(_CHUNK, len(view) - pos)
        want = generate(seed, offset + pos, n)
        got = bytes(view[pos:pos + n])
        if got != want:
            return offset + pos + _first_difference(got, want)
        pos += n
    return None


def _first_difference(got: bytes, want: bytes) -> int:
    """Index of the first differing byte of two equal-length buffers known to differ."""
    lo, hi = 0, len(want)  # the first difference is in [lo, hi)
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if got[lo:mid] != want[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if got[i] != want[i]:
            return i
    raise ValueError("the buffers do not differ")


def pattern_sha256(seed: str, size: int) -> str:
    """Hex SHA-256 of the first `size` bytes of the pattern."""
    _check_range(0, size)
    h = hashlib.sha256()
    for pos in range(0, size, _CHUNK):
        h.update(generate(seed, pos, min(_CHUNK, size - pos)))
    return h.hexdigest()

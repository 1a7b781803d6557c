"""CRC-32C (Castagnoli), the checksum of VHDX headers, region tables and log entries.

MS-VHDX uses the iSCSI/ext4 "crc32c": polynomial 0x1EDC6F41 (reflected 0x82F63B78), reflected
input and output, initial value 0xFFFFFFFF, final XOR 0xFFFFFFFF. The check value of
b"123456789" is 0xE3069283. A structure stores its checksum as a little-endian u32 and the field
counts as zero while the checksum is computed (`checksum_with_hole`, `seal`).

Performance: the `crc32c` package (PyPI, C with SSE4.2/ARMv8 CRC instructions) is used when it is
installed; it checksums a 64 KiB region table in microseconds. Without it a table-driven pure
Python fallback gives identical results at roughly 5 MB/s — fine for the handful of 4 KiB headers
and 64 KiB region tables read at open, slow only for replaying very large logs.
"""
from __future__ import annotations

import struct

try:  # pragma: no cover - which branch runs depends on the environment
    from crc32c import crc32c as _crc32c_fast
except ImportError:  # pragma: no cover
    _crc32c_fast = None

_POLY_REFLECTED = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def crc32c_pure(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C in pure Python; `crc` continues a previous result (as zlib.crc32 does)."""
    table = _TABLE
    value = crc ^ 0xFFFFFFFF
    for byte in bytes(data):
        value = table[(value ^ byte) & 0xFF] ^ (value >> 8)
    return value ^ 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of `data`, continuing from `crc` (0 to start)."""
    if _crc32c_fast is not None:
        return _crc32c_fast(bytes(data) if isinstance(data, memoryview) else data, crc)
    return crc32c_pure(data, crc)


def checksum_with_hole(data: bytes | bytearray | memoryview, field_offset: int) -> int:
    """CRC-32C of `data` with the 4-byte checksum field at `field_offset` taken as zero."""
    view = memoryview(data)
    crc = crc32c(view[:field_offset])
    crc = crc32c(b"\0\0\0\0", crc)
    return crc32c(view[field_offset + 4:], crc)


def stored_checksum(data: bytes | bytearray | memoryview, field_offset: int) -> int:
    """The little-endian u32 checksum stored in `data` at `field_offset`."""
    return struct.unpack_from("<I", data, field_offset)[0]


def checksum_ok(data: bytes | bytearray | memoryview, field_offset: int) -> bool:
    """Whether the checksum stored at `field_offset` matches the rest of `data`."""
    return stored_checksum(data, field_offset) == checksum_with_hole(data, field_offset)


def seal(buf: bytearray, field_offset: int) -> bytearray:
    """Compute the checksum of `buf` and store it at `field_offset`; returns `buf`."""
    struct.pack_into("<I", buf, field_offset, 0)
    struct.pack_into("<I", buf, field_offset, crc32c(buf))
    return buf

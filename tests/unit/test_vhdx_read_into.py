"""read_into (preadv straight into a caller's buffer, the storvsp fast path) returns exactly
what read() does: allocated and unallocated blocks, ranges crossing block boundaries."""
from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st

from parent.storage import vhdx

MIB = 1 << 20


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12 * MIB), st.integers(1, 3 * MIB)), min_size=1, max_size=6),
       st.booleans())
def test_read_into_matches_read(tmp_path_factory, ranges, fixed):
    path = tmp_path_factory.mktemp("ri") / "d.vhdx"
    vhdx.create(str(path), 16 * MIB, fixed=fixed, block_size=1 * MIB)
    disk = vhdx.open(str(path), writable=True)
    try:
        disk.write(3 * MIB - 100, os.urandom(2 * MIB))   # crosses blocks, leaves others empty
        for offset, length in ranges:
            length = min(length, disk.size - offset)
            if length <= 0:
                continue
            buf = bytearray(length)
            disk.read_into(offset, memoryview(buf))
            assert bytes(buf) == disk.read(offset, length)
    finally:
        disk.close()

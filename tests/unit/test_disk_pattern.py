"""The disk test pattern (CLI.md): sector contents, ranges at any alignment, mismatch offsets."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.runtime.errors import HvError
from worker.guest import disk_pattern as p


def reference(seed: str, size: int) -> bytes:
    """CLI.md's definition, written out literally."""
    return b"".join(hashlib.sha256(f"{seed}:{s}".encode()).digest() * 16
                    for s in range(size // 512))


def test_sectors_follow_the_definition():
    assert p.sector("7", 0) == hashlib.sha256(b"7:0").digest() * 16
    assert len(p.sector("x", 123)) == 512
    assert p.generate("seed", 0, 8192) == reference("seed", 8192)
    assert p.generate("ünï", 4096, 4096) == reference("ünï", 8192)[4096:]
    assert p.generate("a", 0, 512) != p.generate("b", 0, 512)
    assert p.generate("a", 0, 0) == b""


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=12), st.integers(0, 20000), st.integers(0, 5000))
def test_any_range_is_a_slice_of_the_whole(seed, offset, length):
    whole = reference(seed, (offset + length + 511) // 512 * 512 + 512)
    assert p.generate(seed, offset, length) == whole[offset:offset + length]


def test_first_mismatch_finds_the_first_changed_byte():
    size = 3 << 20  # crosses the 1 MiB comparison chunks
    data = bytearray(p.generate("s", 0, size))
    assert p.first_mismatch("s", 0, data) is None
    assert p.first_mismatch("s", 0, memoryview(data)) is None
    for where in (0, 1, 511, 512, (1 << 20) - 1, 1 << 20, size - 1):
        changed = bytearray(data)
        changed[where] ^= 0x01
        changed[size - 1] ^= 0x80 if where != size - 1 else 0
        assert p.first_mismatch("s", 0, changed) == where
    assert p.first_mismatch("t", 0, data) == 0          # another seed differs at once
    tail = data[4096 + 100:]
    assert p.first_mismatch("s", 4096 + 100, tail) is None  # data that sits further in
    zeros = bytes(8192)
    assert p.first_mismatch("s", 1 << 30, zeros) == 1 << 30


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 8191), st.integers(1, 255), st.integers(0, 4096))
def test_first_mismatch_any_position(where, flip, offset):
    data = bytearray(p.generate("q", offset, 8192))
    data[where] ^= flip
    assert p.first_mismatch("q", offset, data) == offset + where


def test_pattern_sha256_hashes_the_first_size_bytes():
    assert p.pattern_sha256("k", 12288) == hashlib.sha256(reference("k", 12288)).hexdigest()
    big = (1 << 20) + 4096  # spans two generation chunks
    assert p.pattern_sha256("k", big) == hashlib.sha256(reference("k", big)).hexdigest()


def test_size_rule_and_bad_arguments():
    assert p.check_size(4096) == 4096 and p.check_size(1 << 30) == 1 << 30
    for size in (0, -4096, 512, 4097, 4096.0, True, "4096"):
        with pytest.raises(HvError, match="multiple of 4096"):
            p.check_size(size)
    with pytest.raises(ValueError):
        p.generate("s", -1, 10)
    with pytest.raises(ValueError):
        p.first_mismatch("s", -512, b"x")

"""Corrupt and hostile VHDX files: each one is refused with HvError("BadRequest") naming the
problem, on read-only and writable opens alike, and nothing is written to the file. A
hypothesis fuzz flips bytes in and truncates a small image: open either works or raises
HvError — never another exception, never a hang."""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisor.runtime.errors import HvError
from parent.storage.vhdx import create, open as open_vhdx
from parent.storage.vhdx.checksum import seal
from parent.storage.vhdx.layout import HEADER_OFFSETS, MIB, REGION_TABLE_OFFSETS, Header
from parent.storage.vhdx.log import build_entry
from parent.storage.vhdx.metadata import PARENT_LOCATOR_GUID
from tests.helpers.vhdx_files import patch_bytes, set_bat

BAT = 2 * MIB  # layout of create(path, 8 MiB, block_size=1 MiB): log 1 MiB, BAT, metadata
META = 3 * MIB


def read_bytes(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def rewrite_headers(path, **changes):
    """Give both header copies new field values (with valid CRCs)."""
    for slot in HEADER_OFFSETS:
        header = Header.parse(read_bytes(path, slot, 4096))
        patch_bytes(path, slot, Header(**{**header.__dict__, **changes}).pack())


def rewrite_region_tables(path, mutate):
    table = bytearray(read_bytes(path, REGION_TABLE_OFFSETS[0], 65536))
    mutate(table)
    seal(table, 4)
    for slot in REGION_TABLE_OFFSETS:
        patch_bytes(path, slot, table)


def set_item(path, entry, value: bytes):
    """Overwrite the value of metadata table entry `entry` (0 File Parameters, 1 size, ...)."""
    offset = struct.unpack_from("<I", read_bytes(path, META + 32 + 32 * entry + 16, 4))[0]
    patch_bytes(path, META + offset, value)


def add_region(path, required):
    """Append a third region entry (an unknown GUID, 1 MiB at 6 MiB, the end of the file)."""
    def mutate(table):
        struct.pack_into("<I", table, 8, 3)
        struct.pack_into("<16sQII", table, 16 + 2 * 32, uuid.uuid4().bytes_le, 6 * MIB, MIB,
                         required)
    rewrite_region_tables(path, mutate)
    os.truncate(path, 7 * MIB)


def add_item(path, guid, flags):
    """Append a sixth metadata entry with a 32-byte item at 0x10100."""
    patch_bytes(path, META + 32 + 32 * 5, struct.pack("<16sIII", guid.bytes_le, 0x10100, 32,
                                                      flags))
    patch_bytes(path, META + 10, struct.pack("<H", 6))


def dirty_log(path, writes, **entry_fields):
    guid = uuid.uuid4()
    fields = dict(sequence=5, tail=0, flushed_file_offset=MIB, last_file_offset=8 * MIB)
    fields.update(entry_fields)
    patch_bytes(path, MIB, build_entry(log_guid=guid, writes=writes, **fields))
    rewrite_headers(path, log_guid=guid)


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vhdx") / "base.vhdx")
    create(path, 8 * MIB, block_size=MIB)
    with open_vhdx(path, writable=True) as disk:  # blocks 0 and 3 at 4 MiB and 5 MiB; 6 MiB long
        disk.write(0, b"zero")
        disk.write(3 * MIB, b"three")
    return path


@pytest.fixture
def image(base_image, tmp_path):
    path = str(tmp_path / "d.vhdx")
    shutil.copyfile(base_image, path)
    return path


CORRUPTIONS = {
    "not a VHDX file": lambda p: patch_bytes(p, 0, b"vhdXfile"),
    "no valid VHDX header": lambda p: (patch_bytes(p, HEADER_OFFSETS[0] + 200, b"\1"),
                                       patch_bytes(p, HEADER_OFFSETS[1] + 200, b"\1")),
    "region table 1 has a bad checksum":
        lambda p: patch_bytes(p, REGION_TABLE_OFFSETS[0] + 30, b"\x07"),
    "region table 2 has a bad signature": lambda p: patch_bytes(p, REGION_TABLE_OFFSETS[1], b"x"),
    "BAT overlaps metadata": lambda p: rewrite_region_tables(
        p, lambda t: struct.pack_into("<I", t, 16 + 24, 2 * MIB)),
    "log overlaps metadata": lambda p: rewrite_region_tables(
        p, lambda t: struct.pack_into("<Q", t, 48 + 16, MIB)),
    "log overlaps BAT": lambda p: rewrite_headers(p, log_length=2 * MIB),
    "unknown required region": lambda p: add_region(p, required=1),
    "region table has no metadata region": lambda p: rewrite_region_tables(
        p, lambda t: struct.pack_into("<I", t, 8, 1)),
    "metadata table has a bad signature": lambda p: patch_bytes(p, META, b"metadatX"),
    "unknown required metadata item": lambda p: patch_bytes(
        p, META + 32 + 32 * 4, uuid.uuid4().bytes_le),  # Physical Sector Size renamed
    "block size 3145728": lambda p: set_item(p, 0, struct.pack("<I", 3 * MIB)),
    "block size 536870912": lambda p: set_item(p, 0, struct.pack("<I", 512 * MIB)),
    "logical sector size 1024": lambda p: set_item(p, 3, struct.pack("<I", 1024)),
    "physical sector size 0": lambda p: set_item(p, 4, struct.pack("<I", 0)),
    "virtual size 70368744177665": lambda p: set_item(p, 1, struct.pack("<Q", 64 * 2**40 + 1)),
    "not a multiple of the logical sector size":
        lambda p: set_item(p, 1, struct.pack("<Q", 8 * MIB + 1)),
    "BAT region is 1048576 bytes": lambda p: set_item(p, 1, struct.pack("<Q", 256 * 2**30)),
    "reserved flags": lambda p: set_item(p, 0, struct.pack("<II", MIB, 4)),
    "is not the VHDX locator type": lambda p: (
        set_item(p, 0, struct.pack("<II", MIB, 2)), add_item(p, PARENT_LOCATOR_GUID, 4)),
    "has no Parent Locator": lambda p: set_item(p, 0, struct.pack("<II", MIB, 2)),
    "past the end of the file": lambda p: set_bat(p, 2, 7 * MIB | 6),
    "inside the header section": lambda p: set_bat(p, 2, 0 | 6),
    "overlaps the log": lambda p: set_bat(p, 2, MIB | 6),
    "overlaps the BAT region": lambda p: set_bat(p, 2, 2 * MIB | 6),
    "overlaps the metadata region": lambda p: set_bat(p, 2, 3 * MIB | 6),
    "point at the same file offsets": lambda p: set_bat(p, 2, 5 * MIB | 6),
    "point at overlapping file offsets": lambda p: (
        set_item(p, 0, struct.pack("<I", 2 * MIB)), set_bat(p, 1, 5 * MIB | 6),
        os.truncate(p, 8 * MIB)),
    "reserved state 4": lambda p: set_bat(p, 2, 4),
    "reserved state 5": lambda p: set_bat(p, 2, 5 * MIB | 5),
    "PARTIALLY_PRESENT": lambda p: set_bat(p, 2, 4 * MIB | 7),
    "reserved bits": lambda p: set_bat(p, 2, 5 * MIB | 6 | 0x100),
    "non-zero file offset": lambda p: set_bat(p, 2, 4 * MIB | 2),
    "header sequence number is exhausted": lambda p: rewrite_headers(
        p, sequence_number=2**64 - 1),
    "holds no valid entry sequence": lambda p: rewrite_headers(p, log_guid=uuid.uuid4()),
    "into the log itself": lambda p: dirty_log(p, [(MIB, bytes(4096))]),
    "outside": lambda p: dirty_log(p, [(64 * 1024, bytes(4096))]),  # onto header 1
    "were flushed": lambda p: dirty_log(p, [(2 * MIB, bytes(4096))],
                                        flushed_file_offset=64 * MIB, last_file_offset=64 * MIB),
}


@pytest.mark.parametrize("problem", sorted(CORRUPTIONS))
@pytest.mark.parametrize("writable", [False, True])
def test_corruption_is_refused_and_nothing_is_written(image, problem, writable):
    CORRUPTIONS[problem](image)
    before = open(image, "rb").read()
    with pytest.raises(HvError) as err:
        open_vhdx(image, writable=writable)
    assert err.value.code == "BadRequest"
    assert err.value.message.startswith(f"{image}: ")
    assert problem in err.value.message, err.value.message
    assert open(image, "rb").read() == before


@pytest.mark.parametrize("size", [0, 100, 300 * 1024, MIB, 3 * MIB + 4096, 5 * MIB + 10])
def test_truncated_files_are_refused(image, size):
    os.truncate(image, size)
    with pytest.raises(HvError) as err:
        open_vhdx(image, writable=True)
    assert err.value.code == "BadRequest"
    assert "truncated" in err.value.message or "not a VHDX file" in err.value.message
    assert os.path.getsize(image) == size


@pytest.mark.parametrize("damage", [
    lambda p: patch_bytes(p, HEADER_OFFSETS[0] + 300, b"\xff"),  # one header copy is enough
    lambda p: add_region(p, required=0),  # unknown optional regions are skipped
    lambda p: add_item(p, uuid.uuid4(), 1),  # unknown user items are skipped
    lambda p: set_bat(p, 2, 1 | 40 * MIB),  # UNDEFINED may remember an old offset
    lambda p: set_bat(p, 2, 3),  # UNMAPPED reads as zeros
])
def test_tolerated_oddities_open(image, damage):
    damage(image)
    with open_vhdx(image, writable=True) as disk:
        assert disk.read(0, 4) == b"zero" and disk.read(2 * MIB, 4) == bytes(4)
        disk.write(7 * MIB, b"ok")
    with open_vhdx(image) as disk:
        assert disk.read(7 * MIB, 2) == b"ok"


# -- fuzz ---------------------------------------------------------------------------------------

HOT_SPOTS = [(0, 600), (HEADER_OFFSETS[0], 96), (HEADER_OFFSETS[1], 96),
             (REGION_TABLE_OFFSETS[0], 96), (REGION_TABLE_OFFSETS[1], 96), (MIB, 12288),
             (BAT, 64), (META, 256), (META + 65536, 48)]


@pytest.fixture(scope="module")
def fuzz_bases(base_image, tmp_path_factory):
    """The clean base image and one with a dirty log (an unapplied BAT update for block 5)."""
    dirty = str(tmp_path_factory.mktemp("vhdx") / "dirty.vhdx")
    shutil.copyfile(base_image, dirty)
    sector = bytearray(read_bytes(dirty, BAT, 4096))
    struct.pack_into("<Q", sector, 8 * 5, 6 * MIB | 6)
    patch_bytes(dirty, 6 * MIB - 4096, b"five".ljust(4096, b"\0"))
    dirty_log(dirty, [(BAT, bytes(sector)), (6 * MIB - 4096, b"unused".ljust(4096, b"\0"))],
              flushed_file_offset=6 * MIB, last_file_offset=7 * MIB)
    with open_vhdx(dirty) as disk:  # the dirty base is valid: replayed in memory
        assert disk.file_size == 7 * MIB and disk.read(5 * MIB, 4) == bytes(4)
        assert disk.read(4 * MIB - 4096, 6) == b"unused"  # the overlay covers payload too
    return [open(base_image, "rb").read(), open(dirty, "rb").read()]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.integers(0, 1), st.lists(st.tuples(st.sampled_from(HOT_SPOTS), st.integers(0, 2**16),
                                             st.integers(1, 255)), min_size=1, max_size=4),
       st.one_of(st.none(), st.integers(0, 8 * MIB)), st.booleans())
def test_fuzzed_images_open_or_fail_cleanly(fuzz_bases, which, flips, truncate_at, writable):
    data = bytearray(fuzz_bases[which])
    for (start, span), pick, xor in flips:
        data[start + pick % span] ^= xor
    if truncate_at is not None:
        del data[truncate_at:]
    with tempfile.NamedTemporaryFile(suffix=".vhdx") as f:
        f.write(data)
        f.flush()
        try:
            disk = open_vhdx(f.name, writable=writable)
        except HvError as err:
            assert err.code == "BadRequest", err
            f.seek(0)
            assert f.read() == data  # refused files are never written
            return
        with disk:
            disk.read(0, min(disk.size, 8 * MIB))
            disk.read(disk.size - 512, 512)
            if writable:
                disk.write(disk.size // 2, b"fuzz")
                assert disk.read(disk.size // 2, 4) == b"fuzz"


OFFSETS = st.one_of(st.sampled_from([0, 4096, 192 * 1024, 256 * 1024, MIB, BAT, BAT + 4096,
                                     META, 4 * MIB, 6 * MIB, 7 * MIB, 2**63, 2**64 - 4096]),
                    st.integers(0, 2**64 - 1))
SIZES = st.one_of(st.sampled_from([0, 6 * MIB, 7 * MIB, 8 * MIB, 64 * MIB, 2**50]),
                  st.integers(0, 2**64 - 1))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.integers(1, 2**64 - 1), st.sampled_from([0, 4096, 8192, MIB - 4096, MIB, 2**32 - 4096]),
       SIZES, SIZES,
       st.lists(st.tuples(OFFSETS, st.one_of(st.none(), SIZES)), min_size=1, max_size=4),
       st.booleans())
def test_hostile_but_well_formed_log_entries(base_image, sequence, tail, flushed, last, descs,
                                              writable):
    """Entries with valid checksums and arbitrary field values: open works or BadRequest."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.vhdx")
        shutil.copyfile(base_image, path)
        writes = [(off % 2**64, bytes(4096)) for off, zero in descs if zero is None]
        zeros = [(off, zero % 2**64) for off, zero in descs if zero is not None]
        guid = uuid.uuid4()
        patch_bytes(path, MIB, build_entry(
            sequence=sequence, tail=tail, log_guid=guid, flushed_file_offset=flushed % 2**64,
            last_file_offset=last % 2**64, writes=writes, zeros=zeros))
        rewrite_headers(path, log_guid=guid)
        before = open(path, "rb").read()
        try:
            disk = open_vhdx(path, writable=writable)
        except HvError as err:
            assert err.code == "BadRequest", err
            assert open(path, "rb").read() == before
            return
        with disk:
            disk.read(0, disk.size)
        assert os.path.getsize(path) <= 64 * MIB


def test_absurd_last_file_offset_is_refused(image):
    dirty_log(image, [(BAT, read_bytes(image, BAT, 4096))], flushed_file_offset=6 * MIB,
              last_file_offset=2**40)
    with pytest.raises(HvError, match="beyond any size this disk can reach"):
        open_vhdx(image, writable=True)
    assert os.path.getsize(image) == 6 * MIB
